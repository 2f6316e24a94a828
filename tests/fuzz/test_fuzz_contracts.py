"""The corpus against the contracts alone (no servers): every bad event is refused with a
ContractError that names its field, nothing else is ever raised, and what is odd but valid
survives verbatim. The subscriber and HTTP suites send the same corpus through real services."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts import ContractError, Topology, jsontext, parse_event
from contracts import events as ev
from cso.commands import parse_command
from cso.consumer import check_subject
from services.registry.commands import COMMANDS
from tests.fuzz import corpus

TOPOLOGY = Topology("fuzz")
CONTEXTS = ("intake", "registry", "training", "divisions", "targets")


def refusal(data: bytes, subject: str) -> ContractError | None:
    """What a consumer decides before its handler: None if the message would be applied."""
    try:
        check_subject(TOPOLOGY, subject, parse_event(data))
    except ContractError as e:
        return e
    return None


@pytest.mark.parametrize("context", CONTEXTS)
def test_every_bad_event_is_refused_naming_its_field(context: str) -> None:
    cases = corpus.subscriber_cases(context)
    assert len(cases) > 100
    missed, misnamed = [], []
    for case in cases:
        subject = TOPOLOGY.event_subject(case.event_type, case.subject_region, context=context)
        error = refusal(case.data, subject)
        if error is None:
            missed.append(case.label)
        elif not corpus.names(corpus.fields_named(error.reason), case.field):
            misnamed.append(f"{case.label}: expected {case.field}, got {error.reason[:200]}")
    assert not missed, f"accepted: {missed}"
    assert not misnamed, "\n".join(misnamed)


@pytest.mark.parametrize("context", CONTEXTS)
def test_the_valid_events_pass(context: str) -> None:
    for envelope in corpus.events_for(context):
        subject = corpus.subject_for(TOPOLOGY, context, envelope)
        assert refusal(envelope.model_dump_json().encode(), subject) is None, envelope.type


def test_an_event_on_another_regions_or_contexts_subject_is_refused() -> None:
    filed = corpus.events_for("registry")[0]
    data = filed.model_dump_json().encode()
    leshan = TOPOLOGY.event_subject("OrganizationFiled", "511102001001")
    assert (e := refusal(data, leshan)) and corpus.fields_named(e.reason) == ["region"]
    other_type = TOPOLOGY.event_subject("HubDissolved", filed.region)
    assert (e := refusal(data, other_type)) and corpus.fields_named(e.reason) == ["type"]
    completed = corpus.events_for("training")[1]
    on_registry = TOPOLOGY.event_subject("TrainingCompleted", completed.region, context="registry")
    assert (e := refusal(completed.model_dump_json().encode(), on_registry)) \
        and corpus.fields_named(e.reason) == ["type"]


@pytest.mark.parametrize("value", corpus.ODD_BUT_VALID)
def test_odd_but_valid_text_is_kept_verbatim(value: str) -> None:
    filed = corpus.events_for("registry")[0]
    data = json.loads(filed.model_dump_json())
    data["payload"]["name"] = value
    parsed = parse_event(json.dumps(data).encode())
    assert parsed.payload.name == value


@settings(max_examples=corpus.EXAMPLES * 5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300) | corpus.json_values.map(lambda v: json.dumps(v).encode()))
def test_random_bytes_are_refused_with_a_contract_error_only(data: bytes) -> None:
    with pytest.raises(ContractError) as refused:
        parse_event(data)
    assert corpus.fields_named(refused.value.reason)


@settings(max_examples=corpus.EXAMPLES * 5, deadline=None)
@given(st.data())
def test_random_bad_fields_are_refused_naming_the_field(data: st.DataObject) -> None:
    context = data.draw(st.sampled_from(CONTEXTS))
    case = data.draw(corpus.random_event_case(context))
    subject = TOPOLOGY.event_subject(case.event_type, case.subject_region, context=context)
    error = refusal(case.data, subject)
    assert error is not None, case.label
    assert corpus.names(corpus.fields_named(error.reason), case.field), (case.label, error.reason)


@pytest.mark.parametrize(("label", "body", "field"), [
    (label, data, field) for label, data, field in corpus.RAW_GARBAGE if len(data) < 64 * 1024
    and field.startswith("$")])
def test_a_command_body_of_garbage_is_refused(label: str, body: bytes, field: str) -> None:
    with pytest.raises(ContractError) as refused:
        parse_command(COMMANDS, "file", body)
    assert corpus.names(corpus.fields_named(refused.value.reason), field), label


@pytest.mark.parametrize(("name", "value"), [("name", v) for v in corpus.TEXT_BAD]
                         + [("community_code", v) for v in corpus.COMMUNITY_BAD]
                         + [("filed_on", v) for v in corpus.DATE_BAD])
def test_a_command_with_a_bad_field_is_refused_naming_it(name: str, value: Any) -> None:
    body = {"name": "舞蹈队", "community_code": corpus.COMMUNITY, "category": "culture_sports",
            "filed_on": "2023-03-01"} | {name: value}
    with pytest.raises(ContractError) as refused:
        parse_command(COMMANDS, "file", json.dumps(body).encode())
    assert name in corpus.fields_named(refused.value.reason), refused.value.reason


def test_strict_json() -> None:
    for raw, field in [(b'{"a": {"b": 1, "b": 2}}', "a.b"), (b'{"x": [1, NaN]}', "x.1"),
                       (b'{"x": 1e999}', "x"), (b'{"x": -Infinity}', "x"), (b'{"n": ' + b"9" * 41 + b"}", "n"),
                       (b'{"t": "a\\u0000"}', "t"), (b'{"t": ["\\ud800"]}', "t.0"), (b'{"t": "\\u001b"}', "t")]:
        with pytest.raises(jsontext.TextError) as refused:
            jsontext.loads(raw)
        assert refused.value.field == field, raw
    assert jsontext.loads(b'{"t": "tab\\tnew\\nline\\r", "n": 1.5, "i": -3}') == {
        "t": "tab\tnew\nline\r", "n": 1.5, "i": -3}
    with pytest.raises(jsontext.TextError):
        jsontext.check(json.loads("[" * 33 + "]" * 33))
    jsontext.check(json.loads("[" * 32 + "]" * 32))


def test_codes_take_ascii_digits_only() -> None:
    from contracts import codes
    for code in ("５１", "٥١٠٦٨١", "51²"):
        with pytest.raises(ValueError):
            codes.tier_of(code)
    # The published schema says the same: ASCII digits of a tier's length, never `\d`.
    assert ev.DivisionChanged.model_json_schema()["properties"]["code"]["pattern"] == codes.REGION_PATTERN
    assert r"\d" not in codes.REGION_PATTERN
