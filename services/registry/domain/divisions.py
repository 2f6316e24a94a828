"""Division codes retired by a merge, recode or abolition (DivisionChanged): pure.

A code retired on day D stands for its successor from D on: a fact dated on or after D that names
it is refused, naming the field and the successor; a fact dated before D (a late filing of a past
fact) is still accepted, and the record it makes follows the successor like every record there.
A change is effective when registry hears of it: DivisionChanged's effective_on is never in the
future (contracts). Renames change no code.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date

from .errors import Rejected

RETIRING = ("merged", "recoded", "abolished")


@dataclass(frozen=True)
class Retirement:
    code: str
    on: date
    change: str                 # merged, recoded or abolished
    successor: str | None       # None when abolished


class Retired:
    """The retirements known for some codes; a chain (recoded, later merged) is followed in order."""

    def __init__(self, retirements: Iterable[Retirement] = ()) -> None:
        self._by_code: dict[str, Retirement] = {}
        for r in sorted(retirements, key=lambda r: (r.on, r.code)):
            if r.change in RETIRING:
                self._by_code.setdefault(r.code, r)   # a code retires once: the first day counts

    def __bool__(self) -> bool:
        return bool(self._by_code)

    def codes(self) -> set[str]:
        """The retired codes."""
        return set(self._by_code)

    def get(self, code: str) -> Retirement | None:
        return self._by_code.get(code)

    def current(self, code: str) -> str:
        """The code that stands for `code` now (itself if never retired, or abolished)."""
        seen = {code}
        while (r := self._by_code.get(code)) is not None and r.successor and r.successor not in seen:
            code = r.successor
            seen.add(code)
        return code

    def check(self, field: str, code: str, day: date) -> None:
        """Refuse `code` named by a fact of `day` if it was retired on or before that day."""
        r = self._by_code.get(code)
        if r is None or day < r.on:
            return
        if r.successor is None:
            raise Rejected(field, f"{code} was abolished on {r.on}", code="retired_division")
        raise Rejected(field, f"{code} was {r.change} on {r.on}: its successor is {self.current(code)}",
                       code="retired_division")
