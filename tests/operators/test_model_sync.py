"""One recommender across shards: global versions built from every shard's touches, adopted at boundaries."""

from __future__ import annotations

import itertools
import pickle
from random import Random

import orjson
import pytest

from operators.models import BASKET
from operators.models.propensity import FEATURES, PropensityModel
from operators.models.recommend import CoOccurrence, adopt
from operators.models.sync import GlobalVersions, Propensity, Recommendations, ReplicaSync, SyncSchedule

HOUR = 3_600_000
PRODUCTS = [f"p{i}" for i in range(12)]


def touches(seed: int, count: int) -> list[tuple[int, tuple[tuple[str, ...], str, str]]]:
    """``count`` product touches (mark, touch) over five hours, in mark order."""
    rng = Random(seed)
    out = []
    for _ in range(count):
        session = tuple(rng.sample(PRODUCTS, rng.randint(0, 3)))
        product = rng.choice(PRODUCTS)
        out.append((rng.randrange(5 * HOUR), (session, product, f"c{PRODUCTS.index(product) % 3}")))
    return sorted(out, key=lambda item: item[0])


def by_period(stream, schedule):
    periods: dict[int, list] = {}
    for mark, touch in stream:
        periods.setdefault(schedule.period_of(mark), []).append(touch)
    return periods


def learnt(touches_in_order) -> CoOccurrence:
    model = CoOccurrence()
    for history, product, category in touches_in_order:
        model.learn(list(history), product, category)
    return model


def handed_over_at_once(streams, reached_ms: int, kind=None) -> tuple[GlobalVersions, list[ReplicaSync]]:
    """Each shard learns its whole stream, then hands over the periods that end by ``reached_ms``."""
    versions = GlobalVersions(len(streams), kind)
    syncs = []
    for shard, stream in enumerate(streams):
        sync = ReplicaSync(SyncSchedule(HOUR), shard, kind=kind or Recommendations())
        for mark, example in stream:
            sync.learnt(mark, example)
        sync.covered(reached_ms, versions)
        syncs.append(sync)
    return versions, syncs


def test_a_version_is_every_shards_touches_period_by_period_then_shard_by_shard():
    schedule = SyncSchedule(HOUR)
    streams = [touches(seed, 60) for seed in range(3)]
    versions, _ = handed_over_at_once(streams, 3 * HOUR)  # periods 0, 1 and 2 are whole
    parts = [by_period(stream, schedule) for stream in streams]
    expected = learnt(t for period in range(3) for part in parts for t in part.get(period, []))
    assert versions.version(2) == expected.to_bytes()
    assert versions.version(3) is None  # nobody has covered period 3 yet


def test_orders_baskets_are_examples_of_the_recommenders_versions_as_touches_are():
    schedule = SyncSchedule(HOUR)
    rng = Random(7)
    streams = []
    for seed in range(3):  # touches and, among them, orders' baskets of 2 to 5 products
        baskets = [
            (rng.randrange(5 * HOUR), (BASKET, [(p, None) for p in rng.sample(PRODUCTS, rng.randint(2, 5))]))
            for _ in range(10)
        ]
        streams.append(sorted(touches(seed, 40) + baskets, key=lambda item: item[0]))
    versions, _ = handed_over_at_once(streams, 3 * HOUR)
    parts = [by_period(stream, schedule) for stream in streams]
    expected = CoOccurrence()
    for example in (e for period in range(3) for part in parts for e in part.get(period, [])):
        if example[0] == BASKET:
            expected.learn_basket(example[1])
        else:
            expected.learn(list(example[0]), example[1], example[2])
    assert versions.version(2) == expected.to_bytes()
    assert expected.stats()["products"] == len(PRODUCTS)


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_the_versions_are_the_same_bytes_whatever_order_and_steps_the_shards_hand_over_in(order):
    schedule = SyncSchedule(HOUR)
    streams = [touches(seed, 40) for seed in range(3)]
    reference, _ = handed_over_at_once(streams, 5 * HOUR)
    versions = GlobalVersions(3)
    syncs = {shard: ReplicaSync(schedule, shard) for shard in range(3)}
    built = {}
    for hour in range(1, 6):  # each shard covers hour by hour, in its own order; versions built as they become ready
        for shard in order:
            for mark, touch in streams[shard]:
                if (hour - 1) * HOUR <= mark < hour * HOUR:
                    syncs[shard].learnt(mark, touch)
            syncs[shard].covered(hour * HOUR, versions)
            if versions.ready(hour - 1):
                built[hour - 1] = versions.version(hour - 1)
    assert versions.version(4) == reference.version(4)
    assert built[1] == handed_over_at_once(streams, 2 * HOUR)[0].version(1)


