"""The partition settings and the province assignment (cso/partitions.py)."""

from __future__ import annotations

import pytest

from contracts import Topology
from contracts.subjects import PROVINCE_TOKENS
from cso import partitions
from cso.consumer import Subscription
from cso.partitions import (
    MAX_FILTERS,
    MAX_PARTITIONS,
    PROVINCE_WEIGHTS,
    Partition,
    PartitionError,
    family_durables,
    layout_durables,
    layout_hash,
    partition_from_settings,
    provinces_of,
)
from cso.service import Runtime
from cso.settings import Settings
from cso.streams import base_streams


def test_the_assignment_covers_every_token_once_and_is_balanced() -> None:
    weight = dict(PROVINCE_WEIGHTS)
    for count in range(2, MAX_PARTITIONS + 1):
        shares = provinces_of(count)
        assert sorted(t for s in shares for t in s) == list(PROVINCE_TOKENS)
        loads = [sum(weight.get(t, 0) for t in s) for s in shares]
        # Within the heaviest province (山东, 62,074 communities) of each other.
        assert max(loads) - min(loads) <= max(weight.values()), (count, loads)
        assert provinces_of(count) == shares   # stable: the same for the same count


@pytest.mark.parametrize(("partitions", "partition", "message"), [
    ("2", "", "CSO_PARTITIONS=2 needs CSO_PARTITION"),
    ("2", "2", "CSO_PARTITION=2 with CSO_PARTITIONS=2: a partition is numbered 0 to 1"),
    ("2", "x", "CSO_PARTITION='x'"),
    ("", "1", "CSO_PARTITION='1' but CSO_PARTITIONS is 1"),
    ("four", "0", "CSO_PARTITIONS='four'"),
    ("9", "0", "CSO_PARTITIONS=9: from 2 to 8"),
    ("0", "0", "CSO_PARTITIONS=0"),
])
def test_an_inconsistent_setting_is_refused_by_name(partitions: str, partition: str, message: str) -> None:
    with pytest.raises(PartitionError) as e:
        partition_from_settings(partitions, partition)
    assert message in str(e.value)


def test_unset_or_one_is_no_partitioning() -> None:
    assert partition_from_settings("", "") is None
    assert partition_from_settings("1", "0") is None
    assert partition_from_settings("4", "3") == Partition(3, 4)


def test_a_partition_filters_its_provinces_on_every_shape() -> None:
    t = Topology("ns")
    intake = Subscription("CSO_INTAKE", t.context_subjects("intake"), "registry-intake", partitionable=True)
    p1 = intake.partitioned(Partition(1, 2))
    assert p1.durable == f"registry-intake-p1of2-{layout_hash(2)}" and p1.family == "registry-intake"
    filters = p1.filters()
    assert "ns.cso.intake.*.13.*.*" in filters and "ns.cso.intake.*.*.13.*.*" in filters   # 河北
    assert not any(f.startswith("ns.cso.intake.*.37.") for f in filters)   # 山东 is partition 0's
    assert "ns.cso.intake.*" not in filters and "ns.cso.intake.*" in intake.partitioned(Partition(0, 2)).filters()
    facts = Subscription("CSO_REGISTRY", t.context_subjects("registry"), "targets-registry",
                         frozenset({"OrganizationFiled"}), partitionable=True).partitioned(Partition(0, 4))
    assert facts.filters() == [f"ns.cso.registry.*.{p}.>" for p in Partition(0, 4).provinces()]
    assert len(facts.filters()) == len(Partition(0, 4).provinces()) <= 30   # one per province, not per type
    # Not partitionable: as it was, whatever the setting.
    divisions = Subscription("CSO_DIVISIONS", t.context_subjects("divisions"), "targets-divisions")
    assert divisions.partitioned(Partition(0, 2)) is divisions


def test_a_service_with_an_inconsistent_setting_does_not_start() -> None:
    with pytest.raises(PartitionError, match="CSO_PARTITIONS=4 needs CSO_PARTITION"):
        Runtime("targets", "targets", Settings(auth="off", partitions="4", partition=""))
    runtime = Runtime("targets", "targets", Settings(auth="off", partitions="4", partition="3"))
    assert runtime.partition == Partition(3, 4)


def test_no_two_layouts_share_a_durable_name() -> None:
    """The layout (N and its assignment) is in each partition's name: a durable of one layout is
    never taken for another's, whose position is of other provinces (review finding 1)."""
    layouts = [layout_durables("registry-intake", n) for n in range(1, 9)]
    names = [name for layout in layouts for name in layout]
    assert len(names) == len(set(names)) == sum(range(1, 9))
    assert set(names) <= set(family_durables("registry-intake"))
    assert "registry-intake-p0" in family_durables("registry-intake")   # the first release's, retired


def test_a_changed_assignment_is_a_new_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    """Moving one province (other weights) changes the names, so no durable keeps a position of
    provinces it no longer takes while its filters are updated in place (review finding 3)."""
    before = {n: layout_durables("targets-registry", n) for n in range(2, 9)}
    swapped = list(PROVINCE_WEIGHTS)
    swapped[0], swapped[1] = (swapped[0][0], swapped[1][1]), (swapped[1][0], swapped[0][1])
    monkeypatch.setattr(partitions, "PROVINCE_WEIGHTS", tuple(swapped))
    for n in range(2, 9):
        assert set(layout_durables("targets-registry", n)).isdisjoint(before[n]), n


