"""A corpus of bad input, for every subscriber and every HTTP endpoint (issue 8, "bad input").

Three parts:
- fixed lists of bad values by kind (text, dates, codes, numbers, ...) and of raw garbage bytes;
- valid events for each stream a service consumes (the 广汉 divisions of tests.support), and every
  single-field mutation of them that must be refused, each with the field the refusal must name;
- hypothesis strategies that make more such cases at random: `CSO_FUZZ_EXAMPLES` sets how many
  (a few dozen in CI; raise it for a deeper run, e.g. CSO_FUZZ_EXAMPLES=2000).

A case is (label, bytes to publish or send, the field the refusal must name). Strings that are
odd but valid (SQL and template injection, right-to-left marks, emoji) are in `ODD_BUT_VALID`: they
must be stored verbatim, never executed and never mangled.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from contracts import Envelope, Topology, make_event
from contracts import events as ev
from tests.support import GUANGHAN
from tests.support.scenario import credit_code

EXAMPLES = int(os.environ.get("CSO_FUZZ_EXAMPLES", "30"))

COMMUNITY = "510681001014"
TOWNSHIP = "510681001"
COUNTY = "510681"
TOO_BIG = 70_000  # over the 64 KiB event and command limits

# --- values by kind -----------------------------------------------------------------------------

SQL_INJECTION = [
    "'; DROP TABLE registry.organization; --",
    "x' OR '1'='1",
    "1); DELETE FROM registry.community; --",
    "$$; SELECT pg_sleep(30); $$",
    "Robert'); TRUNCATE training.person CASCADE;--",
    "%' AND 1=1 --",
    "\\'; SELECT * FROM pg_shadow; --",
]
TEMPLATE_INJECTION = [
    "{{7*7}}", "${7*7}", "#{7*7}", "<%= 7*7 %>", "{0.__class__.__mro__}", "%(name)s %s %n %x",
    "{% for x in range(99999999) %}x{% endfor %}", "<script>alert(1)</script>", "../../etc/passwd",
]
ODD_BUT_VALID = SQL_INJECTION + TEMPLATE_INJECTION + [
    "\u202e\u2066反转\u2069", "zero\u200bwidth", "😀🏳️‍🌈", "tab\there", "Ａｂｃ全角", "O'Brien \"quoted\"",
]
CONTROL = ["a\x00b", "\x00", "bell\x07", "esc\x1b[31mred", "del\x7f", "c1\x85next", "lone\ud800", "\udfff"]
WRONG_TYPES: list[Any] = [123, 1.5, True, [], {}, ["x"], {"a": 1}]
TEXT_BAD: list[Any] = [*CONTROL, "x" * 5000, *WRONG_TYPES]
CODE_BAD: list[Any] = [
    "５１０６８１００１０１４",  # fullwidth digits: str.isdigit() says yes
    "٥١٠٦٨١٠٠١٠١٤",  # Arabic-Indic digits
    "51068100101",  # 11 digits: no tier
    "51068100101x", "", " 510681", "1234567", "51²", 510681001014, None, ["510681"],
]
COMMUNITY_BAD: list[Any] = [COUNTY, TOWNSHIP, "5106", *CODE_BAD]  # a code of the wrong tier
COUNTY_BAD: list[Any] = [COMMUNITY, TOWNSHIP, "51", *CODE_BAD]
REGION_BAD: list[Any] = CODE_BAD
UUID_BAD: list[Any] = ["not-a-uuid", "", "00000000-0000-0000-0000-00000000000g", 12, [], "'; --"]


def _future(days: int) -> str:
    return (date.today() + timedelta(days=days)).isoformat()


DATE_BAD: list[Any] = [
    _future(10), "2999-01-01", "9999-12-31", "1900-01-01", "1949-09-30", "0001-01-01", "2023-02-30",
    "2023-13-01", "not a date", "", 20230101, 1672531200, "2023-01-01T10:00:00", None, True,
]
PLAUSIBLE_DATE_BAD: list[Any] = ["2999-01-01", "9999-12-31", "1900-01-01", "0001-01-01", "2023-02-30",
                                 "not a date", 1672531200, None]
INT_BAD: list[Any] = ["many", 1.5, -5, 10**45, [], None, "1e999"]
BOOL_BAD: list[Any] = ["maybe", 2, [], {}]
ENUM_BAD: list[Any] = ["gardening", "", 1, None, "CULTURE_SPORTS\x00"]
LIST_BAD: list[Any] = ["x", {"a": 1}, [None], None, 5]
USCC_BAD: list[Any] = []  # filled below: check character wrong, forbidden letters, wrong length


_good = credit_code(kind="1")
USCC_BAD += [_good[:17] + ("0" if _good[17] != "0" else "1"), _good[:16] + "I" + _good[17], _good[:17],
             _good + "0", "5" * 18, "91510681MJ00000010"]

# --- valid events per stream -------------------------------------------------------------------

ORG = uuid.UUID("6f1c2d3e-4b5a-4c6d-8e7f-000000000001")
PERSON = uuid.UUID("6f1c2d3e-4b5a-4c6d-8e7f-000000000002")


def registry_facts() -> list[ev.Payload]:
    return [
        ev.OrganizationFiled(organization_id=ORG, name="西城社区舞蹈队", community_code=COMMUNITY,
                             category="culture_sports", filed_on=date(2023, 3, 1), filing_number="GH-1"),
        ev.OrganizationRegistered(name="西城社区文体协会", community_code=COMMUNITY, social_credit_code=_good,
                                  legal_form="social_group", category="culture_sports",
                                  registered_on=date(2023, 6, 1)),
        ev.OrganizationUpdated(organization_id=ORG, effective_on=date(2023, 7, 1), community_code=COMMUNITY,
                               brand=True, brand_projects=2, rating="3A"),
        ev.HubEstablished(organization_id=ORG, region_code=TOWNSHIP, established_on=date(2023, 8, 1),
                          name="雒城街道枢纽", leader_person_id=PERSON),
        ev.IncubationBaseOpened(name="广汉市孵化基地", region_code=COUNTY, covered_townships=[TOWNSHIP],
                                opened_on=date(2022, 5, 1)),
        ev.ProjectFunded(name="居家养老服务", program="government_purchase", funder_region=COUNTY,
                         funder_department="广汉市民政局", recipient_organization_id=ORG, region_code=COMMUNITY,
                         amount_fen=12_345_67, awarded_on=date(2023, 9, 1), starts_on=date(2023, 10, 1),
                         ends_on=date(2024, 9, 30)),
        ev.FacilityOpened(kind="social_work_station", name="雒城街道社工站", region_code=TOWNSHIP,
                          opened_on=date(2022, 6, 1)),
        ev.FacilityOpened(kind="social_work_room", name="西城社区社工室", region_code=COMMUNITY,
                          opened_on=date(2022, 7, 1)),
    ]


def registry_facts_without_region() -> list[tuple[ev.Payload, str]]:
    """Facts that do not name their region: the envelope names the record's."""
    return [
        (ev.PartyOrganizationFormed(kind="independent_branch", organization_ids=[ORG], members=3,
                                    formed_on=date(2023, 9, 1)), COUNTY),
        (ev.OrganizationDeregistered(organization_id=ORG, reason="自行解散", ended_on=date(2024, 4, 1)), COMMUNITY),
        (ev.HubDissolved(hub_id=uuid.uuid4(), dissolved_on=date(2024, 3, 1)), TOWNSHIP),
        (ev.IncubationBaseClosed(base_id=uuid.uuid4(), closed_on=date(2024, 2, 1)), COUNTY),
        (ev.PartyOrganizationDissolved(party_organization_id=uuid.uuid4(), dissolved_on=date(2024, 1, 1)), COUNTY),
        (ev.FundedProjectEnded(project_id=uuid.uuid4(), outcome="completed", ended_on=date(2024, 9, 30)), COMMUNITY),
        (ev.FacilityClosed(facility_id=uuid.uuid4(), closed_on=date(2024, 3, 1)), TOWNSHIP),
    ]


