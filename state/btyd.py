"""The population parameters of the buy-till-you-die scores (``lapse_risk``, ``p_alive``,
``expected_orders``, ``expected_order_value``, ``clv``; computed in ``state/native/src/btyd.rs``).

BG/NBD (``r``, ``alpha``, ``a``, ``b``) says how often customers buy and how likely they stop after
each order; Gamma-Gamma (``p``, ``q``, ``v``) how much an order is worth. ``nudgeflow fit`` fits them
on a store's own history and writes them to the model file's ``clv`` entry; without one the
engine starts from :data:`DEFAULT_BTYD`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from schemas.errors import ConfigurationError


@dataclass(frozen=True, slots=True)
class BtydParameters:
    """BG/NBD and Gamma-Gamma parameters, with times in days (``alpha`` is a time: it scales with
    the time unit, ``r``, ``a``, ``b`` do not)."""

    r: float
    alpha: float
    a: float
    b: float
    p: float
    q: float
    v: float

    def __post_init__(self) -> None:
        for name in ("r", "alpha", "a", "b", "p", "q", "v"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"{name} must be a positive number, not {value!r}")
        if not self.q > 1:
            raise ValueError(f"q must be above 1 (the population's mean order value is p v / (q - 1)), not {self.q!r}")

    @classmethod
    def from_model_file(cls, entry: Mapping[str, Any], source: str = "model file") -> BtydParameters:
        """The parameters of a model file's ``clv`` entry: ``{"bgnbd": {"r", "alpha", "a", "b"},
        "gamma_gamma": {"p", "q", "v"}, "time_unit_days": 1.0}`` (``alpha`` in that unit; other keys,
        such as the fit's diagnostics, are not read). Without ``gamma_gamma`` (spend not fitted),
        the order values keep :data:`DEFAULT_BTYD`'s."""
        try:
            bgnbd = entry["bgnbd"]
            gamma_gamma = entry.get("gamma_gamma") or {"p": DEFAULT_BTYD.p, "q": DEFAULT_BTYD.q, "v": DEFAULT_BTYD.v}
            unit = float(entry.get("time_unit_days") or 1.0)
            return cls(
                r=bgnbd["r"],
                alpha=bgnbd["alpha"] * unit,
                a=bgnbd["a"],
                b=bgnbd["b"],
                p=gamma_gamma["p"],
                q=gamma_gamma["q"],
                v=gamma_gamma["v"],
            )
        except KeyError as err:
            raise ConfigurationError(f"{source}: clv: missing {err.args[0]!r}") from None
        except (TypeError, ValueError) as err:
            raise ConfigurationError(f"{source}: clv: {err}") from None


DEFAULT_BTYD = BtydParameters(r=0.243, alpha=4.414 * 7, a=0.793, b=2.426, p=6.25, q=3.74, v=15.45)
"""A starting point, not a fit of your customers: BG/NBD as published for the CDNOW sample (Fader,
Hardie and Lee, 2005; alpha 4.414 weeks, in days) and placeholder Gamma-Gamma values (a mean order
value of about 35). ``nudgeflow fit`` gives your own."""
