"""What changed in a county between two editions, as `DivisionChanged` events (pure: no I/O).

NBS publishes each edition whole, never the changes; they are read off the two editions of a
county, the way a civil-affairs clerk reads them:

- a code in both editions whose name differs was **renamed**;
- a township whose code is gone, while a new code carries its name, was **recoded** to it;
- a community whose code is gone, while a new code in the same county carries its name, was
  **recoded** to it: it moved to another township (a merge or a split of townships), or its
  township was recoded. Among several new communities of that name, the one under the old
  township's successor is taken; where that still leaves a choice, none is (see abolished);
- a township whose code is gone and whose communities went to other townships was **merged**
  into the one that received most of them;
- a code gone with no successor found was **abolished**.

A split of a township is its new township in the new edition plus a `recoded` event for each
community that moved to it; the old township keeps its code. A change across counties is out of
scope: each county is compared with itself (a community that moved to another county reads as
abolished here and new there).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable
from datetime import date
from uuid import NAMESPACE_URL, UUID, uuid5

from contracts.events import DivisionChanged, DivisionsImported

TOWNSHIP_LENGTH = 9


def _recoded_by_name(gone: dict[str, str], new: dict[str, str],
                     successor_of_parent: dict[str, str] | None = None) -> dict[str, str]:
    """Old code → new code, by equal names among the codes only one edition has."""
    by_name: dict[str, list[str]] = {}
    for code, name in new.items():
        by_name.setdefault(name, []).append(code)
    out: dict[str, str] = {}
    for code, name in gone.items():
        candidates = by_name.get(name, [])
        if len(candidates) > 1 and successor_of_parent is not None:
            parent = successor_of_parent.get(code[:TOWNSHIP_LENGTH], code[:TOWNSHIP_LENGTH])
            candidates = [c for c in candidates if c.startswith(parent)]
        if len(candidates) == 1:
            out[code] = candidates[0]
    return out


def county_changes(old: DivisionsImported, new: DivisionsImported, effective_on: date) -> list[DivisionChanged]:
    """The changes that turn `old` into `new` (the same county), townships first, by code."""
    if old.county.code != new.county.code:
        raise ValueError(f"county: comparing {old.county.code} with {new.county.code}")
    old_t = {t.code: t.name for t in old.townships}
    new_t = {t.code: t.name for t in new.townships}
    old_c = {c.code: c.name for c in old.communities}
    new_c = {c.code: c.name for c in new.communities}

    gone_t = {c: n for c, n in old_t.items() if c not in new_t}
    township_recode = _recoded_by_name(gone_t, {c: n for c, n in new_t.items() if c not in old_t})
    gone_c = {c: n for c, n in old_c.items() if c not in new_c}
    community_recode = _recoded_by_name(gone_c, {c: n for c, n in new_c.items() if c not in old_c},
                                        township_recode)

    changes: list[DivisionChanged] = []

    def add(code: str, change: str, name: str | None = None, successor: str | None = None) -> None:
        changes.append(DivisionChanged.model_validate(
            {"code": code, "change": change, "name": name, "successor_code": successor,
             "effective_on": effective_on}))

    for code in sorted(old_t):
        if code in new_t:
            if new_t[code] != old_t[code]:
                add(code, "renamed", name=new_t[code])
        elif code in township_recode:
            add(code, "recoded", name=new_t[township_recode[code]], successor=township_recode[code])
        else:
            went = Counter(target[:TOWNSHIP_LENGTH] for source, target in community_recode.items()
                           if source.startswith(code))
            if went:
                # Most communities decide; ties go to the lower code, so the answer is stable.
                successor = min(went, key=lambda t: (-went[t], t))
                add(code, "merged", name=new_t.get(successor), successor=successor)
            else:
                add(code, "abolished")
    for code in sorted(old_c):
        if code in new_c:
            if new_c[code] != old_c[code]:
                add(code, "renamed", name=new_c[code])
        elif code in community_recode:
            add(code, "recoded", name=new_c[community_recode[code]], successor=community_recode[code])
        else:
            add(code, "abolished")
    return changes


def change_id(edition: str, change: DivisionChanged) -> UUID:
    """Derived from the edition and the change: importing the same edition again repeats the ids."""
    digest = hashlib.sha256(change.model_dump_json().encode()).hexdigest()
    return uuid5(NAMESPACE_URL, f"cso:divisions:{edition}:changed:{change.code}:{digest}")


def summary(changes: Iterable[DivisionChanged]) -> dict[str, int]:
    """How many of each kind, townships and communities apart: {"township merged": 2, …}."""
    out: Counter[str] = Counter()
    for c in changes:
        out[f"{'township' if len(c.code) == TOWNSHIP_LENGTH else 'community'} {c.change}"] += 1
    return dict(sorted(out.items()))


__all__ = ["change_id", "county_changes", "summary"]
