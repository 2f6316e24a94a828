"""Partitions of a hot consumer by province: N replicas on disjoint regions, each its own durable.

Replicas that share one durable consumer get interleaved batches of every region, and two batches
of neighbouring organizations move the same coverage rows (county, city, province): the second
waits for the first's commit. With `CSO_PARTITIONS=N` and `CSO_PARTITION=i` (0 ≤ i < N) replica i
owns the durable `<durable>-p<i>of<N>-<assignment>` instead, whose filter subjects take only the provinces assigned
to partition i. Every subject carries the province as a token (contracts/subjects.py), so the
split is the server's: each partition receives, parses and applies only its own provinces, in
stream order, and all events of one region (hence of one organization) go to one partition.

The assignment (`provinces_of`) is stable for a given N: the 31 provinces, heaviest first by
their communities in the 2023 edition, each to the partition with the least weight so far; every
other two-digit token (no province today, but an envelope's region may carry one, and registry
must still answer it) by its number modulo N. Subjects of any other shape on intake (not an
intake fact's four or five tokens) go to partition 0, which dead-letters them as before.

A subject of an intake fact's shape whose province token is not two digits (`…organization_filed.
5x.5101.510104`, or `.5.`) matches no partition's filters, and no wildcard can take "any other
token" without taking every one: it would wait in the stream for ever, never dead-lettered, its
publisher never answered. So CSO_INTAKE does not take such subjects at all
(contracts.subjects.intake_stream_subjects, the union of every layout's intake filters): their
JetStream publish fails at once with "no response from stream", an error the sender sees,
partitioned or not. Contexts' subjects (`cso.<context>.<event>.<province>.…`) are made by the
services' outboxes from validated regions only.

Changing N: see infra/README.md, "Partitions". The layout (N and a hash of the assignment) is in
every durable's name, so no two layouts share one. A durable of a new layout starts at the lowest
point every durable of the old layout had acknowledged (the lowest of their ack floors), whichever
old partition held its provinces: what lies between comes again and the inbox takes it for the
duplicate it is; from the stream's first message when a floor does not fit the stream as it is
now (a leftover of a stream since lost or cut). Old durables are deleted once no replica holds them
(cso/consumer.py). When the bus lost what a partition had read (BusWatch), every durable of the
layout is deleted, and every idle one of another layout, so that every partition, not only the one
whose replica saw the gap, reads the stream again from its start.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from contracts.subjects import PROVINCE_TOKENS, intake_fact_subjects, intake_other_shapes

from .settings import env

# Provinces by communities (村/社区) in the 2023 edition, the load's rough weight (cso/divisions/data).
PROVINCE_WEIGHTS: tuple[tuple[str, int], ...] = (
    ("37", 62074), ("13", 54145), ("41", 52378), ("51", 34412), ("43", 29534), ("42", 27057),
    ("44", 26842), ("33", 25547), ("36", 22080), ("32", 21958), ("14", 21895), ("61", 20356),
    ("34", 18334), ("52", 17964), ("62", 17718), ("35", 17498), ("21", 16727), ("45", 16681),
    ("53", 14888), ("65", 14721), ("15", 14592), ("23", 13877), ("22", 11860), ("50", 11270),
    ("11", 7535), ("31", 6509), ("12", 5617), ("54", 5580), ("63", 4716), ("46", 3296), ("64", 2912))
# The most partitions a service may be split in: the NATS users' permissions name each durable
# (cso/natsauth.py). The longest filter lists (MAX_FILTERS, pinned by tests/unit/test_partitions.py)
# are intake's at N=2: 108 subjects for partition 0 (its 52 tokens in both intake forms, and the 4
# other shapes), 96 for partition 1; at N=3 72, then fewer; a context's at most 52. nats-server
# 2.15 takes them (test_intake_partitions_route_every_shape_to_exactly_one), but the limit of 100
# filter subjects proposed for it (nats-server issue 6046, a server option up to 1,000) would refuse
# intake's N=2; no shorter list splits the same way (each partition names each of its tokens once
# per intake form), so N=2 for registry would need that option, or N ≥ 3.
MAX_PARTITIONS = 8
MAX_FILTERS = 108
PARTITIONS_SETTING, PARTITION_SETTING = "CSO_PARTITIONS", "CSO_PARTITION"


class PartitionError(ValueError):
    """The partition settings contradict themselves or the durables already on the server."""


@dataclass(frozen=True)
class Partition:
    """Partition `index` of `count` (count ≥ 2: one partition is no partitioning)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 2 <= self.count <= MAX_PARTITIONS:
            raise PartitionError(f"{PARTITIONS_SETTING}={self.count}: from 2 to {MAX_PARTITIONS} "
                                 f"(or 1, or unset, for none)")
        if not 0 <= self.index < self.count:
            raise PartitionError(f"{PARTITION_SETTING}={self.index} with {PARTITIONS_SETTING}={self.count}: "
                                 f"a partition is numbered 0 to {self.count - 1}")

    def durable(self, base: str) -> str:
        """`<base>-p<i>of<N>-<assignment>`: the layout is in the name, so no durable of one layout
        ever bears the name of another's (whose position is of other provinces), whether N or the
        assignment of provinces to partitions (PROVINCE_WEIGHTS, the dealing rule) changed."""
        return f"{base}-p{self.index}of{self.count}-{layout_hash(self.count)}"

    @property
    def label(self) -> str:
        """Said in the durable's description, for whoever lists the consumers."""
        return f"cso partition {self.index} of {self.count}, assignment {layout_hash(self.count)}"

    def provinces(self) -> tuple[str, ...]:
        return provinces_of(self.count)[self.index]


