"""``nudgeflow fit``: the lifetime value models' population parameters, fitted on recorded history.

Reads recordings (JSONL as the replay reads them, ``.gz`` too, or the UCI invoices), keeps one
small record per customer (first and last purchase, repeat purchases, their value), fits BG/NBD
and Gamma-Gamma (:mod:`operators.models.btyd`) on the customers' summaries in days, and writes
the model file's ``clv`` entry (:mod:`operators.models.clv`), keeping the rest of a given model
file. Events are parsed and validated as the engine does (:func:`operators.parse.parse`); an
order's value is what the engine reads (``total``, else ``revenue``, else its lines).
"""

from __future__ import annotations

import gzip
import math
import sqlite3
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from connectors.files import check_recordings
from flows.runtime import STATE_STORE, check_trusted
from operators.models import ShardModels
from operators.models import files as model_files
from operators.models.btyd import BgNbd, Fit, fit_bgnbd, fit_check, fit_gamma_gamma
from operators.models.clv import ClvParameters
from operators.parse import Rejected, parse
from schemas.errors import InputError
from schemas.items import RawEvent
from schemas.records import iso_ms
from state.codec import decode

DAY_MS = 86_400_000
MIN_REPEAT_BUYERS = 50
"""Fewer customers who ordered again than this, and the fit is refused: too little to fit on."""
EARLIEST_MS = 946_684_800_000
"""Orders before 2000-01-01 are left out: an unset clock (1970), not history."""
ORDER = "Order Completed"
UCI_GUEST = "uci-guest-"  # the UCI adapter's id of an invoice without a CustomerID: one per invoice


@dataclass(slots=True)
class Customer:
    """One customer's purchases, as the fit needs them (a purchase: an order, or with ``per_day`` a
    UTC day with orders)."""

    first_ms: int
    last_ms: int
    first_day: int
    last_day: int
    first_value: float  # the first purchase's value (not used by Gamma-Gamma)
    repeats: int = 0  # purchases after the first
    repeat_value: float = 0.0  # their summed value
    last_order: str = ""  # order id of the latest order: a part of a split order adds to it
    last_message: str = ""  # its message id: the same event sent twice is counted once


