"""The console's time series in real Redis: bounded, filterable, summed per bucket."""

from __future__ import annotations

import itertools

from slb.storage.store import Store
from slb.storage.timeseries import CONNECTIONS, TimeSeries, bucketed, label_key, parse_label_key


def test_append_and_range_by_labels(store: Store) -> None:
    ts = TimeSeries(store)
    for i in range(10):
        ts.append(CONNECTIONS, {"tier": "l4", "listener": "web", "node": "n1"}, i, t=1000 + i)
        ts.append(CONNECTIONS, {"tier": "l4", "listener": "web", "node": "n2"}, 10 * i, t=1000 + i)
        ts.append(CONNECTIONS, {"tier": "l4", "listener": "api", "node": "n1"}, 7, t=1000 + i)
    web = ts.range(CONNECTIONS, since=1005, match={"listener": "web"})
    assert sorted(s.labels["node"] for s in web) == ["n1", "n2"]
    n1 = next(s for s in web if s.labels["node"] == "n1")
    assert [p.value for p in n1.points] == [5, 6, 7, 8, 9]
    assert [p.t for p in n1.points] == [1005, 1006, 1007, 1008, 1009]
    assert (
        ts.range(CONNECTIONS, since=0, until=1001, match={"listener": "api"})[0].points[-1].t
        == 1001
    )
    assert ts.range(CONNECTIONS, since=0, match={"listener": "nosuch"}) == []
    # Per bucket, each node's latest point, summed over nodes.
    everything = ts.range(CONNECTIONS, since=1000, match={"listener": "web"})
    assert bucketed(everything, since=1000, until=1009, step=5) == [(1000, 44.0), (1005, 99.0)]


def test_every_series_is_bounded_by_count_and_age(store: Store) -> None:
    ts = TimeSeries(store, retention_s=100, max_points=20)
    for i in range(50):
        ts.append(CONNECTIONS, {"listener": "web"}, i, t=1000 + i)
    (series,) = ts.range(CONNECTIONS, since=0)
    assert len(series.points) == 20
    assert series.points[0].value == 30
    ts.append(CONNECTIONS, {"listener": "web"}, 1, t=1200)
    (series,) = ts.range(CONNECTIONS, since=0)
    assert [p.t for p in series.points] == [1200]
    assert store.redis.ttl(store.key("ts", CONNECTIONS, "listener=web")) > 100


def test_a_writer_thins_idle_series_without_changing_sums(store: Store) -> None:
    """A zero after a zero is written once a minute: node n2 idles while n1 works, and the
    sum per bucket is what it would be with every zero; a series that wakes is written at
    once, and its first zero after work too."""
    ts = TimeSeries(store, idle_every_s=60)
    n1 = {"listener": "web", "node": "n1"}
    n2 = {"listener": "web", "node": "n2"}
    ts.append_many([(CONNECTIONS, {"listener": "gone", "node": "n3"}, 0)], 1000)
    for i in range(30):  # every 5 s for 150 s; n2 works from 100 s to 115 s
        t = 1000 + 5 * i
        ts.append_many([(CONNECTIONS, n1, i), (CONNECTIONS, n2, 7 if 100 <= 5 * i < 120 else 0)], t)
    by_node = {s.labels["node"]: s for s in ts.range(CONNECTIONS, since=0)}
    assert len(by_node["n1"].points) == 30
    n2_points = [(p.t, p.value) for p in by_node["n2"].points]
    work = [(1100, 7), (1105, 7), (1110, 7), (1115, 7), (1120, 0)]  # and the first zero after
    start = n2_points.index((1100, 7))
    assert n2_points[0] == (1000, 0)
    assert n2_points[start : start + len(work)] == work
    idle = [p for p in n2_points if p not in work]  # a zero about once a minute
    assert all(value == 0 for _, value in idle)
    assert 2 <= len(idle) <= 4, n2_points
    written = [t for t, _ in n2_points if t <= 1100 or t >= 1120]  # zeros, and work's first
    gaps = [b - a for a, b in itertools.pairwise(written)]
    assert all(0 < gap <= 65 for gap in gaps), n2_points  # never more than a minute apart
    sums = dict(bucketed(list(by_node.values()), since=1000, until=1145, step=5))
    assert sums == {1000 + 5 * i: i + (7 if 100 <= 5 * i < 120 else 0) for i in range(30)}
    # A series no longer sampled (n3, only at the start) leaves the writer's memory.
    assert list(ts._idle_since) == [store.key("ts", CONNECTIONS, label_key(n2))]
    # Without thinning every zero is kept.
    plain = TimeSeries(store)
    for i in range(3):
        plain.append(CONNECTIONS, {"listener": "idle"}, 0, t=2000 + i)
    assert len(plain.range(CONNECTIONS, since=0, match={"listener": "idle"})[0].points) == 3


