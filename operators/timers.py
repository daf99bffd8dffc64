"""The timer queue of one shard: when each of its customers next has a timer due.

A customer's timers live in its state (its bookkeeping record, in firing order); the queue
holds one heap entry per customer with timers, no later than its first one, and the customer
notes the due time of its entry (``scheduled_ms``). Re-arming a timer to a later time (every
``Product Viewed`` re-arms the browse-abandonment timer) pushes nothing: the old entry stays, and
when it comes due the customer is pushed again at its first timer's real time. Only a timer due
before the customer's entry pushes a new one; the old entry is skipped when it pops, and such
stale entries are swept out once they reach a quarter of the customers (:data:`STALE_SHARE`), so
the heap holds about one entry per customer. The heap is compiled (:class:`state._native.TimerHeap`):
an entry is the due time and a reference to the customer's id, 16 bytes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from state._native import TimerHeap
from state.customer import CustomerState

STALE_SHARE = 4  # stale entries swept out once the heap holds more than customers + customers / this + 64


class TimerQueue:
    """Heap entries ``(due, customer id)`` of ``customers``: due order, then customer order."""

    def __init__(self, customers: Mapping[str, CustomerState]) -> None:
        self.customers = customers
        self.heap = TimerHeap()

    def schedule(self, state: CustomerState) -> None:
        """Keep an entry for the customer no later than its first timer."""
        due = state.book.first_due
        if due is not None and (state.scheduled_ms is None or state.scheduled_ms > due):
            state.scheduled_ms = due
            self.heap.push(due, state.id)
            if len(self.heap) > len(self.customers) * (STALE_SHARE + 1) // STALE_SHARE + 64:
                self._sweep()

    def _sweep(self) -> None:
        """Keep only each customer's own entry (in place: :meth:`due` may be iterating)."""
        self.heap.replace([(s.scheduled_ms, s.id) for s in self.customers.values() if s.scheduled_ms is not None])

    def first_due(self) -> int | None:
        """The due time of the first entry (no later than the first timer), ``None`` when none."""
        return self.heap.first()

    def any_due(self, upto_ms: int) -> bool:
        """Whether an entry is due by ``upto_ms`` (a cheap test before :meth:`due`)."""
        first = self.heap.first()
        return first is not None and first <= upto_ms

    def due(self, upto_ms: int) -> Iterator[tuple[CustomerState, str]]:
        """The timers due by ``upto_ms``, in due order (a customer's in rule id order), as ``(customer,
        rule id)``; entries of customers gone or whose first timer is later are dropped or pushed again.
        The consumer fires (or drops) each timer before taking the next. Timers armed while this is
        consumed are included when due."""
        heap, customers = self.heap, self.customers
        while (entry := heap.pop_due(upto_ms)) is not None:
            due, customer_id = entry
            state = customers.get(customer_id)
            if state is None or state.scheduled_ms != due:
                continue  # its customer is gone, or has an earlier entry
            state.scheduled_ms = None
            first = state.book.first_timer()
            if first is not None and first[0] <= due:
                yield state, first[1]
            if customers.get(customer_id) is state:
                self.schedule(state)

    def schedule_all(self) -> None:
        """An entry for every customer with timers (after a restore: the heap is not snapshotted)."""
        for state in self.customers.values():
            state.scheduled_ms = None
            self.schedule(state)
