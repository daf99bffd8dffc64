"""Deterministic synthetic event stream: Segment-shaped events from customer personas.

Every customer gets a persona and a profile (city, devices, favourite categories, preferred
hours) from ``Random(f"{seed}:{i}")``; every day a plan of sessions from
``Random(f"{seed}:{i}:d{day}")``; every session its events from ``Random(f"{seed}:{i}:{day}:{s}")``.
No global random state and no ``hash()``: the same arguments give the same stream.

Customers are simulated independently and merged in time order without holding the stream:
the sessions of one day are planned for all customers (a small tuple each) and sorted by
start; a session is built only when the sweep reaches its start and then joins a
``heapq.merge``-style heap keyed by ``(sent ms, messageId)`` of its next event; an event
leaves the heap once no session still to be built can start before it. Memory is one day's
session plan plus the sessions in flight, whatever the number of days.
"""

from __future__ import annotations

import heapq
import itertools
import sys
from bisect import bisect
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from random import Random
from typing import Any, BinaryIO, NamedTuple

import orjson
from tqdm import tqdm

from schemas.errors import ConfigurationError

__all__ = [
    "CATEGORIES",
    "DEFAULT_START",
    "OFFER_RESPONSE",
    "PERSONAS",
    "generate_events",
    "ground_truth",
    "persona_of",
    "write_jsonl",
]

DEFAULT_START = datetime(2026, 1, 5, tzinfo=UTC)
PERSONAS: tuple[str, ...] = ("high_value", "lapsed", "new", "browser", "store_regular")
PERSONA_MIX: tuple[float, ...] = (0.10, 0.20, 0.20, 0.30, 0.20)

SECOND_MS = 1_000
MINUTE_MS = 60 * SECOND_MS
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
NEVER = 1 << 30  # a day index no run reaches
CURRENCY = "EUR"
APP_VERSION, APP_BUILD = "4.12.0", "4120"

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
Timed = tuple[int, dict[str, Any]]  # (ms the event is sent at, the event)
_PERSONA_CUM = tuple(itertools.accumulate(PERSONA_MIX))


# --- the world: cities, stores, catalogue, campaigns ---------------------------------------


@dataclass(frozen=True, slots=True)
class City:
    name: str
    country: str
    timezone: str
    std_offset_h: int  # standard (winter) UTC offset; EU summer time is applied on top
    urban: bool
    big: bool
    locale: str


@dataclass(frozen=True, slots=True)
class StoreInfo:
    id: str
    name: str
    city: City


@dataclass(frozen=True, slots=True)
class CatalogItem:
    id: str
    name: str
    category: str
    price: float


CITIES: tuple[City, ...] = (
    City("Paris", "FR", "Europe/Paris", 1, True, True, "fr-FR"),
    City("Berlin", "DE", "Europe/Berlin", 1, True, True, "de-DE"),
    City("Madrid", "ES", "Europe/Madrid", 1, True, True, "es-ES"),
    City("Milan", "IT", "Europe/Rome", 1, True, True, "it-IT"),
    City("Amsterdam", "NL", "Europe/Amsterdam", 1, True, True, "nl-NL"),
    City("Lisbon", "PT", "Europe/Lisbon", 0, True, True, "pt-PT"),
    City("Dublin", "IE", "Europe/Dublin", 0, True, True, "en-IE"),
    City("Helsinki", "FI", "Europe/Helsinki", 2, True, True, "fi-FI"),
    City("Lyon", "FR", "Europe/Paris", 1, True, False, "fr-FR"),
    City("Porto", "PT", "Europe/Lisbon", 0, True, False, "pt-PT"),
    City("Utrecht", "NL", "Europe/Amsterdam", 1, True, False, "nl-NL"),
    City("Tampere", "FI", "Europe/Helsinki", 2, True, False, "fi-FI"),
    City("Annecy", "FR", "Europe/Paris", 1, False, False, "fr-FR"),
    City("Bamberg", "DE", "Europe/Berlin", 1, False, False, "de-DE"),
    City("Cuenca", "ES", "Europe/Madrid", 1, False, False, "es-ES"),
    City("Lucca", "IT", "Europe/Rome", 1, False, False, "it-IT"),
)
BIG_CITIES = tuple(c for c in CITIES if c.big)
_CITY_CUM = tuple(itertools.accumulate(3 if c.big else 1 for c in CITIES))
STORES: tuple[StoreInfo, ...] = tuple(
    StoreInfo(f"store-{n:02d}", f"{c.name} {'Centre' if n <= len(CITIES) else 'Station'}", c)
    for n, c in enumerate(CITIES + BIG_CITIES, 1)
)

