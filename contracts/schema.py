"""JSON Schema of every event (envelope + payload), committed under contracts/schemas/.

Regenerate with `python -m contracts.schema`; a test fails when a model and its file drift apart.

The schemas carry every rule of the contracts that JSON Schema can state (patterns for codes, dates
and times, lengths, enums, text without control characters, the subjects), so that a publisher's
own validator refuses what cso would refuse. What JSON Schema cannot state is said in each
schema's description and listed in contracts/README.md (*What the schemas cannot say*): there cso
refuses the event naming the field.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

from .deadletter import DeadLetter
from .envelope import MAX_EVENT_BYTES, Envelope, max_bytes
from .events import PAYLOADS, Payload
from .jsontext import MAX_DEPTH, MAX_NUMBER_DIGITS
from .receipts import RECEIPT_SUBJECT, IntakeReceipt, ReceiptsAnswer, ReceiptsQuery
from .subjects import STREAMS, Topology, snake

SCHEMAS = Path(__file__).parent / "schemas"


BASE = "https://cso.example.gov.cn/schemas/"
# Text cso can store: no C0 control character but tab and line breaks, no DEL or C1 control
# character, no lone surrogate (contracts/jsontext.py). Written with \u escapes, which both
# ECMAScript's and Python's regular expressions read.
TEXT_PATTERN = "^[^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f\\ud800-\\udfff]*$"
UUID_PATTERN = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
# A value cso keeps as given (a field it does not know): storable text, and no string longer than
# a whole event may be. Nesting depth and number size are not expressible (said in the description).
JSON_VALUE: dict[str, Any] = {
    "description": f"a value cso keeps as given: text without control characters, keys likewise; "
                   f"nested at most {MAX_DEPTH} deep and numbers of at most {MAX_NUMBER_DIGITS} digits "
                   "(JSON Schema cannot say these two: cso refuses them naming the field)",
    "anyOf": [
        {"type": ["null", "boolean", "number"]},
        {"type": "string", "pattern": TEXT_PATTERN, "maxLength": MAX_EVENT_BYTES},
        {"type": "array", "items": {"$ref": "#/$defs/JsonValue"}},
        {"type": "object", "propertyNames": {"pattern": TEXT_PATTERN},
         "additionalProperties": {"$ref": "#/$defs/JsonValue"}},
    ],
}
NOT_EXPRESSIBLE = (
    "Not expressible in JSON Schema, and checked by cso (refused naming the field): the event's size "
    "({limit} bytes of UTF-8 at most); no key given twice in one object; nesting at most {depth} deep; "
    "numbers of at most {digits} digits; dates not after tomorrow in China and times not more than "
    "5 minutes ahead of cso's clock (moving bounds); the envelope's `region` equal to {region}; "
    "and the rules between fields listed under x-cso-rules."
)


def _tighten(node: Any) -> None:
    """Put the rules every field shares into a pydantic schema: storable text, UUIDs by pattern (a
    validator that skips `format` still checks them), unknown fields as storable JSON values."""
    if isinstance(node, list):
        for item in node:
            _tighten(item)
        return
    if not isinstance(node, dict):
        return
    if node.get("type") == "string" and not any(k in node for k in ("pattern", "enum", "const", "format")):
        node["pattern"] = TEXT_PATTERN
    if node.get("format") == "uuid":
        node.setdefault("pattern", UUID_PATTERN)
    if node.get("additionalProperties") is True:
        node["additionalProperties"] = {"$ref": "#/$defs/JsonValue"}
        node["propertyNames"] = {"pattern": TEXT_PATTERN}
    for key, value in node.items():
        if key not in ("enum", "const", "examples", "default"):
            _tighten(value)


class _Probe(str):
    """Stands in for every field of a payload, so that region_of() says which field it returns."""

    def __getattr__(self, name: str) -> _Probe:
        return _Probe(f"{self}.{name}")


def region_field(payload: type[Payload]) -> str | None:
    """The payload field the envelope's `region` must equal (payload.region_of), or None."""
    probe = payload.model_construct(None, **{name: _Probe(f"payload.{name}") for name in payload.model_fields})
    try:
        region = probe.region_of()
    except (AttributeError, TypeError, ValueError):
        return None
    return str(region) if isinstance(region, _Probe) else None


