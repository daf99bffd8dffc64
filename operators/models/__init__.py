"""Online models inside the dataflow (see docs/models.md for where they score and learn).

Each shard engine holds one :class:`ShardModels`: its own replica of every model, fed by the
decisions and outcomes of that shard's customers, in the shard's deterministic order. Every
model follows :class:`~operators.models.protocol.OnlineModel`; :data:`MODEL_TYPES` lists them,
and stats, model files and modes go through that list.
"""

from __future__ import annotations

import importlib
import io
import pickle
import struct
import sys
from collections.abc import Callable, Iterator, Sequence
from itertools import chain
from typing import Any, Literal

from operators.models import libraries
from operators.models.bandit import Choice, OfferBandit
from operators.models.clv import LifetimeValue
from operators.models.propensity import FEATURES, PropensityModel, decision_features
from operators.models.protocol import OnlineModel
from operators.models.recommend import SAMPLE_EVERY, CoOccurrence, sampled
from schemas.rules import NextBestOffer
from state._native import learn_order, recommend_for, touch_product
from state.catalogue import FeatureView
from state.customer import MAX_PENDING_OUTCOMES, CustomerState

libraries.defer_unused()  # before River is first imported (by a model, or a snapshot's unpickling)

ModelMode = Literal["learn", "frozen", "off"]
FEATURES_KEY = "~propensity_features"
MODEL_TYPES: tuple[type[OnlineModel], ...] = (PropensityModel, OfferBandit, CoOccurrence, LifetimeValue)
CHECK = "~check"  # a journal entry of a sampled check (the others are product touches learnt)
BASKET = "~basket"  # a journal entry of an order's basket learnt
ModelsSnapshot = tuple[bytes, bytes, tuple[bytes, ...]]  # see ShardModels.snapshot
MODEL_LIBRARIES = ("river.compose", "river.drift", "river.linear_model", "river.optim", "river.preprocessing")
_KEPT_APART = frozenset(
    {"recommender", "registry", "scorers", "_journal", "_sealed", "_saved"}
)  # not in a snapshot's first part
OPEN_DECISION = struct.Struct(f"<q{len(FEATURES)}d")
"""A decision awaiting its outcome, as a customer keeps it (``state.outcomes``: these records packed,
oldest first): when it was made and the propensity features then, as float64s (exact)."""
OFFER_FIELDS = 3  # an offer choice awaiting its reward in ``state.offers_open``: decided at, offer, segment


