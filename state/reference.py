"""Reference data: stores (time zone, location) and products (category, price), loaded from files.

Events are enriched from it only where they lack a field (a dict lookup then, nothing otherwise): a
point-of-sale event without ``context.timezone`` takes its store's zone, a product event without
``category`` or ``price`` takes the product's. Offers limited to stores find their distances here.
Files are CSV (a header line naming the columns; other columns are ignored) or JSON Lines (one object
a line), chosen by the name's ending (``.csv``, ``.jsonl``); a bad row stops the start, naming the
file and its line.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from schemas.errors import ConfigurationError

EARTH_RADIUS_KM = 6371.0088
MAX_PROBLEMS = 20  # bad rows named in one error


def _known_zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{name!r} is not an IANA time zone (e.g. 'Europe/Paris')") from None
    return name


Text = Annotated[str, Field(min_length=1, max_length=200)]


class Store(BaseModel):
    """A store: where it is and its time zone."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: Text
    timezone: Annotated[str, AfterValidator(_known_zone)]
    latitude: float = Field(ge=-90, le=90)
    longitude: float = Field(ge=-180, le=180)


class Product(BaseModel):
    """A product of the catalogue: its category and price."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: Text
    category: Text
    price: float = Field(ge=0, le=1e9, allow_inf_nan=False)


@dataclass(frozen=True)
class Reference:
    """Stores and products by id (empty when not configured)."""

    stores: dict[str, Store] = field(default_factory=dict)
    products: dict[str, Product] = field(default_factory=dict)

    def store_zone(self, store_id: str | None) -> str | None:
        """The time zone of ``store_id`` (``None``: no such store, or none given)."""
        store = self.stores.get(store_id) if store_id is not None else None
        return store.timezone if store is not None else None

    def distance_km(self, a: str, b: str) -> float | None:
        """The great-circle distance between two stores (``None``: one is not known)."""
        first, second = self.stores.get(a), self.stores.get(b)
        if first is None or second is None:
            return None
        return _haversine_km(first.latitude, first.longitude, second.latitude, second.longitude)


NO_REFERENCE = Reference()


def load_reference(stores: Path | None, products: Path | None) -> Reference:
    """The stores and products of these files (either may be ``None``); :class:`ConfigurationError`
    naming the file and line of every bad row (up to :data:`MAX_PROBLEMS`)."""
    return Reference(
        stores=_load(stores, Store) if stores is not None else {},
        products=_load(products, Product) if products is not None else {},
    )


def _load(path: Path, model: type[Store] | type[Product]) -> dict[str, Any]:
    kind = model.__name__.lower()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigurationError(f"{path}: cannot read the {kind} file: {err}") from None
    found: dict[str, Any] = {}
    problems: list[str] = []
    for line, row in _rows(path, text, problems):
        try:
            item = model.model_validate(row)
        except ValidationError as err:
            problems += [f"{path}:{line}: field '{_where(e['loc'])}': {e['msg']}" for e in err.errors()]
            continue
        if item.id in found:
            problems.append(f"{path}:{line}: field 'id': {kind} '{item.id}' is listed twice")
        found[item.id] = item
    if problems:
        more = f"\n... and {len(problems) - MAX_PROBLEMS} more" if len(problems) > MAX_PROBLEMS else ""
        raise ConfigurationError("\n".join(problems[:MAX_PROBLEMS]) + more)
    return found


def _where(loc: tuple[Any, ...]) -> str:
    return ".".join(map(str, loc)) or "-"


def _rows(path: Path, text: str, problems: list[str]) -> Iterator[tuple[int, Any]]:
    """Each row of a CSV or JSON Lines file with its line number (blank lines skipped)."""
    if path.name.endswith(".csv"):
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames:
            problems.append(f"{path}:1: the file has no header line (e.g. 'id,timezone,latitude,longitude')")
            return
        for row in reader:
            if any(value and value.strip() for value in row.values() if isinstance(value, str)):
                yield reader.line_num, {key: value for key, value in row.items() if key is not None}
    elif path.name.endswith(".jsonl"):
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                yield number, orjson.loads(line)
            except orjson.JSONDecodeError as err:
                problems.append(f"{path}:{number}: not valid JSON: {err}")
    else:
        problems.append(f"{path}: name a .csv or .jsonl file")


@lru_cache(maxsize=4096)
def _haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    dphi, dlambda = phi2 - phi1, math.radians(lon2 - lon1)
    h = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlambda / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))