def training_facts() -> list[ev.Payload]:
    session = uuid.uuid4()
    return [
        ev.TrainingSessionScheduled(session_id=session, organizer_region=COUNTY, topic="社会组织培训",
                                    starts_on=date(2024, 5, 1), ends_on=date(2024, 5, 2), capacity=30),
        ev.TrainingCompleted(session_id=session, person_id=PERSON, organizer_region=COUNTY, county_code=COUNTY,
                             completed_on=date(2024, 5, 2)),
        ev.TalentPoolMemberAdded(person_id=PERSON, county_code=COUNTY, role="volunteer", added_on=date(2024, 1, 1)),
        ev.TalentPoolMemberRemoved(person_id=PERSON, county_code=COUNTY, reason="调离", removed_on=date(2024, 6, 1)),
        ev.QualificationExamRecorded(person_id=PERSON, county_code=COUNTY, year=2024, passed=True),
    ]


def divisions_facts() -> list[ev.Payload]:
    return [GUANGHAN, ev.DivisionChanged(code=TOWNSHIP, change="renamed", name="雒城",
                                         effective_on=date(2024, 1, 1))]


def targets_facts() -> list[ev.Payload]:
    return [
        ev.CoverageChanged(region_code=COUNTY, figures={"orgs": 3.0}),
        ev.TargetStatusChanged(target_id=f"t@{COUNTY}", region_code=COUNTY, metric="orgs_per_community",
                               previous_status="on_track", status="at_risk", value=1.0, threshold=2.0,
                               deadline=date(2025, 12, 31)),
        ev.TaskStatusChanged(plan_id="p1", task_no="1", region_code=COUNTY, previous_status="open",
                             status="started", by="张三", note="ok"),
        ev.TaskOverdue(plan_id="p1", task_no="1", region_code=COUNTY, lead_unit="民政局",
                       deadline=date(2024, 1, 1)),
        ev.PlanAccepted(plan_id="p1", region_code=COUNTY, by="李四"),
    ]


