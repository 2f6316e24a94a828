"""Applying a pulled batch of events to coverage: facts in, affected entities' timelines
recomputed, coverage moved by the difference. One transaction per batch, O(tiers) rows per event."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncConnection

from contracts import Envelope
from contracts import events as ev

from . import history, store
from .domain import coverage as cov
from .domain import entities as ent


async def apply_facts(conn: AsyncConnection, events: Sequence[Envelope[Any]]) -> set[str]:
    """Record the facts of `events` and bring every affected entity's contribution up to date.
    Returns the regions whose coverage moved."""
    imports = any(isinstance(e.payload, ev.DivisionsImported | ev.DivisionChanged) for e in events)
    await store.lock_divisions(conn, exclusive=imports)
    rows, pairs, direct = [], [], set()
    for e in events:
        key = ent.entity_key(e.payload)
        if key is None:
            continue
        if isinstance(e.payload, ev.DivisionsImported):
            await history.import_edition(conn, e)
        rows.append((e.event_id, key, e.type, ent.effective_date(e.payload), e.occurred_at,
                     e.payload.model_dump_json()))
        pairs += ent.memberships(key, e.payload)
        direct.add(key)
        if isinstance(e.payload, ev.DivisionChanged) and e.payload.successor_code \
                and len(e.payload.successor_code) >= 6:
            # Its successor may lie in another county (a township transferred, a county recoded):
            # that county's hubs and bases now serve, and its divisions count from, the change.
            direct.add(f"div:{e.payload.successor_code[:6]}")
    await store.insert_facts(conn, rows)
    await store.insert_memberships(conn, pairs)
    return await recompute(conn, direct, {e.event_id: e.payload for e in events})


async def recompute(conn: AsyncConnection, direct: set[str],
                    known: Mapping[UUID, ev.Payload] | None = None) -> set[str]:
    """Recompute the timelines of the entities whose facts (or whose inputs) are in `direct`;
    `known` are payloads already parsed (the batch's), by event id."""
    if not direct:
        return set()
    # Lock the entities the facts are about first: a replica that is applying other facts of the
    # same hub, base or party organization commits before we read which townships or organizations
    # they link to, so a link it has just written is not missed.
    held = await store.lock_timelines(conn, direct)
    by_kind: dict[str, set[str]] = {}
    for key in direct:
        by_kind.setdefault(key.split(":", 1)[0], set()).add(key)
    orgs = set(by_kind.get("org", ()))
    hubcov: set[str] = set()
    basecov: set[str] = set()
    supported: set[str] = set()     # "supported:<organization>": funded by a project (domain/funding.py)
    faccov: set[str] = set()        # "<kind>:<code>": a division with a facility of that kind
    for owner, member in await store.members_of(conn, by_kind.get("party", set()) | by_kind.get("hub", set())
                                                | by_kind.get("base", set()) | by_kind.get("fund", set())
                                                | by_kind.get("facility", set())):
        if owner.startswith("party:"):
            orgs.add(member)
        elif owner.startswith("hub:"):
            hubcov.add(member)
        elif owner.startswith("fund:"):
            supported.add(member)
        elif owner.startswith("facility:"):
            faccov.add(member)
        else:
            basecov.add(member)
    if hubcov or basecov:
        # A hub or base that serves a township merged or recoded serves its successor (whatever
        # county it lies in) from the change: a dissolution or closing after it moves that one's.
        moved = await history.lineage_for(conn, hubcov | basecov)
        hubcov.update(s for t in list(hubcov) for s in moved.successors(t))
        basecov.update(s for t in list(basecov) for s in moved.successors(t))
    for div in by_kind.get("div", ()):
        county = div.split(":", 1)[1]
        orgs.update(await store.entity_keys_in(conn, ["org"], county))
        # A pool's county recoded (县改区): its members count in the new county from the day.
        by_kind.setdefault("person", set()).update(await store.entity_keys_in(conn, ["person"], county))
        # Hubs and bases count at their region, which a merge or recode moves (domain/lineage.py).
        by_kind.setdefault("hub", set()).update(await store.entity_keys_in(conn, ["hub"], county))
        by_kind.setdefault("base", set()).update(await store.entity_keys_in(conn, ["base"], county))
        # So do funded projects, at their recipient's community or their hub's region.
        by_kind.setdefault("fund", set()).update(await store.entity_keys_in(conn, ["fund"], county))
        # And facilities, and the divisions they cover (a merged township's successor takes them).
        by_kind.setdefault("facility", set()).update(await store.entity_keys_in(conn, ["facility"], county))
        faccov.update(k.split(":", 1)[1] for k in await store.entity_keys_in(conn, ["faccov"], county))
        townships = await store.townships_under(conn, county)
        hubcov.update(townships)
        basecov.update(townships)
        # Communities with an incubation point count by their kind, which the divisions say.
        basecov.update(k.split(":", 1)[1] for k in await store.entity_keys_in(conn, ["basecov"], county))

    if faccov:   # ... and the codes standing for those divisions since (domain/lineage.py)
        faccov = ent.facility_coverage_members(
            faccov, await history.lineage_for(conn, {m.split(":", 1)[1] for m in faccov}))
    # An organization's start and community decide how its funding counts: recompute it when it changes.
    supported.update(m for _, m in await store.owners_of(conn, {f"supported:{o[4:]}" for o in orgs}, "fund:"))
    targets = (orgs | supported | by_kind.get("fund", set())
               | {f"hubcov:{t}" for t in hubcov} | {f"basecov:{t}" for t in basecov}
               | {f"faccov:{m}" for m in faccov} | by_kind.get("facility", set())
               | by_kind.get("hub", set()) | by_kind.get("base", set()) | by_kind.get("div", set())
               | by_kind.get("person", set()) | by_kind.get("outstanding", set()))
    if not targets:
        return set()
    stored = held | await store.lock_timelines(conn, targets - held.keys())   # the held are locked and read

    # Inputs: facts of the entities, of the party organizations covering the organizations, of the
    # hubs and bases serving the townships; kinds of their communities and townships.
    links = (await store.owners_of(conn, orgs, "party:") + await store.owners_of(conn, hubcov, "hub:")
             + await store.owners_of(conn, basecov, "base:") + await store.owners_of(conn, supported, "fund:")
             + await store.owners_of(conn, faccov, "facility:"))
    facts = await store.facts_of(conn, targets | {o for o, _ in links} | {f"org:{s[10:]}" for s in supported},
                                 known)
    communities = {getattr(f.payload, "community_code", None)
                   for o in orgs | {f"org:{s[10:]}" for s in supported} for f in facts.get(o, [])}
    places = {getattr(f.payload, "region_code", None) for k, fs in facts.items()
              if k[:4] in ("hub:", "base", "fund", "faci") for f in fs}
    # Division changes of these places (merges, recodes): organizations follow their community,
    # a township's successor takes over what served it (its predecessors' hubs and bases).
    # A county recoded begins or ends; a pool's county may be recoded.
    counties = {k.split(":", 1)[1] for k in by_kind.get("div", ())} | {
        getattr(f.payload, "county_code", None) or "" for k in by_kind.get("person", ()) for f in facts.get(k, [])}
    counties.discard("")
    faccov_codes = {m.split(":", 1)[1] for m in faccov}
    lineage = await history.lineage_for(conn, {c for c in communities | places if c} | hubcov | basecov
                                        | counties | faccov_codes)
    if lineage:
        before_hub = {p for t in hubcov for p, _ in lineage.predecessors(t)}
        before_base = {p for t in basecov for p, _ in lineage.predecessors(t)}
        before_facility = {f"{m.split(':', 1)[0]}:{p}" for m in faccov
                           for p, _ in lineage.predecessors(m.split(":", 1)[1])}
        more = [x for x in await store.owners_of(conn, before_hub, "hub:")
                + await store.owners_of(conn, before_base, "base:")
                + await store.owners_of(conn, before_facility, "facility:") if x not in links]
        links += more
        facts.update(await store.facts_of(conn, {o for o, _ in more} - set(facts), known))
    kinds = await store.division_kinds(conn, {c for c in communities if c} | hubcov | basecov | faccov_codes
                                       | lineage.codes())
    new = ent.timelines_for(targets, facts, links, kinds, lineage)

    delta: cov.Contribution = Counter()
    changed: dict[str, tuple[cov.Timeline, str | None]] = {}
    for key, timeline in new.items():
        if timeline != stored.get(key):
            delta.update(cov.difference(stored.get(key), timeline))
            changed[key] = (timeline, ent.region_of_timeline(timeline) or _fallback_region(key))
    await store.save_timelines(conn, changed)
    return await store.add_coverage(conn, delta)


def _fallback_region(key: str) -> str | None:
    ident = key.split(":", 1)[1]
    if key.startswith("outstanding:"):   # outstanding:<county>:<year>:<organization>
        return ident.split(":", 1)[0]
    if key.startswith("faccov:"):        # faccov:<kind>:<division>
        return ident.split(":", 1)[1]
    return ident if ident.isdigit() else None

