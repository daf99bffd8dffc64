"""The engine's compiled parts (Rust, PyO3; crate in ``state/native/``), built by ``pip install``."""

from collections.abc import Callable, Iterable, Sequence
from typing import Any, overload

class Dedupe:
    """Dedupe memory: the last ``capacity`` message ids (as 128-bit hashes), forgetting the oldest first."""

    def __init__(self, capacity: int) -> None: ...
    @property
    def capacity(self) -> int: ...
    def seen_or_add(self, message_id: str) -> bool:
        """Whether ``message_id`` is remembered; remembers it if not."""
    def __len__(self) -> int: ...
    def to_bytes(self) -> bytes:
        """The memory as bytes (a format byte, then the hashes oldest first), for snapshots."""
    @staticmethod
    def from_bytes(capacity: int, data: bytes) -> Dedupe:
        """A memory of ``capacity`` holding what :meth:`to_bytes` wrote (the newest ``capacity`` ids);
        ``ValueError`` for bytes it cannot read."""

class Links:
    """Identity links: anonymous id -> user id (anonymous ids kept as 128-bit hashes), the least
    recently used forgotten first beyond ``capacity``."""

    def __init__(self, capacity: int) -> None: ...
    @property
    def capacity(self) -> int: ...
    def get(self, anonymous_id: str) -> str | None:
        """The user id ``anonymous_id`` is linked to (``None``: none), made the most recently used."""
    def link(self, anonymous_id: str, user_id: str) -> str | None:
        """Link ``anonymous_id`` to ``user_id``, the most recently used link; return the user id it was
        linked to before (``None``: none)."""
    def unlink(self, anonymous_id: str) -> bool:
        """Forget the link of ``anonymous_id``; whether there was one."""
    def __len__(self) -> int: ...
    def entries(self) -> list[tuple[int, str]]:
        """The links as ``(hash of the anonymous id, user id)``, least recently used first, for snapshots."""
    @staticmethod
    def from_entries(capacity: int, entries: list[tuple[int, str]]) -> Links:
        """Links of ``capacity`` holding what :meth:`entries` gave (the most recently used ``capacity``)."""

class EventScan:
    """A quick pass over an input event's JSON bytes: which model it is for, if it is plain enough to
    be decoded straight into it (see ``state/native/src/event_scan.rs``)."""

    def __init__(
        self,
        calls: list[tuple[str, int]],
        tracks: list[tuple[str, int]],
        unknown_track: int,
        closed: list[list[tuple[tuple[str | None, ...], list[str]]]],
        key_chars: int,
        decode_line: Callable[[bytes], Any],
    ) -> None:
        """``calls`` (``type`` values) and ``tracks`` (track ``event`` names) name models by index
        into ``closed``: per model, its closed containers, each a path (``None`` for any element of
        a list) and the keys allowed there; an unknown key is named by its first ``key_chars`` characters.
        The models that close ``properties.products[]`` have order lines: ``decode_line`` decodes one
        line's JSON into its model (``schemas.events.Product``) when :class:`OrderLines` are read."""
    def model_of(self, json: bytes) -> int:
        """The index of the model ``json`` is for if it is plain, else -1."""
    def scan(
        self, json: bytes
    ) -> tuple[int, int | None, int | None, list[tuple[str, int]] | None, tuple[OrderLines, bytes] | None]:
        """``(model, timestamp_ms, received_ms, unknown, lines)``: :meth:`model_of`, the ``timestamp``
        and ``receivedAt`` of a plain event in epoch milliseconds where they are in the common form
        (else None), the paths of the keys of its closed containers its model does not allow, each with
        how many times it came (None if none): by container as the model lists them (``closed``), then
        in the order they first came; and the order lines of an order or checkout when every line is
        one the contract takes as it is (no bad line, no coercion, no escape in ``product_id`` or
        ``category``), as ``(lines, json with an empty products array)``, else None."""

