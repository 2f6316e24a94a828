"""What a plan file's target counts, and when two targets are one promise (issue 21): a plan's
target declares `each`, `counts`, `new` and `quote` as the catalogue does, checked field by field
with the file, task and field named; `catalogue.promise` says which targets are the same promise
(the start, title, quote and source aside)."""

from __future__ import annotations

import dataclasses
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts.codes import tier_of
from services.targets.domain.catalogue import TargetSpec, load_catalogue, parse_catalogue, promise
from services.targets.plans import domain as d

BUNDLED = Path(d.__file__).parent.parent / "data"   # services/targets/plans/data
# The divisions the bundled plans and the test plans name (their tiers), as targets.division has them.
REGIONS = {"5111": "city", "510681": "county", **{c: "community" for c in (
    "510681001014", "510681001011", "510681002010", "510681001009")}}


def _words(quote: str, meaning: dict[str, str]) -> set[str]:
    return {what for word, what in meaning.items() if word in quote}


def _new_events(quote: str) -> set[str]:
    """What "new" is in a plan's sentence: 登记 (registered) and/or 备案 (filed)."""
    return _words(quote, {"登记": "registered", "备案": "filed"})


_tiers = _new_events   # which tiers a definition names: the same two words


def leshan_plan(**target: Any) -> dict[str, Any]:
    """A Leshan plan with one task carrying one target (a density unless `target` says otherwise)."""
    return {"plan": {"id": "leshan-test", "title": "乐山测试", "scope": "5111", "issued": "2021-01-01",
                     "period": {"from": "2021-01-01", "until": "2025-12-31"}},
            "tasks": [{"no": "1", "title": "培育", "lead": "市民政局", "due": "2025-12",
                       "targets": [{"metric": "avg_orgs_per_urban_community", "threshold": 12} | target]}]}


def parse(data: dict[str, Any]) -> d.Plan:
    return d.parse_plan(data, "leshan.yaml", REGIONS)


def test_a_plan_target_says_what_it_counts_as_the_catalogue_does() -> None:
    quote = "依法登记注册或实行在乡镇（街道）备案的社会组织"
    plan = parse(leshan_plan(counts=["registered", "filed"], quote=quote))
    [item] = plan.catalogue_items()
    assert (item["counts"], item["quote"]) == (["registered", "filed"], quote)
    [spec] = parse_catalogue({"targets": [item]}, "f")
    # The catalogue's leshan-avg-urban, stated by a plan: the same promise.
    assert promise(spec) == promise({s.id: s for s in load_catalogue()}["leshan-avg-urban"])
    yearly = parse(leshan_plan(metric="new_filings_functional", threshold=100, new=["filed", "registered"]))
    [item] = yearly.catalogue_items()
    assert (item["new"], item["yearly_from"], item["yearly_until"]) == (["filed", "registered"], 2021, 2025)
    per_county = parse(leshan_plan(metric="pool_trained_share", threshold=1.0, each="county"))
    assert per_county.catalogue_items()[0]["scope_tier"] == "county"