def test_a_period_handed_over_again_must_hold_the_same_touches():
    versions = GlobalVersions(2)
    versions.hand_over(0, 0, {0: [((), "a", "c")]})
    versions.hand_over(0, 0, {0: [((), "a", "c")]})  # after a restore: the same, accepted
    with pytest.raises(ValueError, match="shard 0 handed over other examples for period 0"):
        versions.hand_over(0, 0, {0: [((), "b", "c")]})
    with pytest.raises(ValueError, match="before it has covered it"):
        versions.hand_over(1, 0, {1: [((), "a", "c")]})


def test_a_period_handed_over_again_after_its_version_was_built_is_not_learnt_twice():
    versions = GlobalVersions(1)
    versions.hand_over(0, 0, {0: [(("a",), "b", "c")]})
    first = versions.version(0)
    versions.hand_over(0, 1, {0: [(("a",), "b", "c")], 1: []})  # a shard restored from before it
    assert versions.version(1) == first == learnt([(("a",), "b", "c")]).to_bytes()


def test_equal_examples_are_the_same_hand_over_however_their_strings_are_shared():
    versions = GlobalVersions(1)
    product = "p" * 20
    shared = [((product,), product, "c")]
    apart = [(("".join(["p"] * 20),), "".join(["p"] * 20), "c")]
    assert pickle.dumps(shared) != pickle.dumps(apart)
    versions.hand_over(0, 0, {0: shared})
    versions.hand_over(0, 0, {0: apart})  # not refused


def test_a_shard_without_touches_still_has_to_cover_a_period_before_its_version_is_built():
    versions = GlobalVersions(2)
    versions.hand_over(0, 3, {1: [(("a",), "b", "c")]})
    assert versions.version(1) is None
    versions.hand_over(1, 1, {})
    assert versions.version(1) == learnt([(("a",), "b", "c")]).to_bytes()
    with pytest.raises(ValueError, match="older than the last built"):
        versions.version(0)


def test_the_schedule_says_which_version_a_period_uses():
    assert SyncSchedule(HOUR).version_for(5) == 3  # one whole period of lag
    assert SyncSchedule(HOUR, lag=0).version_for(5) == 4
    assert ReplicaSync(SyncSchedule(HOUR), 0).needs(5 * HOUR + 1) == 3
    with pytest.raises(ValueError):
        SyncSchedule(0)


def test_an_adopted_replica_is_the_global_version_plus_its_own_touches_since_and_keeps_its_counters():
    schedule = SyncSchedule(HOUR)
    own = touches(1, 50)
    others = touches(2, 50)
    versions = GlobalVersions(2)
    sync, other = ReplicaSync(schedule, 0), ReplicaSync(schedule, 1)
    replica = CoOccurrence()
    for mark, touch in own:
        if mark < 3 * HOUR:
            sync.learnt(mark, touch)
            replica.learn(list(touch[0]), touch[1], touch[2])
    for mark, touch in others:
        other.learnt(mark, touch)
    replica.check(["p1"], "p2", [], {})
    counters = replica.stats()
    sync.covered(3 * HOUR, versions)
    other.covered(5 * HOUR, versions)
    assert sync.needs(3 * HOUR) == 1
    sync.adopt(replica, 1, versions.version(1))
    mine = by_period(own, schedule)
    expected = CoOccurrence()
    adopt(expected, versions.version(1))
    for touch in mine.get(2, []):
        expected.learn(list(touch[0]), touch[1], touch[2])
    assert replica.export() == expected.export()
    assert replica.stats() == {**counters, "products": expected.stats()["products"]}
    assert sync.needs(3 * HOUR + 5) is None  # adopted: nothing more to adopt in period 3
    assert set(sync.own) == {2}  # what the next version will not hold yet