class OrderLines(Sequence[Any]):
    """The lines of a plain order or checkout as :meth:`EventScan.scan` read them: a read-only
    sequence of ``schemas.events.Product``, each decoded from the event's bytes when read; equal to
    the list of the same lines, shown and pickled as that list. ``Features.apply_order`` reads the
    product, category and quantity of the lines bought without decoding them."""

    def amount(self) -> float:
        """What the lines are worth, as ``sum((p.price or 0.0) * p.quantity for p in lines)`` gives it
        (the integer 0 for no lines), without decoding them."""
    def __len__(self) -> int: ...
    @overload
    def __getitem__(self, index: int) -> Any: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Any]: ...

class EpochMs:
    """``general(text)``, computed natively for date-times in the common form (``2026-01-05T10:00:00.123Z``,
    ``...+01:00``): epoch milliseconds of ISO 8601 text, as ``schemas.timestamps.epoch_ms`` reads them."""

    def __init__(self, general: Callable[[str], int]) -> None: ...
    def __call__(self, text: str) -> int: ...

Population = tuple[float, ...]
"""Buy-till-you-die parameters ``(r, alpha, a, b, p, q, v, horizon_days)``, times in days
(``state.customer.Lifecycle.population``)."""

def hyp2f1(a: float, b: float, c: float, z: float) -> float:
    """Gauss's hypergeometric function 2F1(a, b; c; z) for 0 <= z < 1, by its series."""

def btyd_scores(
    population: Population, x: float, t_x: float, age: float, days: float, mean: float
) -> tuple[float, float, float, float]:
    """``(p_alive, no_order_within(days), expected_orders(days), expected_order_value(mean))`` of a
    history of ``x`` repeat orders, ``t_x`` days from first to last, ``age`` days since the first,
    unrounded (``state/native/src/btyd.rs``)."""

def shard_of(key: str, shards: int) -> int:
    """A stable shard number for a routing key, a customer or anonymous id: ``zlib.crc32(key.encode())
    % shards`` (the same on every machine and run)."""

class CrossingPacker:
    """Packs a shard's items of one pass into one record to cross processes, and back (see
    ``state/native/src/crossing.rs``): envelopes, and forwards of them with no carried state, as
    their fields but the event (decoded again where it is read); every other item is left to pickle."""

    def __init__(self, envelope: type, forward: type, fields: Callable[[Any], tuple[Any, ...]]) -> None:
        """``fields`` gives an envelope's fields as a tuple; ValueError if the envelope's fields are
        not those the packer knows."""
    def pack(self, items: list[Any]) -> tuple[bytes, list[Any]]:
        """The record, and the items left to pickle, in order."""
    def unpack(self, record: bytes, others: list[Any]) -> list[Any]:
        """The items of a record, ``others`` in their places; ValueError for any other bytes."""

class EnvelopeMaker:
    """Makes the envelopes of a batch's plain events, the way ``operators.parse.parse`` makes them (see
    ``state/native/src/envelopes.rs``); every other item is left to the Python way."""

    def __init__(
        self,
        scan: EventScan,
        raw_event: type,
        envelope: type,
        decoders: list[Callable[[bytes], Any]],
        tracks: list[bool],
        identify: int,
        alias: int,
        known: frozenset[str],
        unknown_field_notes: Callable[[list[tuple[str, int]]], tuple[Any, ...]],
        force_setattr: Callable[[Any, str, Any], None],
    ) -> None:
        """Per model of ``scan`` (by index): its decoder and whether a track call (named by its
        ``event``, else its ``type``); ``identify`` and ``alias`` are the models whose
        ``traits.created_at`` is a date-time and whose anonymous id is the ``previousId``; ``known``
        the names counted as known; ``unknown_field_notes`` makes an event's notes of unknown
        fields and ``force_setattr`` puts its order lines in."""
    def make(self, batch: list[Any], max_bytes: int) -> tuple[list[Any], list[int]]:
        """``(made, rest)``: per item of ``batch``, the envelope of a ``raw_event`` whose plain way
        succeeds, else None; ``rest``, the positions of the raw events left to the Python way."""

