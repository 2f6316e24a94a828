"""Division changes in the projection, pure (domain/lineage.py, entities): organizations follow
their community's new code from the change's day, a merged township's hub serves its successor,
a county counts in each edition from its day; the roll-up equals a recount on every day."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import date, datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from contracts import events as ev
from services.targets.domain import coverage as cov
from services.targets.domain import entities as ent
from services.targets.domain.lineage import Change, Lineage

COMMUNITIES = [f"440308{t:03d}{c:03d}" for t in (1, 2, 3) for c in (1, 2, 3)]
DAYS = [date(2023, 1, 1) + timedelta(days=60 * i) for i in range(12)]


def fact(i: int, p: ev.Payload, occurred: datetime | None = None) -> ent.Fact:
    return ent.Fact(occurred or datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=i),
                    uuid.UUID(int=i + 1), p)


def test_a_chain_of_changes_is_followed_in_order() -> None:
    lineage = Lineage([Change("440308001001", date(2024, 6, 30), "recoded", "440308002011"),
                       Change("440308002011", date(2025, 6, 30), "recoded", "440308005001"),
                       Change("440308001", date(2024, 6, 30), "merged", "440308002"),
                       Change("440308004", date(2024, 6, 30), "renamed", None)])
    assert lineage.resolve("440308001001", date(2024, 6, 29)) == "440308001001"
    assert lineage.resolve("440308001001", date(2024, 6, 30)) == "440308002011"
    assert lineage.resolve("440308001001", date(2030, 1, 1)) == "440308005001"
    assert lineage.days("440308001001") == [date(2024, 6, 30), date(2025, 6, 30)]
    assert lineage.ended_on("440308001") == date(2024, 6, 30) and lineage.ended_on("440308004") is None
    assert lineage.successors("440308001001") == ["440308002011", "440308005001"]
    assert lineage.successors("440308004") == [] and lineage.successors("440308005001") == []
    assert lineage.predecessors("440308005001") == [("440308001001", date(2025, 6, 30)),
                                                    ("440308002011", date(2025, 6, 30))]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(COMMUNITIES), st.sampled_from(DAYS)), min_size=1, max_size=12),
       st.dictionaries(st.sampled_from(COMMUNITIES), st.sampled_from(COMMUNITIES), max_size=4),
       st.sampled_from(DAYS))
def test_organizations_follow_their_community_and_roll_up_to_a_recount(
        orgs: list[tuple[str, date]], moves: dict[str, str], effective: date) -> None:
    moves = {a: b for a, b in moves.items() if a != b and b not in moves}   # one step each
    lineage = Lineage(Change(a, effective, "recoded", b) for a, b in moves.items())
    kinds = dict.fromkeys(COMMUNITIES, "urban")
    total: Counter[tuple[str, str, date]] = Counter()
    for i, (community, filed_on) in enumerate(orgs):
        filed = ev.OrganizationFiled(organization_id=uuid.UUID(int=i + 1), name=f"组织{i}",
                                     community_code=community, category="charity", tier="filed",
                                     filed_on=filed_on)
        total.update(cov.contribution(ent.organization_timeline([fact(i, filed)], [], kinds, lineage)))
    for day in DAYS + [effective - timedelta(days=1), effective]:
        expected: Counter[tuple[str, str]] = Counter()
        for community, filed_on in orgs:
            if filed_on <= day:
                where = moves.get(community, community) if day >= effective else community
                for n in (2, 4, 6, 9, 12):
                    expected[(where[:n], "orgs")] += 1
        got = cov.as_of(total, day)
        assert Counter({k: v for k, v in got.items() if k[1] == "orgs" and v}) == expected, day


def test_a_merged_townships_hub_serves_its_successor_from_the_day() -> None:
    day = date(2024, 6, 30)
    lineage = Lineage([Change("440308001", day, "merged", "440308002")])
    hub = ent.Interval("440308001", date(2023, 5, 1), None)
    merged = ent.covered_timeline("hubcov", "440308001", "street", [hub], lineage.ended_on("440308001"))
    established = ev.HubEstablished(organization_id=uuid.UUID(int=7), region_code="440308001",
                                    established_on=date(2023, 5, 1))
    successor = ent.timelines_for(["hubcov:440308002"], {"hub:h": [fact(0, established)]},
                                  [("hub:h", "440308001")], {"440308002": "street"}, lineage)["hubcov:440308002"]
    both = cov.total([cov.contribution(merged), cov.contribution(successor)])
    before, after = cov.as_of(both, day - timedelta(days=1)), cov.as_of(both, day)
    assert before[("440308001", "streets_with_hub")] == 1 and before[("440308002", "streets_with_hub")] == 0
    assert after[("440308001", "streets_with_hub")] == 0 and after[("440308002", "streets_with_hub")] == 1
    assert before[("440308", "streets_with_hub")] == after[("440308", "streets_with_hub")] == 1


def test_a_county_counts_in_each_edition_from_its_day() -> None:
    def edition(name: str, townships: list[str]) -> ev.DivisionsImported:
        return ev.DivisionsImported(
            edition=name, province=ev.DivisionRef(code="44", name="广东省"),
            city=ev.DivisionRef(code="4403", name="深圳市"), county=ev.DivisionRef(code="440308", name="盐田区"),
            townships=[ev.TownshipDivision(code=t, name=t, kind="street") for t in townships], communities=[])

    later = datetime(2024, 6, 30, tzinfo=ev.CHINA)
    timeline = ent.divisions_timeline([fact(0, edition("2023", ["440308001", "440308002"])),
                                       fact(1, edition("2024", ["440308002"]), later)])
    counts = cov.contribution(timeline)
    assert cov.as_of(counts, date(2024, 6, 29))[("440308", "streets")] == 2
    assert cov.as_of(counts, date(2024, 6, 30))[("440308", "streets")] == 1


def test_a_recoded_county_ends_and_its_new_code_begins_on_the_day() -> None:
    """县改区: 犍为县 511123 recoded to 犍为区 511114 (tests/division_changes.py). The old county's
    divisions stop counting on the day, the new one's count from it (its only edition, 2024, would
    otherwise count from the beginning, beside the old county's: twice the city's townships)."""
    def edition(name: str, county: str, townships: list[str]) -> ev.DivisionsImported:
        return ev.DivisionsImported(
            edition=name, province=ev.DivisionRef(code="51", name="四川省"),
            city=ev.DivisionRef(code="5111", name="乐山市"), county=ev.DivisionRef(code=county, name=county),
            townships=[ev.TownshipDivision(code=t, name=t, kind="town") for t in townships], communities=[])

    day = date(2024, 6, 30)
    lineage = Lineage([Change("511123", day, "recoded", "511114"),
                       Change("511123101", day, "recoded", "511114101")])
    assert lineage.began_on("511114") == day and lineage.began_on("511114101") == day
    assert lineage.began_on("511123") is None and lineage.ended_on("511123") == day
    old = fact(0, edition("2023", "511123", ["511123101", "511123102"]))
    new = fact(1, edition("2024", "511114", ["511114101", "511114102"]), datetime(2024, 6, 30, tzinfo=ev.CHINA))
    timelines = ent.timelines_for(["div:511123", "div:511114"], {"div:511123": [old], "div:511114": [new]},
                                  [], {}, lineage)
    counts = cov.total([cov.contribution(t) for t in timelines.values()])
    for on in (date(2023, 1, 1), day - timedelta(days=1), day, date(2026, 1, 1)):
        got = cov.as_of(counts, on)
        assert got[("5111", "towns")] == 2, on
        assert got[("511123", "towns")] == (2 if on < day else 0), on
        assert got[("511114", "towns")] == (0 if on < day else 2), on
