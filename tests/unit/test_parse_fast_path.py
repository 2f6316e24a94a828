"""parse_event's fast path (one-pass JSON validation) accepts exactly what the full path accepts,
returns the same envelope, and leaves every refusal to the full path, which names the field: on
the workload, on each mutation of it, and on hypothesis's events (fields of every wrong kind,
missing, extra, given twice, odd numbers, escapes, spacing)."""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts import ContractError, Envelope, encode, jsontext, make_event, parse_event
from contracts import envelope as envelope_module
from tests.fuzz import corpus
from tests.support import GUANGHAN
from tests.support.scenario import regions_of, workload

COMMUNITIES = [c.code for c in GUANGHAN.communities]
TOWNSHIPS = [t.code for t in GUANGHAN.townships]


def samples() -> list[bytes]:
    facts = workload(3, COMMUNITIES, TOWNSHIPS, organizations=60, people=10)
    regions = regions_of([f for f in facts if f.CONTEXT == "registry"])
    out = [encode(make_event(GUANGHAN, source="divisions"))]
    for fact in facts:
        ident = next((str(getattr(fact, k)) for k in ("organization_id", "hub_id", "base_id",
                                                       "party_organization_id") if hasattr(fact, k)), "")
        out.append(encode(make_event(fact, source="test", region=fact.region_of() or regions.get(ident, "510681"))))
    return out


def test_every_valid_event_takes_the_fast_path_and_equals_the_full_one(monkeypatch: pytest.MonkeyPatch) -> None:
    raws = samples()
    assert len({json.loads(r)["type"] for r in raws}) >= 10
    fast = [parse_event(r) for r in raws]
    assert fast == [parse_event(json.loads(r)) for r in raws]  # a dict takes the full path
    # And the fast path really answered (not the fallback).
    assert all(envelope_module._parse_valid(r) is not None for r in raws)


def mutations(raw: bytes, rng: random.Random) -> list[bytes]:
    event = json.loads(raw)
    wrong_version = event | {"version": 2}
    other_type = event | {"type": "HubDissolved"}
    first = next(iter(event["payload"]))
    no_payload_field = event | {"payload": {k: v for k, v in event["payload"].items() if k != first}}
    bad_region = event | {"region": "99"}
    future = event | {"occurred_at": "2999-01-01T00:00:00+00:00"}
    typed_twice = raw.replace(b'"type":', b'"type":"OrganizationFiled","type":', 1)
    extra_twice = raw.replace(b'"payload":{', b'"payload":{"x":1,"x":1,', 1)
    field_twice = raw.replace(b'"payload":{', b'"payload":{"%s":null,' % first.encode(), 1)
    cut = raw[: rng.randint(1, len(raw) - 1)]
    return [json.dumps(e).encode() for e in (wrong_version, other_type, no_payload_field, bad_region, future)] + [
        typed_twice, extra_twice, field_twice, cut, raw + b"\xff", b"[" + raw + b"]"]


def test_a_refusal_is_the_full_paths_naming_the_field() -> None:
    rng = random.Random(5)
    for raw in samples()[:25]:
        for bad in mutations(raw, rng):
            try:  # the dict as the strict reading gives it (a key given twice is refused)
                expected: object = parse_event(envelope_module.load_json(bad))
            except (ContractError, ValueError) as e:
                expected = e.reason if isinstance(e, ContractError) else "not JSON"
            try:
                got: object = parse_event(bad)
            except ContractError as e:
                got = e.reason
            if not isinstance(expected, str):
                # Still valid (a field with a default was dropped; a default id is new each time).
                assert not isinstance(got, str) and got.event_id == expected.event_id  # type: ignore[attr-defined]
            elif expected == "not JSON":
                assert isinstance(got, str) and got.startswith("$: not JSON"), (bad, got)
            else:
                assert got == expected, bad


# --- agreement on any input (hypothesis) ---------------------------------------------------------
# The reference is the full path alone (`_parse_full`: the strict JSON reading, then the pydantic
# models); the fast path (`_parse_valid`) may only answer an envelope the reference answers too,
# and parse_event's refusal is then the reference's, word for word (the field named and why).

BASES = [json.loads(e.model_dump_json()) for context in ("intake", "training", "divisions", "targets")
         for e in corpus.events_for(context)]
