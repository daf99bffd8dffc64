"""The timer queue of one shard: when each pending timer of its customers is due.

A customer's timers live in its state (:class:`state.customer.Timer`, by rule id); the queue
holds one heap entry per pending timer, no later than its due time. Re-arming a timer to a
later time (every ``Product Viewed`` re-arms the browse-abandonment timer) pushes nothing: the
old entry stays, and when it comes due the timer is found later than the entry and pushed again
at its real time. So most re-arms cost one comparison.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Mapping

from state.customer import CustomerState


class TimerQueue:
    """Heap entries ``(due, push number, customer, rule id)``: due order, then scheduling order."""

    def __init__(self) -> None:
        self.heap: list[tuple[int, int, str, str]] = []
        self.pushes = 0

    def schedule(self, state: CustomerState, rule_id: str) -> None:
        """Keep an entry for the customer's timer ``rule_id`` no later than its due time."""
        timer = state.timers[rule_id]
        if timer.scheduled_ms is None or timer.scheduled_ms > timer.due_ms:
            timer.scheduled_ms = timer.due_ms
            self.pushes += 1
            heapq.heappush(self.heap, (timer.due_ms, self.pushes, state.id, rule_id))

    def any_due(self, upto_ms: int) -> bool:
        """Whether an entry is due by ``upto_ms`` (a cheap test before :meth:`due`)."""
        return bool(self.heap) and self.heap[0][0] <= upto_ms

    def due(self, upto_ms: int, customers: Mapping[str, CustomerState]) -> Iterator[tuple[CustomerState, str]]:
        """The timers due by ``upto_ms``, in due order, as ``(customer, rule id)``; entries of timers
        gone or re-armed later are dropped or pushed again. Timers scheduled while this is consumed
        are included when due."""
        heap = self.heap
        while heap and heap[0][0] <= upto_ms:
            due, _, customer_id, rule_id = heapq.heappop(heap)
            state = customers.get(customer_id)
            timer = state.timers.get(rule_id) if state is not None else None
            if timer is None or timer.scheduled_ms != due:
                continue
            if timer.due_ms > due:
                timer.scheduled_ms = None
                self.schedule(state, rule_id)  # type: ignore[arg-type]
                continue
            yield state, rule_id  # type: ignore[misc]

    def schedule_all(self, customers: Mapping[str, CustomerState]) -> None:
        """An entry for every timer of ``customers`` (after a restore: the heap is not snapshotted)."""
        for state in customers.values():
            for rule_id, timer in sorted(state.timers.items()):
                timer.scheduled_ms = None
                self.schedule(state, rule_id)
