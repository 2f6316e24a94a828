"""The AsyncAPI 3.0 document of cso's bus, built from the contracts: contracts/asyncapi.json.

    python -m cso_local.asyncapi          # writes contracts/asyncapi.json

A test fails when the committed file drifts from the generator, and validates it with the AsyncAPI
initiative's own parser (tests/asyncapi/). registry serves it at `GET /asyncapi.json`.

The document describes cso as one application: what it receives (intake facts, commands, the
receipts query) and what it sends (accepted events, receipts, dead letters, operational events).
Messages reuse the JSON Schemas of contracts/schema.py, their `$defs` moved to
`components.schemas`. Channel parameters carry their pattern in `x-pattern` (AsyncAPI 3 parameters
have no schema). New channels are one entry: a receipt is one `Receipt` in RECEIPTS.

What is not the contracts' own is passed in, so the contracts depend on nothing of cso: the services'
commands (their models live in the services) and the security schemes, one per kind of NATS user
(what each may publish and subscribe, from cso/natsauth.py). cso_local/asyncapi.py gathers both and
writes the file.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from . import schema as schemas
from .deadletter import DeadLetter
from .envelope import ENVELOPE_FIELDS, FieldError
from .events import PAYLOADS, Payload
from .receipts import VERDICTS, IntakeReceipt, ReceiptsAnswer, ReceiptsQuery
from .subjects import SOURCE_TOKEN, snake

DOCUMENT = Path(__file__).parent / "asyncapi.json"
# The contracts' version: the major number changes only with a breaking change (contracts/README.md,
# Versions and deprecation); the minor with anything added.
CONTRACTS_VERSION = "1.8.0"
EXAMPLE_SOURCE = "guanghan-register"


@dataclass(frozen=True)
class Receipt:
    """A message registry sends one publisher on `cso.receipts.<source>.<kind>` (plain subscription)."""

    kind: str                       # the last subject token, e.g. "lost"
    model: type[BaseModel]          # its schema
    summary: str


# Receipts to publishers: every Payload of context "receipts" (e.g. IntakeLost), and any other
# message listed here. A new receipt is one entry.
RECEIPTS: tuple[Receipt, ...] = tuple(
    Receipt(verdict, IntakeReceipt, f"the verdict `{verdict}` on one of its intake facts "
                                    "(contracts/README.md, Receipts of every verdict).")
    for verdict in VERDICTS)


def receipts() -> list[Receipt]:
    out = [Receipt(p.SUBJECT.rsplit(".", 1)[-1] if p.SUBJECT else snake(p.TYPE), p,
                   (p.__doc__ or p.TYPE).strip().splitlines()[0]) for p in PAYLOADS if p.CONTEXT == "receipts"]
    return out + list(RECEIPTS)


PARAMETERS: dict[str, dict[str, Any]] = {
    "province": {"description": "The province's division code: 2 ASCII digits (00: the whole country).",
                 "x-pattern": "^[0-9]{2}$", "examples": ["51"]},
    "city": {"description": "The city's division code (4 ASCII digits), or `_` for an event about a "
                            "province.", "x-pattern": "^([0-9]{4}|_)$", "examples": ["5106", "_"]},
    "county": {"description": "The county's division code (6 ASCII digits), or `_` for an event about a "
                              "province or a city.", "x-pattern": "^([0-9]{6}|_)$", "examples": ["510681", "_"]},
    "source": {"description": "The publisher: its NATS user name, which its events carry as `source`. "
                              "The server lets a user publish under its own name only.",
               "x-pattern": f"^{SOURCE_TOKEN.pattern}$", "examples": [EXAMPLE_SOURCE]},
    "service": {"description": "The service whose consumer refused the message.",
                "enum": ["registry", "targets", "training", "notify"], "examples": ["registry"]},
}
REGION = ("province", "city", "county")

HEADERS: dict[str, dict[str, Any]] = {
    "EventHeaders": {
        "type": "object",
        "properties": {"Nats-Msg-Id": {
            "type": "string", "pattern": schemas.UUID_PATTERN,
            "description": "The event's event_id: JetStream drops a repeat within its 2-minute duplicate "
                           "window; cso's own deduplication by event_id keeps every later repeat out."}},
    },
    "CommandHeaders": {
        "type": "object",
        "properties": {
            "Cso-Source": {"type": "string", "pattern": "^[A-Za-z0-9_.:/-]{1,100}$",
                           "description": "The event's source (operators only; else `nats-command`)."},
            "Idempotency-Key": {"type": "string", "pattern": "^[\\x21-\\x7e]{1,200}$",
                                "description": "A command sent again with the same key (and body) answers its "
                                               "first reply and acts once; a key reused with another body is "
                                               "refused naming this header (contracts/README.md)."}},
    },
    "DeadLetterHeaders": {
        "type": "object",
        "required": ["Cso-Reason", "Cso-Event-Id", "Nats-Msg-Id"],
        "properties": {
            "Cso-Reason": {"type": "string", "maxLength": 512,
                           "description": "The reason, at most 512 characters, control characters as spaces."},
            "Cso-Event-Id": {"type": "string", "pattern": f"^$|{schemas.UUID_PATTERN}",
                             "description": "The refused event's event_id; empty if the message names none "
                                            "readable."},
            "Nats-Msg-Id": {"type": "string", "pattern": "^dl:[A-Z0-9_]+:[0-9]+$",
                            "description": "`dl:<stream>:<stream_seq>`: one dead letter per refused stream "
                                           "message. The refused event's own id is `Cso-Event-Id` and the "
                                           "record's `event_id`."}},
    },
}

FIELD_ERROR = FieldError.model_json_schema()
FIELD_ERROR["description"] = ("A field at fault, named by its path in the event (`payload.community_code`, "
                              "`region`, `$` for the whole message), whichever path it arrived by.")
COMMAND_REPLY: dict[str, Any] = {
    "description": "The reply to a command: done, or refused with the fields at fault.",
    "oneOf": [
        {"type": "object", "required": ["ok"], "properties": {
            "ok": {"const": True}, "event_id": {"type": "string", "format": "uuid"},
            "type": {"type": "string"}, "id": {"type": "string"}, "region": {"type": "string"}}},
        {"type": "object", "required": ["ok", "errors"], "properties": {
            "ok": {"const": False},
            "errors": {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/FieldError"}}}},
    ],
}

# Examples the AsyncAPI parser checks against their message's schemas (and readers copy).
_FILED = {
    "event_id": "8a1c9a52-3a47-4c1e-9d0e-2f6f1f3b7c01", "type": "OrganizationFiled", "version": 1,
    "occurred_at": "2024-05-01T09:00:00+08:00", "recorded_at": "2024-05-01T09:05:00+08:00",
    "source": EXAMPLE_SOURCE, "region": "510681001014",
    "payload": {"organization_id": "5b0e6c1e-7d7f-4a55-9a8e-3c1f0d2b9e10", "name": "西城社区志愿服务队",
                "community_code": "510681001014", "category": "neighbourly_help", "tier": "filed",
                "filing_number": "GH-2024-001", "filed_on": "2024-05-01"},
}
EXAMPLES: dict[str, dict[str, Any]] = {
    "OrganizationFiled": {"name": "filing", "summary": "A community organization filed in 广汉市",
                          "headers": {"Nats-Msg-Id": _FILED["event_id"]}, "payload": _FILED},
    "ReceiptsQuery": {"name": "two", "payload": {"event_ids": [_FILED["event_id"],
                                                               "8a1c9a52-3a47-4c1e-9d0e-2f6f1f3b7c02"]}},
    "DeadLetter": {
        "name": "unknown community", "summary": "An intake fact naming a community that is not on record",
        "headers": {"Cso-Reason": "payload.community_code: unknown community 510681001999",
                    "Cso-Event-Id": _FILED["event_id"], "Nats-Msg-Id": "dl:CSO_INTAKE:42"},
        "payload": {"service": "registry", "reason": "payload.community_code: unknown community 510681001999",
                    "subject": f"cso.intake.{EXAMPLE_SOURCE}.organization_filed.51.5106.510681",
                    "stream": "CSO_INTAKE", "stream_seq": 42, "deliveries": 1,
                    "dead_lettered_at": "2024-05-01T09:05:01+08:00", "event_id": _FILED["event_id"],
                    "msg_id": _FILED["event_id"],
                    "data": "{\"event_id\": \"8a1c9a52-…\", …}", "data_bytes": 512, "truncated": False}},
}

OPERATORS_ONLY = ("Operators only: the generated NATS permissions give no other user `cso.cmd.>`; a command "
                  "carries no region that a permission could check.")


def _pascal(text: str) -> str:
    return "".join(part.capitalize() for part in re.split(r"[_.-]", text) if part)


class _Builder:
    def __init__(self) -> None:
        self.channels: dict[str, Any] = {}
        self.operations: dict[str, Any] = {}
        self.schemas: dict[str, Any] = {}
        self.messages: dict[str, Any] = {}

    # --- schemas and messages --------------------------------------------------------------------

    def add_schema(self, name: str, document: dict[str, Any]) -> str:
        """A JSON Schema of contracts/schema.py under components.schemas: its $defs beside it, every
        reference rewritten, no $id (it would change what the references resolve against)."""
        document = copy.deepcopy(document)
        document.pop("$id", None)
        for def_name, definition in document.pop("$defs", {}).items():
            definition = _rewrite(definition)
            if self.schemas.setdefault(def_name, definition) != definition:
                raise ValueError(f"schema {def_name!r} differs between the documents that define it")
        self.schemas[name] = _rewrite(document)
        return f"#/components/schemas/{name}"

    def add_message(self, name: str, title: str, summary: str, payload_ref: str, headers: str | None,
                    description: str | None = None) -> str:
        message: dict[str, Any] = {"name": name, "title": title, "summary": summary,
                                   "contentType": "application/json", "payload": {"$ref": payload_ref}}
        if description:
            message["description"] = description
        if headers:
            message["headers"] = {"$ref": f"#/components/schemas/{headers}"}
        if name in EXAMPLES:
            message["examples"] = [EXAMPLES[name]]
        self.messages[name] = message
        return name

    # --- channels and operations ----------------------------------------------------------------

    def channel(self, channel_id: str, address: str | None, messages: list[str], description: str,
                **extra: Any) -> None:
        channel: dict[str, Any] = {"address": address, "description": description,
                                   "messages": {m: {"$ref": f"#/components/messages/{m}"} for m in messages}}
        params = re.findall(r"\{(\w+)\}", address or "")
        if params:
            channel["parameters"] = {p: {"$ref": f"#/components/parameters/{p}"} for p in params}
        channel.update(extra)
        self.channels[channel_id] = channel

    def operation(self, operation_id: str, action: str, channel_id: str, summary: str, security: list[str],
                  reply: tuple[str, str] | None = None, **extra: Any) -> None:
        messages = list(self.channels[channel_id]["messages"])
        operation: dict[str, Any] = {
            "action": action, "channel": {"$ref": f"#/channels/{channel_id}"}, "summary": summary,
            "messages": [{"$ref": f"#/channels/{channel_id}/messages/{m}"} for m in messages],
            "security": [{"$ref": f"#/components/securitySchemes/{s}"} for s in security],
        }
        if reply:
            reply_channel, reply_message = reply
            operation["reply"] = {"channel": {"$ref": f"#/channels/{reply_channel}"},
                                  "messages": [{"$ref": f"#/channels/{reply_channel}/messages/{reply_message}"}]}
        operation.update(extra)
        self.operations[operation_id] = operation


def _rewrite(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: (v.replace("#/$defs/", "#/components/schemas/") if k == "$ref" and isinstance(v, str)
                    else _rewrite(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [_rewrite(v) for v in node]
    return node


def _events(b: _Builder) -> None:
    for payload in PAYLOADS:
        if payload.CONTEXT == "receipts":
            continue
        name = f"{payload.TYPE}.v{payload.VERSION}"
        ref = b.add_schema(name, schemas.event_schema(payload))
        summary = (payload.__doc__ or payload.TYPE).strip().splitlines()[0]
        b.add_message(payload.TYPE, payload.TYPE, summary, ref, "EventHeaders")
        subjects = schemas.subjects(payload)
        event = snake(payload.TYPE)
        channel_id = f"{payload.CONTEXT}.{event}"
        b.channel(channel_id, subjects["address"], [payload.TYPE],
                  f"{payload.TYPE} as {payload.CONTEXT} publishes it (stream CSO_{payload.CONTEXT.upper()}). "
                  f"Subscribe to one county with `cso.{payload.CONTEXT}.{event}.51.5106.510681`, a province "
                  f"with `cso.{payload.CONTEXT}.{event}.51.>`.")
        sender = "divisions" if payload.CONTEXT == "divisions" else \
            "registry" if payload.CONTEXT == "ops" else payload.CONTEXT
        b.operation(f"send.{channel_id}", "send", channel_id, f"{sender} publishes {payload.TYPE}",
                    [sender, "admin"] if payload.CONTEXT != "ops" else ["registry", "targets", "training",
                                                                        "notify"])
        if payload.CONTEXT != "registry":
            continue
        intake = f"intake.{event}"
        b.channel(intake, subjects["intake"], [payload.TYPE],
                  f"An outside system publishes {payload.TYPE} here, under its own NATS user name, for "
                  f"registry to validate and record (stream CSO_INTAKE). Its receipt: {payload.TYPE} on "
                  f"`{subjects['address']}`, or the receipts query.")
        b.operation(f"receive.{intake}", "receive", intake, f"registry takes {payload.TYPE} from a publisher",
                    ["publisher", "admin"])
        v1 = f"intake.v1.{event}"
        b.channel(v1, f"cso.intake.{event}.{{province}}.{{city}}.{{county}}", [payload.TYPE],
                  f"Intake version 1, without the publisher's name: {OPERATORS_ONLY.split(':')[0]}; the "
                  f"envelope's `source` is taken on the operator's word. Outside systems use `{intake}`.",
                  **{"x-cso-operators-only": True})
        b.operation(f"receive.{v1}", "receive", v1, f"registry takes {payload.TYPE} from an operator", ["admin"])


def _receipts(b: _Builder) -> None:
    for receipt in receipts():
        name = getattr(receipt.model, "TYPE", receipt.model.__name__)
        document = (schemas.event_schema(receipt.model) if isinstance(receipt.model, type)
                    and issubclass(receipt.model, Payload) else
                    schemas.model_schema(receipt.model, f"cso.receipts.<source>.{receipt.kind}"))
        ref = b.add_schema(f"{name}.v{getattr(receipt.model, 'VERSION', 1)}", document)
        b.add_message(name, name, receipt.summary, ref, None)
        channel_id = f"receipts.{receipt.kind}"
        b.channel(channel_id, f"cso.receipts.{{source}}.{receipt.kind}", [name],
                  f"registry tells one publisher: {receipt.summary} Kept in the stream CSO_RECEIPTS, which "
                  "publishers cannot read: subscribe (plain NATS) before publishing (the publisher's user "
                  "may read `cso.receipts.<its name>.>`); missed ones: the receipts query.")
        b.operation(f"send.{channel_id}", "send", channel_id, f"registry sends {name}", ["registry"])
    ref = b.add_schema("ReceiptsQuery", schemas.model_schema(ReceiptsQuery, "cso.query.registry.receipts.<source>"))
    b.add_message("ReceiptsQuery", "ReceiptsQuery", "The event ids a publisher asks about", ref, None)
    ref = b.add_schema("ReceiptsAnswer", schemas.model_schema(ReceiptsAnswer, "reply"))
    b.add_message("ReceiptsAnswer", "ReceiptsAnswer", "One verdict per event id asked", ref, None)
    b.channel("query.registry.receipts", "cso.query.registry.receipts.{source}", ["ReceiptsQuery"],
              "A publisher asks registry what became of its events (request-reply, the reply to its own "
              "inbox `_INBOX_<user>`); over HTTP: `POST /receipts` on registry.")
    b.channel("reply.receipts", None, ["ReceiptsAnswer"], "The reply subject the request names (an inbox).")
    b.operation("receive.query.registry.receipts", "receive", "query.registry.receipts",
                "registry answers a receipts query", ["publisher", "admin"],
                reply=("reply.receipts", "ReceiptsAnswer"))


def _commands(b: _Builder, commands: Mapping[str, Mapping[str, type[BaseModel]]]) -> None:
    """`commands`: per service, the model of each command's body (registry's are event payloads;
    training's its own models)."""
    b.schemas["FieldError"] = FIELD_ERROR
    b.schemas["CommandReply"] = COMMAND_REPLY
    b.add_message("CommandReply", "CommandReply", "Done, or refused naming the fields",
                  "#/components/schemas/CommandReply", None)
    b.channel("reply.command", None, ["CommandReply"], "The reply subject the request names (an inbox).")
    for service, models in commands.items():
        for command, model in models.items():
            name = f"{_pascal(service)}{_pascal(command)}Command"
            # An event's own payload class (registry's commands); training's schedule command is a
            # payload's subclass with its own rules (no unknown field), so it is described itself.
            if issubclass(model, Payload) and model in PAYLOADS:
                ref = f"#/components/schemas/{model.__name__}"
                description = (f"The body is the payload of the {model.TYPE} event the command makes; "
                               "errors name its fields as in that event (`payload.<field>`).")
            else:
                ref = b.add_schema(name, schemas.model_schema(model, f"cso.cmd.{service}.{command}"))
                description = "Errors name the body's fields."
            b.add_message(name, name, (model.__doc__ or command).strip().splitlines()[0], ref, "CommandHeaders",
                          description)
            channel_id = f"cmd.{service}.{command}"
            b.channel(channel_id, f"cso.cmd.{service}.{command}", [name],
                      f"The `{command}` command of {service} (request-reply). {OPERATORS_ONLY} Over HTTP: "
                      f"`POST /commands/{command}` on {service}, with a token.")
            b.operation(f"receive.{channel_id}", "receive", channel_id, f"{service} runs {command}", ["admin"],
                        reply=("reply.command", "CommandReply"))


