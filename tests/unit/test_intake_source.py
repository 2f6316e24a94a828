"""registry's check of an intake subject against the envelope (cso.consumer.check_subject): the
publisher a version 2 subject names is the only source its facts may claim (issue 18, finding 4)."""

from __future__ import annotations

from datetime import date

import pytest

from contracts import ContractError, Topology, make_event
from contracts import events as ev
from cso.consumer import check_subject

T = Topology("ns")
COMMUNITY = "510681001014"


def filed(source: str) -> ev.Envelope[ev.OrganizationFiled]:
    return make_event(ev.OrganizationFiled(name="西城社区志愿服务队", community_code=COMMUNITY,
                                           category=ev.Category.CHARITY, filed_on=date(2024, 5, 1)), source=source)


def refusal(subject: str, source: str) -> ContractError | None:
    try:
        check_subject(T, subject, filed(source))
    except ContractError as e:
        return e
    return None


def test_a_publisher_speaks_for_itself() -> None:
    assert refusal(T.intake_subject("guanghan", "OrganizationFiled", COMMUNITY), "guanghan") is None


def test_a_source_other_than_the_subjects_publisher_is_refused_naming_source() -> None:
    error = refusal(T.intake_subject("guanghan", "OrganizationFiled", COMMUNITY), "deyang")
    assert error is not None and [e.field for e in error.errors] == ["source"]
    assert "'guanghan'" in error.reason and "'deyang'" in error.reason
    # A source that could not even be a publisher's name is no better.
    error = refusal(T.intake_subject("guanghan", "OrganizationFiled", COMMUNITY), "Guanghan:Register")
    assert error is not None and error.errors[0].field == "source"


def test_the_operators_version_1_subject_takes_the_envelopes_word() -> None:
    for source in ("guanghan", "Bulk:Load/2024"):
        assert refusal(T.operator_intake_subject("OrganizationFiled", COMMUNITY), source) is None


@pytest.mark.parametrize(("subject", "field"), [
    (T.intake_subject("guanghan", "HubEstablished", COMMUNITY), "type"),
    (T.intake_subject("guanghan", "OrganizationFiled", "510682001001"), "region"),
    (T.operator_intake_subject("OrganizationFiled", "5106"), "region"),
    ("ns.cso.intake.guanghan.organization_filed.51.5106.510681.extra", "type"),
    ("ns.cso.intake.organization_filed.51.5106", "type"),
])
def test_type_and_region_are_still_checked_in_both_versions(subject: str, field: str) -> None:
    error = refusal(subject, "guanghan")
    assert error is not None and error.errors[0].field == field, error