_CATEGORY_PRICES: dict[str, tuple[int, int]] = {
    "shoes": (40, 180),
    "coffee": (4, 25),
    "outerwear": (60, 320),
    "tops": (15, 70),
    "denim": (40, 140),
    "accessories": (10, 90),
    "beauty": (8, 60),
    "home": (12, 150),
    "electronics": (25, 400),
    "sports": (15, 200),
    "books": (8, 40),
    "kids": (10, 80),
}
CATEGORIES: tuple[str, ...] = tuple(_CATEGORY_PRICES)
_BRANDS = ("Nordlys", "Aurelia", "Kestrel", "Moka", "Vantage", "Lumen", "Orla", "Tessera")
_ITEMS_PER_CATEGORY = 150

PROMOTIONS = (
    ("promo-01", "Winter Sale"),
    ("promo-02", "New Arrivals"),
    ("promo-03", "Free Shipping"),
    ("promo-04", "Loyalty Double Points"),
    ("promo-05", "Coffee Week"),
    ("promo-06", "Outerwear -30%"),
    ("promo-07", "Back to Sport"),
    ("promo-08", "Home Refresh"),
)
_PUSH_CAMPAIGNS = ("winter-sale", "back-in-stock", "price-drop", "loyalty-points", "new-arrivals")
_COUPONS = (("WELCOME10", 0.10), ("WINTER15", 0.15), ("LOYAL5", 0.05))
_CONSENT_CHANNELS = ("push", "email", "sms", "in_app", "ads")
_AGE_BANDS = ("18-24", "25-34", "35-44", "45-54", "55-64", "65+")
_AGE_WEIGHTS = (14, 26, 22, 17, 12, 9)
_PEAK_HOURS: dict[str, tuple[int, ...]] = {  # local hours a persona likes to shop at
    "high_value": (7, 8, 12, 13, 18, 19, 20, 21, 22),
    "lapsed": (8, 12, 13, 18, 20, 21),
    "new": (9, 12, 17, 19, 20, 21, 22),
    "browser": (10, 12, 14, 20, 21, 22, 23),
    "store_regular": (8, 12, 19, 20),
}


def _build_catalog() -> dict[str, tuple[CatalogItem, ...]]:
    rng = Random("nudgeflow-catalog")
    catalog: dict[str, tuple[CatalogItem, ...]] = {}
    number = itertools.count(1)
    for category, (lo, hi) in _CATEGORY_PRICES.items():
        catalog[category] = tuple(
            CatalogItem(
                f"p-{next(number):04d}",
                f"{rng.choice(_BRANDS)} {category} {j + 1}",
                category,
                max(1, round(rng.uniform(lo, hi))) - 0.01,
            )
            for j in range(_ITEMS_PER_CATEGORY)
        )
    return catalog


CATALOG: dict[str, tuple[CatalogItem, ...]] = _build_catalog()


# --- personas and profiles ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Style:
    """How a persona shops in one online session."""

    views: tuple[int, int]
    p_add: float
    qty_max: int
    p_order: float
    p_abandon_checkout: float
    p_promo: float
    p_push: float
    p_page: float  # web: chance of a category page before a product view


STYLES: dict[str, Style] = {
    "high_value": Style((3, 10), 0.35, 3, 0.70, 0.10, 0.20, 0.15, 0.20),
    "lapsed": Style((2, 7), 0.45, 2, 0.80, 0.05, 0.10, 0.05, 0.30),
    "new": Style((2, 8), 0.25, 2, 0.40, 0.15, 0.15, 0.05, 0.40),
    "browser": Style((5, 14), 0.25, 2, 0.04, 0.30, 0.10, 0.05, 0.60),
    "store_regular": Style((2, 6), 0.0, 1, 0.0, 0.0, 0.20, 0.20, 0.30),
}
# The chance that a customer of a persona clicks an offer shown to them (for closed-loop
# evaluation of the next-best-offer policy; the stream itself has no offer responses).
OFFER_RESPONSE: dict[str, dict[str, float]] = {
    "high_value": {"browse-10pct": 0.06, "free-shipping": 0.10, "vip-early-access": 0.30},
    "lapsed": {"browse-10pct": 0.20, "free-shipping": 0.08, "vip-early-access": 0.02},
    "new": {"browse-10pct": 0.10, "free-shipping": 0.25, "vip-early-access": 0.03},
    "browser": {"browse-10pct": 0.12, "free-shipping": 0.04, "vip-early-access": 0.01},
    "store_regular": {"browse-10pct": 0.05, "free-shipping": 0.05, "vip-early-access": 0.08},
}
# persona -> (chance of an active day, sessions per active day, their weights)
_ACTIVITY: dict[str, tuple[float, tuple[int, ...], tuple[int, ...]]] = {
    "high_value": (0.85, (1, 2, 3, 4), (30, 35, 25, 10)),
    "browser": (0.60, (1, 2, 3), (45, 40, 15)),
}