def events_for(context: str) -> list[Envelope[Any]]:
    """A valid event of each type that travels on `context`'s subjects (intake: registry facts)."""
    facts: list[tuple[ev.Payload, str | None]] = []
    if context in ("intake", "registry"):
        facts = [(f, None) for f in registry_facts()] + list(registry_facts_without_region())
    elif context == "training":
        facts = [(f, None) for f in training_facts()]
    elif context == "divisions":
        facts = [(f, None) for f in divisions_facts()]
    elif context == "targets":
        facts = [(f, None) for f in targets_facts()]
    return [make_event(f, source="fuzz", region=region) for f, region in facts]


def subject_for(topology: Topology, context: str, envelope: Envelope[Any] | dict[str, Any]) -> str:
    data = envelope if isinstance(envelope, dict) else {"type": envelope.type, "region": envelope.region}
    return topology.event_subject(data["type"], data["region"], context=context)


# --- cases --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    label: str
    data: bytes
    field: str  # the field the refusal must name ("$" for the whole message)
    subject_region: str = COMMUNITY  # where it is published (garbage) or the event's own region
    event_type: str = "OrganizationFiled"


RAW_GARBAGE: list[tuple[str, bytes, str]] = [
    ("empty", b"", "$"),
    ("blank", b"   \n", "$"),
    ("null", b"null", "$"),
    ("true", b"true", "$"),
    ("number", b"1", "$"),
    ("string", b'"OrganizationFiled"', "$"),
    ("array", b"[]", "$"),
    ("array of event", b'[{"type": "OrganizationFiled"}]', "$"),
    ("object without type", b"{}", "type"),
    ("unterminated", b'{"type": "OrganizationFiled"', "$"),
    ("two documents", b"{}{}", "$"),
    ("latin-1 bytes", b'{"name": "caf\xe9"}', "$"),
    ("invalid utf-8", b"\xff\xfe\xfd", "$"),
    ("utf-16", '{"type": "x"}'.encode("utf-16"), "$"),
    ("nul bytes", b"\x00" * 64, "$"),
    ("trailing nul", b"{}\x00", "$"),
    ("gzip", b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03", "$"),
    ("NaN", b"NaN", "$"),
    ("deep array", b"[" * 100_000, "$"),
    ("deep object", b'{"a":' * 50_000, "$"),
    ("deep but closed", ("[" * 40 + "]" * 40).encode(), "$|0"),
    ("huge integer", b"1" * 5000, "$"),
    ("duplicate type", b'{"type": "OrganizationFiled", "type": "HubDissolved"}', "type"),
    ("key with nul", b'{"a\\u0000b": 1, "type": "OrganizationFiled"}', "$"),
    ("unknown type", b'{"type": "OrganizationExploded", "version": 1}', "type"),
    ("type of wrong case", b'{"type": "organization_filed", "version": 1}', "type"),
    ("type not text", b'{"type": ["OrganizationFiled"], "version": 1}', "type"),
    ("1 MB of JSON text", b'"' + b"x" * 1_000_000 + b'"', "$"),
]


def _dump(data: Any) -> bytes:
    try:
        return json.dumps(data, ensure_ascii=False).encode()
    except UnicodeEncodeError:  # a lone surrogate: sent as the JSON escape "\ud800"
        return json.dumps(data).encode()


def _mutated(envelope: Envelope[Any], change: Callable[[dict[str, Any]], None]) -> bytes:
    data = json.loads(envelope.model_dump_json())
    change(data)
    return _dump(data)


def envelope_cases(envelope: Envelope[Any]) -> Iterator[Case]:
    """Every single-field mutation of an envelope that must be refused."""
    region, kind = envelope.region, envelope.type

    def case(label: str, field: str, change: Callable[[dict[str, Any]], None]) -> Case:
        return Case(f"{kind}: {label}", _mutated(envelope, change), field, region, kind)

    for key in ("event_id", "type", "version", "occurred_at", "recorded_at", "source", "region", "payload"):
        yield case(f"no {key}", key, lambda d, k=key: d.pop(k))
    bad: dict[str, list[Any]] = {
        "event_id": UUID_BAD,
        "version": [0, 2, 99, "1", True, 1.5, None, 10**45],
        "occurred_at": [(datetime.now(timezone.utc) + timedelta(hours=1)).isoformat(), "2024-01-01T00:00:00",
                        "1900-01-01T00:00:00Z", "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59Z",
                        "yesterday", 1700000000.5, None],
        "recorded_at": [(datetime.now(timezone.utc) + timedelta(days=2)).isoformat(), "1800-01-01T00:00:00Z",
                        "now", None],
        "source": ["", "bad source!", "x" * 101, "src\x00", "城市系统", 5],
        "region": [*REGION_BAD, "51"],  # "51": valid, but not the payload's region
        "payload": [None, [], "x", 5],
    }
    for key, values in bad.items():
        for value in values:
            yield case(f"{key}={value!r:.40}", key, lambda d, k=key, v=value: d.__setitem__(k, v))
    for value in ("OrganizationExploded", "", "organization_filed", None, 5):
        yield case(f"type={value!r}", "type", lambda d, v=value: d.__setitem__("type", v))
    if kind != "DivisionsImported":  # whose limit is 1 MiB, NATS's own
        yield case("padded over 64 KiB", "$", lambda d: d["payload"].__setitem__("padding", "x" * TOO_BIG))
    yield case("nested 40 deep", "payload.extra",
               lambda d: d["payload"].__setitem__("extra", json.loads("[" * 40 + "]" * 40)))
    yield case("control character in an unknown field", "payload.note_x",
               lambda d: d["payload"].__setitem__("note_x", "\x00"))
    # Keys given twice: one parser keeps the first, another the last; refused rather than guessed.
    data = _dump(json.loads(envelope.model_dump_json()))
    yield Case(f"{kind}: source twice", data.replace(b"{", b'{"source": "other", ', 1), "source", region, kind)
    yield Case(f"{kind}: a payload key twice",
               data.replace(b'"payload": {', b'"payload": {"x_dup": 1, "x_dup": 2, ', 1), "payload.x_dup",
               region, kind)


def _kind(name: str, prop: dict[str, Any], defs: dict[str, Any]) -> str:
    options = prop.get("anyOf", [prop])
    prop = next((o for o in options if o.get("type") != "null"), prop)
    if "$ref" in prop:
        prop = defs[prop["$ref"].rsplit("/", 1)[-1]]
    if name == "social_credit_code":
        return "uscc"
    if name.endswith("_code") or name == "code" or name == "organizer_region":
        return {"community_code": "community", "county_code": "county"}.get(name, "code")
    if "enum" in prop or "const" in prop:
        return "enum"
    fmt, typ = prop.get("format"), prop.get("type")
    if fmt == "date":
        return "date"
    if fmt == "uuid":
        return "uuid"
    if typ == "array":
        return "list"
    return {"string": "text", "integer": "int", "boolean": "bool", "number": "int",
            "object": "list"}.get(str(typ), "other")


def _values(kind: str, name: str) -> list[Any]:
    if kind == "date":
        future_ok = name in ("starts_on", "ends_on", "deadline")
        return PLAUSIBLE_DATE_BAD if future_ok else DATE_BAD
    return {"text": TEXT_BAD, "code": REGION_BAD, "community": COMMUNITY_BAD, "county": COUNTY_BAD,
            "uscc": USCC_BAD,
            "uuid": UUID_BAD, "int": INT_BAD, "bool": BOOL_BAD, "enum": ENUM_BAD, "list": LIST_BAD,
            }.get(kind, WRONG_TYPES)


# Mutations that are valid for a field after all (an optional field may be null, a label empty).
def _refused(model: type[BaseModel], name: str, value: Any, nullable: bool) -> bool:
    if value is None and nullable:
        return False
    if name == "value" and value == 1.5:  # TargetStatusChanged.value is a float
        return False
    if isinstance(value, int | float) and not isinstance(value, bool) and name in ("value", "threshold"):
        return False
    if value == "" and name in ("plan_id", "task_no", "previous_status", "status", "by", "lead_unit",
                                "metric", "note", "filing_number"):
        return False
    return not (name == "figures" and value == {"a": 1})


def field_mutations(model: type[BaseModel]) -> Iterator[tuple[str, Callable[[dict[str, Any]], None]]]:
    """(field, change) for every field of `model`: each required one removed, and each set to every
    bad value of its kind (a value the field would take after all is left out)."""
    schema = model.model_json_schema()
    defs = schema.get("$defs", {})
    for name, prop in schema["properties"].items():
        if model.model_fields[name].is_required():
            yield name, lambda d, n=name: d.pop(n)
        nullable = any(o.get("type") == "null" for o in prop.get("anyOf", []))
        for value in _values(_kind(name, prop, defs), name):
            if _refused(model, name, value, nullable):
                yield name, lambda d, n=name, v=value: d.__setitem__(n, v)


def _label(change: Callable[[dict[str, Any]], None], name: str) -> str:
    probe: dict[str, Any] = {name: "<kept>"}
    change(probe)
    return f"{name}={probe[name]!r:.40}" if name in probe else f"no {name}"


def payload_cases(envelope: Envelope[Any]) -> Iterator[Case]:
    """Every field of the payload set to each bad value of its kind, and each required one removed."""
    for name, change in field_mutations(type(envelope.payload)):
        yield Case(f"{envelope.type}: payload.{_label(change, name)}",
                   _mutated(envelope, lambda d, c=change: c(d["payload"])),
                   f"payload.{name}", envelope.region, envelope.type)


def body_cases(model: type[BaseModel], valid: dict[str, Any], full: bool = True) -> list[tuple[str, bytes, str]]:
    """A command's valid body with each field mutated: (label, JSON body, field named)."""
    cases: dict[str, list[tuple[str, bytes, str]]] = {}
    for name, change in field_mutations(model):
        body = json.loads(json.dumps(valid))
        change(body)
        cases.setdefault(name, []).append((_label(change, name), _dump(body), name))
    if full:
        return [c for group in cases.values() for c in group]
    return [c for group in cases.values() for c in group[:: max(1, len(group) // 2)][:3]]


def subscriber_cases(context: str, full: bool = True) -> list[Case]:
    """Raw garbage and every mutation of every event type that travels on `context`. Not `full`:
    the envelope's mutations of one type, and of the payloads' a few per field (CI's size)."""
    cases = [Case(label, data, field) for label, data, field in RAW_GARBAGE]
    for i, envelope in enumerate(events_for(context)):
        if full or i == 0:
            cases += envelope_cases(envelope)
        payload = list(payload_cases(envelope))
        if not full:
            per_field: dict[str, list[Case]] = {}
            for case in payload:
                per_field.setdefault(case.field, []).append(case)
            payload = [c for group in per_field.values() for c in group[:: max(1, len(group) // 2)][:3]]
        cases += payload
    return cases


# The whole corpus on the bus (some thousands of messages per service) only in a deeper run.
FULL = EXAMPLES >= 200 or os.environ.get("CSO_FUZZ_FULL") == "1"


# --- random cases (hypothesis) ------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20)
bad_char = st.sampled_from(["\x00", "\x01", "\x08", "\x0b", "\x1b", "\x7f", "\x9b", "\ud800", "\udfff"])
# Text that always holds at least one character no service may store.
bad_text = st.builds(lambda a, c, b: a + c + b, st.text(max_size=20), bad_char, st.text(max_size=20))


@st.composite
def random_event_case(draw: st.DrawFn, context: str) -> Case:
    """A valid event of `context` with one payload field replaced by bad text, or removed."""
    envelope = draw(st.sampled_from(events_for(context)))
    payload_type = type(envelope.payload)
    names = sorted(payload_type.model_fields)
    name = draw(st.sampled_from(names))
    required = payload_type.model_fields[name].is_required()
    if required and draw(st.booleans()):
        return Case(f"{envelope.type}: no payload.{name}", _mutated(envelope, lambda d: d["payload"].pop(name)),
                    f"payload.{name}", envelope.region, envelope.type)
    value = draw(bad_text)
    return Case(f"{envelope.type}: payload.{name}={value!r:.40}",
                _mutated(envelope, lambda d: d["payload"].__setitem__(name, value)),
                f"payload.{name}", envelope.region, envelope.type)


@st.composite
def random_garbage_case(draw: st.DrawFn) -> Case:
    """Bytes that are no event: random bytes, or JSON that is not an object with a known type."""
    if draw(st.booleans()):
        data = draw(st.binary(max_size=200))
        return Case(f"bytes {data[:20]!r}", data, "*")
    value = draw(json_values.filter(lambda v: not (isinstance(v, dict) and v.get("type") in ev.PAYLOAD_BY_TYPE)))
    return Case(f"json {value!r:.40}", _dump(value), "*")


def draw(strategy: st.SearchStrategy[Any], n: int = EXAMPLES) -> list[Any]:
    """`n` examples of a strategy, the same on every run (a corpus, not a search)."""
    out: list[Any] = []

    @settings(max_examples=n, database=None, derandomize=True, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck), deadline=None)
    @given(strategy)
    def collect(value: Any) -> None:
        out.append(value)

    collect()
    return out[:n]


# --- reading refusals ---------------------------------------------------------------------------

_FIELD = re.compile(r"(?:^|; )([^;]+?): ")  # non-greedy: a key may be ":" itself


def fields_named(reason: str) -> list[str]:
    """The fields a ContractError's reason ("field: message; field: message") names."""
    return _FIELD.findall(reason)


def names(reason_fields: list[str], expected: str) -> bool:
    """Whether the refusal names `expected` (or one of "a|b"), or a part of it."""
    if expected == "*":
        return bool(reason_fields)
    wanted = expected.split("|")
    return any(f == w or f.startswith(w + ".") or f.startswith(w + "[") for f in reason_fields for w in wanted)
