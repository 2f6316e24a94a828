"""Each default target counts what its plan's sentence says (issue 21): the `quote` a target carries
decides which events make an organization new; and what a target's definition sums."""

from __future__ import annotations

import pytest

from services.targets.domain.catalogue import CatalogueError, load_catalogue, parse_catalogue
from services.targets.domain.metrics import figure, numerator


def _new_events(quote: str) -> set[str]:
    """The events a plan's sentence makes "new": 登记 (registration) and/or 备案 (filing)."""
    return {event for word, event in (("登记", "registered"), ("备案", "filed")) if word in quote}


def test_every_new_organizations_target_quotes_its_plan_and_counts_what_it_says() -> None:
    specs = [s for s in load_catalogue() if s.figure.startswith("new_filings_")]
    assert specs
    for spec in specs:
        assert spec.quote, f"{spec.id}: no quote"
        assert spec.new is not None and set(spec.new) == _new_events(spec.quote), spec.id


def test_every_quote_agrees_with_the_targets_definition() -> None:
    for spec in load_catalogue():
        if spec.quote and ("登记" in spec.quote or "备案" in spec.quote) and spec.new is not None:
            assert set(spec.new) == _new_events(spec.quote), spec.id


def test_leshan_counts_registrations_and_filings() -> None:
    leshan = {s.id: s for s in load_catalogue()}["leshan-new-filings-functional"]
    assert leshan.quote is not None and "登记和备案" in leshan.quote
    assert numerator("new_filings_functional", leshan.new) == ("filings_functional", "registrations_functional")
    counters = {"filings_functional": 3, "registrations_functional": 2}
    assert figure("new_filings_functional", counters, {}, leshan.new) == 5.0
    assert figure("new_filings_functional", counters, {}) == 3.0   # no definition: filings, as before
    assert figure("new_filings_functional", counters, {}, ("registered",)) == 2.0


def _target(**fields: object) -> dict[str, object]:
    return {"id": "t", "title": "t", "figure": "new_filings_functional", "scope_region": "5111",
            "threshold": 1, "start": "2021-01-01", "deadline": "2021-12-31", "yearly_from": 2021,
            "yearly_until": 2021, "source": "s", **fields}


@pytest.mark.parametrize(("fields", "message"), [
    ({"new": ["filed", "filed"]}, "targets[0] (id 't'): new: an event is listed twice"),
    ({"new": ["opened"]}, "targets[0] (id 't'): new[0]: Input should be 'filed' or 'registered'"),
    ({"new": []}, "targets[0] (id 't'): new: "),
    ({"figure": "orgs", "yearly_from": None, "yearly_until": None, "new": ["filed"]},
     "targets[0] (id 't'): new: figure 'orgs' does not count new organizations"),
])
def test_a_definition_of_new_is_checked_field_by_field(fields: dict[str, object], message: str) -> None:
    with pytest.raises(CatalogueError) as caught:
        parse_catalogue({"targets": [{k: v for k, v in _target(**fields).items() if v is not None}]}, "f")
    assert any(p.startswith(f"f: {message}") for p in caught.value.problems), caught.value.problems


def test_a_definition_of_new_round_trips() -> None:
    [spec] = parse_catalogue({"targets": [_target(new=["registered"], quote="每年新增登记")]}, "f")
    assert spec.new == ("registered",) and spec.quote == "每年新增登记"


def _tiers(quote: str) -> set[str]:
    """The tiers a plan's definition of an organization names: 登记 (registered), 备案 (filed);
    an organization only guided (neither) is outside "依法登记注册或…备案"."""
    return {tier for word, tier in (("登记", "registered"), ("备案", "filed")) if word in quote}


def test_every_density_with_a_definition_counts_the_tiers_it_names() -> None:
    specs = [s for s in load_catalogue() if s.counts is not None]
    assert {s.id for s in specs} >= {"leshan-avg-urban", "leshan-avg-rural-class-c"}
    for spec in specs:
        assert spec.quote, f"{spec.id}: no quote"
        assert set(spec.counts or ()) == _tiers(spec.quote), spec.id
        assert "guided" not in (spec.counts or ()), spec.id


def test_leshan_densities_leave_guided_organizations_out() -> None:
    leshan = {s.id: s for s in load_catalogue()}["leshan-avg-rural"]
    assert leshan.quote is not None and "依法登记注册或" in leshan.quote and "备案" in leshan.quote
    assert numerator("avg_orgs_per_rural_community", None, leshan.counts) == (
        "orgs_rural_registered", "orgs_rural_filed")
    counters = {"orgs_rural": 3, "orgs_rural_guided": 1, "orgs_rural_filed": 2, "communities_rural": 4}
    assert figure("avg_orgs_per_rural_community", counters, None, None, leshan.counts) == 0.5
    assert figure("avg_orgs_per_rural_community", counters) == 0.75   # no definition: every tier


@pytest.mark.parametrize(("fields", "message"), [
    ({"figure": "avg_orgs_per_rural_community", "yearly_from": None, "yearly_until": None,
      "counts": ["filed", "filed"]}, "targets[0] (id 't'): counts: a tier is listed twice"),
    ({"figure": "avg_orgs_per_rural_community", "yearly_from": None, "yearly_until": None,
      "counts": ["approved"]}, "targets[0] (id 't'): counts[0]: Input should be"),
    ({"counts": ["filed"]}, "targets[0] (id 't'): counts: figure 'new_filings_functional' does not count"),
])
def test_which_organizations_count_is_checked_field_by_field(fields: dict[str, object], message: str) -> None:
    with pytest.raises(CatalogueError) as caught:
        parse_catalogue({"targets": [{k: v for k, v in _target(**fields).items() if v is not None}]}, "f")
    assert any(p.startswith(f"f: {message}") for p in caught.value.problems), caught.value.problems


def test_every_title_names_what_its_quote_counts() -> None:
    """A title is what officials read: it says 登记 and 备案 where the plan's sentence does (Leshan's
    "每年新增登记和备案…" was titled "每年新增备案…")."""
    for spec in load_catalogue():
        if spec.quote and spec.new is not None:
            assert _new_events(spec.title) == _new_events(spec.quote), (spec.id, spec.title)