def test_a_shard_restored_mid_period_ends_as_if_it_had_not_stopped():
    schedule = SyncSchedule(HOUR)
    streams = [touches(seed, 80) for seed in (3, 4)]

    def run(stop_at: int | None) -> list[bytes]:
        versions = GlobalVersions(2)
        syncs = [ReplicaSync(schedule, shard) for shard in range(2)]
        replicas = [CoOccurrence(), CoOccurrence()]
        cursors = [0, 0]
        for step, end in enumerate(range(HOUR // 2, 6 * HOUR, HOUR // 2)):  # half-hour steps
            for shard in range(2):
                stream = streams[shard]
                while cursors[shard] < len(stream) and stream[cursors[shard]][0] < end:
                    mark, touch = stream[cursors[shard]]
                    cursors[shard] += 1
                    wanted = syncs[shard].needs(mark)
                    if wanted is not None and wanted >= 0:
                        syncs[shard].adopt(replicas[shard], wanted, versions.version(wanted))
                    replicas[shard].learn(list(touch[0]), touch[1], touch[2])
                    syncs[shard].learnt(mark, touch)
                syncs[shard].covered(end, versions)
            if step == stop_at:  # shard 1 stops mid-period and is restored from its snapshot
                saved = pickle.dumps((syncs[1].state(), replicas[1].to_bytes()))
                state, data = pickle.loads(saved)
                syncs[1] = ReplicaSync.restored(schedule, 1, state)
                replicas[1] = CoOccurrence()
                replicas[1].restore_bytes(data)
        return [replica.to_bytes() for replica in replicas]

    assert run(stop_at=4) == run(stop_at=None)  # 2.5 h: in the middle of period 2


def outcomes(seed: int, count: int) -> list[tuple[int, tuple[tuple[float, ...], bool]]]:
    """``count`` propensity outcomes (mark, (inputs, label)) over four hours, in mark order: recent buyers order."""
    rng = Random(seed)
    out = []
    for _ in range(count):
        x = tuple(rng.uniform(0, 30) for _ in FEATURES)
        out.append((rng.randrange(4 * HOUR), (x, x[0] < 10 or rng.random() < 0.1)))
    return sorted(out, key=lambda item: item[0])


def test_the_propensity_versions_are_one_learner_fed_every_shards_outcomes_and_a_replica_keeps_its_quality():
    schedule = SyncSchedule(HOUR)
    streams = [outcomes(seed, 60) for seed in range(3)]
    versions, syncs = handed_over_at_once(streams, 4 * HOUR, Propensity())
    replica = PropensityModel()
    for _, example in streams[0]:
        replica.learn(*example)  # scored first: its progressive quality
    parts = [by_period(stream, schedule) for stream in streams]
    one = PropensityModel()
    for example in (e for period in range(3) for part in parts for e in part.get(period, [])):
        one.learn(*example)
    assert orjson.loads(versions.version(2)) == one.export()  # the same weights, to the bit
    quality = replica.stats()["progressive"]
    syncs[0].adopt(replica, 2, versions.version(2))
    for x, y in parts[0].get(3, []):  # its own outcomes of the period after the version
        one.learn(x, y)
    assert replica.export() == {**one.export(), "learnt": replica.learnt}
    assert replica.stats()["progressive"] == quality
    x = streams[1][0][1][0]
    assert replica.score(x) == one.score(x)
