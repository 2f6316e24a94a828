"""The envelope around every event, and parsing that names the field at fault."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any, Generic, TypeVar
from uuid import UUID, uuid4

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, WithJsonSchema

from . import jsontext
from .codes import RegionCode
from .events import CHINA, DATE_PATTERN, EARLIEST, PAYLOAD_BY_TYPE, Payload

P = TypeVar("P", bound=Payload)

MAX_EVENT_BYTES = 64 * 1024
# DivisionsImported carries a whole county's communities; NATS's default max_payload is 1 MiB.
MAX_DIVISIONS_BYTES = 1024 * 1024
# Clocks disagree a little; an event from further in the future than this is refused.
CLOCK_SKEW = timedelta(minutes=5)
# Nothing cso records happened before the People's Republic (1949-10-01, China's civil time).
EARLIEST_TIME = datetime(EARLIEST.year, EARLIEST.month, EARLIEST.day, tzinfo=CHINA)


def _time_text(value: Any) -> Any:
    # pydantic would read a number as seconds (or milliseconds) since 1970: ambiguous, refused.
    if isinstance(value, int | float):
        raise ValueError("a time is written in ISO 8601 with its offset, not as a number")
    return value


# In the JSON Schemas: a date of DATE_PATTERN's range, a time, and the offset that cso requires.
MOMENT_PATTERN = (DATE_PATTERN.removesuffix("$") + "[Tt ][0-9]{2}:[0-9]{2}(:[0-9]{2}([.,][0-9]+)?)?"
                  "([Zz]|[+-][0-9]{2}:?[0-9]{2})$")
Moment = Annotated[AwareDatetime, BeforeValidator(_time_text), WithJsonSchema({
    "type": "string", "format": "date-time", "pattern": MOMENT_PATTERN,
    "description": "a time in ISO 8601 with its offset, not before 1949-10-01T00:00+08:00 and not more "
                   "than 5 minutes ahead of cso's clock (a moving bound: JSON Schema cannot say it, cso "
                   "refuses a later time naming this field)"})]


class Envelope(BaseModel, Generic[P]):
    """`event_id` is the idempotency key: a consumer applies an event id at most once."""

    model_config = ConfigDict(extra="allow", frozen=True)

    event_id: UUID
    type: str = Field(min_length=1, max_length=64)
    version: int = Field(ge=1, strict=True)
    occurred_at: Moment
    recorded_at: Moment
    source: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:/-]+$")
    region: RegionCode
    payload: P


# The names of the envelope's own fields; no payload has a field of these names (a test checks).
ENVELOPE_FIELDS = ("event_id", "type", "version", "occurred_at", "recorded_at", "source", "region", "payload")


def event_field(field: str) -> str:
    """How an error names a field: by its path in the event, so one refusal reads the same on every
    path (intake, dead letter, receipt, registry's commands, whose body is the event's payload).
    `community_code` (a payload field, as a command's body or a handler names it) is
    `payload.community_code`; the envelope's fields, `$` (the whole message), `command` and headers
    (`Idempotency-Key`: a name with a capital or a dash is no payload field's) stay."""
    head = field.split(".", 1)[0].split("[", 1)[0]
    if head in ENVELOPE_FIELDS or head in ("$", "command") or head != head.lower() or "-" in head:
        return field
    return f"payload.{field}"


class FieldError(BaseModel):
    field: str
    message: str


class ContractError(ValueError):
    """An event or command that breaks its contract; `errors` name each field at fault."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__(self.reason)

    @property
    def reason(self) -> str:
        return "; ".join(f"{e.field}: {e.message}" for e in self.errors)

    @classmethod
    def single(cls, field: str, message: str) -> ContractError:
        return cls([FieldError(field=field, message=message)])

    @classmethod
    def from_validation(cls, error: ValidationError, prefix: str = "") -> ContractError:
        errors = []
        for e in error.errors(include_url=False):
            loc = ".".join(str(p) for p in e["loc"])
            message = e["msg"].removeprefix("Value error, ")
            # Model-level validators name their field at the start of their message.
            if not loc and ": " in message:
                loc, message = message.split(": ", 1)
            errors.append(FieldError(field=prefix + loc if loc else prefix.rstrip(".") or "$",
                                     message=message))
        return cls(errors)


def load_json(raw: bytes | str) -> Any:
    """JSON from outside, strictly (contracts.jsontext): ContractError naming the field otherwise."""
    try:
        return jsontext.loads(raw)
    except jsontext.TextError as e:
        raise ContractError.single(e.field, e.message) from None


# Envelope[X] is a class pydantic builds on first use and then looks up on every subscript; a hot
# consumer parses thousands of events a second, so each type's envelope class is kept here.
_ENVELOPE_OF: dict[type[Payload], type[Envelope[Any]]] = {}


def envelope_class(payload_cls: type[Payload]) -> type[Envelope[Any]]:
    cls = _ENVELOPE_OF.get(payload_cls)
    if cls is None:
        cls = _ENVELOPE_OF[payload_cls] = Envelope[payload_cls]  # type: ignore[valid-type]
    return cls


def max_bytes(event_type: str) -> int:
    return MAX_DIVISIONS_BYTES if event_type == "DivisionsImported" else MAX_EVENT_BYTES


# Where an event names its type; only a guess, which validation of the whole event then confirms.
_TYPE_GUESS = re.compile(rb'"type"\s*:\s*"([A-Za-z]{1,64})"')


def _parse_valid(raw: bytes) -> Envelope[Payload] | None:
    """The fast path for a valid event: pydantic parses and validates the JSON in one pass (about
    three times faster than json.loads then model_validate). None when anything is off: the full
    path then finds the field at fault."""
    guess = _TYPE_GUESS.search(raw)
    payload_cls = PAYLOAD_BY_TYPE.get(guess.group(1).decode()) if guess else None
    if payload_cls is None or len(raw) > max_bytes(payload_cls.TYPE):
        return None
    # What pydantic's JSON parser takes but the strict reading refuses (contracts.jsontext):
    # control characters and surrogates, nesting; then keys given twice and odd numbers.
    if jsontext.suspect_bytes(raw) or raw.count(b"[") + raw.count(b"{") > jsontext.MAX_DEPTH:
        return None
    try:
        envelope: Envelope[Payload] = envelope_class(payload_cls).model_validate_json(raw)
        if envelope.type != payload_cls.TYPE or envelope.version != payload_cls.VERSION:
            return None
        if not _read_as_strictly(raw, envelope):
            return None
        check_envelope(envelope)
    except (ValidationError, ContractError):
        return None
    return envelope


# How a key can end other than in `":`: whitespace before its colon. Text with no whitespace at
# all (the usual event: encoders write compact JSON) needs no search.
_SPACED_KEY = re.compile(rb'"\s+:')


def _spaced_key(raw: bytes) -> bool:
    if b" " not in raw and b"\n" not in raw and b"\t" not in raw and b"\r" not in raw:
        return False
    return _SPACED_KEY.search(raw) is not None


def _read_as_strictly(raw: bytes, envelope: Envelope[Payload]) -> bool:
    """Whether the strict reading (contracts.jsontext) takes the keys and numbers of `raw` as
    pydantic's parser did: no key given twice (pydantic keeps the last), no number it refuses (NaN,
    Infinity, out of range, too long: pydantic takes them in extra fields, and a float with a zero
    fraction of a hundred digits as an int). The usual event is told by counting, with no second
    parse (which costs half of what pydantic's validation does); anything else is parsed.

    Counting: in text without a backslash every quote opens or closes a string. Then `":` ends a
    key or opens a string that starts with a colon, so if no key is spaced from its colon its count
    is at least the number of keys given; with the envelope's and the payload's braces the only two,
    the keys pydantic saw, once each, are the fields set of those two objects. Equal counts: no key
    was given twice. Numbers: none can be there (`_numberless`), or all are plain (`_plain_numbers`)."""
    if b"\\" not in raw and raw.count(b"{") == 2 and not _spaced_key(raw):
        payload = envelope.payload
        # The fields set include the extras; were they left out, the counts would differ: parsed.
        given = len(envelope.__pydantic_fields_set__) + len(payload.__pydantic_fields_set__)
        if raw.count(b'":') == given and (_numberless(envelope, payload) or _plain_numbers(raw)):
            return True
    return jsontext.reads_strictly(raw)


def _numberless(envelope: Envelope[Payload], payload: Payload) -> bool:
    """No number in the event but `version` (strict: 1 and nothing else gets past), when no field
    of its payload takes one and neither object has extra fields."""
    return (_payload_refuses_numbers(type(payload)) and not envelope.__pydantic_extra__
            and not payload.__pydantic_extra__)


def _plain_numbers(raw: bytes) -> bool:
    """Outside the strings (no backslash: quotes pair up) are only keys' colons, structure, numbers
    and true, false, null: numbers of 40 characters in all, with no letter (exponent, NaN,
    Infinity), are every one of them what the strict reading takes."""
    outside = b"".join(raw.split(b'"')[::2]).translate(None, b"{}[],: \t\n\r")
    numbers = outside.replace(b"true", b"").replace(b"false", b"").replace(b"null", b"")
    return len(numbers) <= jsontext.MAX_NUMBER_DIGITS and not numbers.translate(None, b"-.0123456789")


# Kinds of pydantic-core schema that refuse every JSON number, and the structure around them (the
# before-validators of contracts refuse numbers: dates and times). A kind not listed may take one.
_NUMBERLESS_KINDS = frozenset({
    "str", "date", "datetime", "uuid", "nullable", "default", "list", "dict", "model", "model-fields",
    "model-field", "definitions", "definition-ref", "function-after", "function-before", "no-info",
    "with-info"})
_REFUSES_NUMBERS: dict[type[Payload], bool] = {}


def _refuses_numbers(schema: Any) -> bool:
    if isinstance(schema, dict):
        kind = schema.get("type")
        if kind == "literal":
            if not all(isinstance(v, str) for v in schema["expected"]):
                return False
        elif kind == "enum":
            if schema.get("sub_type") != "str":
                return False
        elif isinstance(kind, str) and kind not in _NUMBERLESS_KINDS:
            return False
        return all(_refuses_numbers(v) for v in schema.values())
    if isinstance(schema, list | tuple):
        return all(_refuses_numbers(v) for v in schema)
    return True


def _payload_refuses_numbers(payload_cls: type[Payload]) -> bool:
    known = _REFUSES_NUMBERS.get(payload_cls)
    if known is None:
        known = _REFUSES_NUMBERS[payload_cls] = _refuses_numbers(payload_cls.__pydantic_core_schema__)
    return known


def parse_event(raw: bytes | str | dict[str, Any]) -> Envelope[Payload]:
    """Validate an incoming event: size, JSON, envelope, known type and version, payload, region.

    Raises ContractError naming the field; nothing is returned half-validated.
    """
    if isinstance(raw, bytes) and (valid := _parse_valid(raw)) is not None:
        return valid
    return _parse_full(raw)


def _parse_full(raw: bytes | str | dict[str, Any]) -> Envelope[Payload]:
    """The reference reading, step by step: every refusal names its field here."""
    if isinstance(raw, bytes | str):
        size = len(raw.encode() if isinstance(raw, str) else raw)
        if size > MAX_DIVISIONS_BYTES:
            raise ContractError.single("$", f"message of {size} bytes exceeds {MAX_DIVISIONS_BYTES}")
        data = load_json(raw)
    else:
        data, size = raw, 0
        try:
            jsontext.check(data)
        except jsontext.TextError as e:
            raise ContractError.single(e.field, e.message) from None
    if not isinstance(data, dict):
        raise ContractError.single("$", "an event must be a JSON object")
    event_type = data.get("type")
    payload_cls = PAYLOAD_BY_TYPE.get(event_type) if isinstance(event_type, str) else None
    if payload_cls is None:
        raise ContractError.single("type", f"unknown event type {event_type!r}")
    if size > max_bytes(payload_cls.TYPE):
        raise ContractError.single("$", f"{payload_cls.TYPE} of {size} bytes exceeds "
                                        f"{max_bytes(payload_cls.TYPE)}")
    version = data.get("version")
    if type(version) is not int or version != payload_cls.VERSION:
        raise ContractError.single(
            "version", f"unsupported version {version!r} of {payload_cls.TYPE} "
                       f"(supported: {payload_cls.VERSION})")
    try:
        envelope = envelope_class(payload_cls).model_validate(data)
    except ValidationError as e:
        raise ContractError.from_validation(e) from None
    check_envelope(envelope)
    return envelope


def check_envelope(envelope: Envelope[Any]) -> None:
    if envelope.type != envelope.payload.TYPE:
        raise ContractError.single("type", f"{envelope.type} does not match its payload")
    latest = datetime.now(timezone.utc) + CLOCK_SKEW
    for field in ("occurred_at", "recorded_at"):
        moment: datetime = getattr(envelope, field)
        if moment > latest:
            raise ContractError.single(field, f"{moment.isoformat()} is in the future")
        if moment < EARLIEST_TIME:
            raise ContractError.single(field, f"{moment.isoformat()} is before {EARLIEST.isoformat()}")
    region = envelope.payload.region_of()
    if region is not None and region != envelope.region:
        raise ContractError.single("region", f"{envelope.region} differs from the payload's {region}")


def make_event(
    payload: P,
    *,
    source: str,
    region: str | None = None,
    occurred_at: datetime | None = None,
    event_id: UUID | None = None,
) -> Envelope[P]:
    """Wrap a payload in its envelope; `region` defaults to the one the payload names."""
    now = datetime.now(timezone.utc)
    region = region or payload.region_of()
    if region is None:
        raise ContractError.single("region", f"{payload.TYPE} needs the region it concerns")
    envelope = envelope_class(type(payload))(
        event_id=event_id or uuid4(),
        type=payload.TYPE,
        version=payload.VERSION,
        occurred_at=occurred_at or now,
        recorded_at=now,
        source=source,
        region=region,
        payload=payload,
    )
    check_envelope(envelope)
    return envelope


def encode(envelope: Envelope[Any]) -> bytes:
    return envelope.model_dump_json().encode()