# Number tokens json.dumps does not write, or writes though the strict reading refuses them.
NUMBER_TOKENS = [b"1" * 41, b"-" + b"1" * 40, b"1" * 40, b"1." + b"0" * 90, b"1." + b"0" * 30, b"1e999",
                 b"-1e999", b"1E5", b"2e-3", b"NaN", b"Infinity", b"-Infinity", b"-0", b"0.5", b"1.0"]
NUMBER = "@@number@@"
ODD_VALUES: list[object] = [
    *corpus.TEXT_BAD, *corpus.CODE_BAD, *corpus.DATE_BAD, *corpus.UUID_BAD, *corpus.INT_BAD, *corpus.ENUM_BAD,
    *corpus.ODD_BUT_VALID, "x" * 65, "x" * 101, "x" * 201, "x" * 1001, ":colon first", "{brace}", "a\"b", "é",
    "2023-01-01T00:00:00", "2023-01-01T00:00:00+08:00", "2023-01-01t00:00:00z", "2023-01-01 00:00:00+08:00",
    "2999-01-01T00:00:00+00:00", "1900-01-01T00:00:00+08:00", "0001-01-01T00:00:00+14:00",
    "2023-01-01T00:00:00.1234567+08:00", "2023-06-01T12:00:00-23:59", 1, 2, 0, -1, 1.0, 10**40, 2**63,
    float("nan"), float("inf"), "510681001014", "510681", "51", "1", "OrganizationFiled", "filed", "guided",
    "6f1c2d3e4b5a4c6d8e7f000000000001", "{6f1c2d3e-4b5a-4c6d-8e7f-000000000001}",
    "urn:uuid:6f1c2d3e-4b5a-4c6d-8e7f-000000000001", "６f1c2d3e-4b5a-4c6d-8e7f-000000000001"]
values = st.sampled_from(ODD_VALUES) | corpus.json_values
SEPARATORS = [(",", ":"), (", ", ": "), (" , ", " : "), (",", ":\t"), (",\n", "\n:\n")]


def _key(data: dict[str, Any], draw: Callable[..., Any]) -> str:
    return str(draw(st.sampled_from(sorted(data) or ["k"]) | st.sampled_from(envelope_module.ENVELOPE_FIELDS)
                    | st.text(max_size=8)))


def _json(value: object, separators: tuple[str, str], ascii_only: bool) -> bytes:
    try:
        return json.dumps(value, ensure_ascii=ascii_only, separators=separators).encode()
    except UnicodeEncodeError:  # a lone surrogate: only as the escape
        return json.dumps(value, separators=separators).encode()


@st.composite
def events(draw: Callable[..., Any]) -> bytes:
    """A valid event, some of its fields changed, dropped or added (envelope and payload), written
    compact or spaced, escaped or not, then maybe a key given twice, an odd number, an escaped key."""
    event = copy.deepcopy(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(0, 3))):
        target = event["payload"] if draw(st.booleans()) and isinstance(event.get("payload"), dict) else event
        key = _key(target, draw)
        if draw(st.integers(0, 3)) == 0:
            target.pop(key, None)
        else:
            target[key] = draw(values | st.just(NUMBER))
    ascii_only = draw(st.sampled_from([False, False, True]))  # escapes (a backslash) take the parse
    separators = draw(st.sampled_from([SEPARATORS[0], *SEPARATORS]))
    raw = _json(event, separators, ascii_only)
    while NUMBER.encode() in raw:  # a number token in a field's place
        raw = raw.replace(b'"%s"' % NUMBER.encode(), draw(st.sampled_from(NUMBER_TOKENS)), 1)
    for _ in range(draw(st.integers(0, 2))):
        payload_at = raw.find(b"{", raw.find(b'"payload"') + 1) if b'"payload"' in raw else -1
        where = draw(st.sampled_from([0, payload_at] if payload_at > 0 else [0]))
        level = event["payload"] if where and isinstance(event.get("payload"), dict) else event
        change = draw(st.sampled_from(["twice", "twice", "number", "escaped", "tail"]))
        if change == "twice":  # a key given twice, the same value or another; a new key: both given here
            key = draw(st.sampled_from(sorted(level) or ["k"]) | st.text(max_size=4))
            value = level.get(key) if draw(st.booleans()) else draw(st.sampled_from(ODD_VALUES) | corpus.json_values)
            pair = _json({key: value}, separators, False)[1:-1]
            if key not in level:
                pair += separators[0].encode() + pair
        elif change == "number":
            pair = json.dumps(draw(st.text(max_size=4))).encode() + b":" + draw(st.sampled_from(NUMBER_TOKENS))
        elif change == "escaped":  # a key spelled with an escape: the same key to a parser
            key = draw(st.sampled_from(sorted(level) or ["k"]))
            pair = (b'"\\u%04x' % ord(key[0]) + key[1:].encode() + b'":' if key else b'"":') + json.dumps(
                level.get(key)).encode()
        else:
            raw = raw + draw(st.sampled_from([b"", b" ", b"\n", b"x", b"}", b"\xff", b"\x00"]))
            continue
        if where + 1 < len(raw) and raw[where + 1:where + 2] != b"}":
            pair += b","
        raw = raw[:where + 1] + pair + raw[where + 1:]
    return raw


