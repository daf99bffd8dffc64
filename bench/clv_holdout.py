"""BG/NBD on real data, calibration and holdout: who orders again after the calibration end?

    python bench/clv_holdout.py [--uci FILE] [--until 2011-09-09] [--days 91]

Fits on the UCI invoices up to ``--until`` (``nudgeflow fit --until``), then scores every customer
known by then with P(no order in the next ``--days``) and 1 - P(alive), and compares the ranking of
who did not order in the holdout (ROC AUC) with days since the last order, the simple baseline;
the predicted against observed share by fifth of the customers shows the calibration; expected
against actual holdout orders, summed, the purchase forecast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from connectors.uci_retail import DEFAULT_PATH
from flows.evaluate import auc
from flows.fit import DAY_MS, History, fit_history, read_recordings
from operators.models import btyd
from schemas.timestamps import epoch_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uci", type=Path, default=DEFAULT_PATH)
    parser.add_argument("--until", default="2011-09-09")
    parser.add_argument("--days", type=float, default=91.0)
    args = parser.parse_args()
    until = epoch_ms(f"{args.until}T00:00:00Z")
    horizon_end = until + int(args.days * DAY_MS)
    calibration = read_recordings(History(until_ms=until), [args.uci], uci=True)
    holdout = read_recordings(History(until_ms=horizon_end), [args.uci], uci=True)
    fitted = fit_history(calibration, [str(args.uci)])
    params = fitted.entry.purchases()
    ids = list(calibration.customers)
    x, t_x, T, _ = calibration.summaries()
    later = np.array([holdout.customers[c].repeats - calibration.customers[c].repeats for c in ids])
    lapsed = later == 0
    quiet = np.array([btyd.p_no_order(params, *s, args.days) for s in zip(x, t_x, T, strict=True)])
    dead = np.array([1 - btyd.p_alive(params, *s) for s in zip(x, t_x, T, strict=True)])
    expected = np.array([btyd.expected_orders(params, *s, args.days) for s in zip(x, t_x, T, strict=True)])
    print(f"calibration to {args.until}: {params}")
    print(f"{len(ids):,} customers, {lapsed.mean():.3f} of them without an order in the next {args.days:g} days")
    labels = lapsed.tolist()
    print(
        f"ROC AUC of who does not order: P(no order) {auc(quiet.tolist(), labels):.3f}, 1 - P(alive) "
        f"{auc(dead.tolist(), labels):.3f}, days since the last order {auc((T - t_x).tolist(), labels):.3f}"
    )
    print(f"holdout orders: expected {expected.sum():,.0f}, actual {later.sum():,}")
    order = np.argsort(quiet)
    for part in np.array_split(order, 5):
        print(
            f"  P(no order) {quiet[part].min():.2f}-{quiet[part].max():.2f}: predicted {quiet[part].mean():.3f}, "
            f"observed {lapsed[part].mean():.3f} ({len(part):,} customers)"
        )


if __name__ == "__main__":
    main()