# Rules between a payload's fields that JSON Schema can state (if/then), added to its definition;
# and those it cannot, said in `x-cso-rules`. Each is checked by the payload's model validators.
CREDIT_CODE_FORM = [
    {"if": {"properties": {"legal_form": {"const": form}}, "required": ["legal_form"]},
     "then": {"properties": {"social_credit_code": {"pattern": rf"^\s*5[{kind}9]"}}}}
    for form, kind in (("social_group", "1"), ("social_service_agency", "2"), ("foundation", "3"))]
UPDATED_FIELDS = ("name", "category", "community_code", "brand", "brand_projects", "hub_demonstration", "rating")
EXPRESSIBLE_RULES: dict[str, dict[str, Any]] = {
    "OrganizationRegistered": {"allOf": CREDIT_CODE_FORM},
    "OrganizationUpdated": {"anyOf": [{"required": [f], "properties": {f: {"not": {"type": "null"}}}}
                                      for f in UPDATED_FIELDS]},
    "HubEstablished": {"properties": {"region_code": {"pattern": "^([0-9]{6}|[0-9]{9})$"}}},
    "IncubationBaseOpened": {"properties": {"region_code": {"pattern": "^([0-9]{4}|[0-9]{6}|[0-9]{9})$"}}},
    # A facility's tier by its kind (events.FACILITY_TIERS): a 社工室 at a community, a 社工站 above.
    "FacilityOpened": {"properties": {"region_code": {"pattern": "^([0-9]{4}|[0-9]{6}|[0-9]{9}|[0-9]{12})$"}},
                       "allOf": [
        {"if": {"properties": {"kind": {"const": "social_work_room"}}, "required": ["kind"]},
         "then": {"properties": {"region_code": {"pattern": "^[0-9]{12}$"}}}},
        {"if": {"properties": {"kind": {"const": "social_work_station"}}, "required": ["kind"]},
         "then": {"properties": {"region_code": {"pattern": "^([0-9]{4}|[0-9]{6}|[0-9]{9})$"}}}}]},
    "PartyOrganizationFormed": {"allOf": [{
        "if": {"properties": {"kind": {"const": "independent_branch"}}, "required": ["kind"]},
        "then": {"required": ["members"], "properties": {"members": {"minimum": 3},
                                                        "organization_ids": {"maxItems": 1}}}}]},
}
CSO_RULES: dict[str, list[str]] = {
    "OrganizationRegistered": ["payload.social_credit_code: the 18th character is the GB 32100-2015 check "
                               "character of the first 17"],
    "IncubationBaseOpened": ["payload.covered_townships: every township lies under payload.region_code"],
    "TrainingSessionScheduled": ["payload.ends_on: not before payload.starts_on"],
    "DivisionsImported": ["payload.county: province, city and county codes nested",
                          "payload.townships, payload.communities: each under its county and a listed township"],
}


def subjects(payload: type[Payload]) -> dict[str, str]:
    """Where an event travels, as address templates and examples (the AsyncAPI channels)."""
    if payload.SUBJECT:
        address = payload.SUBJECT.replace("<source>", "{source}")
        return {"address": address, "example": address.replace("{source}", "guanghan-register")}
    event = snake(payload.TYPE)
    out = {"address": f"cso.{payload.CONTEXT}.{event}.{{province}}.{{city}}.{{county}}",
           "example": Topology().event_subject(payload.TYPE, "510681001014" if payload.CONTEXT != "notify"
                                               else "51")}
    if payload.CONTEXT == "registry":  # a registry fact: outside systems publish it on intake
        out["intake"] = f"cso.intake.{{source}}.{event}.{{province}}.{{city}}.{{county}}"
        out["intake_example"] = Topology().intake_subject("guanghan-register", payload.TYPE, "510681001014")
        out["intake_v1"] = f"cso.intake.{event}.{{province}}.{{city}}.{{county}} (operators only)"
    return out


