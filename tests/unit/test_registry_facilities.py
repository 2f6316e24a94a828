"""Facilities as registry decides them (contracts 1.8.0, issue 22): a kind opens at the tiers it
may (社工室 at a community, 社工站 above), at a known division, once; it closes once, not before it
opened; a retired code is refused from its day. Each refusal names the field."""

from __future__ import annotations

from datetime import date
from typing import Any
from uuid import uuid4

import pytest
from pydantic import ValidationError

from contracts import events as ev
from contracts import make_event
from services.registry.domain import Ledger, NotYet, Rejected, decide
from services.registry.domain.divisions import Retired, Retirement

DAY = date(2024, 3, 1)


def ledger(**more: Any) -> Ledger:
    return Ledger(orgs={}, credit_holders={}, communities={"510681001014"}, counties={"510681"},
                  townships={"510681001"}, intervals={}, cities={"5106"}, **more)


def opened(kind: str, region: str, **more: Any) -> ev.FacilityOpened:
    return ev.FacilityOpened(kind=kind, name="站", region_code=region, opened_on=DAY, **more)


@pytest.mark.parametrize(("kind", "region"), [
    ("social_work_room", "510681001"), ("social_work_room", "510681"),
    ("social_work_station", "510681001014"), ("innovation_base", "51"), ("demonstration_park", "51")])
def test_a_kind_opens_only_at_its_tiers(kind: str, region: str) -> None:
    with pytest.raises(ValidationError, match=r"region_code: a .* opens at"):
        opened(kind, region)


@pytest.mark.parametrize(("kind", "region"), [
    ("social_work_room", "510681001014"), ("social_work_station", "510681001"), ("social_work_station", "510681"),
    ("social_work_station", "5106"), ("innovation_base", "510681001014"), ("innovation_base", "5106"),
    ("demonstration_park", "510681")])
def test_each_kind_is_recorded_at_a_known_division_of_its_tier(kind: str, region: str) -> None:
    book = ledger()
    fact = opened(kind, region)
    done = decide(book, make_event(fact, source="test"))
    assert done.region == region and done.aggregate_id == str(fact.facility_id)
    created = book.new_intervals[("facility", fact.facility_id)]
    assert created.facility_kind == kind and created.interval.region_code == region
    assert book.audit[-1]["record_kind"] == "facility"


@pytest.mark.parametrize("region", ["510681002", "5107"])
def test_an_unknown_division_is_refused_naming_region_code(region: str) -> None:
    with pytest.raises(Rejected) as refused:
        decide(ledger(), make_event(opened("innovation_base", region), source="test"))
    assert refused.value.field == "region_code" and refused.value.code == "unknown_division"


@pytest.mark.parametrize(("kind", "region"), [("social_work_room", "510682001001"),
                                              ("social_work_station", "510682001"), ("innovation_base", "510682")])
def test_a_division_of_a_county_not_loaded_yet_waits_for_it(kind: str, region: str) -> None:
    """A fact may overtake its county's divisions (another stream): it waits, it is not refused."""
    with pytest.raises(NotYet) as waits:
        decide(ledger(), make_event(opened(kind, region), source="test"))
    assert waits.value.field == "region_code" and waits.value.waits_for == "county:510682"


def test_a_facility_opens_once_and_closes_once_not_before_it_opened() -> None:
    book = ledger()
    fact = opened("social_work_station", "510681001")
    decide(book, make_event(fact, source="test"))
    with pytest.raises(Rejected) as twice:
        decide(book, make_event(fact.model_copy(update={}), source="test"))
    assert twice.value.field == "facility_id"
    with pytest.raises(Rejected) as early:
        decide(book, make_event(ev.FacilityClosed(facility_id=fact.facility_id, closed_on=date(2024, 2, 1)),
                                source="test", region="510681001"))
    assert early.value.field == "closed_on"
    decide(book, make_event(ev.FacilityClosed(facility_id=fact.facility_id, closed_on=date(2024, 5, 1)),
                            source="test", region="510681001"))
    assert book.intervals[("facility", fact.facility_id)].ended_on == date(2024, 5, 1)
    with pytest.raises(Rejected) as again:
        decide(book, make_event(ev.FacilityClosed(facility_id=fact.facility_id, closed_on=date(2024, 6, 1)),
                                source="test", region="510681001"))
    assert again.value.field == "facility_id" and again.value.code == "ended"


def test_closing_a_facility_not_on_record_waits_for_it() -> None:
    with pytest.raises(NotYet) as waits:
        decide(ledger(), make_event(ev.FacilityClosed(facility_id=uuid4(), closed_on=DAY), source="test",
                                    region="510681001"))
    assert waits.value.field == "facility_id" and waits.value.waits_for.startswith("facility:")


def test_a_retired_code_is_refused_from_its_day_and_a_past_fact_follows_it() -> None:
    retired = Retired([Retirement("510681001", DAY, "merged", "510681002")])
    book = ledger(retired=retired)
    book.townships.add("510681002")
    with pytest.raises(Rejected) as refused:
        decide(book, make_event(opened("social_work_station", "510681001"), source="test"))
    assert refused.value.field == "region_code" and "510681002" in refused.value.message
    past = ev.FacilityOpened(kind="social_work_station", name="站", region_code="510681001",
                             opened_on=date(2024, 2, 1))
    decide(book, make_event(past, source="test"))
    assert book.new_intervals[("facility", past.facility_id)].interval.region_code == "510681002"