def test_idle_series_are_written_again_spread_over_the_minute_with_three_commands(
    store: Store,
) -> None:
    """A thousand series that fall idle together are not all written again in one sample:
    each gets its repeated zero at its own phase, and without SADD or ZREMRANGEBYRANK."""
    ts = TimeSeries(store, idle_every_s=60)
    labels = [{"listener": f"l{i}", "node": "n1"} for i in range(1000)]
    ts.append_many([(CONNECTIONS, one, 0) for one in labels], 1000)

    def calls() -> dict[str, int]:
        stats = store.redis.info("commandstats")
        return {c: stats.get(f"cmdstat_{c}", {}).get("calls", 0)
                for c in ("zadd", "sadd", "zremrangebyrank")}  # fmt: skip

    before = calls()
    for k in range(1, 13):  # every 5 s for a minute
        ts.append_many([(CONNECTIONS, one, 0) for one in labels], 1000 + 5 * k)
    after = calls()
    per_sample: dict[float, int] = {}
    for one in ts.range(CONNECTIONS, since=1001):
        assert len(one.points) == 1, one  # one repeated zero each within the minute
        per_sample[one.points[0].t] = per_sample.get(one.points[0].t, 0) + 1
    assert sum(per_sample.values()) == 1000
    assert max(per_sample.values()) <= 200, per_sample  # all at once would be 1,000
    assert after["zadd"] - before["zadd"] == 1000
    assert after["sadd"] == before["sadd"]
    assert after["zremrangebyrank"] == before["zremrangebyrank"]


def test_a_listeners_chart_reads_its_own_index_only(store: Store) -> None:
    """Each listener's label sets are indexed apart, so its chart does not read every other
    listener's (at 10,000 listeners of 10 backends, 100,000 per backend series)."""
    ts = TimeSeries(store)
    for i in range(50):
        ts.append(CONNECTIONS, {"listener": f"l{i}", "node": "n1"}, i, t=1000)
    ts.append(CONNECTIONS, {"listener": "odd:name", "node": "n1"}, 5, t=1000)
    ts.append(CONNECTIONS, {"node": "n1"}, 9, t=1000)  # no listener: the series' own index
    assert store.redis.smembers(store.key("ts-index", CONNECTIONS, "l7")) == {
        b"listener=l7,node=n1"
    }

    def values(**match: str) -> list[float]:
        return [p.value for s in ts.range(CONNECTIONS, since=0, match=match) for p in s.points]

    assert values(listener="l7") == [7]
    assert values(listener="odd:name") == [5]
    assert len(ts.range(CONNECTIONS, since=0)) == 52  # unfiltered: every index
    # A series that expired leaves its listener's index at the next read.
    store.redis.delete(store.key("ts", CONNECTIONS, "listener=l7,node=n1"))
    assert values(listener="l7") == []
    assert not store.redis.smembers(store.key("ts-index", CONNECTIONS, "l7"))


def test_label_keys_are_canonical_and_safe() -> None:
    assert label_key({"node": "n1", "listener": "web"}) == "listener=web,node=n1"
    assert label_key({"a": "x,y=z"}) == "a=x_y_z"
    assert parse_label_key("listener=web,node=n1") == {"listener": "web", "node": "n1"}
