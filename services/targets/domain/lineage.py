"""Where a division code stands on a day, after merges and recodes (DivisionChanged): pure.

A community recoded on day D (it moved to another township, or its township was recoded) counts
under its new code from D; before D under the old one. A township merged or recoded on D stops
counting on D, and what served it (a hub, a base) serves its successor from D. An abolished code
has no successor: what was recorded there stays there, and a township abolished stops counting.
Renames change names only, not counts. A county recoded on D (县改区) ends on D, and its new
code's divisions count from D, not before.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date

ENDING = ("merged", "recoded", "abolished")


@dataclass(frozen=True)
class Change:
    code: str
    on: date
    change: str            # merged, recoded, abolished, renamed
    successor: str | None


class Lineage:
    """The changes known for some codes. A code changes at most once per day; a chain of changes
    (recoded in 2024, merged in 2025) is followed in order."""

    def __init__(self, changes: Iterable[Change] = ()) -> None:
        self._ending: dict[str, Change] = {}
        self._before: dict[str, list[Change]] = {}
        for c in sorted(changes, key=lambda c: (c.on, c.code)):
            if c.change not in ENDING or c.code in self._ending:
                continue
            self._ending[c.code] = c
            if c.successor:
                self._before.setdefault(c.successor, []).append(c)

    def __bool__(self) -> bool:
        return bool(self._ending)

    def codes(self) -> set[str]:
        """Every code the changes name, old and new."""
        return set(self._ending) | set(self._before)

    def resolve(self, code: str, day: date) -> str:
        """The code that stands for `code` on `day`."""
        seen = {code}
        while (c := self._ending.get(code)) is not None and c.successor and c.on <= day:
            code = c.successor
            if code in seen:   # a cycle in bad data: stop where it closes
                break
            seen.add(code)
        return code

    def days(self, code: str) -> list[date]:
        """The days on which what stands for `code` changes."""
        out: list[date] = []
        seen = {code}
        while (c := self._ending.get(code)) is not None:
            out.append(c.on)
            if not c.successor or c.successor in seen:
                break
            code = c.successor
            seen.add(code)
        return out

    def successors(self, code: str) -> list[str]:
        """Every code that came to stand for `code`, in order (a chain: recoded, then merged)."""
        out: list[str] = []
        seen = {code}
        while (c := self._ending.get(code)) is not None and c.successor and c.successor not in seen:
            code = c.successor
            out.append(code)
            seen.add(code)
        return out

    def ended_on(self, code: str) -> date | None:
        """The day a code stops counting (merged, recoded or abolished), if it does."""
        c = self._ending.get(code)
        return c.on if c else None

    def began_on(self, code: str) -> date | None:
        """The day `code` came into being as another's new code (a county recoded to a district,
        县改区: the district has no divisions before that day), if it did."""
        days = [c.on for c in self._before.get(code, ()) if c.change == "recoded"]
        return min(days) if days else None

    def predecessors(self, code: str) -> list[tuple[str, date]]:
        """Every code that came to stand for `code`, with the day it did (transitively: a code
        merged into one that was later recoded into `code` joins it on the later day)."""
        out: list[tuple[str, date]] = []
        todo = [(code, date.min)]
        seen = {code}
        while todo:
            current, since = todo.pop()
            for c in self._before.get(current, ()):
                if c.code not in seen:
                    seen.add(c.code)
                    joined = max(c.on, since)
                    out.append((c.code, joined))
                    todo.append((c.code, joined))
        return sorted(out)


__all__ = ["ENDING", "Change", "Lineage"]
