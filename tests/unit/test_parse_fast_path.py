"""parse_event's fast path (one-pass JSON validation) accepts exactly what the full path accepts,
returns the same envelope, and leaves every refusal to the full path, which names the field."""

from __future__ import annotations

import json
import random

import pytest

from contracts import ContractError, encode, make_event, parse_event
from contracts import envelope as envelope_module
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
    cut = raw[: rng.randint(1, len(raw) - 1)]
    return [json.dumps(e).encode() for e in (wrong_version, other_type, no_payload_field, bad_region, future)] + [
        typed_twice, cut, raw + b"\xff", b"[" + raw + b"]"]


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