@pytest.mark.parametrize(("target", "field", "words"), [
    ({"counts": ["registered", "approved"]}, "targets[0].counts[1]",
     "expected one of registered, filed, guided, got 'approved'"),
    ({"threshold": "many"}, "targets[0].threshold", "expected a number ≥ 0, got 'many'"),
    ({"comparison": "=="}, "targets[0].comparison", "expected '>=' or '<=', got '=='"),
    ({"colour": "red"}, "targets[0].colour", "unknown field; expected one of comparison, counts, due"),
    ({"counts": "filed"}, "targets[0].counts", "expected a non-empty list"),
    ({"counts": ["filed", "filed"]}, "targets[0].counts", "a tier is listed twice"),
    ({"new": ["filed"]}, "targets[0].new", "does not count new organizations"),
    ({"metric": "new_filings_functional", "new": ["opened"]}, "targets[0].new[0]", "expected one of filed"),
    ({"metric": "brand_organizations", "counts": ["filed"]}, "targets[0].counts",
     "does not count organizations by tier"),
    ({"each": "province"}, "targets[0].each", "expected city, county or township"),
    ({"each": "city"}, "targets[0].each", "is not below scope_region '5111'"),
    ({"quote": ""}, "targets[0].quote", "expected non-empty text"),
    ({"target": "no such id"}, "targets[0].target", "is not a catalogue target id"),
    ({"metric": "innovation_bases", "untracked": True, "target": "x"}, "targets[0].untracked",
     "an untracked target is recorded as written"),
])
def test_what_a_plan_target_counts_is_checked_naming_file_task_and_field(
        target: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(d.PlanError) as caught:
        parse(leshan_plan(**target))
    found = [p for p in caught.value.problems if p.path == f"tasks[0].{field}"]
    assert found, [str(p) for p in caught.value.problems]
    assert str(found[0]).startswith(f"leshan.yaml: tasks[0] (no '1'): {field}: ") and words in str(found[0])


def test_a_plan_of_before_keeps_its_document() -> None:
    """Fields a file does not state are not in its canonical document: a bundled plan imported
    before plan targets could say what they count is unchanged (no new revision)."""
    plan = d.load_plan((BUNDLED / "guanghan-2024-chuangtese.yaml").read_text(encoding="utf-8"), "g", REGIONS)
    target = plan.tasks[4].targets[0].to_json()
    assert set(target) == {"metric", "threshold", "comparison", "due", "deadline", "untracked", "target_id"}


def test_every_bundled_plan_target_counts_what_its_quote_says() -> None:
    for path in sorted(BUNDLED.glob("*.yaml")):
        data = d.read_plan_text(path.read_text(encoding="utf-8"), path.name)
        regions = {code: tier_of(code) for code in d.referenced_codes(data)}   # every code it names, known
        plan = d.parse_plan(data, path.name, regions, strict=False)
        for item in plan.catalogue_items():
            quote = item.get("quote")
            if quote and item.get("new") is not None:
                assert set(item["new"]) == _new_events(quote), (path.name, item["id"])
            if quote and item.get("counts") is not None:
                assert set(item["counts"]) == _tiers(quote), (path.name, item["id"])


BASE = TargetSpec(id="a", title="a", figure="avg_orgs_per_urban_community", scope_region="5111",
                  threshold=12, start=date(2021, 1, 1), deadline=date(2025, 12, 31), source="s")


@given(title=st.text(max_size=20), source=st.text(max_size=20), quote=st.none() | st.text(max_size=20),
       start=st.dates(min_value=date(2000, 1, 1), max_value=date(2025, 12, 31)),
       kind=st.none() | st.just("urban"))
def test_the_words_and_the_start_are_not_the_promise(title: str, source: str, quote: str | None, start: date,
                                                     kind: str | None) -> None:
    other = dataclasses.replace(BASE, id="b", title=title, source=source, quote=quote, start=start, kind=kind)
    assert promise(other) == promise(BASE)


@pytest.mark.parametrize("change", [
    {"threshold": 15}, {"comparison": "<="}, {"deadline": date(2023, 12, 31)}, {"scope_region": "511102"},
    {"scope_tier": "county"}, {"regions": ("511102",)}, {"figure": "avg_orgs_per_rural_community"},
    {"counts": ("registered", "filed")},
])
def test_anything_counted_differently_is_another_promise(change: dict[str, Any]) -> None:
    assert promise(dataclasses.replace(BASE, **change)) != promise(BASE)


def test_the_default_counting_rule_is_the_same_as_saying_it() -> None:
    every_tier = dataclasses.replace(BASE, counts=("guided", "registered", "filed"))
    assert promise(every_tier) == promise(BASE)
    filings = TargetSpec(id="n", title="n", figure="new_filings_functional", scope_region="5111", threshold=100,
                         start=date(2021, 1, 1), deadline=date(2025, 12, 31), yearly_from=2021,
                         yearly_until=2025, source="s")
    assert promise(dataclasses.replace(filings, new=("filed",))) == promise(filings)
    assert promise(dataclasses.replace(filings, new=("filed", "registered"))) != promise(filings)
    assert promise(dataclasses.replace(filings, yearly_from=2022)) != promise(filings)


def test_the_default_catalogue_states_each_promise_once() -> None:
    live = [s for s in load_catalogue() if not s.retired]
    keys = [promise(s) for s in live]
    assert len(set(keys)) == len(keys)


@pytest.mark.parametrize(("task", "field", "words"), [
    ({"co": ["市委组织部", "市委组织部"]}, "co[1]", "'市委组织部' is listed twice"),
    ({"lead": []}, "lead", "expected one lead unit or a list of them, got []"),
    ({"lead": ["市民政局", 7]}, "lead[1]", "expected a unit's name, got 7"),
    ({"community": 511102004001}, "community", "a division code must be a quoted string"),
    ({"targets": {"metric": "orgs"}}, "targets", "expected a list of targets, got dict"),
    ({"no": "1 2"}, "no", "expected a task number such as '1.4', got '1 2'"),
])
def test_a_task_is_checked_naming_file_task_and_field(task: dict[str, Any], field: str, words: str) -> None:
    data = leshan_plan()
    data["tasks"][0].update(task)
    with pytest.raises(d.PlanError) as caught:
        parse(data)
    found = [p for p in caught.value.problems if p.path == f"tasks[0].{field}"]
    assert found, [str(p) for p in caught.value.problems]
    assert str(found[0]).startswith("leshan.yaml: tasks[0] (no ") and words in found[0].message


def test_a_task_with_a_wrong_field_still_has_its_targets_checked() -> None:
    data = leshan_plan(threshold=-1)
    data["tasks"][0]["title"] = ""
    with pytest.raises(d.PlanError) as caught:
        parse(data)
    assert {p.path for p in caught.value.problems} == {"tasks[0].title", "tasks[0].targets[0].threshold"}