class ShardModels:
    """The models of one shard: scores at decision points, learning when outcomes resolve."""

    def __init__(
        self,
        mode: ModelMode,
        horizon_ms: int,
        policy: NextBestOffer | None = None,
        session_timeout_ms: int = 30 * 60_000,
    ) -> None:
        self.mode = mode
        self.session_timeout_ms = session_timeout_ms
        self.horizon_ms = horizon_ms
        policy = policy or NextBestOffer()
        self.propensity = PropensityModel()
        self.bandit = OfferBandit(policy.exploration, policy.seed)
        self.recommender = CoOccurrence()
        self.clv = LifetimeValue()  # loaded from a model file (``nudgeflow fit``), never learnt
        self.registry: dict[str, OnlineModel] = {
            model.name: model for model in (self.propensity, self.bandit, self.recommender, self.clv)
        }
        self.reward_window_ms = policy.reward_window
        self.scorers = {"propensity": self.propensity_score}
        self.dropped = 0  # decisions whose outcome was never learnt (bound reached)
        # called with (customer, decided at, features, raw and calibrated score before learning, outcome)
        # of every outcome learnt, and with (customer, decided at, features, rule id) of every decision kept
        self.on_outcome: Callable[[str, int, tuple[float, ...], float, float, bool], None] | None = None
        self.on_decision: Callable[[str, int, tuple[float, ...], str], None] | None = None
        # what the recommender learnt and checked since the last snapshot (None: no snapshot taken yet)
        self._journal: list[tuple[Any, ...]] | None = None
        self._sealed: list[bytes] = []  # parts of the journal pickled already (see seal_journal)
        self._saved: tuple[bytes, tuple[bytes, ...]] | None = None  # its last base and the journals since
        self.set_mode(mode)

    def snapshot(self) -> ModelsSnapshot:
        """The models for a recovery snapshot, costing what changed: everything but the recommender
        pickled (small), and the recommender as a base pickled once plus, a segment per snapshot, the
        product touches it learnt and the checks it made since. A new base is taken when the
        segments outgrow the base (at most twice its size in all). The journal is kept from the
        first snapshot on: a run without snapshots keeps none. (With a customer store, the engine
        keeps the recommender there instead: :meth:`take_journal`, :meth:`recommender_base`.)"""
        base, segments = self._saved or (b"", ())
        journal = self.take_journal()
        if journal is not None:
            segments = (*segments, journal)
        if self._saved is None or sum(map(len, segments)) > len(base):
            base, segments = self.recommender_base(), ()
        self._saved = (base, segments)
        return self.rest(), base, segments

    def take_journal(self) -> bytes | None:
        """What the recommender learnt and checked since the last call, as pickled lists of entries one
        after the other (``None``: nothing); the journal is kept from the first call on."""
        self.seal_journal()
        sealed, self._sealed = self._sealed, []
        if self._journal is None:
            self._journal = []
        return b"".join(sealed) if sealed else None

    def seal_journal(self) -> None:
        """Pickle what the journal holds now (called now and then between snapshots), so that a
        snapshot, which pauses the flow, pickles only what came after."""
        if self._journal:
            self._sealed.append(pickle.dumps(self._journal, protocol=pickle.HIGHEST_PROTOCOL))
            self._journal = []

    def recommender_base(self) -> bytes:
        """The recommender's whole state, as compact bytes (written without a Python object per link)."""
        return self.recommender.to_bytes()

    def rest(self) -> bytes:
        """Every model but the recommender, pickled."""
        rest = {name: value for name, value in self.__dict__.items() if name not in _KEPT_APART}
        return pickle.dumps(rest, protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def from_snapshot(cls, snapshot: ModelsSnapshot) -> ShardModels:
        """The models of a :meth:`snapshot`: the recommender's base told its journals again, in order
        (learning and checking are deterministic, so it ends as it was)."""
        rest, base, segments = snapshot
        recommender = CoOccurrence()
        recommender.restore_bytes(base)
        for journal in segments:
            for entry in _journal_entries(journal):
                if entry[0] == CHECK:
                    recommender.check(*entry[1:])
                elif entry[0] == BASKET:
                    recommender.learn_basket(entry[1])
                else:
                    recommender.learn(*entry)
        models = cls.__new__(cls)
        models.__setstate__({**pickle.loads(rest), "recommender": recommender})
        return models

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickle (recovery snapshots)."""
        self.__dict__.update(state)
        self.__dict__.setdefault("on_decision", None)
        self._journal, self._saved = None, None  # the first snapshot after a restore takes a new base
        self._sealed = []
        if "clv" not in state:  # a snapshot taken before lifetime value was added
            self.clv = LifetimeValue()
        self.registry = {model.name: model for model in (self.propensity, self.bandit, self.recommender, self.clv)}
        self.scorers = {"propensity": self.propensity_score}

    def set_mode(self, mode: ModelMode) -> None:
        self.mode = mode
        for model in self.registry.values():
            model.frozen = mode == "frozen"

    # --- recommendations ---------------------------------------------------------------
    def product_touched(
        self, state: CustomerState, product: str, category: str | None, message_id: str, viewed: bool, at_ms: int
    ) -> None:
        """A product viewed or added: check the sampled prediction (views), then learn the link (from
        the customer's session, read by the compiled call itself unless the journal keeps it). Learning
        without a journal, a touch not sampled is learnt in the one call that tells whether it is."""
        if self._journal is None and self.mode == "learn":
            features, timeout = state.features, self.session_timeout_ms
            if not touch_product(
                self.recommender, features, at_ms, timeout, product, category, message_id, viewed, SAMPLE_EVERY
            ):
                return
            check = True
        else:
            check = viewed and sampled(message_id)
            if not check and self._journal is None:
                return
        if not check and self.mode != "learn":
            return
        session = session_products(state, at_ms, self.session_timeout_ms)
        if check:  # predicted as a trigger would: from the session and the favourites
            favourites, categories = interests(state), state.features.category_scores
            self.recommender.check(session, product, favourites, categories)
            if self._journal is not None:
                self._journal.append((CHECK, tuple(session), product, favourites, categories))
        if self.mode == "learn":
            self.recommender.learn(session, product, category)
            if self._journal is not None:
                self._journal.append((tuple(session), product, category))

    def order_completed(self, lines: Sequence[Any]) -> None:
        """An order's lines (``OrderLines`` as the scan read them, or ``Product`` lines): the
        recommender learns its basket, the products bought together, in one compiled call."""
        if self.mode != "learn" or not lines:
            return
        basket = learn_order(self.recommender, lines, self._journal is not None)
        if self._journal is not None:
            self._journal.append((BASKET, basket))

    def recommend(self, state: CustomerState, k: int, at_ms: int, include_bought: bool = False) -> list[str]:
        """Top ``k`` products for the customer now, leaving out their cart and their last order: the
        recommender's ``recommend`` of the session's products, with the customer's favourite products
        (:func:`interests`) and category affinities, all read from the features record in one call.
        With ``include_bought``, the customer's own products come first (:func:`own_products`), then
        the recommender's, leaving out only the cart."""
        return recommend_for(self.recommender, state.features, k, at_ms, self.session_timeout_ms, include_bought)

    # --- next best offer ---------------------------------------------------------------
    def choose_offer(
        self, state: CustomerState, segment_id: str, at_ms: int, decision_id: str, candidates: list[str]
    ) -> tuple[Choice, int]:
        """Pick an offer for a customer of ``segment_id`` (:func:`operators.models.bandit.segment`) and
        keep what the reward will be learnt against; the choice is logged. Return it, and when the
        reward window of the customer's oldest open choice ends."""
        context = sys.intern(segment_id)  # one string per segment, however many customers hold it
        choice = self.bandit.choose(decision_id, candidates, context)
        offers_open = (*state.offers_open, at_ms, choice.offer, context)
        if len(offers_open) > MAX_PENDING_OUTCOMES * OFFER_FIELDS:
            offers_open = offers_open[OFFER_FIELDS:]
            self.dropped += 1
        state.offers_open = offers_open
        return choice, offers_open[0] + self.reward_window_ms

    def rewarded(self, state: CustomerState, offer_id: str, at_ms: int, reward: float = 1.0) -> int | None:
        """A click or redemption of ``offer_id`` at ``at_ms`` rewards the open choices of it with ``reward``."""
        still_open: list[tuple[int, str, str]] = []
        for decided_ms, offer, context in open_offers(state):
            if offer == offer_id and decided_ms <= at_ms <= decided_ms + self.reward_window_ms:
                self.bandit.learn(offer, context, True, reward)
            else:
                still_open.append((decided_ms, offer, context))
        state.offers_open = tuple(chain.from_iterable(still_open))
        return self.next_reward_expiry(state)

    def expire_offers(self, state: CustomerState, now_ms: int) -> int | None:
        """Choices whose reward window passed without a reward are failures."""
        window = self.reward_window_ms
        while state.offers_open and state.offers_open[0] + window <= now_ms:
            _, offer, context = state.offers_open[:OFFER_FIELDS]
            state.offers_open = state.offers_open[OFFER_FIELDS:]
            self.bandit.learn(offer, context, False)
        return self.next_reward_expiry(state)

    def next_reward_expiry(self, state: CustomerState) -> int | None:
        return state.offers_open[0] + self.reward_window_ms if state.offers_open else None

    def propensity_score(self, view: FeatureView) -> float:
        return self.propensity.score(view.memo(FEATURES_KEY, decision_features))

    def decided(self, state: CustomerState, at_ms: int, x: tuple[float, ...], rule_id: str = "") -> int:
        """Keep a decision's features ``x`` (:func:`decision_features` at ``at_ms``) until its outcome;
        return when the oldest open one expires."""
        if self.on_decision is not None:
            self.on_decision(state.id, at_ms, x, rule_id)
        outcomes = state.outcomes + OPEN_DECISION.pack(at_ms, *x)
        if len(outcomes) > MAX_PENDING_OUTCOMES * OPEN_DECISION.size:
            outcomes = outcomes[OPEN_DECISION.size :]
            self.dropped += 1
        state.outcomes = outcomes
        return self._next_expiry(outcomes)

    def ordered(self, state: CustomerState, at_ms: int) -> int | None:
        """An order at ``at_ms``: every open decision it falls within the horizon of was a success.

        Returns when the oldest decision still open expires."""
        still_open = []
        for decided_ms, x in open_decisions(state):
            if decided_ms < at_ms <= decided_ms + self.horizon_ms:  # after the decision, not with it
                self._learn(state.id, decided_ms, x, True)
            else:
                still_open.append(OPEN_DECISION.pack(decided_ms, *x))
        state.outcomes = b"".join(still_open)
        return self._next_expiry(state.outcomes)

    def expire(self, state: CustomerState, now_ms: int) -> int | None:
        """Decisions whose horizon passed without an order are failures; return the next expiry."""
        while state.outcomes and self._next_expiry(state.outcomes) <= now_ms:  # type: ignore[operator]
            decided_ms, *x = OPEN_DECISION.unpack_from(state.outcomes)
            state.outcomes = state.outcomes[OPEN_DECISION.size :]
            self._learn(state.id, decided_ms, tuple(x), False)
        return self._next_expiry(state.outcomes)

    def _next_expiry(self, outcomes: bytes) -> int | None:
        """When the oldest of these open decisions expires (``None``: there is none)."""
        return OPEN_DECISION.unpack_from(outcomes)[0] + self.horizon_ms if outcomes else None

    def _learn(self, customer_id: str, decided_ms: int, x: tuple[float, ...], y: bool) -> None:
        raw, p = self.propensity.learn(x, y)
        if self.on_outcome is not None:
            self.on_outcome(customer_id, decided_ms, x, raw, p, y)

    def stats(self) -> dict[str, Any]:
        stats = {name: model.stats() for name, model in self.registry.items()}
        stats["propensity"]["dropped"] = self.dropped
        return stats

    def export(self) -> dict[str, Any]:
        return {name: model.export() for name, model in self.registry.items()}

    def load(self, data: dict[str, Any]) -> None:
        """Start every model from a model file's content (a model it lacks starts afresh)."""
        for name, model in self.registry.items():
            if data.get(name):
                model.load(data[name])

    def adopt_fitted(self, data: dict[str, Any]) -> None:
        """Take a model file's parameters of the models fitted off the stream (``clv``, which the
        replicas never learn), keeping what the restored replicas learnt: a restart with a refreshed
        ``nudgeflow fit`` adopts it."""
        if data.get(self.clv.name):
            self.clv.load(data[self.clv.name])


def import_model_libraries() -> None:
    """Import what the models are built with (River: a third of a second of CPU, see
    :mod:`operators.models.libraries`) now rather than with the first model, e.g. before forking
    processes that then all share it."""
    for name in MODEL_LIBRARIES:
        importlib.import_module(name)


def open_decisions(state: CustomerState) -> list[tuple[int, tuple[float, ...]]]:
    """The customer's decisions awaiting their outcome, oldest first: (decided at, features then)."""
    return [(decided_ms, tuple(x)) for decided_ms, *x in OPEN_DECISION.iter_unpack(state.outcomes)]


def open_offers(state: CustomerState) -> list[tuple[int, str, str]]:
    """The customer's offer choices awaiting a reward, oldest first: (decided at, offer, segment)."""
    offers = state.offers_open
    return [offers[at : at + OFFER_FIELDS] for at in range(0, len(offers), OFFER_FIELDS)]  # type: ignore[misc]


def merge_open(state: CustomerState, other: CustomerState) -> None:
    """Fold the open decisions and offer choices of a just-linked anonymous customer into ``state``'s
    (in time order, the latest :data:`MAX_PENDING_OUTCOMES` of each kept)."""
    if other.outcomes:
        decisions = sorted(open_decisions(state) + open_decisions(other))[-MAX_PENDING_OUTCOMES:]
        state.outcomes = b"".join(OPEN_DECISION.pack(decided_ms, *x) for decided_ms, x in decisions)
    if other.offers_open:
        offers = sorted(open_offers(state) + open_offers(other))[-MAX_PENDING_OUTCOMES:]
        state.offers_open = tuple(chain.from_iterable(offers))


def interests(state: CustomerState) -> list[str]:
    """The customer's favourite products, strongest last (read as older history by the recommender)."""
    return state.features.top_products(5)[::-1]


def own_products(state: CustomerState) -> list[str]:
    """The customer's own products a carousel with ``include_bought`` starts with: their favourite
    products (strongest first), then their last order's, none twice and none in their cart."""
    cart = set(state.features.cart_products)
    mine = dict.fromkeys([*state.features.top_products(None), *state.features.bought])
    return [product for product in mine if product not in cart]


def session_products(state: CustomerState, at_ms: int, timeout_ms: int) -> Sequence[str]:
    """Products viewed in the customer's session, if it is still going at ``at_ms`` (read only)."""
    return state.features.live_session_products(at_ms, timeout_ms)


def _journal_entries(journal: bytes) -> Iterator[tuple[Any, ...]]:
    """The entries of a recommender journal: pickled lists, one after the other."""
    stream = io.BytesIO(journal)
    while stream.tell() < len(journal):
        yield from pickle.load(stream)
