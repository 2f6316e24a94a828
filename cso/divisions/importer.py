"""Turning an NBS edition into `DivisionsImported` events, one per county, and publishing them.

Event ids are derived from the content, so importing the same edition twice publishes the same
ids (JetStream's duplicate window and every consumer drop the repeats), while a county whose
data changed gets a new id and is applied again.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import date, datetime, time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from uuid import NAMESPACE_URL, UUID, uuid5

from contracts.envelope import MAX_DIVISIONS_BYTES, encode, make_event
from contracts.events import (
    CHINA,
    CommunityDivision,
    DivisionChanged,
    DivisionRef,
    DivisionsImported,
    TownshipDivision,
)
from contracts.subjects import Topology

from . import nbs
from .changes import Divisions, change_id, changes_between
from .classify import community_kind, township_kind

if TYPE_CHECKING:
    from nats.js.api import PubAck

# Enough messages in flight to hide the round trip, few enough to stay under the server's limit
# on pending acks (and a county's payload can reach a few hundred kB).
PUBLISH_CHUNK = 200
COUNTY_LENGTH = 6

Progress = Callable[[int, int], None]   # (counties published so far, counties in the scope)


class JetStreamPublisher(Protocol):
    """The part of nats-py's JetStreamContext the importer uses."""

    async def publish(
        self,
        subject: str,
        payload: bytes = b"",
        *,
        stream: str | None = None,
        headers: dict[str, Any] | None = None,
    ) -> PubAck: ...


def _county_scope(only: Sequence[str] | None) -> tuple[str, ...] | None:
    prefixes = nbs.check_prefixes(only)
    for prefix in prefixes or ():
        # An event carries a whole county; publishing part of one would read as the county
        # having lost its other townships.
        if len(prefix) > COUNTY_LENGTH:
            raise ValueError(f"only: {prefix} is below county level; a DivisionsImported "
                             f"event carries whole counties, so give at most 6 digits")
    return prefixes


def canonical_json(payload: DivisionsImported) -> str:
    """The payload as JSON with sorted keys and no spacing: equal payloads, equal text."""
    return json.dumps(payload.model_dump(mode="json"), ensure_ascii=False, sort_keys=True,
                      separators=(",", ":"))


def event_id(payload: DivisionsImported) -> UUID:
    digest = hashlib.sha256(canonical_json(payload).encode()).hexdigest()
    return uuid5(NAMESPACE_URL,
                 f"cso:divisions:{payload.edition}:{payload.county.code}:{digest}")


def _unique(path: Path, records: Iterator[nbs.Record]) -> dict[str, nbs.Record]:
    seen: dict[str, nbs.Record] = {}
    for record in records:
        if record.code in seen:
            raise nbs.NbsFormatError(path, record.line, f"code {record.code} repeats line "
                                                        f"{seen[record.code].line}")
        seen[record.code] = record
    return seen


def _communities_by_county(
    path: Path, records: Iterator[nbs.Record], townships: set[str],
) -> Iterator[tuple[str, list[CommunityDivision]]]:
    """The communities of each county in turn, streamed from a file sorted by code.

    Holding one county at a time is what keeps a national import small; it needs each
    county's rows together, which NBS files (sorted by code) have.
    """
    county: str | None = None
    codes: dict[str, int] = {}
    communities: list[CommunityDivision] = []
    for record in records:
        if record.parent not in townships:
            raise nbs.NbsFormatError(path, record.line, f"township {record.parent} of "
                                                        f"{record.code} is not in the streets file")
        this_county = record.code[:COUNTY_LENGTH]
        if this_county != county:
            if county is not None:
                if this_county < county:
                    raise nbs.NbsFormatError(
                        path, record.line, f"{record.code} comes after county {county}'s rows; "
                                           f"the file must be sorted by code")
                yield county, communities
            county, codes, communities = this_county, {}, []
        if record.code in codes:
            raise nbs.NbsFormatError(path, record.line, f"code {record.code} repeats line "
                                                        f"{codes[record.code]}")
        codes[record.code] = record.line
        communities.append(CommunityDivision(code=record.code, name=record.name,
                                             kind=community_kind(record.name)))
    if county is not None:
        yield county, communities