@dataclass(frozen=True, slots=True)
class Profile:
    """Who a customer is; a pure function of ``(index, seed, days)``."""

    index: int
    persona: str
    user_id: str
    app_id: str  # anonymousId of the app install
    web_id: str  # anonymousId of the browser
    app_share: float  # chance an online session is on the app
    city: City
    store: StoreInfo | None
    age_band: str
    loyalty_tier: str | None
    created_ago_ms: int
    favourites: tuple[str, ...]
    peaks: tuple[int, ...]
    first_day: int  # first day with events
    end_day: int  # lapsed: first silent day
    return_day: int  # lapsed: day they come back (maybe never)
    signup_day: int  # new: day they sign up (maybe never)
    erase_day: int  # day of an erasure request (rarely within the run)


def _draw_persona(rng: Random) -> str:
    return PERSONAS[bisect(_PERSONA_CUM, rng.random() * _PERSONA_CUM[-1])]


def persona_of(customer_index: int, seed: int) -> str:
    """The persona of customer ``customer_index`` in runs with ``seed``."""
    return _draw_persona(Random(f"{seed}:{customer_index}"))


def ground_truth(customers: int, seed: int) -> dict[str, Any]:
    """What the generator knows and a model must find out: each customer's persona, the chance a
    persona's online session with a cart ends in an order, and offer response rates."""
    return {
        "seed": seed,
        "personas": {f"u-{i:06d}": persona_of(i, seed) for i in range(customers)},
        "order_chance_with_cart": {persona: style.p_order for persona, style in STYLES.items()},
        "offer_response": OFFER_RESPONSE,
    }


def _loyalty(persona: str, rng: Random) -> str | None:
    share, tiers = {
        "high_value": (0.6, ("gold", "platinum")),
        "store_regular": (0.7, ("bronze", "silver", "gold")),
    }.get(persona, (0.15, ("bronze", "silver")))
    return rng.choice(tiers) if rng.random() < share else None


def _schedule(persona: str, rng: Random, days: int) -> tuple[int, int, int, int, int]:
    """``(first_day, end_day, return_day, signup_day, erase_day)`` of a persona."""
    first = {"browser": 3, "store_regular": 4}.get(persona, 1)
    first_day = int(rng.random() * (days if persona == "new" else min(days, first)))
    end_day = 1 + rng.randrange(3) if persona == "lapsed" else NEVER
    return_day = end_day + rng.randint(3, 14) if persona == "lapsed" and rng.random() < 0.4 else NEVER
    signs_up = persona == "new" and rng.random() < 0.85
    signup_day = first_day + rng.choice((0, 0, 0, 1, 1, 2)) if signs_up else NEVER
    erases = persona != "new" and rng.random() < 0.002
    erase_day = first_day + rng.randrange(max(1, days - first_day)) if erases else NEVER
    return first_day, end_day, return_day, signup_day, erase_day


def _profile(index: int, seed: int, days: int) -> Profile:
    rng = Random(f"{seed}:{index}")
    persona = _draw_persona(rng)
    store = rng.choice(STORES) if persona == "store_regular" else None
    if store is not None:
        city = store.city
    elif persona == "high_value":
        city = rng.choice(BIG_CITIES)
    else:
        city = rng.choices(CITIES, cum_weights=_CITY_CUM)[0]
    young = persona == "high_value"
    age_band = rng.choice(("18-24", "25-34")) if young else rng.choices(_AGE_BANDS, _AGE_WEIGHTS)[0]
    app_share = {"high_value": 0.8, "lapsed": 0.5, "browser": 0.35, "store_regular": 1.0}.get(persona, 0.5)
    if persona == "new":  # one device until they sign up, and the same one after
        app_share = 1.0 if rng.random() < app_share else 0.0
    app_id, web_id = f"a-{rng.getrandbits(64):016x}", f"a-{rng.getrandbits(64):016x}"
    loyalty_tier = _loyalty(persona, rng)
    created_ago_ms = rng.randint(30, 1500) * DAY_MS + rng.randrange(DAY_MS)
    favourites, peaks = tuple(rng.sample(CATEGORIES, 3)), tuple(rng.sample(_PEAK_HOURS[persona], 2))
    first_day, end_day, return_day, signup_day, erase_day = _schedule(persona, rng, days)
    return Profile(
        index=index,
        persona=persona,
        user_id=f"u-{index:06d}",
        app_id=app_id,
        web_id=web_id,
        app_share=app_share,
        city=city,
        store=store,
        age_band=age_band,
        loyalty_tier=loyalty_tier,
        created_ago_ms=created_ago_ms,
        favourites=favourites,
        peaks=peaks,
        first_day=first_day,
        end_day=end_day,
        return_day=return_day,
        signup_day=signup_day,
        erase_day=erase_day,
    )


# --- time -----------------------------------------------------------------------------------