class IdentityPass:
    """The identity stage's pass-through of identified events with no anonymous state to hand over
    (see ``state/native/src/identity_pass.rs``)."""

    def __init__(self, lateness_ms: int, max_skew_ms: int, max_age_ms: int, day_ms: int, erasure: str) -> None: ...
    def run(
        self,
        released: list[Any],
        start: int,
        seen: Dedupe,
        links: Links,
        customers: dict[str, Any],
        added: list[str] | None,
        clock: int | None,
        next_due: int | None,
        swept_day: int | None,
        out: list[Any],
        ledger: dict[str, int] | None = None,
        erased: dict[str, int] | None = None,
    ) -> tuple[int, int | None, int, int]:
        """Pass the envelopes of ``released`` from ``start`` on to ``out`` until one needs the Python
        way (future-dated, too old, an anonymous customer's, an erasure, one with anonymous state in
        ``customers`` to hand over, one of a user id in ``ledger`` or ``erased``, one that moves the
        clock past ``next_due`` or out of the day ``swept_day``); return ``(its position (the length if
        none), the clock, duplicates dropped, links made or changed)``. Each passed event's message id
        is remembered in ``seen`` (and appended to ``added`` if given), its anonymous id linked to its
        user id in ``links``."""

def unlink_customer(links: Links, user_id: str) -> list[int]:
    """Forget every anonymous id ``links`` links to ``user_id``; return their hashes (as
    :meth:`Links.entries` gives them)."""

def anonymous_hash(anonymous_id: str) -> int:
    """The hash an anonymous id is kept by in :class:`Links` (as :meth:`Links.entries` gives it)."""

