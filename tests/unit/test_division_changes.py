"""What changed between two editions, across county and city lines (cso/divisions/changes.py):
the synthetic 2024 edition of 乐山市 (tests/division_changes.py: a county recoded to a district, its
seat a street, a township moved to another county), a change set declared in a file, and, on random
editions, the invariant: every old code the new edition lacks gets exactly one successor the new
edition has, or a recorded abolition; a moved division whose name is unique is found."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.events import DivisionChanged
from cso.divisions.changes import Divisions, changes_between, county_changes, read_declared, summary
from cso.divisions.importer import county_payloads, edition_changes
from tests import division_changes as sets

ON = date(2024, 6, 30)
ENDING = ("recoded", "merged", "abolished")


def test_a_county_recoded_and_a_township_moved_between_counties(tmp_path: Path) -> None:
    old, new = sets.write_leshan_2023(tmp_path / "2023"), sets.write_leshan_2024(tmp_path / "2024")
    changes = list(edition_changes(old, new, [sets.CITY], "2024", sets.EFFECTIVE))
    assert summary(changes) == {"community recoded": 211, "county recoded": 1, "township recoded": 16}
    # Each change names the code the set documents, at every tier.
    assert {c.code: c.successor_code for c in changes} == {
        c.code: sets._cross_county(c.code) for c in changes}
    by_code = {c.code: c for c in changes}
    assert (by_code["511123"].change, by_code["511123"].name) == ("recoded", "犍为区")
    assert (by_code[sets.SEAT[0]].successor_code, by_code[sets.SEAT[0]].name) == (sets.SEAT[1], "玉津街道")
    assert by_code[sets.MOVED[0]].successor_code == sets.MOVED[1]
    # Compared county by county (as before cross-county changes were read), the move is a loss.
    old_county = next(p for p in county_payloads(old, [sets.MOVED[0][:6]]))
    new_county = next(p for p in county_payloads(new, [sets.MOVED[0][:6]]))
    lost = county_changes(old_county, new_county, ON)
    assert {c.change for c in lost} == {"abolished"} and len(lost) == 9


def test_a_declared_change_set_overrides_the_names(tmp_path: Path) -> None:
    old = Divisions({"511123": "犍为县", "511124": "井研县"},
                    {"511123101": "孝姑镇", "511124110": "集益镇"},
                    {"511123101001": "老村", "511124110001": "集益社区"})
    new = Divisions({"511123": "犍为县", "511124": "井研县"},
                    {"511123101": "孝姑镇", "511124110": "集益镇"},
                    {"511123101001": "老村", "511123101002": "新村"})
    # By the names, 集益社区 is gone; the change set says it went to 孝姑镇 as 新村.
    assert [(c.code, c.change) for c in changes_between(old, new, ON)] == [("511124110001", "abolished")]
    file = tmp_path / "changes.csv"
    file.write_text("old_code,new_code,note\n511124110001,511123101002,划入孝姑镇并更名\n", encoding="utf-8")
    declared = read_declared(file)
    assert [(c.code, c.change, c.successor_code, c.name) for c in changes_between(old, new, ON, declared)] == [
        ("511124110001", "recoded", "511123101002", "新村")]
    with pytest.raises(ValueError, match="511123101001 is still in the new edition"):
        changes_between(old, new, ON, {"511123101001": "511123101002"})
    with pytest.raises(ValueError, match="is not in the new edition"):
        changes_between(old, new, ON, {"511124110001": "511123101009"})
    file.write_text("old,new\n1,2\n", encoding="utf-8")
    with pytest.raises(ValueError, match="expected the columns old_code,new_code"):
        read_declared(file)


def test_namesakes_go_to_the_nearest_place() -> None:
    """Two towns called 城关镇 recoded with their counties: each goes to its own county's successor
    (the communities' names decide), not to the other's."""
    old = Divisions({"511123": "甲县", "511124": "乙县"},
                    {"511123100": "城关镇", "511124100": "城关镇"},
                    {"511123100001": "东街社区", "511124100001": "西街社区"})
    new = Divisions({"511114": "甲区", "511115": "乙区"},
                    {"511114100": "城关镇", "511115100": "城关镇"},
                    {"511114100001": "东街社区", "511115100001": "西街社区"})
    got = {c.code: c.successor_code for c in changes_between(old, new, ON)}
    assert got == {"511123": "511114", "511124": "511115", "511123100": "511114100",
                   "511124100": "511115100", "511123100001": "511114100001", "511124100001": "511115100001"}


# --- random editions -------------------------------------------------------------------------

COUNTIES = ["511102", "511111", "511112", "511123", "511124", "511201", "511202"]   # two cities


@st.composite
def editions(draw: st.DrawFn) -> tuple[Divisions, Divisions, dict[str, str | None], bool]:
    """(old, new, truth: old code → new code or None where it was dropped, unique names?). Names
    are unique in the first, so the truth is what must be read; drawn from a small pool in the
    second, so namesakes abound and only the invariant holds."""
    unique = draw(st.booleans())
    pool = st.sampled_from(["新村", "城关镇", "红星村", "东街社区"])
    serial = iter(range(10**6))

    def name(kind: str) -> str:
        return f"{kind}{next(serial)}" if unique else draw(pool)

    counties = draw(st.lists(st.sampled_from(COUNTIES), min_size=2, max_size=5, unique=True))
    old = Divisions({c: name("县") for c in counties})
    for county in counties:
        for t in range(draw(st.integers(1, 3))):
            township = f"{county}{100 + t}"
            old.townships[township] = name("镇")
            for k in range(draw(st.integers(0, 3))):
                old.communities[f"{township}{k + 1:03d}"] = name("村")

    truth: dict[str, str | None] = {c: c for c in [*old.counties, *old.townships, *old.communities]}
    spare = iter(c for c in ["511113", "511114", "511203"] if c not in counties)
    # A county recoded (县改区): it and all below it under a new code of its city... or the province.
    victim = None
    if draw(st.booleans()) and (to := next(spare, None)) is not None:
        victim = draw(st.sampled_from(counties))
        for code in list(truth):
            if code.startswith(victim):
                truth[code] = to + code[6:]
    # A township moved to another county, its communities with it (not out of the county recoded:
    # a county recoded is found where its townships went, and it may have one only).
    if draw(st.booleans()) and (movable := sorted(t for t in old.townships if t[:6] != victim)):
        township = draw(st.sampled_from(movable))
        into = draw(st.sampled_from(sorted({truth[c] for c in old.counties} - {truth[township[:6]]})))
        moved = f"{into}{200 + int(township[6:]) % 100}"
        for code in list(truth):
            if code.startswith(township):
                truth[code] = moved + code[9:]
    # A community moved to another township of its city (a community is not looked for further
    # off), one dropped.
    if old.communities and draw(st.booleans()):
        community = draw(st.sampled_from(sorted(old.communities)))
        townships = sorted({str(truth[t]) for t in old.townships if str(truth[t]).startswith(community[:4])})
        if townships:   # none where its own township moved to another city
            truth[community] = draw(st.sampled_from(townships)) + "9" + community[-2:]
    if old.communities and draw(st.booleans()):
        truth[draw(st.sampled_from(sorted(old.communities)))] = None

    new = Divisions()
    for code, name_ in [*old.counties.items(), *old.townships.items(), *old.communities.items()]:
        now = truth[code]
        if now is not None:
            new.level(len(code))[now] = name_ if len(code) != 6 or now == code else name_ + "区"
    return old, new, truth, unique


def ended(changes: list[DivisionChanged]) -> dict[str, list[DivisionChanged]]:
    out: dict[str, list[DivisionChanged]] = {}
    for c in changes:
        if c.change in ENDING:
            out.setdefault(c.code, []).append(c)
    return out


@settings(max_examples=300, deadline=None)
@given(editions())
def test_every_old_code_has_one_successor_or_a_recorded_close(
        drawn: tuple[Divisions, Divisions, dict[str, str | None], bool]) -> None:
    old, new, truth, unique = drawn
    changes = changes_between(old, new, ON)
    closes = ended(changes)
    for length in (6, 9, 12):
        for code in old.level(length):
            if code in new.level(length):
                assert code not in closes, code
                continue
            assert len(closes.get(code, [])) == 1, (code, closes.get(code))
            (close,) = closes[code]
            if close.change == "abolished":
                assert close.successor_code is None
            else:
                assert close.successor_code in new.level(length), close
    assert set(closes) <= set(old.counties) | set(old.townships) | set(old.communities)
    if unique:
        # Names say it all: every move is read as made, every drop as an abolition.
        got = {c.code: c.successor_code for cs in closes.values() for c in cs}
        want = {c: t for c, t in truth.items() if t != c and not (t is not None and t in old.level(len(c)))}
        assert got == want