def _deadletters(b: _Builder) -> None:
    ref = b.add_schema("DeadLetter", schemas.model_schema(DeadLetter, "cso.deadletter.<service>"))
    b.add_message("DeadLetter", "DeadLetter", "A message a consumer refused, with why", ref, "DeadLetterHeaders",
                  "Operators read these (stream CSO_DEADLETTER, kept 90 days); outside publishers learn "
                  "their verdicts from receipts.")
    b.channel("deadletter", "cso.deadletter.{service}", ["DeadLetter"],
              "What a service's consumers refused for good (stream CSO_DEADLETTER). Operators only.")
    b.operation("send.deadletter", "send", "deadletter", "a service dead-letters a message",
                ["registry", "targets", "training", "notify"])


def document(commands: Mapping[str, Mapping[str, type[BaseModel]]],
             security: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """The document. `commands`: per service, each command's body model; `security`: the security
    schemes by name (`components.securitySchemes`), which both servers require."""
    b = _Builder()
    _events(b)
    _receipts(b)
    _commands(b, commands)
    _deadletters(b)
    b.schemas.update(HEADERS)
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "cso event contracts",
            "version": CONTRACTS_VERSION,
            "description": (
                "The bus of cso, the community social organization platform: what outside systems "
                "publish (intake), the events its services publish, receipts, commands, dead letters and "
                "operational events. Generated from `contracts/` (`python -m cso_local.asyncapi`); the "
                "rules behind the schemas, the versioning and deprecation policy and the examples are in "
                "contracts/README.md. Errors name a field by its path in the event "
                f"({', '.join(f'`{f}`' for f in ENVELOPE_FIELDS[:2])}, …, `payload.<field>`)."),
            "x-cso-deprecations": [],
        },
        "defaultContentType": "application/json",
        "servers": {
            "production": {"host": "nats.cso.example.gov.cn:4222", "protocol": "nats",
                           "description": "cso's NATS cluster (JetStream). Every user has a password.",
                           "security": [{"$ref": f"#/components/securitySchemes/{k}"} for k in security]},
            "local": {"host": "127.0.0.1:4222", "protocol": "nats",
                      "description": "`cso up`'s local stack (`cso publisher add <user>=<region>` makes a user)",
                      "security": [{"$ref": f"#/components/securitySchemes/{k}"} for k in security]},
        },
        "channels": b.channels,
        "operations": b.operations,
        "components": {
            "schemas": dict(sorted(b.schemas.items())),
            "messages": dict(sorted(b.messages.items())),
            "parameters": PARAMETERS,
            "securitySchemes": dict(security),
        },
    }


def rendered(commands: Mapping[str, Mapping[str, type[BaseModel]]], security: Mapping[str, dict[str, Any]]) -> str:
    return json.dumps(document(commands, security), ensure_ascii=False, indent=2) + "\n"
