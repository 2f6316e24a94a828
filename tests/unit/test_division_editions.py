"""The national edition shipped as package data, and what an import of a later edition says changed."""

from __future__ import annotations

import hashlib
from datetime import date

import pytest

from contracts.events import CommunityDivision, DivisionRef, DivisionsImported, TownshipDivision
from cso.divisions import county_payloads, editions
from cso.divisions.changes import change_id, county_changes, summary
from cso.divisions.importer import county_count

# From the edition's own README (cso/divisions/data/README.md): the files are what it documents.
SHA256 = {
    "provinces.csv.gz": "acd3e744dcae0fa0b131a9eee55a0d74b7a76b40eccdc048c332a10d32af17fc",
    "cities.csv.gz": "00a0779fc87d635a10e0d3c90f65b53735d477d437641a125f4da41aa19e0330",
    "areas.csv.gz": "688c251c8dbec246c46bde9d70e9c6dbe878367271ed9d2cb3576990f9a95f66",
    "streets.csv.gz": "d74c2749173cad85263055af31003be6251cc31baa7e76a5d890694fba133e08",
    "villages.csv.gz": "494882eeaf71c0a614ee51900385f8d8099d461b7f65fa509b34470e912a8142",
}


def test_the_2023_edition_ships_with_cso_as_documented() -> None:
    directory = editions.edition("2023")
    assert editions.shipped()[0] == "2023"
    for name, digest in SHA256.items():
        assert hashlib.sha256((directory / name).read_bytes()).hexdigest() == digest, name
        assert digest in (editions.DATA / "README.md").read_text(encoding="utf-8")


def test_guangdong_is_in_it() -> None:
    """广东省 (44): 124 counties, 1,757 townships (482 streets, 1,117 towns, 11 townships, 147
    special units), 26,842 communities, counted from the files with zcat | grep -c '^44'."""
    payloads = list(county_payloads(editions.edition("2023"), only=["44"]))
    assert county_count(editions.edition("2023"), ["44"]) == len(payloads) == 124
    assert payloads[0].province.name == "广东省"
    assert sum(len(p.townships) for p in payloads) == 1757
    assert sum(len(p.communities) for p in payloads) == 26842


def test_an_unknown_edition_names_the_shipped_ones() -> None:
    with pytest.raises(ValueError, match=r"no edition '2019' ships with cso \(there are: 2023"):
        editions.edition("2019")
    assert editions.previous("2023") is None
    assert editions.previous("2024") == "2023"
    assert editions.effective_day("2024", date(2026, 1, 1)) == date(2024, 6, 30)
    assert editions.effective_day("2026", date(2026, 3, 1)) == date(2026, 3, 1)


def _county(edition: str, townships: dict[str, str], communities: dict[str, str]) -> DivisionsImported:
    return DivisionsImported(
        edition=edition, province=DivisionRef(code="44", name="广东省"),
        city=DivisionRef(code="4403", name="深圳市"), county=DivisionRef(code="440308", name="盐田区"),
        townships=[TownshipDivision(code=c, name=n, kind="street") for c, n in sorted(townships.items())],
        communities=[CommunityDivision(code=c, name=n, kind="urban") for c, n in sorted(communities.items())])


def test_merges_splits_renames_and_recodes_are_read_off_two_editions() -> None:
    old = _county("2023", {"440308001": "甲街道", "440308002": "乙街道", "440308003": "丙街道",
                           "440308004": "丁街道"},
                  {"440308001001": "一社区", "440308001002": "二社区", "440308002001": "三社区",
                   "440308002002": "四社区", "440308003001": "五社区", "440308004001": "六社区",
                   "440308004002": "七社区", "440308004003": "同名社区"})
    new = _county("2024", {"440308001": "甲街道", "440308003": "新丙街道", "440308004": "丁街道",
                           "440308005": "戊街道"},
                  # 乙 merged into 甲; 丙 renamed; 丁 split: 七社区 and 同名社区 to the new 戊; 六 renamed
                  {"440308001001": "一社区", "440308001002": "二社区", "440308001003": "三社区",
                   "440308001004": "四社区", "440308003001": "五社区", "440308004001": "六居委会",
                   "440308005001": "七社区", "440308005002": "同名社区"})
    changes = county_changes(old, new, date(2024, 6, 30))
    got = [(c.code, c.change, c.successor_code, c.name) for c in changes]
    assert got == [
        ("440308002", "merged", "440308001", "甲街道"),
        ("440308003", "renamed", None, "新丙街道"),
        ("440308002001", "recoded", "440308001003", "三社区"),
        ("440308002002", "recoded", "440308001004", "四社区"),
        ("440308004001", "renamed", None, "六居委会"),
        ("440308004002", "recoded", "440308005001", "七社区"),
        ("440308004003", "recoded", "440308005002", "同名社区"),
    ]
    assert all(c.effective_on == date(2024, 6, 30) for c in changes)
    assert summary(changes) == {"community recoded": 4, "community renamed": 1, "township merged": 1,
                                "township renamed": 1}
    assert change_id("2024", changes[0]) == change_id("2024", county_changes(old, new, date(2024, 6, 30))[0])
    assert county_changes(old, old, date(2024, 6, 30)) == []


def test_a_community_gone_without_a_successor_is_abolished() -> None:
    old = _county("2023", {"440308001": "甲街道"}, {"440308001001": "一社区", "440308001002": "二社区"})
    new = _county("2024", {"440308001": "甲街道"}, {"440308001001": "一社区"})
    assert [(c.code, c.change) for c in county_changes(old, new, date(2024, 6, 30))] == [
        ("440308001002", "abolished")]