@dataclass
class History:
    """The customers' purchases read from recordings, and what was left out."""

    per_day: bool = False
    max_age_ms: int = 365 * DAY_MS
    max_skew_ms: int = 3_600_000
    until_ms: int | None = None
    customers: dict[str, Customer] = field(default_factory=dict)
    orders: int = 0  # orders used
    negative_orders: int = 0  # orders used whose value is below 0 (returned lines)
    skipped: Counter[str] = field(default_factory=Counter)  # orders (or lines) left out, by reason
    first_problem: dict[str, str] = field(default_factory=dict)  # reason -> where and what, the first time
    reached_ms: int = 0  # the latest order time seen (the engine's "event time reached")
    end_ms: int = 0  # the latest order time used

    def add(self, customer_id: str, message_id: str, order_id: str, at_ms: int, value: float) -> str | None:
        """One order; returns why it was left out (``None``: used)."""
        if at_ms < EARLIEST_MS:
            return "before_2000"
        if at_ms < self.reached_ms - self.max_age_ms:
            return "too_old"
        self.reached_ms = max(self.reached_ms, at_ms)
        if self.until_ms is not None and at_ms > self.until_ms:
            return "after_until"
        day = at_ms // DAY_MS
        customer = self.customers.get(customer_id)
        if customer is None:
            self.customers[customer_id] = Customer(at_ms, at_ms, day, day, value, 0, 0.0, order_id, message_id)
        elif message_id == customer.last_message:
            return "duplicate"
        else:
            self._purchase(customer, order_id, at_ms, day, value)
            customer.last_order, customer.last_message = order_id, message_id
        self.orders += 1
        self.negative_orders += value < 0
        self.end_ms = max(self.end_ms, at_ms)
        return None

    def _purchase(self, c: Customer, order_id: str, at_ms: int, day: int, value: float) -> None:
        if order_id == c.last_order or (self.per_day and day == c.last_day):  # the latest purchase, continued
            if c.repeats:
                c.repeat_value += value
                c.last_ms = max(c.last_ms, at_ms)
            else:
                c.first_value += value
                c.first_ms = min(c.first_ms, at_ms)
        elif self.per_day and day == c.first_day:  # late, to the first day
            c.first_value += value
            c.first_ms = min(c.first_ms, at_ms)
        elif at_ms < c.first_ms:  # an order older than the first one read: it becomes the first
            c.repeats += 1
            c.repeat_value += c.first_value
            c.first_ms, c.first_day, c.first_value = at_ms, day, value
        else:
            c.repeats += 1
            c.repeat_value += value
            if at_ms >= c.last_ms:
                c.last_ms, c.last_day = at_ms, day

    def note(self, reason: str, where: str) -> None:
        self.skipped[reason] += 1
        self.first_problem.setdefault(reason, where)

    def summaries(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Each customer's (x, t_x, T, mean repeat value) in days, T to the calibration end."""
        end = self.calibration_end_ms()
        n = len(self.customers)
        x, t_x, T, m = (np.empty(n) for _ in range(4))
        for i, c in enumerate(self.customers.values()):
            x[i] = c.repeats
            t_x[i] = (c.last_ms - c.first_ms) / DAY_MS if c.repeats else 0.0
            T[i] = (end - c.first_ms) / DAY_MS
            m[i] = c.repeat_value / c.repeats if c.repeats else math.nan
        return x, t_x, T, m

    def calibration_end_ms(self) -> int:
        return self.until_ms if self.until_ms is not None else self.end_ms


def read_recordings(history: History, paths: Sequence[Path], uci: bool = False) -> History:
    """Add the orders of ``paths`` (JSONL recordings, or with ``uci`` the UCI invoices CSV) to ``history``."""
    check_recordings(paths)
    for path in paths:
        for line_no, payload in _uci_events(path) if uci else _jsonl_lines(path):
            if ORDER.encode() not in payload:
                continue
            where = f"{path} event {line_no}" if uci else f"{path}:{line_no}"
            env = parse(RawEvent(line_no, {"file": path.name, "line": line_no}, payload))
            if isinstance(env, Rejected):
                messages = orjson.loads(env.body).get("messages") or []
                history.note("invalid", f"{where}: {env.reason}: {'; '.join(map(str, messages))[:300]}")
                continue
            if env.name != ORDER:
                continue
            if uci and env.customer_id.startswith(UCI_GUEST):
                history.note("guest", f"{where}: an invoice without a CustomerID")
                continue
            if env.received_ms is not None and env.ts_ms - env.received_ms > history.max_skew_ms:
                history.note("future_dated", f"{where}: timestamp more than the allowed skew after receivedAt")
                continue
            properties = env.event.properties
            reason = history.add(env.customer_id, env.message_id, properties.order_id, env.ts_ms, properties.amount())
            if reason is not None:
                history.note(reason, where)
    return history


def read_store(history: History, folder: Path) -> History:
    """Add the customers of a recovery directory's customer stores (``nudgeflow warm-start``, or a
    live run's ``--recovery-dir``) to ``history``: each customer's latest saved state, from its features
    record (orders, first and last order times, lifetime spend). The stores keep no order values one
    by one: a repeat buyer's mean repeat value is taken as the mean of all their orders (lifetime
    spend, net of refunds, over orders). Every order counts as a purchase (``--per-day`` cannot
    apply), and ``T`` is measured to the latest event time any customer was seen at (or ``--until``;
    a customer whose first order is later is left out)."""
    stores = folder / STATE_STORE
    if not stores.is_dir():
        raise InputError(f"recovery directory {folder} has no customer stores ({stores}): a warm start writes them")
    check_trusted(folder)  # the states are unpickled
    for path in sorted(stores.glob("*.sqlite3")):
        try:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            held = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'customers'").fetchone()
            rows = db.execute(_LATEST).fetchall() if held else []  # a store opened, never written
            db.close()
        except sqlite3.Error as err:
            raise InputError(f"customer store {path} cannot be read: {err}") from None
        for customer_id, blob in rows:
            if blob is not None:
                _add_stored(history, customer_id, decode(blob).features, f"{path} customer {customer_id}")
    return history


_LATEST = "SELECT id, blob FROM customers AS c WHERE seq = (SELECT MAX(seq) FROM customers WHERE id = c.id)"


def _add_stored(history: History, customer_id: str, features: Any, where: str) -> None:
    history.end_ms = max(history.end_ms, features.last_seen_ms)
    first, last, orders = features.first_order_ms, features.last_order_ms, features.orders
    if not orders or first is None or last is None:
        return
    if first < EARLIEST_MS:
        history.note("before_2000", where)
        return
    mean = features.lifetime_spend / orders
    history.customers[customer_id] = Customer(
        first, last, first // DAY_MS, last // DAY_MS, mean, orders - 1, mean * (orders - 1), "", ""
    )
    history.orders += orders


def _jsonl_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as lines:
            for line_no, line in enumerate(lines, 1):
                yield line_no, line.rstrip(b"\r\n")
    except (OSError, EOFError) as err:
        raise InputError(f"recording {path}: cannot be read to its end ({err})") from None


def _uci_events(path: Path) -> Iterator[tuple[int, bytes]]:
    from connectors.uci_retail import Rejected as BadRow
    from connectors.uci_retail import read_invoices

    for n, item in enumerate(read_invoices(path), 1):
        if not isinstance(item, BadRow):
            yield n, orjson.dumps(item)


@dataclass(frozen=True)
class Fitted:
    """What ``nudgeflow fit`` found: the model file entry, and the fits for the printout."""

    entry: ClvParameters
    purchases: Fit
    spend: Fit | None
    seconds: float


def fit_history(history: History, sources: Iterable[str]) -> Fitted:
    """Fit BG/NBD on every customer and Gamma-Gamma on the repeat buyers with a positive mean value;
    refuse (:class:`InputError`) when there is too little to fit on."""
    started = time.process_time()
    if not history.customers:
        problems = "; ".join(f"{n:,} {reason}" for reason, n in sorted(history.skipped.items()))
        raise InputError(
            f"no {ORDER} events to fit on in {', '.join(sources)}" + (f" ({problems})" if problems else "")
        )
    x, t_x, T, m = history.summaries()
    repeat_buyers = int((x > 0).sum())
    if repeat_buyers < MIN_REPEAT_BUYERS:
        raise InputError(
            f"only {repeat_buyers} of {len(x):,} customers ordered again: at least {MIN_REPEAT_BUYERS} repeat buyers"
            " are needed to fit the lifetime value models (a longer history, or an earlier --until?)"
        )
    purchases = fit_bgnbd(x, t_x, T)
    fitted_spend = (x > 0) & (m > 0)
    spend = fit_gamma_gamma(x[fitted_spend], m[fitted_spend]) if fitted_spend.sum() >= MIN_REPEAT_BUYERS else None
    bgnbd = BgNbd(**purchases.parameters)
    diagnostics: dict[str, Any] = {
        "customers": purchases.customers,
        "repeat_buyers": repeat_buyers,
        "log_likelihood": purchases.log_likelihood,
        "converged": purchases.converged,
        "iterations": purchases.iterations,
        "calibration_end": iso_ms(history.calibration_end_ms()),
        "source": list(sources),
        "orders": history.orders,
        "purchase": "day" if history.per_day else "order",
        "negative_orders": history.negative_orders,
        "standard_errors": purchases.standard_errors,
        "check": fit_check(bgnbd, x, T),
        "skipped": dict(sorted(history.skipped.items())),
    }
    if spend is not None:
        with np.errstate(invalid="ignore", divide="ignore"):  # nan when either does not vary
            correlation = float(np.corrcoef(x[fitted_spend], m[fitted_spend])[0, 1])
        diagnostics["spend"] = {
            "customers": spend.customers,
            "log_likelihood": spend.log_likelihood,
            "converged": spend.converged,
            "iterations": spend.iterations,
            "standard_errors": spend.standard_errors,
            "left_out": repeat_buyers - spend.customers,
            "frequency_correlation": round(correlation, 4) if math.isfinite(correlation) else None,
        }
    entry = ClvParameters.model_validate(
        {
            "bgnbd": purchases.parameters,
            "gamma_gamma": spend.parameters if spend is not None else None,
            "time_unit_days": 1.0,
            "fitted": diagnostics,
        }
    )
    return Fitted(entry, purchases, spend, time.process_time() - started)


def write_model_file(out: Path, entry: ClvParameters, start_from: Path | None) -> None:
    """Write ``out``: the model file ``start_from`` (else every model as it starts, untrained) with
    its ``clv`` entry replaced by ``entry``."""
    if start_from is not None:
        models = model_files.read(start_from)
        rules_version = orjson.loads(start_from.read_bytes()).get("rules_version", "")
    else:
        models, rules_version = model_files.merge([ShardModels("learn", DAY_MS).export()]), ""
    models["clv"] = entry.model_dump()
    model_files.write(out, models, rules_version)


def render(fitted: Fitted) -> str:
    """The parameters, the diagnostics and the fit check, for the terminal."""
    entry, diagnostics = fitted.entry, fitted.entry.fitted
    assert diagnostics is not None
    lines = [
        f"BG/NBD on {diagnostics.customers:,} customers ({diagnostics.repeat_buyers:,} ordered again; "
        f"{diagnostics.orders:,} orders, a purchase per {diagnostics.purchase}), calibration end "
        f"{diagnostics.calibration_end}, times in days:",
        "  " + _parameters(entry.bgnbd.model_dump(), diagnostics.standard_errors),
        f"  log-likelihood {diagnostics.log_likelihood:.2f}, {diagnostics.iterations} iterations, "
        f"{'converged' if diagnostics.converged else 'NOT converged'}",
        "  customers by repeat purchases:  " + "  ".join(row.repeat.rjust(8) for row in diagnostics.check),
        "    observed                      " + "  ".join(f"{row.observed:8d}" for row in diagnostics.check),
        "    expected                      " + "  ".join(f"{row.expected:8.1f}" for row in diagnostics.check),
    ]
    spend = diagnostics.spend
    if entry.gamma_gamma is not None and spend is not None:
        lines += [
            f"Gamma-Gamma on {spend.customers:,} repeat buyers ({spend.left_out:,} left out: mean order value <= 0):",
            "  " + _parameters(entry.gamma_gamma.model_dump(), spend.standard_errors),
            f"  log-likelihood {spend.log_likelihood:.2f}, {spend.iterations} iterations, "
            f"{'converged' if spend.converged else 'NOT converged'}; correlation of purchases and mean value "
            f"{spend.frequency_correlation} (the model assumes none)",
        ]
        if entry.gamma_gamma.q <= 1:
            lines.append("  warning: q <= 1: the expected order value of a new customer is unbounded")
    else:
        lines.append(f"Gamma-Gamma not fitted: fewer than {MIN_REPEAT_BUYERS} repeat buyers with a positive mean value")
    if diagnostics.skipped:
        lines.append("orders left out: " + ", ".join(f"{reason} {n:,}" for reason, n in diagnostics.skipped.items()))
    if diagnostics.negative_orders:
        lines.append(
            f"orders with a value below 0 (returned lines), counted as purchases: {diagnostics.negative_orders:,}"
        )
    lines.append(f"fitted in {fitted.seconds:.2f} s of CPU")
    return "\n".join(lines)


def _parameters(values: dict[str, float], errors: dict[str, float | None]) -> str:
    """Each parameter with its standard error, e.g. ``r 0.24259 (se 0.0126)``."""
    shown = {k: "n/a" if errors.get(k) is None else f"{errors[k]:.3g}" for k in values}
    return "  ".join(f"{k} {v:.6g} (se {shown[k]})" for k, v in values.items())