def partition_from_settings(partitions: str, partition: str) -> Partition | None:
    """The partition the settings give (CSO_PARTITIONS, CSO_PARTITION), None when unpartitioned;
    a clear error, naming the setting, for any other combination."""
    try:
        count = int(partitions or "1")
    except ValueError:
        raise PartitionError(f"{PARTITIONS_SETTING}={partitions!r}: a whole number of partitions") from None
    if count == 1:
        if partition not in ("", "0"):
            raise PartitionError(f"{PARTITION_SETTING}={partition!r} but {PARTITIONS_SETTING} is 1 (or unset): "
                                 f"set {PARTITIONS_SETTING} to the number of partitions")
        return None
    if partition == "":
        raise PartitionError(f"{PARTITIONS_SETTING}={count} needs {PARTITION_SETTING}: which of the {count} "
                             f"partitions (0 to {count - 1}) this replica takes")
    try:
        index = int(partition)
    except ValueError:
        raise PartitionError(f"{PARTITION_SETTING}={partition!r}: a number from 0 to {count - 1}") from None
    return Partition(index, count)


def partition_from_env() -> Partition | None:
    return partition_from_settings(env(PARTITIONS_SETTING, ""), env(PARTITION_SETTING, ""))


def provinces_of(count: int) -> tuple[tuple[str, ...], ...]:
    """Every two-digit province token, split in `count` disjoint sets (each sorted)."""
    loads, shares = [0] * count, [set[str]() for _ in range(count)]
    for code, weight in PROVINCE_WEIGHTS:
        least = min(range(count), key=lambda i: (loads[i], i))
        loads[least] += weight
        shares[least].add(code)
    known = {code for code, _ in PROVINCE_WEIGHTS}
    for n, token in enumerate(PROVINCE_TOKENS):
        if token not in known:
            shares[n % count].add(token)
    return tuple(tuple(sorted(s)) for s in shares)


def layout_hash(count: int) -> str:
    """A short digest of the assignment `provinces_of(count)`: it changes when any province moves."""
    text = "|".join(",".join(share) for share in provinces_of(count))
    return hashlib.sha256(text.encode()).hexdigest()[:6]


def layout_durables(base: str, count: int) -> list[str]:
    """The durables of every partition of the `count`-partition layout of `base` (1: `base` itself)."""
    if count == 1:
        return [base]
    return [Partition(i, count).durable(base) for i in range(count)]


def family_durables(base: str) -> list[str]:
    """Every durable name a layout of `base` may bear: unpartitioned, each partition of each count
    (the current assignment), and `<base>-p<i>` of the first partitioned release (c31a3b0), whose
    name did not say its layout: never the current layout, so always retired."""
    names = [base, *(f"{base}-p{i}" for i in range(MAX_PARTITIONS))]
    for count in range(2, MAX_PARTITIONS + 1):
        names += layout_durables(base, count)
    return names


def partition_filters(prefix: str, types: list[str] | None, partition: Partition) -> list[str]:
    """The filter subjects of `partition` on a context `prefix` (`cso.<context>.`, namespace
    included): `<prefix><event>.<province>.>` for its provinces, the event token a wildcard when
    `types` is None (every event of the context: one subject per province, not per type and
    province, so the list stays short). On intake (`cso.intake.`) both intake forms, with and
    without the publisher's name; partition 0 takes the subjects of any other shape as well."""
    provinces = partition.provinces()
    if prefix.endswith(".intake."):
        # Together, for any N: CSO_INTAKE's subjects (contracts.subjects.intake_stream_subjects).
        filters = intake_fact_subjects(prefix, provinces)
        if partition.index == 0:
            filters += intake_other_shapes(prefix)
        return filters
    events = types or ["*"]
    return [f"{prefix}{e}.{p}.>" for e in events for p in provinces]