def event_schema(payload: type[Payload]) -> dict[str, Any]:
    schema = Envelope[payload].model_json_schema()  # type: ignore[valid-type]
    schema["title"] = payload.TYPE
    region = region_field(payload)
    schema["description"] = ((payload.__doc__ or payload.TYPE).strip().splitlines()[0] + "\n\n"
                             + NOT_EXPRESSIBLE.format(limit=max_bytes(payload.TYPE), depth=MAX_DEPTH,
                                                      digits=MAX_NUMBER_DIGITS,
                                                      region=f"`{region}`" if region else
                                                      "the region of the record the event concerns"))
    schema["$id"] = f"{BASE}{payload.TYPE}.v{payload.VERSION}.json"
    schema["properties"]["type"] = {"const": payload.TYPE, "type": "string"}
    schema["properties"]["version"] = {"const": payload.VERSION, "type": "integer"}
    _tighten(schema)
    defs = schema["$defs"]
    defs["JsonValue"] = copy.deepcopy(JSON_VALUE)
    for key, rule in EXPRESSIBLE_RULES.get(payload.TYPE, {}).items():
        if key == "properties":
            for name, extra in rule.items():
                defs[payload.__name__]["properties"][name].update(extra)
        else:
            defs[payload.__name__][key] = rule
    schema["x-subject"] = subjects(payload)
    schema["x-context"] = payload.CONTEXT
    schema["x-cso-max-bytes"] = max_bytes(payload.TYPE)
    if region:
        schema["x-cso-region-from"] = region
    if payload.TYPE in CSO_RULES:
        schema["x-cso-rules"] = CSO_RULES[payload.TYPE]
    return schema


def model_schema(model: type[Any], subject: str, description: str | None = None) -> dict[str, Any]:
    """The schema of a message that is no event (receipts query, dead letter)."""
    schema: dict[str, Any] = model.model_json_schema()
    schema["$id"] = f"{BASE}{model.__name__}.json"
    if description:
        schema["description"] = description
    _tighten(schema)
    if "JsonValue" in json.dumps(schema):
        schema.setdefault("$defs", {})["JsonValue"] = copy.deepcopy(JSON_VALUE)
    schema["x-subject"] = subject
    return schema


def _text(schema: dict[str, Any]) -> str:
    return json.dumps(schema, ensure_ascii=False, indent=2, sort_keys=True) + "\n"


def rendered() -> dict[str, str]:
    files = {f"{p.TYPE}.v{p.VERSION}.json": _text(event_schema(p)) for p in PAYLOADS}
    streams = [{"name": s.name, "subjects": list(s.subjects), "description": s.description,
                "retention": s.retention, "storage": s.storage,
                "duplicate_window_seconds": s.duplicate_window_seconds,
                "max_age_days": s.max_age_days} for s in STREAMS]
    for model, subject in ((ReceiptsQuery, "cso.query.registry.receipts.<source>"),
                           (ReceiptsAnswer, "reply to cso.query.registry.receipts.<source>"),
                           (DeadLetter, "cso.deadletter.<service>")):
        files[f"{model.__name__}.json"] = _text(model_schema(model, subject))
    receipt = model_schema(IntakeReceipt, RECEIPT_SUBJECT)
    receipt["$id"] = "https://cso.example.gov.cn/schemas/IntakeReceipt.v1.json"
    files["IntakeReceipt.v1.json"] = _text(receipt)
    files["streams.json"] = json.dumps(streams, ensure_ascii=False, indent=2) + "\n"
    return files


def write(directory: Path = SCHEMAS) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("*.json"):
        old.unlink()
    written = []
    for name, text in rendered().items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write(Path(sys.argv[1]) if len(sys.argv) > 1 else SCHEMAS):
        print(path)
