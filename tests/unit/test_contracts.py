from __future__ import annotations

import json
from datetime import date, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

import contracts as c
from contracts import codes, schema
from contracts import events as ev

VALID_USCC = "51510681MJ0000000"  # first 17; completed by the check character below


def uscc(first17: str = VALID_USCC) -> str:
    return first17 + codes.uscc_check_character(first17)


def filed(**over: object) -> ev.OrganizationFiled:
    data = dict(name="西城社区舞蹈队", community_code="510681001014", category="culture_sports",
                filed_on=date(2023, 3, 1)) | over
    return ev.OrganizationFiled.model_validate(data)


@pytest.mark.parametrize("code", [
    "91350100M000100Y43",  # the worked example of GB 32100-2015
    "53100000500021676K",  # a national foundation registered with the Ministry of Civil Affairs
    "91110000600037341L",
])
def test_uscc_real_codes_pass(code: str) -> None:
    assert codes.validate_uscc(code) == code
    assert codes.validate_uscc(code.lower()) == code


@given(st.text(alphabet=codes.USCC_ALPHABET, min_size=9, max_size=9), st.integers(0, 16),
       st.sampled_from(codes.USCC_ALPHABET))
def test_uscc_any_single_substitution_is_caught(tail: str, position: int, replacement: str) -> None:
    first17 = "515106810" + tail[:8]
    good = first17 + codes.uscc_check_character(first17)
    assert codes.validate_uscc(good) == good
    bad = good[:position] + replacement + good[position + 1:]
    if bad != good:
        with pytest.raises(ValueError):
            codes.validate_uscc(bad)


def test_uscc_errors_say_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="18 characters"):
        codes.validate_uscc("5151")
    with pytest.raises(ValueError, match="not allowed"):
        codes.validate_uscc("I" * 18)
    good = uscc()
    wrong = good[:17] + ("0" if good[17] != "0" else "1")
    with pytest.raises(ValueError, match="check character"):
        codes.validate_uscc(wrong)


def test_ancestors_and_tiers() -> None:
    assert c.ancestors("510681001014") == ["51", "5106", "510681", "510681001", "510681001014"]
    assert c.tier_of("510681") == "county"
    with pytest.raises(ValueError):
        c.tier_of("51068")


def test_round_trip_keeps_unknown_fields() -> None:
    envelope = c.make_event(filed(), source="test")
    data = json.loads(c.encode(envelope))
    data["payload"]["added_by_a_newer_publisher"] = 7
    data["trace"] = "abc"
    parsed = c.parse_event(json.dumps(data).encode())
    assert parsed.payload.model_extra == {"added_by_a_newer_publisher": 7}
    assert json.loads(c.encode(parsed))["trace"] == "abc"


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda d: d.pop("event_id"), "event_id"),
    (lambda d: d.update(version=2), "version"),
    (lambda d: d.update(type="OrganizationExploded"), "type"),
    (lambda d: d["payload"].update(community_code="5106810010"), "payload.community_code"),
    (lambda d: d["payload"].update(filed_on=(date.today() + timedelta(days=30)).isoformat()),
     "payload.filed_on"),
    (lambda d: d["payload"].update(category="gardening"), "payload.category"),
    (lambda d: d.update(region="510681001015"), "region"),
    (lambda d: d["payload"].pop("name"), "payload.name"),
])
def test_errors_name_the_field(mutate, field) -> None:  # type: ignore[no-untyped-def]
    data = json.loads(c.encode(c.make_event(filed(), source="test")))
    mutate(data)
    with pytest.raises(c.ContractError) as caught:
        c.parse_event(json.dumps(data).encode())
    assert field in [e.field for e in caught.value.errors], caught.value.reason