def county_count(directory: Path | str, only: Sequence[str] | None = None) -> int:
    """How many counties an import of `directory` under `only` publishes (the areas file alone)."""
    prefixes = _county_scope(only)
    areas = nbs.read(nbs.locate(directory, nbs.COUNTIES), nbs.COUNTIES, prefixes)
    return sum(1 for record in areas if prefixes is None or record.code.startswith(prefixes))


def county_payloads(
    directory: Path | str, only: Sequence[str] | None = None, edition: str = "2023",
) -> Iterator[DivisionsImported]:
    """One `DivisionsImported` per county, in code order, with its townships and communities.

    `only` limits the import to the counties under some prefixes of at most 6 digits (a
    province, city or county). Everything but the communities is read up front (some 45k rows
    for the whole country); the communities are streamed one county at a time.
    """
    directory = Path(directory)
    prefixes = _county_scope(only)
    paths = {level.stem: nbs.locate(directory, level) for level in nbs.LEVELS}

    def read(level: nbs.Level) -> Iterator[nbs.Record]:
        return nbs.read(paths[level.stem], level, prefixes)

    provinces = _unique(paths[nbs.PROVINCES.stem], read(nbs.PROVINCES))
    cities = _unique(paths[nbs.CITIES.stem], read(nbs.CITIES))
    counties = _unique(paths[nbs.COUNTIES.stem], read(nbs.COUNTIES))
    for city in cities.values():
        if city.parent not in provinces:
            raise nbs.NbsFormatError(paths[nbs.CITIES.stem], city.line,
                                     f"province {city.parent} of {city.code} is not in the "
                                     f"provinces file")
    for county in counties.values():
        if county.parent not in cities:
            raise nbs.NbsFormatError(paths[nbs.COUNTIES.stem], county.line,
                                     f"city {county.parent} of {county.code} is not in the "
                                     f"cities file")
    for prefix in prefixes or ():
        if not any(code.startswith(prefix) for code in counties):
            raise ValueError(f"only: no county in {directory} has a code starting {prefix}")

    townships: dict[str, list[TownshipDivision]] = {code: [] for code in counties}
    township_records = _unique(paths[nbs.TOWNSHIPS.stem], read(nbs.TOWNSHIPS))
    for township in township_records.values():
        if township.parent not in townships:
            raise nbs.NbsFormatError(paths[nbs.TOWNSHIPS.stem], township.line,
                                     f"county {township.parent} of {township.code} is not in "
                                     f"the areas file")
        townships[township.parent].append(TownshipDivision(
            code=township.code, name=township.name,
            kind=township_kind(township.code, township.name)))

    groups = _communities_by_county(paths[nbs.COMMUNITIES.stem], read(nbs.COMMUNITIES),
                                    set(township_records))
    pending = next(groups, None)
    for code in sorted(counties):
        county = counties[code]
        city, province = cities[code[:4]], provinces[code[:2]]
        communities: list[CommunityDivision] = []
        # Every community's township, hence county, is known, and both sequences ascend.
        if pending is not None and pending[0] == code:
            communities = pending[1]
            pending = next(groups, None)
        yield DivisionsImported(
            edition=edition,
            province=DivisionRef(code=province.code, name=province.name),
            city=DivisionRef(code=city.code, name=city.name),
            county=DivisionRef(code=county.code, name=county.name),
            townships=sorted(townships[code], key=lambda t: t.code),
            communities=sorted(communities, key=lambda c: c.code),
        )