class Features:
    """A customer's features: one compact record, updated by one call per event (see
    ``state/customer.py`` and ``state/native/src/features.rs``). Product, category, store, city and
    trait names are interned in a table the process shares; :meth:`to_bytes` spells them out."""

    def __init__(self, first_seen_ms: int) -> None: ...
    # --- updates (``kind``: the counted kind's code, ``None`` for no activity; ``hour``: local hour)
    def apply(
        self,
        at_ms: int,
        message_id: str,
        kind: int | None,
        hour: int,
        session_timeout_ms: int,
        store: str | None,
        city: str | None,
        country: str | None,
    ) -> None:
        """An event with nothing but its activity and places: counted kind (``None`` for identify,
        alias, consent), local hour, session timeout, context store, city and country."""
    def apply_product(
        self,
        at_ms: int,
        message_id: str,
        kind: int | None,
        hour: int,
        session_timeout_ms: int,
        store: str | None,
        city: str | None,
        country: str | None,
        action: int,
        product_id: str,
        category: str | None,
        cart_id: str | None,
        quantity: int,
        price: float | None,
    ) -> None:
        """A product event: :meth:`apply`, then ``action`` (0 viewed, 1 added, 2 removed, 3 other)."""
    def apply_order(
        self,
        at_ms: int,
        message_id: str,
        kind: int | None,
        hour: int,
        session_timeout_ms: int,
        store: str | None,
        city: str | None,
        country: str | None,
        completed: bool,
        order_id: str,
        amount: float,
        lines: OrderLines | Iterable[Any],
    ) -> None:
        """An order (``completed``) or refund: :meth:`apply`, then the order with its ``lines``
        (:class:`OrderLines`, or objects with ``product_id``, ``category`` and ``quantity``) in one call."""
    def apply_identify(
        self,
        at_ms: int,
        message_id: str,
        store: str | None,
        city: str | None,
        country: str | None,
        age_band: str | None,
        trait_city: str | None,
        trait_country: str | None,
        urban: bool | None,
        gender: str | None,
        loyalty_tier: str | None,
        band_of_age: str | None,
    ) -> None:
        """An identify call: :meth:`apply` (no activity), then the traits sent (``None``: not sent),
        then ``band_of_age``, the age band of the age sent when no band was sent."""
    def apply_consent(
        self,
        at_ms: int,
        message_id: str,
        store: str | None,
        city: str | None,
        country: str | None,
        channel: str,
        granted: bool,
    ) -> None:
        """A consent update: :meth:`apply` (no activity), then ``granted`` for ``channel`` ("all": every one)."""
    def merge(self, other: Features, now_ms: int) -> None:
        """Fold the features of a just-linked anonymous id into these."""
    def copy(self) -> Features:
        """A copy (for a checkpoint: put it back to undo what happened since)."""
    def to_bytes(self) -> bytes:
        """The features as bytes, names spelt out, for snapshots."""
    @staticmethod
    def from_bytes(data: bytes) -> Features:
        """Features written by :meth:`to_bytes`; ``ValueError`` for bytes it cannot read."""
    # --- plain fields
    first_seen_ms: int
    last_seen_ms: int
    last_event_id: str
    orders: int
    refunds: int
    lifetime_spend: float
    first_order_ms: int | None
    last_order_ms: int | None
    last_order_id: str | None
    order_gap_ms: float
    last_store: str | None
    last_city: str | None
    last_country: str | None
    hours: bytes
    """Activity per local hour of day (24 counts, halved before one passes 255)."""
    bought: tuple[str, ...]
    """Products of the last order."""
    traits: dict[str, str | bool]
    """Identify traits, in the order first set."""
    consent: dict[str, bool]
    """Consent per channel, in the order first set."""
    def trait_value(self, key: str) -> str | bool | None:
        """One trait's value (``None``: not known)."""
    # --- session and cart
    session_id: str | None
    session_times: tuple[int, int, int] | None
    """The session's ``(started_ms, last_ms, pages)``, ``None`` when there is none."""
    session_products: list[str]
    """Products viewed in the session, oldest first (the last 10)."""
    def live_session_products(self, at_ms: int, timeout_ms: int) -> list[str]:
        """Products viewed in the session if it is still going at ``at_ms`` (else none)."""
    cart_id: str | None
    cart_value: float
    cart_items: int
    """The cart's lines' quantities summed (0 when there is none)."""
    cart_times: tuple[int, int] | None
    """The cart's ``(started_ms, last_add_ms)``, ``None`` when there is none."""
    cart_lines: dict[str, tuple[float, float]]
    """The cart's lines: product -> ``(quantity, unit price)``, in the order first added."""
    cart_products: list[str]
    """The cart's products, in the order first added."""
    # --- derived features
    def counts(self, window_name: str, now_ms: int) -> dict[str, int]:
        """Events per kind in ``window`` ("1h", "24h", "7d", "30d") before ``now_ms``."""
    buckets: list[int]
    """The windowed counts' ``(start minute, kind code, count)`` triples, flat."""
    def top_categories(self, n: int | None = None) -> list[str]:
        """Categories by decayed affinity, strongest first (ties by name), the first ``n``."""
    def top_products(self, n: int | None = None) -> list[str]:
        """Products by decayed affinity, strongest first (ties by name), the first ``n``."""
    def categories_as_of(self, now_ms: int) -> dict[str, float]:
        """Category affinities decayed to ``now_ms``, rounded to 4 digits, by name."""
    def products_as_of(self, now_ms: int) -> dict[str, float]:
        """Product affinities decayed to ``now_ms``, rounded to 4 digits, by name."""
    category_scores: dict[str, float]
    """The category affinities as kept (against their landmark), in the order first added."""
    product_scores: dict[str, float]
    """The product affinities as kept (against their landmark), in the order first added."""
    affinity_landmarks: tuple[int | None, int | None]
    """The affinities' landmarks ``(categories, products)`` (``None``: nothing added yet)."""
    def lifecycle(self, now_ms: int, new_days: int, lapse_days: int) -> str:
        """ "new", "active" or "lapsed" at ``now_ms``."""
    def at_risk(self, now_ms: int, lapse_days: int, at_risk_gap_factor: float) -> bool:
        """A repeat buyer overdue against their own rhythm, not yet lapsed."""
    def lapse_risk(self, now_ms: int, lapse_days: int, population: Population) -> float | None:
        """The chance (0-1) this buyer reaches ``lapse_days`` after their last order without another
        (BG/NBD; ``None`` before an order)."""
    def p_alive(self, now_ms: int, population: Population) -> float | None:
        """BG/NBD's P(alive) (1 before a repeat order; ``None`` before an order)."""
    def expected_orders(self, now_ms: int, population: Population) -> float | None:
        """BG/NBD's expected orders over the horizon (``None`` before an order)."""
    def expected_order_value(self, population: Population) -> float | None:
        """Gamma-Gamma's expected order value (``None`` before an order)."""
    def clv(self, now_ms: int, population: Population) -> float | None:
        """Expected orders over the horizon times expected order value (``None`` before an order)."""
    def next_boundary(
        self,
        now_ms: int,
        new_days: int,
        lapse_days: int,
        at_risk_gap_factor: float,
        risk_steps: bool,
        population: Population,
        alive_steps: bool = False,
    ) -> int | None:
        """The next time ``lifecycle``, ``at_risk`` (and with ``risk_steps`` ``lapse_risk``, to the
        next tenth) can change with no new event."""
    def preferred_hour(self) -> int | None:
        """The local hour of day with most activity (``None``: none yet)."""

