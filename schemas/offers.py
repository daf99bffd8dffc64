"""The offers catalogue: what each offer gives, what it is worth, and who may get it when and where.

An offer is eligible for a decision when its channel matches, the customer is in one of its
``audiences`` (if any), the customer's local time falls in one of its ``windows`` (if any), the
customer's last known store is one of its ``stores`` or within ``radius_km`` of one (if any), the
customer's local date is within ``valid_from``..``valid_until``, its ``budget`` of redemptions is not
spent and the customer has redeemed it fewer than ``per_customer`` times (see
:mod:`operators.offers`, which applies these rules).
"""

from __future__ import annotations

import re
from datetime import date
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from schemas.content import Content
from schemas.streams import Channel

OFFER_ID = r"^[a-z][a-z0-9_.-]{0,63}$"
DAYS: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_HOURS = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


def hours_span(text: str) -> tuple[int, int]:
    """``'08:00-21:30'`` -> minutes of the day ``(480, 1290)``; the end is excluded and may be
    ``24:00``; an end before the start wraps past midnight (``'22:00-02:00'``)."""
    match = _HOURS.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a span of local time like '08:00-21:00'")
    start_h, start_m, end_h, end_m = map(int, match.groups())
    start, end = start_h * 60 + start_m, end_h * 60 + end_m
    if start_m > 59 or end_m > 59 or start >= 24 * 60 or end > 24 * 60:
        raise ValueError(f"{text!r}: hours run from 00:00 to 24:00")
    if start == end:
        raise ValueError(f"{text!r} is empty: give a start and an end that differ")
    return start, end


def _check_hours(text: str) -> str:
    hours_span(text)
    return text


class Discount(BaseModel):
    """How deep the offer cuts: a ``percent`` of the order, or a fixed ``amount`` (currency units)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    percent: float | None = Field(None, gt=0, le=100)
    amount: float | None = Field(None, gt=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _one_kind(self) -> Discount:
        if (self.percent is None) == (self.amount is None):
            raise ValueError("give a discount either a 'percent' or an 'amount'")
        return self

    def cost(self, order_value: float) -> float:
        """What the discount costs on an order worth ``order_value``."""
        if self.amount is not None:
            return self.amount
        return order_value * self.percent / 100  # type: ignore[operator]


class Window(BaseModel):
    """A span of the customer's local time on some days of the week (a span past midnight belongs
    to the day it starts)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    days: list[Day] = Field(list(DAYS), min_length=1)
    hours: Annotated[str, AfterValidator(_check_hours)] = "00:00-24:00"


class Offer(BaseModel):
    """An offer of the catalogue, for triggers with ``offer_id: next_best`` or naming it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Annotated[str, Field(pattern=OFFER_ID)]
    description: str = ""
    channels: list[Channel] = Field(min_length=1)
    content: Content = {}
    audiences: list[str] = Field([], description="eligible only for members of one of these (empty: everyone)")
    discount: Discount | None = None
    value: float = Field(1.0, allow_inf_nan=False, description="what a conversion is worth, in currency units")
    windows: list[Window] = Field([], description="local times it may be given (empty: any time)")
    stores: list[Annotated[str, Field(min_length=1)]] = Field([], description="for customers of these stores")
    radius_km: float | None = Field(None, gt=0, description="or of stores this close to one of them")
    valid_from: date | None = None
    valid_until: date | None = None
    budget: int | None = Field(None, ge=1, description="redemptions in all (none: no limit)")
    per_customer: int | None = Field(None, ge=1, description="redemptions per customer (none: no limit)")

    @model_validator(mode="after")
    def _consistent(self) -> Offer:
        if self.radius_km is not None and not self.stores:
            raise ValueError("'radius_km' is a distance around the offer's 'stores': name them")
        if self.valid_from and self.valid_until and self.valid_until < self.valid_from:
            raise ValueError(f"'valid_until' {self.valid_until} is before 'valid_from' {self.valid_from}")
        return self

    def describe(self) -> str:
        """One line on the offer, for ``rules check``: channels, who, depth and worth, where, when, limits."""
        parts = [
            ", ".join(self.channels),
            f"for members of {', '.join(self.audiences)}" if self.audiences else "for everyone",
        ]
        worth = f"worth {self.value:g}"
        if self.discount is not None:
            percent = self.discount.percent
            depth = f"{percent:g}%" if percent is not None else f"{self.discount.amount:g}"
            worth = f"{depth} off, {worth}"
        parts.append(worth)
        if self.windows:
            spans = (f"{'/'.join(w.days) if len(w.days) < len(DAYS) else 'daily'} {w.hours}" for w in self.windows)
            parts.append("local " + ", ".join(spans))
        if self.stores:
            around = f"within {self.radius_km:g} km of " if self.radius_km is not None else "at "
            parts.append(around + ", ".join(self.stores))
        if self.valid_from or self.valid_until:
            parts.append(f"valid {self.valid_from or '...'} to {self.valid_until or '...'}")
        limits = [f"budget {self.budget}"] if self.budget is not None else []
        limits += [f"{self.per_customer} per customer"] if self.per_customer is not None else []
        if limits:
            parts.append(", ".join(limits))
        return f"offer {self.id}: " + "; ".join(parts)
