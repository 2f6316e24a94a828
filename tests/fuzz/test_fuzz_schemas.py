"""The refusal corpus (tests/fuzz/corpus.py) through the published JSON Schemas (contracts/schemas/)
and through cso's own decoder (contracts.parse_event): every case cso refuses, the schema refuses
too, unless its refusal class is one JSON Schema cannot state. Those classes are listed here and in
contracts/README.md (*What the schemas cannot say*), and for them cso names the field."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from contracts import ContractError, Topology, parse_event, schema
from cso.consumer import check_subject
from tests.fuzz import corpus

TOPOLOGY = Topology()
CONTEXTS = ("intake", "registry", "training", "divisions", "targets")
README = Path(schema.__file__).parent / "README.md"

# Refusal classes JSON Schema cannot state: (name, as in contracts/README.md; cso's reason).
CANNOT_SAY: dict[str, re.Pattern[str]] = {
    "not JSON, or JSON no schema reads the same way": re.compile(r"not JSON|duplicate key|is not a JSON number|"
                                                                r"is out of range"),
    "the event's size (64 KiB; 1 MiB for DivisionsImported)": re.compile(r"bytes exceeds"),
    "nesting deeper than 32": re.compile(r"nested deeper than"),
    "numbers of more than 40 digits": re.compile(r"digits is too long|characters is too long"),
    "a date after tomorrow in China, a time more than 5 minutes ahead": re.compile(r"is in the future"),
    "the credit code's check character": re.compile(r"check character is"),
    "the envelope's region against the payload's": re.compile(r"differs from the payload's"),
    "the subject against the event: its event, region and publisher tokens": re.compile(r"belongs on|"
                                                                                         r"published this on"),
    "rules between fields (a session's end before its start, townships outside the base's region)":
        re.compile(r"cannot end before it starts|not under region|not nested|is not a township of|"
                   r"not under a listed township"),
}


def validators() -> dict[str, Draft202012Validator]:
    out = {}
    for path in schema.SCHEMAS.glob("*.v*.json"):
        document = json.loads(path.read_text(encoding="utf-8"))
        out[document["title"]] = Draft202012Validator(document, format_checker=Draft202012Validator.FORMAT_CHECKER)
    return out


VALIDATORS = validators()


def schema_refuses(case: corpus.Case) -> bool:
    try:
        data: Any = json.loads(case.data)
    except (ValueError, RecursionError):
        return True  # not JSON: no schema is asked
    return not VALIDATORS[case.event_type].is_valid(data)


def cso_refusal(case: corpus.Case, context: str) -> ContractError | None:
    subject = TOPOLOGY.event_subject(case.event_type, case.subject_region, context=context)
    try:
        check_subject(TOPOLOGY, subject, parse_event(case.data))
    except ContractError as e:
        return e
    return None


@pytest.mark.parametrize("context", CONTEXTS)
def test_the_valid_events_pass_their_schema(context: str) -> None:
    for envelope in corpus.events_for(context):
        data = json.loads(envelope.model_dump_json())
        errors = [e.message for e in VALIDATORS[envelope.type].iter_errors(data)]
        assert not errors, (envelope.type, errors)


@pytest.mark.parametrize("context", CONTEXTS)
def test_what_cso_refuses_the_schema_refuses_or_cannot_say(context: str) -> None:
    cases = corpus.subscriber_cases(context)
    unexplained, classes = [], Counter[str]()
    refused_by_schema = 0
    for case in cases:
        error = cso_refusal(case, context)
        assert error is not None, f"cso accepts {case.label}"
        if schema_refuses(case):
            refused_by_schema += 1
            continue
        named = [name for name, reason in CANNOT_SAY.items() if reason.search(error.reason)]
        if not named or not corpus.names(corpus.fields_named(error.reason), case.field):
            unexplained.append(f"{case.label}: cso says {error.reason[:160]}")
        classes.update(named[:1])
    assert not unexplained, f"{len(unexplained)} cases the schema accepts:\n" + "\n".join(unexplained)
    assert refused_by_schema > len(cases) * 0.8, (refused_by_schema, len(cases), classes)


def test_the_readme_lists_what_the_schemas_cannot_say() -> None:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("### What the schemas cannot say"):]
    for name in CANNOT_SAY:
        assert f"- {name}" in section, name


def test_fullwidth_digits_and_control_characters_are_refused_by_the_schema() -> None:
    filed = json.loads(corpus.events_for("intake")[0].model_dump_json())
    validator = VALIDATORS["OrganizationFiled"]
    for change in ({"community_code": "５１０６８１００１０１４"}, {"name": "a\x00b"}, {"name": "del\x7f"},
                   {"filed_on": "1949-09-30"}, {"filed_on": "2023-02-30"}, {"filing_number": "x\x1b"},
                   {"extra": {"k": "\ud800"}}, {"extra": "x" * 70_000}):
        assert not validator.is_valid(filed | {"payload": filed["payload"] | change}), change
    assert not validator.is_valid(filed | {"occurred_at": "2024-01-01T00:00:00"})  # no offset
    assert not validator.is_valid(filed | {"region": "51068100101"})
