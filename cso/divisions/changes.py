"""What changed in a province between two editions, as `DivisionChanged` events (pure: no I/O).

NBS publishes each edition whole, never the changes; they are read off the two editions, the way
a civil-affairs clerk reads them, from the top of the hierarchy down and back up:

- a code in both editions whose name differs was **renamed** (county, township or community);
- a township whose code is gone, while a new code carries its name, was **recoded** to it. The
  new code is looked for in the same county first, then in the same city, then in the province:
  a township moved to another county (a district re-drawn), or a county recoded (县改区: every
  township of 犍为县 511123 re-coded under 犍为区 511114) keeps its name under another county.
  Among several candidates in the nearest place that has any, the one whose communities share
  the most names with the old township's is taken; where that still leaves a choice, none is;
- a community whose code is gone, while a new code carries its name, was **recoded** to it: it
  moved to another township (a merge or a split of townships), or its township was recoded or
  moved. It is looked for under its township's successor first, then in its county, then in its
  county's successor, then in its city; in the nearest place that has any, only a single
  candidate is taken (see abolished);
- a township whose code is gone and whose communities went elsewhere was **merged** into the
  township that received most of them (a 镇改街道 that renamed a recoded town reads so too);
- a county whose code is gone was **recoded** to the new county (a code the old edition does not
  have) that received most of its townships, or **merged** into an existing one; failing that, a
  new county of its name in its city, then its province, is its recode;
- `declared` (old code → new code, from a change-set file: `read_declared`) overrides what the
  names say, at any tier, for a change no name reveals;
- a code gone with no successor found was **abolished**.

A split of a township is its new township in the new edition plus a `recoded` event for each
community that moved to it; the old township keeps its code. Every code of the old edition that
the new one lacks gets exactly one `recoded`, `merged` or `abolished`, naming a successor the new
edition has (tests/unit/test_division_changes.py checks this on random editions).

Changes cross county and city lines but not provinces: an import compares the editions a province
at a time, so its scope must hold both ends of a change (a county's scope sees no move out of it).
"""

from __future__ import annotations

import csv
import hashlib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from uuid import NAMESPACE_URL, UUID, uuid5

from contracts.events import DivisionChanged, DivisionsImported

CITY_LENGTH = 4
COUNTY_LENGTH = 6
TOWNSHIP_LENGTH = 9
COMMUNITY_LENGTH = 12


@dataclass(frozen=True)
class Divisions:
    """Code → name of the counties, townships and communities of one edition (some province, or
    part of one). A code's parents are its prefixes, as in NBS codes."""

    counties: dict[str, str] = field(default_factory=dict)
    townships: dict[str, str] = field(default_factory=dict)
    communities: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, payloads: Iterable[DivisionsImported]) -> Divisions:
        out = cls()
        for p in payloads:
            out.counties[p.county.code] = p.county.name
            out.townships.update((t.code, t.name) for t in p.townships)
            out.communities.update((c.code, c.name) for c in p.communities)
        return out

    def level(self, length: int) -> dict[str, str]:
        return {COUNTY_LENGTH: self.counties, TOWNSHIP_LENGTH: self.townships,
                COMMUNITY_LENGTH: self.communities}[length]


