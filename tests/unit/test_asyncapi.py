"""The AsyncAPI document (contracts/asyncapi.json): generated from the contracts, checked by the
AsyncAPI initiative's own parser (@asyncapi/parser under node, tests/asyncapi/), and covering every
channel cso has. Also: error fields are named one way (contracts.envelope.event_field)."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from contracts import asyncapi
from contracts.envelope import ENVELOPE_FIELDS, event_field
from contracts.events import PAYLOADS
from contracts.subjects import snake
from cso_local import asyncapi as generator
from services.registry.commands import COMMANDS as REGISTRY_COMMANDS
from services.training.commands import COMMANDS as TRAINING_COMMANDS
from tests.support import missing

CHECKER = Path(__file__).parents[1] / "asyncapi"


def test_the_committed_document_is_the_generated_one() -> None:
    assert asyncapi.DOCUMENT.read_text(encoding="utf-8") == generator.rendered(), \
        "contracts/asyncapi.json drifted from the contracts: run `python -m cso_local.asyncapi`"


def validate(documents: list[dict[str, Any]], tmp_path: Path) -> tuple[int, list[dict[str, Any]]]:
    """Each document through the AsyncAPI parser (one node process): its exit code, one answer each."""
    node = shutil.which("node")
    if node is None or not (CHECKER / "node_modules" / "@asyncapi" / "parser").is_dir():
        missing("asyncapi-parser", "node and tests/asyncapi/node_modules (cd tests/asyncapi && npm ci) are needed")
    paths = []
    for i, document in enumerate(documents):
        paths.append(tmp_path / f"asyncapi-{i}.json")
        paths[-1].write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")
    done = subprocess.run([node, "validate.mjs", *map(str, paths)], cwd=CHECKER, capture_output=True, text=True,
                          timeout=300)
    return done.returncode, [json.loads(line) for line in done.stdout.splitlines()]


def test_the_asyncapi_parser_accepts_the_document(tmp_path: Path) -> None:
    document = json.loads(asyncapi.DOCUMENT.read_text(encoding="utf-8"))
    code, [answer] = validate([document], tmp_path)
    assert code == 0 and answer["errors"] == [] and answer["warnings"] == [], answer
    assert answer["summary"]["version"] == "3.0.0"
    assert answer["summary"]["channels"] == len(document["channels"])
    assert answer["summary"]["operations"] == len(document["operations"])


def test_the_asyncapi_parser_refuses_a_broken_document(tmp_path: Path) -> None:
    """The parser is really asked: a reference to no message, a parameter no channel declares, and
    a schema of no JSON type are each refused."""
    document = json.loads(asyncapi.DOCUMENT.read_text(encoding="utf-8"))
    broken = []
    for breaking in (
        lambda d: d["operations"]["send.deadletter"]["messages"][0].__setitem__(
            "$ref", "#/channels/deadletter/messages/Nothing"),
        lambda d: d["channels"]["deadletter"].__setitem__("address", "cso.deadletter.{nothing}"),
        lambda d: d["components"]["schemas"]["OrganizationFiled.v1"]["properties"]["region"].__setitem__(
            "type", "text"),
    ):
        broken.append(copy.deepcopy(document))
        breaking(broken[-1])
    code, answers = validate(broken, tmp_path)
    assert code == 1 and len(answers) == 3 and all(a["errors"] for a in answers), answers


def test_every_channel_is_there() -> None:
    document = generator.document()
    addresses = {c["address"] for c in document["channels"].values()}
    for payload in PAYLOADS:
        event = snake(payload.TYPE)
        if payload.CONTEXT == "receipts":
            assert f"cso.receipts.{{source}}.{payload.SUBJECT.rsplit('.', 1)[-1]}" in addresses
            continue
        assert f"cso.{payload.CONTEXT}.{event}.{{province}}.{{city}}.{{county}}" in addresses
        if payload.CONTEXT == "registry":
            assert f"cso.intake.{{source}}.{event}.{{province}}.{{city}}.{{county}}" in addresses
            assert f"cso.intake.{event}.{{province}}.{{city}}.{{county}}" in addresses
    for service, commands in (("registry", REGISTRY_COMMANDS), ("training", TRAINING_COMMANDS)):
        assert {f"cso.cmd.{service}.{c}" for c in commands} <= addresses
    assert {"cso.query.registry.receipts.{source}", "cso.deadletter.{service}", "cso.receipts.{source}.lost",
            "cso.ops.bus_gap_detected.{province}.{city}.{county}"} <= addresses
    schemes = document["components"]["securitySchemes"]
    assert set(schemes) == {"registry", "targets", "training", "notify", "divisions", "admin", "publisher"}
    assert "cso.intake.<user>.*.<region>" in schemes["publisher"]["x-nats-permissions"]["publish"]
    dead = document["components"]["schemas"]
    assert {"Cso-Reason", "Nats-Msg-Id"} <= set(dead["DeadLetterHeaders"]["properties"])
    assert "event_id" in dead["DeadLetter"]["properties"]


def test_a_new_receipt_is_one_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    from contracts.receipts import Receipt

    monkeypatch.setattr(asyncapi, "RECEIPTS", (asyncapi.Receipt("refused", Receipt, "A fact was refused."),))
    document = generator.document()
    assert document["channels"]["receipts.refused"]["address"] == "cso.receipts.{source}.refused"
    assert "send.receipts.refused" in document["operations"]


def test_no_payload_field_is_named_like_an_envelope_field() -> None:
    """Where event_field is used (registry's facts, on intake and as commands), a bare name is a
    payload field's for sure."""
    for payload in [p for p in PAYLOADS if p.CONTEXT == "registry"]:
        assert not set(payload.model_fields) & set(ENVELOPE_FIELDS), payload.TYPE


def test_error_fields_are_named_by_their_path_in_the_event() -> None:
    assert event_field("community_code") == "payload.community_code"
    assert event_field("covered_townships.0") == "payload.covered_townships.0"
    assert event_field("payload.community_code") == "payload.community_code"
    for kept in ("region", "source", "event_id", "$", "command", "occurred_at", "Idempotency-Key"):
        assert event_field(kept) == kept


def test_the_documents_message_schemas_judge_events_as_the_json_schemas_do() -> None:
    """The schemas moved into components.schemas (references rewritten) still take the valid
    events and refuse a bad one: AsyncAPI's schemas are JSON Schema draft 07."""
    from jsonschema import Draft7Validator

    from tests.fuzz import corpus

    components = json.loads(asyncapi.DOCUMENT.read_text(encoding="utf-8"))["components"]
    for context in ("intake", "training", "divisions", "targets"):
        for envelope in corpus.events_for(context):
            validator = Draft7Validator({"$ref": f"#/components/schemas/{envelope.type}.v1", "components": components},
                                        format_checker=Draft7Validator.FORMAT_CHECKER)
            data = json.loads(envelope.model_dump_json())
            assert not [e.message for e in validator.iter_errors(data)], envelope.type
            bad = data | {"region": "５１"}
            assert not validator.is_valid(bad), envelope.type


def test_the_examples_fit_their_messages() -> None:
    """The AsyncAPI parser does not check examples against their schemas; this does."""
    from jsonschema import Draft7Validator

    components = json.loads(asyncapi.DOCUMENT.read_text(encoding="utf-8"))["components"]
    checked = 0
    for message in components["messages"].values():
        for example in message.get("examples", []):
            for part in ("payload", "headers"):
                if part in example:
                    schema = {"$ref": message[part]["$ref"], "components": components}
                    validator = Draft7Validator(schema, format_checker=Draft7Validator.FORMAT_CHECKER)
                    assert not [e.message for e in validator.iter_errors(example[part])], (message["name"], part)
                    checked += 1
    assert checked >= 5