def decision_features(features: Features, now_ms: int, session_timeout_ms: int) -> tuple[float, ...]:
    """The propensity model's inputs at ``now_ms`` (``operators.models.propensity.FEATURES``, in order),
    read from the features in one call (a session idle past ``session_timeout_ms`` counts as none)."""

def learn_touch(
    recommender: Any, features: Features, at_ms: int, session_timeout_ms: int, product: str, category: str | None = None
) -> None:
    """``recommender.learn(session, product, category)`` (a ``CoOccurrence``) with the products of the
    customer's session still going at ``at_ms``, read from ``features``."""

def touch_product(
    recommender: Any,
    features: Features,
    at_ms: int,
    session_timeout_ms: int,
    product: str,
    category: str | None,
    message_id: str,
    viewed: bool,
    every: int,
) -> bool:
    """A product touch in one call: ``True`` for a view (``viewed``) in the sample of one in ``every``
    (as ``sampled(message_id, every)``), with nothing learnt; else :func:`learn_touch`, and ``False``."""

class ReasonValues:
    """The values the reasons of a rule set show (``operators/reasons.py``), read from the features
    record as the rule program reads features; per reason (by index) a list of reads."""

    def __init__(
        self,
        reasons: list[list[tuple[str, str, bool]]],
        new_days: int,
        lapse_days: int,
        at_risk_gap_factor: float,
        session_timeout_ms: int,
        population: Population,
    ) -> None:
        """``reasons``: per reason, ``(feature, field, presence)`` reads (``field``: ``""`` for none);
        a presence read gives ``None`` when the feature is null, else an empty tuple."""
    def values(self, features: Features, now_ms: int, index: int) -> tuple[Any, ...]:
        """The values reason ``index`` shows at ``now_ms``, in its order."""

def logistic_score(
    x: Sequence[float], centers: Sequence[float], scales: Sequence[float], weights: Sequence[float], intercept: float
) -> float:
    """P(true) of a standard scaler and a logistic regression as River computes it: each input centred
    and divided by its scale (0: scaled to 0), the products with the weights summed in input order,
    the intercept added, River's ``sigmoid`` (the integers 0 and 1 past -30 and 30)."""

def recommend_for(recommender: Any, features: Features, k: int, at_ms: int, session_timeout_ms: int) -> list[str]:
    """``recommender.recommend(session, k, exclude, interests, categories)`` (a ``CoOccurrence``) for a
    customer at ``at_ms``, read from ``features``: the products of the session still going, leaving
    out the last order's and the cart's, the five favourite products strongest last, the category
    affinities as kept."""

class RuleProgram:
    """A rule set's conditions compiled over the features record (see ``operators/rule_program.py``
    and ``state/native/src/rule_program.rs``), evaluated with Python's semantics to the bit."""

    def __init__(
        self,
        expressions: list[tuple[Any, ...] | None],
        members: list[str],
        groups: list[list[int]],
        new_days: int,
        lapse_days: int,
        at_risk_gap_factor: float,
        session_timeout_ms: int,
        population: Population,
        exits: list[int | None] = ...,
    ) -> None:
        """``expressions``: lowered trees (``None``: evaluated in Python), audiences first, their
        membership keys in ``members``; ``groups``: the audience positions evaluated together;
        ``exits``: per audience, the expression its members leave on (``None``: when their own fails).
        ``ValueError`` for a tree it cannot read, a group naming no audience or an exit no expression."""
    def audience_changes(
        self, features: Features, now_ms: int, members: tuple[str, ...], group: int
    ) -> list[tuple[int, bool | None]] | None:
        """The audiences of ``group`` whose membership changes at ``now_ms``, in order, as
        ``(position, inside)``; ``inside`` is ``None`` for one to evaluate in Python. ``None`` when
        none changes (``members``: the customer's audiences now)."""
    def holds(self, features: Features, now_ms: int, index: int) -> bool | None:
        """Whether expression ``index`` holds at ``now_ms``; ``None`` for one to evaluate in Python."""
    @property
    def compiled(self) -> int:
        """How many expressions are compiled (the others are evaluated in Python)."""

