"""Codes retired by division changes, as registry's rules see them (services/registry/domain/divisions.py)."""

from __future__ import annotations

from datetime import date
from uuid import uuid4

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts import events as ev
from contracts import make_event
from services.registry.domain import Ledger, Organization, Rejected, decide
from services.registry.domain.divisions import Retired, Retirement

DAY = date(2024, 6, 30)


def test_a_retired_code_is_refused_from_its_day_naming_the_field_and_successor() -> None:
    retired = Retired([Retirement("440308001002", DAY, "recoded", "440308002011"),
                       Retirement("440308002011", date(2025, 1, 1), "merged", "440308002001")])
    retired.check("community_code", "440308001002", date(2024, 6, 29))   # a past fact: accepted
    with pytest.raises(Rejected) as refused:
        retired.check("community_code", "440308001002", DAY)
    assert refused.value.field == "community_code" and "440308002001" in refused.value.message
    assert refused.value.code == "retired_division"
    assert retired.current("440308001002") == "440308002001"     # the chain, followed through


def test_an_abolished_code_has_no_successor_and_renames_retire_nothing() -> None:
    retired = Retired([Retirement("440308003", DAY, "abolished", None),
                       Retirement("440308004", DAY, "renamed", None)])
    assert retired.current("440308003") == "440308003" and retired.codes() == {"440308003"}
    with pytest.raises(Rejected, match="abolished"):
        retired.check("region_code", "440308003", DAY)
    retired.check("region_code", "440308004", DAY)


codes = st.sampled_from([f"44030800{i}" for i in range(1, 7)])


@given(st.lists(st.tuples(codes, codes, st.dates(date(2020, 1, 1), date(2026, 1, 1))), max_size=8))
def test_following_a_code_twice_moves_nothing_more(rows: list[tuple[str, str, date]]) -> None:
    """Whatever the changes (chains in any order, a code changed on two days), the code standing
    for a code now stands for itself: a record moved once is not moved again."""
    # Successors later in code order: no cycle (bad data with one stops where it closes).
    retired = Retired(Retirement(min(a, b), on, "merged", max(a, b)) for a, b, on in rows if a != b)
    for code in retired.codes():
        now = retired.current(code)
        assert now not in retired.codes() and retired.current(now) == now


def test_a_late_fact_may_name_its_records_region_by_its_old_code() -> None:
    """An update of a past day from outside names the region the organization had then; the
    organization has moved to the successor since: accepted, and recorded at the new code."""
    org = Organization(id=uuid4(), name="梅沙组织", community_code="440308002011", tier="filed",
                       category="charity", filed_on=date(2023, 3, 1))
    retired = Retired([Retirement("440308001002", DAY, "recoded", "440308002011")])
    ledger = Ledger(orgs={org.id: org}, credit_holders={}, communities=set(), counties={"440308"},
                    townships=set(), intervals={}, retired=retired)
    fact = ev.OrganizationUpdated(organization_id=org.id, effective_on=date(2024, 1, 5), brand=True)
    done = decide(ledger, make_event(fact, source="county-system", region="440308001002"))
    assert done.region == "440308002011" and ledger.orgs[org.id].brand     # type: ignore[union-attr]
    # Without the change known, the old code is another region: refused.
    plain = Ledger(orgs={org.id: org}, credit_holders={}, communities=set(), counties={"440308"},
                   townships=set(), intervals={})
    with pytest.raises(Rejected, match="region"):
        decide(plain, make_event(fact, source="county-system", region="440308001002"))