@lru_cache(maxsize=1 << 15)
def _minute_prefix(minute_number: int) -> str:
    day, minute = divmod(minute_number, 24 * 60)
    date = (_EPOCH + timedelta(days=day)).strftime("%Y-%m-%d")
    return f"{date}T{minute // 60:02d}:{minute % 60:02d}:"


def iso(ms: int) -> str:
    """ISO-8601 UTC with milliseconds: ``2026-01-05T10:00:00.123Z``."""
    minute, rest = divmod(ms, MINUTE_MS)
    return f"{_minute_prefix(minute)}{rest // SECOND_MS:02d}.{rest % SECOND_MS:03d}Z"


def _to_ms(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(milliseconds=1)


@lru_cache(maxsize=64)
def _eu_summer_time(year: int) -> tuple[int, int]:
    """EU summer time in ms: last Sunday of March to last Sunday of October, 01:00 UTC."""

    def last_sunday(month: int) -> int:
        end = datetime(year, month + 1, 1, 1, tzinfo=UTC) - timedelta(days=1)
        return _to_ms(end - timedelta(days=(end.weekday() + 1) % 7))

    return last_sunday(3), last_sunday(10)


def _utc_offset_ms(city: City, at_ms: int) -> int:
    begin, end = _eu_summer_time((_EPOCH + timedelta(milliseconds=at_ms)).year)
    return (city.std_offset_h + (begin <= at_ms < end)) * HOUR_MS


# --- planning: which sessions a customer has on a day, and when -----------------------------


class Plan(NamedTuple):
    """One session to build; plans sort by start, then customer, then session number."""

    start: int
    customer: int
    session: int
    day: int
    kind: str  # shop | anon | signup | visit | glance
    first: bool  # first session of the run: identify
    erase: bool  # ends with an erasure request


def _new_day(p: Profile, d: int, rng: Random) -> list[str]:
    if d < p.signup_day:
        return ["anon"] * rng.randint(1, 2) if d == p.first_day or rng.random() < 0.4 else []
    if d == p.signup_day:
        return ["anon"] * (rng.random() < 0.4) + ["signup"]
    return ["shop"] * rng.randint(1, 2) if rng.random() < 0.45 else []


def _day_kinds(p: Profile, d: int, rng: Random) -> list[str]:
    """The kinds of the sessions ``p`` has on day ``d``, in the order they happen."""
    forced = d in (p.first_day, p.erase_day)
    if p.persona == "new":
        return _new_day(p, d, rng)
    if p.persona == "store_regular":
        kinds = ["visit"] if forced or rng.random() < 0.35 else []
        return kinds + ["glance"] * (rng.random() < 0.3)
    if p.persona == "lapsed":
        if d < p.end_day:
            return ["shop"] * rng.randint(1, 2)
        back = d == p.return_day or (d > p.return_day and rng.random() < 0.3)
        return ["shop"] if back or forced else []
    p_active, counts, weights = _ACTIVITY[p.persona]
    return ["shop"] * rng.choices(counts, weights)[0] if forced or rng.random() < p_active else []


def _local_ms(p: Profile, kind: str, rng: Random) -> int:
    """A local time of day (ms) for a session: store hours for visits, else a preferred hour."""
    if kind == "visit":
        return rng.randint(10, 18) * HOUR_MS + rng.randrange(HOUR_MS)
    hour = (rng.choice(p.peaks) + rng.choice((-1, 0, 0, 0, 1))) % 24
    return hour * HOUR_MS + rng.randrange(HOUR_MS)


def _spread(starts: list[int], rng: Random, window_end: int) -> list[int]:
    """Keep sessions >= 30 min apart and inside the day's window (shift back, else drop)."""
    out: list[int] = []
    for start in starts:
        if out and start < out[-1] + 30 * MINUTE_MS:
            start = out[-1] + 30 * MINUTE_MS + rng.randrange(20 * MINUTE_MS)
        out.append(start)
    over = out[-1] - (window_end - 1)
    if over > 0:
        shift = min(over, out[0] - (window_end - DAY_MS))
        out = [t - shift for t in out if t - shift < window_end]
    return out


def _customer_plans(p: Profile, seed: int, d: int, window: int) -> list[Plan]:
    silent = p.end_day <= d < p.return_day and d != p.erase_day  # a lapsed customer gone quiet
    if d < p.first_day or d > p.erase_day or silent:
        return []
    rng = Random(f"{seed}:{p.index}:d{d}")
    kinds = _day_kinds(p, d, rng)
    if not kinds:
        return []
    offset = _utc_offset_ms(p.city, window)
    starts = [window + (_local_ms(p, k, rng) - offset - window) % DAY_MS for k in kinds]
    if p.persona == "new":  # anonymous sessions come before the sign-up
        pairs = list(zip(sorted(starts), kinds, strict=True))
    else:
        pairs = sorted(zip(starts, kinds, strict=True))
    times = _spread([t for t, _ in pairs], rng, window + DAY_MS)
    last = len(times) - 1
    return [
        Plan(t, p.index, s, d, pairs[s][1], d == p.first_day and s == 0, d == p.erase_day and s == last)
        for s, t in enumerate(times)
    ]


def _day_plans(profiles: list[Profile], seed: int, d: int, window: int) -> list[Plan]:
    plans = [plan for p in profiles for plan in _customer_plans(p, seed, d, window)]
    plans.sort()
    return plans


# --- building a session's events ------------------------------------------------------------


class Session:
    """Builds one session's events: a clock, the ids to send, a fresh context per event."""

    __slots__ = ("anon", "channel", "events", "key", "n", "profile", "rng", "show_location", "t", "user")

    def __init__(self, profile: Profile, rng: Random, key: str, start: int, channel: str) -> None:
        self.profile, self.rng, self.key, self.t, self.channel = profile, rng, key, start, channel
        self.user: str | None = profile.user_id
        self.anon: str | None = None if channel == "pos" else profile.app_id if channel == "app" else profile.web_id
        self.show_location = rng.random() < 0.6
        self.events: list[Timed] = []
        self.n = 0

    def wait(self, lo_s: float, hi_s: float) -> None:
        lo = int(lo_s * SECOND_MS)
        self.t += lo + int(self.rng.random() * (int(hi_s * SECOND_MS) - lo + 1))

    def context(self) -> dict[str, Any]:
        city = self.profile.city
        if self.channel == "pos":
            store = self.profile.store or STORES[0]
            return {"channel": "pos", "store": {"id": store.id, "name": store.name, "city": store.city.name}}
        ctx: dict[str, Any] = {"channel": self.channel, "timezone": city.timezone, "locale": city.locale}
        if self.show_location:
            ctx["location"] = {"city": city.name, "country": city.country}
        return ctx

    def call(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Record a call (``track``, ``identify``, ...) at the session's current time."""
        delay = min(3000, 50 + int(self.rng.expovariate(1 / 300)))
        event: dict[str, Any] = {
            "type": kind,
            "messageId": f"m-{self.key}-{self.n}",
            "timestamp": iso(self.t),
            "receivedAt": iso(self.t + delay),
            "context": self.context(),
        }
        if self.user:
            event["userId"] = self.user
        if self.anon:
            event["anonymousId"] = self.anon
        event.update(fields)
        self.n += 1
        self.events.append((self.t, event))
        return event

    def track(self, name: str, properties: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.call("track", event=name, properties=properties or {})

    def page(self, name: str, path: str, category: str | None = None) -> dict[str, Any]:
        fields: dict[str, Any] = {"name": name, "properties": {"path": path, "title": name}}
        if category:
            fields["category"] = category
        return self.call("page", **fields)


Cart = dict[str, list[Any]]  # product_id -> [item, quantity]


def _product(item: CatalogItem, **extra: Any) -> dict[str, Any]:
    props = {"product_id": item.id, "name": item.name, "category": item.category, "price": item.price}
    props.update(extra)
    return props


def _pick(rng: Random, favourites: tuple[str, ...]) -> CatalogItem:
    """A product: mostly from a favourite category, popular items more often."""
    r = rng.random()
    if r < 0.7:
        category = favourites[int(r / 0.7 * len(favourites))]
    else:
        category = CATEGORIES[int((r - 0.7) / 0.3 * len(CATEGORIES))]
    items = CATALOG[category]
    return items[int(len(items) * rng.random() ** 2)]


def _lines(cart: Cart) -> tuple[list[dict[str, Any]], float]:
    lines = [_product(item, quantity=qty) for item, qty in cart.values()]
    return lines, round(sum(item.price * qty for item, qty in cart.values()), 2)


def _traits(sess: Session, created_ms: int) -> dict[str, Any]:
    p = sess.profile
    traits: dict[str, Any] = {
        "age_band": p.age_band,
        "city": p.city.name,
        "country": p.city.country,
        "urban": p.city.urban,
        "created_at": iso(created_ms),
    }
    if p.loyalty_tier:
        traits["loyalty_tier"] = p.loyalty_tier
    return traits


def _open(sess: Session, style: Style, install: bool = False) -> None:
    """Start a session: app open (after an install or a push tap, sometimes) or a web page."""
    if sess.channel == "web":
        sess.page("Home", "/")
        return
    if install:
        sess.track("Application Installed", {"version": APP_VERSION, "build": APP_BUILD})
        sess.wait(2, 20)
    from_push = sess.rng.random() < style.p_push
    if from_push:
        campaign = {"name": sess.rng.choice(_PUSH_CAMPAIGNS), "medium": "push"}
        sess.track("Push Notification Tapped", {"campaign": campaign})
        sess.wait(0.2, 2)
    sess.track("Application Opened", {"from_background": from_push, "version": APP_VERSION, "build": APP_BUILD})


def _maybe_promo(sess: Session, style: Style) -> None:
    if sess.rng.random() < style.p_promo:
        sess.wait(3, 40)
        promo_id, name = sess.rng.choice(PROMOTIONS)
        sess.track("Promotion Clicked", {"promotion_id": promo_id, "name": name, "position": "home_banner"})


def _add(sess: Session, cart: Cart, item: CatalogItem, qty: int) -> None:
    line = cart.setdefault(item.id, [item, 0])
    line[1] += qty
    sess.track("Product Added", _product(item, quantity=qty, cart_id=f"c-{sess.key}", currency=CURRENCY))


def _browse(sess: Session, style: Style, cart: Cart, views: int | None = None) -> None:
    """Product views (after category pages on the web), some of them added to ``cart``."""
    rng = sess.rng
    for _ in range(rng.randint(*style.views) if views is None else views):
        sess.wait(4, 75)
        item = _pick(rng, sess.profile.favourites)
        if sess.channel == "web" and rng.random() < style.p_page:
            sess.page(item.category.title(), f"/c/{item.category}", category=item.category)
            sess.wait(3, 25)
        sess.track("Product Viewed", _product(item, currency=CURRENCY))
        if rng.random() < style.p_add:
            sess.wait(5, 60)
            _add(sess, cart, item, 1 + int(rng.random() ** 2 * style.qty_max))
    if len(cart) > 1 and rng.random() < 0.15:
        sess.wait(5, 60)
        item, qty = cart.pop(rng.choice(sorted(cart)))
        sess.track("Product Removed", _product(item, quantity=qty, cart_id=f"c-{sess.key}", currency=CURRENCY))


def _checkout(sess: Session, cart: Cart, complete: bool = True) -> None:
    """Checkout Started, maybe a coupon, then (when ``complete``) Order Completed."""
    rng, order_id, cart_id = sess.rng, f"o-{sess.key}", f"c-{sess.key}"
    lines, total = _lines(cart)
    sess.wait(10, 120)
    sess.track(
        "Checkout Started",
        {"order_id": order_id, "cart_id": cart_id, "value": total, "currency": CURRENCY, "products": lines},
    )
    if not complete:
        return
    order: dict[str, Any] = {"order_id": order_id, "cart_id": cart_id, "total": total, "currency": CURRENCY}
    if rng.random() < 0.12:
        code, rate = rng.choice(_COUPONS)
        discount = round(total * rate, 2)
        sess.wait(5, 60)
        coupon = {"coupon_id": code, "coupon_name": code, "order_id": order_id, "discount": discount}
        sess.track("Coupon Applied", coupon)
        order.update(coupon=code, discount=discount, revenue=round(total - discount, 2))
    sess.wait(30, 240)
    sess.track("Order Completed", {**order, "products": lines})


def _finish_cart(sess: Session, style: Style, cart: Cart) -> None:
    if not cart:
        return
    r = sess.rng.random()
    if r < style.p_order:
        _checkout(sess, cart)
    elif r < style.p_order + style.p_abandon_checkout:
        _checkout(sess, cart, complete=False)


def _consent(sess: Session, channel: str, granted: bool) -> None:
    sess.wait(1, 20)
    sess.track("Consent Updated", {"channel": channel, "granted": granted})


def _maybe_consent(sess: Session, chance: float) -> None:
    if sess.rng.random() < chance:
        _consent(sess, sess.rng.choice(_CONSENT_CHANNELS), sess.rng.random() < 0.6)


def _erasure(sess: Session) -> None:
    sess.wait(10, 120)
    sess.track("Erasure Requested", {"request_id": f"er-{sess.key}", "regulation": "gdpr"})


def _identify_known(sess: Session, plan: Plan, start_ms: int) -> None:
    """A known customer's identify, in their first session of the run."""
    if plan.first:
        sess.wait(0.5, 3)
        sess.call("identify", traits=_traits(sess, start_ms - sess.profile.created_ago_ms))


def _shop(sess: Session, plan: Plan, start_ms: int) -> None:
    """An identified online session."""
    style = STYLES[sess.profile.persona]
    _open(sess, style)
    _identify_known(sess, plan, start_ms)
    _maybe_promo(sess, style)
    cart: Cart = {}
    _browse(sess, style, cart)
    _finish_cart(sess, style, cart)
    _maybe_consent(sess, 0.01)


def _anon(sess: Session, plan: Plan, start_ms: int) -> None:
    """A new customer browsing before sign-up: anonymousId only; carts are abandoned."""
    sess.user = None
    style = STYLES["new"]
    _open(sess, style, install=plan.first and sess.channel == "app")
    _maybe_promo(sess, style)
    _browse(sess, style, {})


def _signup(sess: Session, plan: Plan, start_ms: int) -> None:
    """Anonymous browsing (maybe a cart), sign-up + identify (+ alias), then the order."""
    rng, style, anon = sess.rng, STYLES["new"], sess.anon
    sess.user = None
    _open(sess, style, install=plan.first and sess.channel == "app")
    cart: Cart = {}
    _browse(sess, style, cart, views=rng.randint(1, 4))
    if not cart and rng.random() < 0.4:
        sess.wait(5, 40)
        _add(sess, cart, _pick(rng, sess.profile.favourites), 1)
    sess.wait(20, 150)
    sess.user = sess.profile.user_id
    sess.track("Signed Up", {"method": rng.choice(("email", "google", "apple"))})
    sess.wait(0.2, 2)
    sess.call("identify", traits=_traits(sess, sess.t))
    if rng.random() < 0.4:
        sess.wait(0.1, 1)
        sess.call("alias", previousId=anon)
    if rng.random() < 0.7:
        _consent(sess, "email", rng.random() < 0.85)
    if sess.channel == "app" and rng.random() < 0.6:
        _consent(sess, "push", rng.random() < 0.7)
    if cart and rng.random() < 0.75:
        _checkout(sess, cart)
    else:
        _browse(sess, style, cart, views=rng.randint(0, 3))


def _visit(sess: Session, plan: Plan, start_ms: int) -> None:
    """A store visit seen at the POS (userId only), usually with an in-store order."""
    rng, p = sess.rng, sess.profile
    _identify_known(sess, plan, start_ms)
    sess.wait(1, 5)
    store = p.store or STORES[0]
    duration_s = rng.randint(300, 2700)
    sess.track("Store Visited", {"store_id": store.id, "duration_s": float(duration_s)})
    if rng.random() < 0.75:
        sess.wait(duration_s * 0.5, duration_s * 0.95)
        cart: Cart = {}
        for _ in range(rng.randint(1, 6)):
            item = _pick(rng, p.favourites)
            cart.setdefault(item.id, [item, 0])[1] += 1 + int(rng.random() ** 3 * 3)
        lines, total = _lines(cart)
        order = {"order_id": f"o-{sess.key}", "total": total, "currency": CURRENCY, "products": lines}
        sess.track("Order Completed", order)


def _glance(sess: Session, plan: Plan, start_ms: int) -> None:
    """A store regular opening the app: a few views, no cart."""
    style = STYLES["store_regular"]
    _open(sess, style)
    _identify_known(sess, plan, start_ms)
    _maybe_promo(sess, style)
    _browse(sess, style, {})
    _maybe_consent(sess, 0.02)


_BUILDERS: dict[str, Callable[[Session, Plan, int], None]] = {
    "shop": _shop,
    "anon": _anon,
    "signup": _signup,
    "visit": _visit,
    "glance": _glance,
}


def _channel(p: Profile, kind: str, rng: Random) -> str:
    if kind == "visit":
        return "pos"
    return "app" if rng.random() < p.app_share else "web"


def _session_events(p: Profile, plan: Plan, seed: int, start_ms: int) -> list[Timed]:
    """The ``(sent ms, event)`` pairs of one planned session."""
    key = f"{seed}-{plan.customer}-{plan.day}-{plan.session}"
    rng = Random(f"{seed}:{plan.customer}:{plan.day}:{plan.session}")
    sess = Session(p, rng, key, plan.start, _channel(p, plan.kind, rng))
    _BUILDERS[plan.kind](sess, plan, start_ms)
    if plan.erase:
        sess.user = sess.user or p.user_id
        _erasure(sess)
    return sess.events


# --- defects --------------------------------------------------------------------------------

DEFECTS: tuple[str, ...] = ("duplicate", "late", "future", "missing_ids")
_HARMLESS = frozenset({"Product Viewed", "Promotion Clicked", "Application Opened", "Store Visited"})


def _clone(event: dict[str, Any]) -> dict[str, Any]:
    return orjson.loads(orjson.dumps(event))


def _harmless_copy(event: dict[str, Any], message_id: str) -> dict[str, Any]:
    """A copy of ``event`` that counts no order or sign-up twice: risky events become a visit ping."""
    if event["type"] == "page" or event.get("event") in _HARMLESS:
        copy = _clone(event)
    else:
        copy = {k: event[k] for k in ("userId", "anonymousId", "timestamp", "receivedAt") if k in event}
        context = copy["context"] = _clone(event["context"])
        if context["channel"] == "pos":
            copy.update(type="track", event="Store Visited", properties={"store_id": context["store"]["id"]})
        elif context["channel"] == "app":
            copy.update(type="track", event="Application Opened", properties={"from_background": True})
        else:
            copy.update(type="page", name="Home", properties={"path": "/", "title": "Home"})
    copy["messageId"] = message_id
    return copy


def _defect(sent: int, event: dict[str, Any], rng: Random) -> Timed:
    """One extra defective line derived from ``event`` and when it is sent."""
    kind, mid = rng.choice(DEFECTS), event["messageId"]
    if kind == "duplicate":  # a retry: the exact same event, a little later
        return sent + rng.randint(1, 30 * SECOND_MS), _clone(event)
    if kind == "missing_ids":
        bad = _clone(event)
        bad["messageId"] = f"{mid}-noid"
        bad.pop("userId", None)
        bad.pop("anonymousId", None)
        return sent, bad
    bad = _harmless_copy(event, f"{mid}-{kind}")
    if kind == "late":  # buffered offline, sent now
        bad["timestamp"] = iso(sent - rng.randint(10 * MINUTE_MS, 120 * MINUTE_MS))
    else:  # device clock far ahead
        received = sent + rng.randint(50, 3000)
        bad["receivedAt"] = iso(received)
        bad["timestamp"] = iso(received + rng.randint(2 * HOUR_MS, 48 * HOUR_MS))
    return sent, bad


def _with_defects(events: list[Timed], rate: float, rng: Random) -> list[Timed]:
    out: list[Timed] = []
    for sent, event in events:
        out.append((sent, event))
        if rng.random() < rate:
            out.append(_defect(sent, event, rng))
    return out


# --- the stream -----------------------------------------------------------------------------


def _check(customers: int, days: int, start: datetime, defects: float) -> None:
    if customers < 0 or days < 0:
        raise ConfigurationError("customers and days must be >= 0")
    if start.tzinfo is None or start.utcoffset() is None:
        raise ConfigurationError("start must be timezone-aware")
    if not 0.0 <= defects <= 1.0:
        raise ConfigurationError("defects must be within 0..1")


def generate_events(
    customers: int, days: int, seed: int, start: datetime = DEFAULT_START, defects: float = 0.0
) -> Iterator[dict]:
    """Yield Segment-shaped event dicts in non-decreasing `timestamp` order.

    With ``defects`` > 0, about that fraction of extra defective lines is mixed in
    (duplicates, late, future-dated, missing both ids); they sit where they were sent, so
    only they break the order. The clean events are the same as with ``defects=0``.
    """
    _check(customers, days, start, defects)
    return _stream(customers, days, seed, _to_ms(start), defects)


_Entry = tuple[int, str, int, dict[str, Any], Iterator[Timed]]  # (sent, messageId, session, event, rest)


def _release(heap: list[_Entry], until: int) -> Iterator[dict[str, Any]]:
    """Pop, in ``(sent, messageId)`` order, the events sent before ``until``; refill from their session."""
    while heap and heap[0][0] < until:
        _, _, order, event, rest = heap[0]
        following = next(rest, None)
        if following is None:
            heapq.heappop(heap)
        else:
            heapq.heapreplace(heap, (following[0], following[1]["messageId"], order, following[1], rest))
        yield event


def _stream(customers: int, days: int, seed: int, start_ms: int, defects: float) -> Iterator[dict]:
    """The sweep: build sessions in start order, release events no unbuilt session can precede."""
    profiles = [_profile(i, seed, days) for i in range(customers)] if days else []
    heap: list[_Entry] = []  # one entry per session in flight: its next event
    order = itertools.count()
    for d in range(days):
        for plan in _day_plans(profiles, seed, d, start_ms + d * DAY_MS):
            yield from _release(heap, plan.start)
            events = _session_events(profiles[plan.customer], plan, seed, start_ms)
            if defects:
                rng = Random(f"{seed}:{plan.customer}:{plan.day}:{plan.session}:defects")
                events = sorted(_with_defects(events, defects, rng), key=lambda te: (te[0], te[1]["messageId"]))
            rest = iter(events)
            sent, event = next(rest)
            heapq.heappush(heap, (sent, event["messageId"], next(order), event, rest))
    yield from _release(heap, NEVER * DAY_MS)  # the sessions still in flight


def write_jsonl(events: Iterable[dict], out: BinaryIO, progress: bool = False, total: int | None = None) -> int:
    """Write one orjson-encoded line per event (sorted keys, OPT_SORT_KEYS) and return the count; tqdm
    progress bar on stderr when progress=True."""
    option = orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE
    bar = tqdm(total=total, unit="ev", unit_scale=True, file=sys.stderr) if progress else None
    count, buffer = 0, []
    try:
        for event in events:
            buffer.append(orjson.dumps(event, option=option))
            if len(buffer) == 4096:
                out.write(b"".join(buffer))
                count += len(buffer)
                buffer.clear()
                if bar is not None:
                    bar.update(4096)
        out.write(b"".join(buffer))
        count += len(buffer)
        if bar is not None:
            bar.update(len(buffer))
    finally:
        if bar is not None:
            bar.close()
    return count