def same(a: Envelope[Any], b: Envelope[Any]) -> bool:
    """The same envelope, but for ids made up for fields left out (a default factory draws anew)."""
    return (type(a) is type(b) and type(a.payload) is type(b.payload)
            and a.model_fields_set == b.model_fields_set
            and a.payload.model_fields_set == b.payload.model_fields_set
            and a.model_dump(mode="json", exclude_unset=True) == b.model_dump(mode="json", exclude_unset=True))


def verdict(raw: bytes) -> tuple[str, object]:
    try:
        return "accepted", envelope_module._parse_full(raw)
    except ContractError as e:
        return "refused", e.reason


def check_agreement(raw: bytes) -> bool:
    """Asserts the fast path and parse_event agree with the reference on `raw`; whether the fast
    path answered."""
    fast = envelope_module._parse_valid(raw)
    expected, reference = verdict(raw)
    if fast is not None:
        assert expected == "accepted", (raw, reference)
        assert same(fast, reference), raw  # type: ignore[arg-type]
    try:
        got: tuple[str, object] = "accepted", parse_event(raw)
    except ContractError as e:
        got = "refused", e.reason
    assert got[0] == expected, (raw, got, reference)
    if expected == "refused":
        assert got[1] == reference, raw  # the same field, the same reason
    else:
        assert same(got[1], reference), raw  # type: ignore[arg-type]
    return fast is not None


def test_the_fast_path_agrees_with_the_reference_on_any_event() -> None:
    answered: list[bool] = []

    @settings(max_examples=max(300, corpus.EXAMPLES * 10), deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(events())
    def agree(raw: bytes) -> None:
        answered.append(check_agreement(raw))

    agree()
    # Both sides were reached: events the fast path answered, and events it left to the reference.
    assert sum(answered) > 20 and len(answered) - sum(answered) > 20, (sum(answered), len(answered))


@pytest.mark.parametrize("separators", [(",", ":"), (", ", ": ")])
def test_usual_events_are_told_without_a_second_parse(monkeypatch: pytest.MonkeyPatch,
                                                     separators: tuple[str, str]) -> None:
    """Keys given twice and odd numbers are told by counting, not by parsing again (the point of the
    fast path), for events as encoders write them, compact or with a space after each separator."""
    raws = [json.dumps(json.loads(r), ensure_ascii=False, separators=separators).encode() for r in samples()]
    monkeypatch.setattr(jsontext, "reads_strictly", lambda raw: pytest.fail("parsed again"))
    assert all(envelope_module._parse_valid(r) is not None for r in raws if r.count(b"{") == 2)
    assert sum(r.count(b"{") == 2 for r in raws) > len(raws) // 2


def test_odd_numbers_in_every_field_agree() -> None:
    """Every field of every type's event, envelope and payload, given each number token: the fast
    path takes one only where the reference does (a float of 92 characters with a zero fraction is
    an int to pydantic; a 41-digit integer fits an unbounded int field)."""
    answered = 0
    for base in BASES:
        for level in ("envelope", "payload"):
            fields = base if level == "envelope" else base["payload"]
            for key in fields:
                event = copy.deepcopy(base)
                (event if level == "envelope" else event["payload"])[key] = NUMBER
                raw = json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode()
                for token in NUMBER_TOKENS:
                    answered += check_agreement(raw.replace(b'"%s"' % NUMBER.encode(), token))
    assert answered > 20  # numbers where numbers belong