def _collide(a: str, b: str) -> bool:
    """Does some subject match both patterns (NATS wildcards: `*` one token, `>` one or more)?"""
    ta, tb = a.split("."), b.split(".")
    for i in range(max(len(ta), len(tb))):
        x, y = (ta[i] if i < len(ta) else None), (tb[i] if i < len(tb) else None)
        if x == ">" or y == ">":
            return x is not None and y is not None
        if x is None or y is None:
            return False
        if x != y and "*" not in (x, y):
            return False
    return True


def _takes(pattern: str, subject: str) -> bool:
    return _collide(pattern, subject)   # a subject has no wildcards: colliding is matching


CONTEXTS = (("CSO_INTAKE", "intake"), ("CSO_REGISTRY", "registry"), ("CSO_TRAINING", "training"))


@pytest.mark.parametrize("count", range(2, MAX_PARTITIONS + 1))
@pytest.mark.parametrize(("stream", "context"), CONTEXTS)
def test_every_layout_splits_every_token_into_disjoint_filters(count: int, stream: str, context: str) -> None:
    """For every N and every partitionable consumer: no subject is taken by two partitions (nor by
    two filters of one, which nats-server refuses), and every two-digit province token, in every
    shape a subject of the context carries it, is taken by exactly one partition: its own."""
    t = Topology("ns")
    sub = Subscription(stream, t.context_subjects(context), "c", partitionable=True)
    parts = [sub.partitioned(Partition(i, count)) for i in range(count)]
    lists = [p.filters() for p in parts]
    for i, mine in enumerate(lists):
        assert len(mine) == len(set(mine))
        assert not any(_collide(a, b) for k, a in enumerate(mine) for b in mine[k + 1:]), (count, i)
        for theirs in lists[i + 1:]:
            assert not any(_collide(a, b) for a in mine for b in theirs), (count, i)
    prefix = t.context_subjects(context).removesuffix(">")
    for token in PROVINCE_TOKENS:
        owner = next(i for i, share in enumerate(provinces_of(count)) if token in share)
        shapes = ([f"{prefix}organization_filed.{token}.5111.511102",
                   f"{prefix}leshan.organization_filed.{token}.5111.511102",
                   f"{prefix}leshan.hub_established.{token}._._"] if context == "intake"
                  else [f"{prefix}organization_filed.{token}.5111.511102", f"{prefix}hub_established.{token}._._"])
        for subject in shapes:
            taken = [i for i, mine in enumerate(lists) if any(_takes(f, subject) for f in mine)]
            assert taken == [owner], (count, subject, taken)
    if context == "intake":
        # Together exactly what CSO_INTAKE takes, so nothing the stream holds waits for no one.
        spec = dict(base_streams(t))["CSO_INTAKE"]
        assert sorted(f for mine in lists for f in mine) == sorted(spec.subjects)
        for tokens in range(1, 9):   # every other shape: partition 0's
            subject = prefix + ".".join(["x"] * tokens)
            taken = [i for i, mine in enumerate(lists) if any(_takes(f, subject) for f in mine)]
            assert taken == ([] if tokens in (4, 5) else [0]), (count, subject, taken)


def test_a_fact_shape_without_a_two_digit_province_is_no_intake_subject() -> None:
    """No partition's filters take `…organization_filed.5x.…` (no wildcard tells two digits from
    anything else), so CSO_INTAKE does not take it either: its publish fails, where the sender
    sees it, instead of waiting in the stream for a consumer that never comes."""
    subjects = dict(base_streams(Topology("ns")))["CSO_INTAKE"].subjects
    for odd in ("ns.cso.intake.leshan.organization_filed.5x.510104.510104",
                "ns.cso.intake.leshan.organization_filed.5.5101.510104",
                "ns.cso.intake.organization_filed.sichuan.5101.510104",
                "ns.cso.intake.organization_filed.510.5101.510104"):
        assert not any(_takes(s, odd) for s in subjects), odd
    assert any(_takes(s, "ns.cso.intake.leshan.organization_filed.51.5101.510104") for s in subjects)


def test_the_longest_filter_list_is_pinned() -> None:
    """The numbers cso/partitions.py gives (MAX_FILTERS, intake at N=2): a change of the
    assignment or of the shapes that lengthens a list must say so there."""
    t = Topology()
    longest = {}
    for stream, context in CONTEXTS:
        sub = Subscription(stream, t.context_subjects(context), "c", partitionable=True)
        longest[context] = {n: max(len(sub.partitioned(Partition(i, n)).filters()) for i in range(n))
                            for n in range(2, MAX_PARTITIONS + 1)}
    assert longest["intake"] == {2: 108, 3: 72, 4: 58, 5: 46, 6: 40, 7: 32, 8: 30}
    assert longest["registry"] == longest["training"] == {2: 52, 3: 34, 4: 27, 5: 22, 6: 18, 7: 16, 8: 14}
    assert max(max(by_n.values()) for by_n in longest.values()) == MAX_FILTERS
    assert [len(Subscription("CSO_INTAKE", t.context_subjects("intake"), "c", partitionable=True)
                .partitioned(Partition(i, 2)).filters()) for i in range(2)] == [108, 96]