def test_non_json_and_oversize_are_refused() -> None:
    with pytest.raises(c.ContractError, match="not JSON"):
        c.parse_event(b"\xff\xfe{")
    with pytest.raises(c.ContractError, match="exceeds"):
        c.parse_event(b"{" + b" " * (2 * 1024 * 1024) + b"}")
    data = json.loads(c.encode(c.make_event(filed(), source="test")))
    data["payload"]["name"] = "x" * 100_000
    with pytest.raises(c.ContractError, match="exceeds"):
        c.parse_event(json.dumps(data).encode())


def test_registration_checks_credit_code_against_legal_form() -> None:
    good = dict(name="社会服务中心", community_code="510681001014", legal_form="social_service_agency",
                category="resident_services", registered_on=date(2023, 1, 2))
    agency = "52510681MJ0000001"
    ev.OrganizationRegistered.model_validate(good | {"social_credit_code": uscc(agency)})
    with pytest.raises(Exception, match="legal_form"):
        ev.OrganizationRegistered.model_validate(good | {"social_credit_code": uscc("51510681MJ0000001")})


def test_subjects() -> None:
    t = c.Topology()
    assert t.event_subject("OrganizationFiled", "510681001014") == \
        "cso.registry.organization_filed.51.5106.510681"
    assert t.event_subject("TargetStatusChanged", "5111") == "cso.targets.target_status_changed.51.5111._"
    assert t.intake_subject("guanghan-register", "HubDissolved", "510681001") == \
        "cso.intake.guanghan-register.hub_dissolved.51.5106.510681"
    assert t.operator_intake_subject("HubDissolved", "510681001") == "cso.intake.hub_dissolved.51.5106.510681"
    ns = c.Topology("t1")
    assert ns.stream("CSO_REGISTRY") == "T1_CSO_REGISTRY"
    assert all(s.subjects[0].startswith("t1.cso.") for s in ns.streams)


def test_intake_subjects_name_the_publisher() -> None:
    t, ns = c.Topology(), c.Topology("t1")
    assert ns.intake_subject("leshan", "OrganizationFiled", "5111") == \
        "t1.cso.intake.leshan.organization_filed.51.5111._"
    for source in ("Leshan", "a.b", "a b", "", "-lead", "x" * 64, "city:register"):
        with pytest.raises(ValueError, match="source"):
            t.intake_subject(source, "OrganizationFiled", "5111")
    with pytest.raises(ValueError, match="type"):
        t.intake_subject("leshan", "NoSuchEvent", "5111")
    # An operator's file: under the fact's own source where it can be a token, else version 1.
    assert t.intake_subject_for("leshan", "HubEstablished", "511102004") == \
        "cso.intake.leshan.hub_established.51.5111.511102"
    assert t.intake_subject_for("Bulk:Load", "HubEstablished", "511102004") == \
        "cso.intake.hub_established.51.5111.511102"


def test_intake_subjects_are_parsed_in_both_versions() -> None:
    from contracts.subjects import IntakeSubject

    ns = c.Topology("t1")
    assert ns.parse_intake_subject(ns.intake_subject("leshan", "HubEstablished", "5111")) == \
        IntakeSubject("leshan", "hub_established", ("51", "5111", "_"))
    assert ns.parse_intake_subject(ns.operator_intake_subject("HubEstablished", "5111")) == \
        IntakeSubject(None, "hub_established", ("51", "5111", "_"))
    for other in ("t1.cso.intake.a.b.c", "t1.cso.intake.a.b.c.d.e.f", "t1.cso.registry.a.b.c.d",
                  "cso.intake.leshan.hub_established.51.5111._", "t2.cso.intake.a.b.c.d"):
        assert ns.parse_intake_subject(other) is None, other


def test_committed_schemas_match_the_models() -> None:
    expected = schema.rendered()
    committed = {p.name: p.read_text(encoding="utf-8") for p in schema.SCHEMAS.glob("*.json")}
    assert set(committed) == set(expected), "run `python -m contracts.schema`"
    for name, text in expected.items():
        assert committed[name] == text, f"{name} drifted from its model: run `python -m contracts.schema`"