class Bookkeeping:
    """A customer's bookkeeping (``state/native/src/bookkeeping.rs``): its pending timers, the cause each
    rule last fired for, its open decisions and offer choices, in one compact immutable record. Every
    change returns a new record. Rule, offer and segment names are interned in a table the process
    shares; :meth:`to_bytes` spells them out."""

    def __init__(self) -> None:
        """An empty record."""
    # --- timers (a timer as read: ``(due_ms, rule_id, cause, *caused_by)``)
    @property
    def first_due(self) -> int | None:
        """The due time of the first timer in firing order (due time, then rule id; ``None``: no timer)."""
    def first_timer(self) -> tuple[int, str] | None:
        """``(due_ms, rule_id)`` of the first timer in firing order (``None``: no timer)."""
    def due(self, rule_id: str) -> int | None:
        """The due time of the timer of ``rule_id`` (``None``: none pending)."""
    def due_rules(self, upto_ms: int) -> list[str]:
        """The rules whose timers are due by ``upto_ms``, in firing order."""
    def timer(self, rule_id: str) -> tuple[Any, ...] | None:
        """The pending timer of ``rule_id`` (``None``: none)."""
    def timers(self) -> tuple[tuple[Any, ...], ...]:
        """Every pending timer, in firing order."""
    def with_timer(self, due_ms: int, rule_id: str, cause: str, caused_by: list[str] | tuple[str, ...]) -> Bookkeeping:
        """With the timer of ``rule_id`` armed at ``due_ms`` for ``cause``, caused by the message ids
        ``caused_by``, replacing any pending one."""
    def rearmed(self, due_ms: int, rule_id: str, cause: str, message_id: str, most: int) -> Bookkeeping:
        """With the timer of ``rule_id`` armed at ``due_ms`` for ``cause``, caused by ``message_id``: a
        pending timer with the same cause stays (at the later time), its last ``most - 1`` ids before
        this one kept; any other is replaced."""
    def without_timer(self, rule_id: str) -> Bookkeeping | None:
        """Without the timer of ``rule_id`` (``None``: there is none)."""
    # --- rules fired
    def fired_cause(self, rule_id: str) -> str | None:
        """The cause ``rule_id`` last fired for (``None``: it never fired)."""
    def with_fired(self, rule_id: str, cause: str) -> Bookkeeping:
        """With ``rule_id`` noted as fired for ``cause``."""
    def fired(self) -> tuple[str, ...]:
        """``(rule_id, cause, rule_id, cause, ...)`` in the order the rules first fired."""
    # --- open decisions and offers
    @property
    def outcomes(self) -> bytes:
        """The decisions awaiting their outcome, as the models packed them."""
    def with_outcomes(self, outcomes: bytes) -> Bookkeeping: ...
    @property
    def offers_open(self) -> tuple[Any, ...]:
        """The offer choices awaiting a reward: ``(decided_ms, offer_id, segment, ...)``, oldest first."""
    def with_offers(self, offers: tuple[Any, ...]) -> Bookkeeping:
        """With ``offers`` (as :attr:`offers_open` gives them) as the offer choices awaiting a reward."""
    # --- linking and snapshots
    def merged(self, other: Bookkeeping) -> Bookkeeping:
        """With the timers and fired causes of ``other`` (a just-linked anonymous customer) of rules this
        record has none of; open decisions and offers are the models' to fold."""
    def to_bytes(self) -> bytes:
        """The record as bytes, names spelt out, for snapshots."""
    @staticmethod
    def from_bytes(data: bytes) -> Bookkeeping:
        """A record written by :meth:`to_bytes`; ``ValueError`` for bytes it cannot read."""