def _by_name(codes: Mapping[str, str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for code, name in sorted(codes.items()):
        out.setdefault(name, []).append(code)
    return out


def _names_under(communities: Mapping[str, str]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for code, name in communities.items():
        out.setdefault(code[:TOWNSHIP_LENGTH], set()).add(name)
    return out


def _match(gone: Mapping[str, str], fresh: Mapping[str, list[str]],
           places: Callable[[str], Sequence[str | None]],
           score: Callable[[str, str], int] | None = None) -> dict[str, str]:
    """Old code → new code by equal names, nearest place first (`places(code)`: code prefixes,
    nearest first). The nearest place is tried for every code before the next one, and a new code
    taken is not offered again, so a namesake next door goes to its neighbour, not to a code of the
    same name further off. Among several candidates in a place, the one of highest `score` if it
    alone has it (and it is above 0); else none: a wider place is not looked at once a nearer one
    is ambiguous."""
    out: dict[str, str] = {}
    taken: set[str] = set()
    stuck: set[str] = set()
    depth = max((len(places(code)) for code in gone), default=0)
    for d in range(depth):
        for code, name in sorted(gone.items()):
            place = places(code)[d]
            if code in out or code in stuck or not place:
                continue
            here = [c for c in fresh.get(name, []) if c.startswith(place) and c not in taken]
            if not here:
                continue
            pick: str | None = here[0]
            if len(here) > 1:
                best = max(score(code, c) for c in here) if score else 0
                top = [c for c in here if score and score(code, c) == best]
                pick = top[0] if best > 0 and len(top) == 1 else None
            if pick is None:
                stuck.add(code)
            else:
                out[code] = pick
                taken.add(pick)
    return out


def _majority(targets: Iterable[str]) -> str | None:
    """The most frequent; ties go to the lower code, so the answer is stable."""
    count = Counter(targets)
    return min(count, key=lambda t: (-count[t], t)) if count else None


def _check_declared(old: Divisions, new: Divisions, declared: Mapping[str, str]) -> None:
    for before, after in declared.items():
        if len(before) != len(after) or len(before) not in (COUNTY_LENGTH, TOWNSHIP_LENGTH, COMMUNITY_LENGTH):
            raise ValueError(f"declared: {before} → {after} must join two counties, townships or communities")
        if before not in old.level(len(before)):
            raise ValueError(f"declared: {before} is not in the previous edition")
        if before in new.level(len(before)):
            raise ValueError(f"declared: {before} is still in the new edition; only a code it lacks changes")
        if after not in new.level(len(after)):
            raise ValueError(f"declared: {after} is not in the new edition")


def changes_between(old: Divisions, new: Divisions, effective_on: date,
                    declared: Mapping[str, str] | None = None) -> list[DivisionChanged]:
    """The changes that turn `old` into `new`: counties, then townships, then communities, each
    in code order. `declared` (old → new code) takes precedence over the names."""
    declared = dict(declared or {})
    _check_declared(old, new, declared)
    gone_k = {c: n for c, n in old.counties.items() if c not in new.counties}
    gone_t = {c: n for c, n in old.townships.items() if c not in new.townships}
    gone_c = {c: n for c, n in old.communities.items() if c not in new.communities}
    fresh_t = _by_name({c: n for c, n in new.townships.items() if c not in old.townships})
    fresh_c = _by_name({c: n for c, n in new.communities.items() if c not in old.communities})
    old_names, new_names = _names_under(old.communities), _names_under(new.communities)

    # Townships by name, nearest place first; communities' names decide among namesakes.
    township: dict[str, str] = {c: s for c, s in declared.items() if len(c) == TOWNSHIP_LENGTH}
    township |= _match({c: n for c, n in gone_t.items() if c not in township},
                       {n: [c for c in cs if c not in township.values()] for n, cs in fresh_t.items()},
                       lambda code: (code[:COUNTY_LENGTH], code[:CITY_LENGTH], code[:2]),
                       lambda before, after: len(old_names.get(before, set()) & new_names.get(after, set())))

    def county_successors(townships: Mapping[str, str]) -> dict[str, str]:
        """Each gone county's successor: declared, else where most of its townships went (a new
        county: recoded), else a new county of its name in its city, then its province."""
        fresh_k = _by_name({c: n for c, n in new.counties.items() if c not in old.counties})
        out = {c: s for c, s in declared.items() if len(c) == COUNTY_LENGTH}
        for code in sorted(gone_k):
            if code in out:
                continue
            went = _majority(s[:COUNTY_LENGTH] for t, s in townships.items() if t.startswith(code))
            if went is not None:
                out[code] = went
        named = _match({c: n for c, n in gone_k.items() if c not in out}, fresh_k,
                       lambda code: (code[:CITY_LENGTH], code[:2]))
        return out | named

    county = county_successors(township)

    def township_now(code: str) -> str | None:
        return code if code in new.townships else township.get(code)

    community: dict[str, str] = {c: s for c, s in declared.items() if len(c) == COMMUNITY_LENGTH}
    community |= _match({c: n for c, n in gone_c.items() if c not in community},
                        {n: [c for c in cs if c not in community.values()] for n, cs in fresh_c.items()},
                        lambda code: (township_now(code[:TOWNSHIP_LENGTH]), code[:COUNTY_LENGTH],
                                      county.get(code[:COUNTY_LENGTH]), code[:CITY_LENGTH]))

    # A township gone with no namesake went where most of its communities went: merged there, or
    # recoded where that is a new township no other went to (a town recoded and renamed a street).
    merged: dict[str, str] = {}
    for code in sorted(gone_t):
        if code not in township:
            went = _majority(s[:TOWNSHIP_LENGTH] for c, s in community.items() if c.startswith(code))
            if went is not None:
                merged[code] = went
    receivers = Counter([*merged.values(), *township.values()])
    for code, went in list(merged.items()):
        if went not in old.townships and receivers[went] == 1:
            township[code] = merged.pop(code)
    county = county_successors(township | merged)

    changes: list[DivisionChanged] = []

    def add(code: str, change: str, name: str | None = None, successor: str | None = None) -> None:
        changes.append(DivisionChanged.model_validate(
            {"code": code, "change": change, "name": name, "successor_code": successor,
             "effective_on": effective_on}))

    def level(old_names: Mapping[str, str], new_names: Mapping[str, str], recoded: Mapping[str, str],
              joined: Mapping[str, str]) -> None:
        for code in sorted(old_names):
            if code in new_names:
                if new_names[code] != old_names[code]:
                    add(code, "renamed", name=new_names[code])
            elif code in recoded:
                add(code, "recoded", name=new_names[recoded[code]], successor=recoded[code])
            elif code in joined:
                add(code, "merged", name=new_names[joined[code]], successor=joined[code])
            else:
                add(code, "abolished")

    # A county recoded goes to a code the old edition lacks (县改区); one merged, to one it has.
    level(old.counties, new.counties, {c: s for c, s in county.items() if s not in old.counties},
          {c: s for c, s in county.items() if s in old.counties})
    level(old.townships, new.townships, township, merged)
    level(old.communities, new.communities, community, {})
    return changes


def county_changes(old: DivisionsImported, new: DivisionsImported, effective_on: date) -> list[DivisionChanged]:
    """The changes that turn `old` into `new` (the same county), townships first, by code."""
    if old.county.code != new.county.code:
        raise ValueError(f"county: comparing {old.county.code} with {new.county.code}")
    return changes_between(Divisions.of([old]), Divisions.of([new]), effective_on)


def read_declared(path: Path | str) -> dict[str, str]:
    """A change-set file: CSV with the columns `old_code,new_code` (a header row, then one change
    a row; other columns, such as a note, are ignored). For changes the names do not reveal."""
    path = Path(path)
    out: dict[str, str] = {}
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"old_code", "new_code"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: expected the columns old_code,new_code")
        for line, row in enumerate(reader, start=2):
            before, after = (row["old_code"] or "").strip(), (row["new_code"] or "").strip()
            if not (before.isdigit() and after.isdigit()):
                raise ValueError(f"{path}:{line}: old_code and new_code must be division codes")
            if out.setdefault(before, after) != after:
                raise ValueError(f"{path}:{line}: {before} is declared twice")
    return out


def change_id(edition: str, change: DivisionChanged) -> UUID:
    """Derived from the edition and the change: importing the same edition again repeats the ids."""
    digest = hashlib.sha256(change.model_dump_json().encode()).hexdigest()
    return uuid5(NAMESPACE_URL, f"cso:divisions:{edition}:changed:{change.code}:{digest}")


_TIER = {COUNTY_LENGTH: "county", TOWNSHIP_LENGTH: "township", COMMUNITY_LENGTH: "community"}


def summary(changes: Iterable[DivisionChanged]) -> dict[str, int]:
    """How many of each kind, by tier: {"township merged": 2, "county recoded": 1, …}."""
    out: Counter[str] = Counter()
    for c in changes:
        out[f"{_TIER.get(len(c.code), 'division')} {c.change}"] += 1
    return dict(sorted(out.items()))


__all__ = ["Divisions", "change_id", "changes_between", "county_changes", "read_declared", "summary"]