async def publish_divisions(
    js: JetStreamPublisher,
    topology: Topology,
    directory: Path | str,
    only: Sequence[str] | None = None,
    edition: str = "2023",
    source: str = "cso-divisions",
    *,
    effective_on: date | None = None,
    progress: Progress | None = None,
) -> int:
    """Publish one event per county, `PUBLISH_CHUNK` at a time awaiting their acks.

    Returns how many events were acknowledged (a duplicate's ack counts: the stream has it).
    A malformed row raises after the counties before it were published; since ids depend only
    on content, publishing again once the file is fixed is safe. `effective_on`, for an edition
    that follows another, is the day its divisions took effect: the events' `occurred_at`, from
    which targets counts the county in this edition (the edition before it answers for earlier
    days). `progress` is called after each county is read and sent.
    """
    occurred_at = datetime.combine(effective_on, time(0), tzinfo=CHINA) if effective_on else None
    total = county_count(directory, only) if progress else 0
    stream = topology.stream("CSO_DIVISIONS")
    published = 0
    batch: list[tuple[str, bytes, str]] = []

    async def flush() -> int:
        acks = await asyncio.gather(*(
            js.publish(subject, data, stream=stream, headers={"Nats-Msg-Id": msg_id})
            for subject, data, msg_id in batch))
        batch.clear()
        return len(acks)

    for payload in county_payloads(directory, only=only, edition=edition):
        envelope = make_event(payload, source=source, event_id=event_id(payload), occurred_at=occurred_at)
        data = encode(envelope)
        if len(data) > MAX_DIVISIONS_BYTES:
            raise ValueError(f"county {payload.county.code}: event of {len(data)} bytes exceeds "
                             f"{MAX_DIVISIONS_BYTES}")
        batch.append((topology.event_subject(payload.TYPE, payload.county.code), data,
                      str(envelope.event_id)))
        if len(batch) >= PUBLISH_CHUNK:
            published += await flush()
        if progress:
            # Per county read, not per acknowledged chunk: reading the 620k communities is
            # most of an import's time, and a province fits in one chunk.
            progress(published + len(batch), total)
    if batch:
        published += await flush()
    return published


def _by_province(payloads: Iterator[DivisionsImported]) -> Iterator[tuple[str, Divisions]]:
    """The divisions of each province in turn (payloads come in code order)."""
    for province, group in itertools.groupby(payloads, key=lambda p: p.province.code):
        yield province, Divisions.of(group)


def edition_changes(previous: Path | str, directory: Path | str, only: Sequence[str] | None,
                    edition: str, effective_on: date,
                    declared: Mapping[str, str] | None = None) -> Iterator[DivisionChanged]:
    """The `DivisionChanged` of every province in both editions under `only`, in code order.

    A province at a time, both editions side by side (both come sorted by code): a change may
    cross county and city lines (a township moved, a county recoded), so a county is compared
    with its whole province, not with itself. `declared` (old → new code, `changes.read_declared`)
    overrides what the names say.
    """
    old = _by_province(county_payloads(previous, only=only, edition="previous"))
    pending = next(old, None)
    unused = dict(declared or {})
    for province, divisions in _by_province(county_payloads(directory, only=only, edition=edition)):
        while pending is not None and pending[0] < province:
            pending = next(old, None)
        if pending is not None and pending[0] == province:
            mine = {c: unused.pop(c) for c in [c for c in unused if c.startswith(province)]}
            yield from changes_between(pending[1], divisions, effective_on, mine)
    if unused:
        # A declared change the import never compared would be dropped without a word.
        raise ValueError(f"declared: {', '.join(sorted(unused))} not in a province both editions hold in "
                         "the scope (a change crosses no province line)")


async def publish_changes(
    js: JetStreamPublisher,
    topology: Topology,
    changes: Sequence[DivisionChanged],
    edition: str,
    source: str = "cso-divisions",
) -> int:
    """Publish each change on its division's subject, awaiting the acks a chunk at a time; ids are
    derived from the edition and the change, so a repeated import repeats them (dropped)."""
    stream = topology.stream("CSO_DIVISIONS")
    published = 0
    for start in range(0, len(changes), PUBLISH_CHUNK):
        chunk = changes[start:start + PUBLISH_CHUNK]
        envelopes = [make_event(c, source=source, event_id=change_id(edition, c),
                                occurred_at=datetime.combine(c.effective_on, time(0), tzinfo=CHINA))
                     for c in chunk]
        await asyncio.gather(*(
            js.publish(topology.event_subject(c.TYPE, c.code), encode(e), stream=stream,
                       headers={"Nats-Msg-Id": str(e.event_id)})
            for c, e in zip(chunk, envelopes, strict=True)))
        published += len(chunk)
    return published