class CustomerStep:
    """One event for one customer in one call (``state/native/src/customer_step.rs``): its features
    applied, the timers it cancels dropped, those it arms armed (each for the cause it fires at most
    once for, as ``CustomerStage._cause`` gives it), the next audience recheck kept and the audiences
    it can change evaluated, exactly as the Python path (``CustomerStage._apply_rules``) does."""

    def __init__(
        self,
        program: RuleProgram,
        plans: list[tuple[str, list[str], list[tuple[str, int, str]], int | None, bool, bool]],
        other_group: int | None,
        every_group: int | None,
        recheck: str | None,
        risk_steps: bool,
        new_days: int,
        lapse_days: int,
        at_risk_gap_factor: float,
        most_caused_by: int,
        population: Population,
        alive_steps: bool = False,
    ) -> None:
        """``plans``: per event name, ``(name, rules it cancels, (rule, after_ms, once_per) it arms, its
        audience group, whether triggers fire on it at once, whether it is an order)``; an event of any
        other name changes ``other_group``; a fresh customer ``every_group``. ``recheck``: the timer that
        rechecks time-dependent audiences (``None``: none), at the lifecycle boundaries (with
        ``risk_steps``, also ``lapse_risk``'s; with ``alive_steps``, ``p_alive``'s); ``most_caused_by``: the ids a
        timer keeps."""
    def run(
        self,
        state: Any,
        env: Any,
        late: bool,
        clock: int | None,
        fresh: bool,
        update: str,
        args: tuple[Any, ...],
    ) -> tuple[list[tuple[int, bool | None]] | bool | None, bool, Features | None] | None:
        """Apply ``env`` (an envelope) to ``state`` (a ``CustomerState``) at the shard ``clock``: its
        features (the method ``update`` of ``state.features`` called with ``args``, as
        ``state.update.feature_update`` gives them), then its rules (``state.book`` gets the new timers).
        ``None``: nothing more to do. Else ``(changes, reschedule, before)``: ``changes`` the audience
        changes as :meth:`RuleProgram.audience_changes` gives them, ``None`` for none, or ``False``
        when the rules were left to Python (triggers firing at once, a day Python would refuse);
        ``reschedule`` whether the customer's first timer is now due before its heap entry; ``before``
        the features as they were before ``env`` when Python has work left (``changes`` not ``None``),
        for :meth:`put_back` should that work fail. If this raises, ``state`` is as it was."""
    @staticmethod
    def put_back(features: Features, before: Features) -> None:
        """Put ``before`` (as :meth:`run` gave it) back into ``features``, in place."""

class TimerFiring:
    """A timed trigger's timer fired up to its decision in one call (``state/native/src/fire.rs``),
    with the checks of the Python path (``CustomerStage._fire_timer``, ``_decide``), in its order."""

    def __init__(self, program: RuleProgram, triggers: list[tuple[str, str, int | None]]) -> None:
        """``triggers``: ``(rule_id, once_per, condition)`` of each timed trigger, ``condition`` its
        expression's number in ``program`` (``None``: it has none)."""
    def fire(self, state: Any, rule_id: str) -> tuple[int, str, list[str], bool | None] | None:
        """Take the timer of the timed trigger ``rule_id`` from ``state.book`` (``KeyError``: no such
        trigger or timer). ``None``: nothing to decide (its rule fired for the timer's cause already,
        the cause went stale, or the condition does not hold); else ``(due_ms, cause, caused_by,
        passed)``, ``passed`` ``True`` when the condition holds (or there is none), ``None`` when
        Python evaluates it."""

class TimerHeap:
    """A shard's timer heap (``state/native/src/timer_heap.rs``): entries ``(due_ms, customer_id)``,
    the earliest first, ties by customer id, 16 bytes each."""

    def __init__(self) -> None: ...
    def __len__(self) -> int: ...
    def first(self) -> int | None:
        """The due time of the first entry (``None``: no entry)."""
    def push(self, due_ms: int, customer_id: str) -> None: ...
    def pop_due(self, upto_ms: int) -> tuple[int, str] | None:
        """Take the first entry out if it is due by ``upto_ms`` (``None``: none is)."""
    def replace(self, entries: list[tuple[int, str]]) -> None:
        """These entries instead of the heap's."""
    def entries(self) -> list[tuple[int, str]]:
        """The entries, in heap order."""
