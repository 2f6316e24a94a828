"""The partition settings and the province assignment (cso/partitions.py)."""

from __future__ import annotations

import pytest

from contracts import Topology
from cso import partitions
from cso.consumer import Subscription
from cso.partitions import (
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


def test_the_assignment_covers_every_token_once_and_is_balanced() -> None:
    weight = dict(PROVINCE_WEIGHTS)
    for count in range(2, 9):
        shares = provinces_of(count)
        assert sorted(t for s in shares for t in s) == [f"{n:02d}" for n in range(100)]
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
