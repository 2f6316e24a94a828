"""How fast events are decoded on the consume path, against the floor of plain JSON parsing.

    python -m bench.decode [--scope 5111] [--rounds 7] [--limit 20000] [--before CHECKOUT]

The events are the workload of `bench/generator.py` for the scope (the demo's divisions), as
registry's intake consumer receives them. Each line is one way of decoding the same bytes; every
way runs once per round, the rounds interleaved (so a machine shared with other work slows them
alike), and the best round counts. Printed: events/s, µs per event and the ratio to the floor of
the same run (`json.loads`: parsing alone, no validation).

Ways measured:

* `parse_event`: what consumers call (the fast path, falling back to the full one on a refusal);
* `json.loads + model_validate`: the full path's core (a dict first, then the model);
* `model_validate_json`: pydantic alone on the bytes, none of parse_event's checks around it;
* `TypeAdapter(union)`: one adapter over every type's envelope, a discriminator on `type`;
* the fast path's checks around pydantic (what its parser takes and the strict reading does not:
  suspect text, keys given twice, odd numbers), counted as now and parsed again as before;
* `msgspec` (if installed; cso does not depend on it): decoding to dicts, and an upper bound of what
  msgspec Structs could give for OrganizationFiled (decoded into a Struct that mirrors its fields, no
  rule checked, the pydantic models then built bare).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, Union

from pydantic import Discriminator, Tag, TypeAdapter

from bench.generator import Workload
from contracts import PAYLOAD_BY_TYPE, jsontext, parse_event
from contracts.envelope import _TYPE_GUESS, _read_as_strictly, check_envelope, envelope_class
from cso.divisions import DEMO_DIVISIONS
from cso.service import tune_garbage_collector


def events(scope: Sequence[str], limit: int) -> list[bytes]:
    out: list[bytes] = []
    for item in Workload(DEMO_DIVISIONS, list(scope), seed=7).events():
        if not item.barrier:
            out.append(item.data)
            if len(out) >= limit:
                break
    return out


def model_validate_json(raw: bytes) -> Any:
    guess = _TYPE_GUESS.search(raw)
    assert guess is not None
    return envelope_class(PAYLOAD_BY_TYPE[guess.group(1).decode()]).model_validate_json(raw)


def full_core(raw: bytes) -> Any:
    data = json.loads(raw)
    return envelope_class(PAYLOAD_BY_TYPE[data["type"]]).model_validate(data)


def _type_of(value: Any) -> Any:
    return value.get("type") if isinstance(value, dict) else getattr(value, "type", None)


def union_adapter() -> TypeAdapter[Any]:
    tagged = tuple(Annotated[envelope_class(cls), Tag(name)] for name, cls in PAYLOAD_BY_TYPE.items())
    return TypeAdapter(Annotated[Union[tagged], Discriminator(_type_of)])  # type: ignore[arg-type]  # noqa: UP007


def checks(parsed: dict[bytes, Any]) -> tuple[Callable[[bytes], Any], Callable[[bytes], Any]]:
    """The fast path's checks around pydantic (what its parser takes and the strict reading does
    not), now and before issue 23's decoder item: byte searches against a regular expression for
    suspect text, counting against a second parse for keys given twice and odd numbers. `parsed`
    gives each event's envelope (a dict look-up, within both)."""

    def counted(raw: bytes) -> bool:
        return bool(jsontext.suspect_bytes(raw) or raw.count(b"[") + raw.count(b"{") > jsontext.MAX_DEPTH
                    or not _read_as_strictly(raw, parsed[raw]))

    def parsed_again(raw: bytes) -> bool:
        return bool(jsontext.SUSPECT_BYTES.search(raw) or raw.count(b"[") + raw.count(b"{") > jsontext.MAX_DEPTH
                    or not jsontext.reads_strictly(raw) or parsed[raw] is None)

    return counted, parsed_again


def msgspec_ways(raws: list[bytes]) -> dict[str, tuple[Callable[[bytes], Any], list[bytes]]]:
    try:
        msgspec: Any = importlib.import_module("msgspec")
    except ImportError:
        return {}
    import datetime as dt
    import uuid

    from contracts.events import Category, ManagementTier, OrganizationFiled

    # Built with msgspec.defstruct so that this module needs no msgspec to be imported or checked.
    payload = msgspec.defstruct("Filed", [
        ("organization_id", uuid.UUID), ("name", str), ("community_code", str), ("category", Category),
        ("filed_on", dt.date), ("tier", ManagementTier, ManagementTier.FILED),
        ("filing_number", str | None, None)], forbid_unknown_fields=True)
    envelope = msgspec.defstruct("Envelope", [
        ("event_id", uuid.UUID), ("type", str), ("version", int), ("occurred_at", dt.datetime),
        ("recorded_at", dt.datetime), ("source", str), ("region", str), ("payload", payload)],
        forbid_unknown_fields=True)
    decoder = msgspec.json.Decoder(envelope)
    filed_cls = envelope_class(OrganizationFiled)
    setattr_ = object.__setattr__

    def bare(cls: Any, values: dict[str, Any]) -> Any:
        model = cls.__new__(cls)
        setattr_(model, "__dict__", values)
        setattr_(model, "__pydantic_fields_set__", set(values))
        setattr_(model, "__pydantic_extra__", {})
        setattr_(model, "__pydantic_private__", None)
        return model

    def struct_then_bare(raw: bytes) -> Any:
        e = decoder.decode(raw)
        p = e.payload
        return bare(filed_cls, {
            "event_id": e.event_id, "type": e.type, "version": e.version, "occurred_at": e.occurred_at,
            "recorded_at": e.recorded_at, "source": e.source, "region": e.region,
            "payload": bare(OrganizationFiled, {
                "organization_id": p.organization_id, "name": p.name, "community_code": p.community_code,
                "tier": p.tier, "category": p.category, "filing_number": p.filing_number,
                "filed_on": p.filed_on})})

    filed = [r for r in raws if b'"type":"OrganizationFiled"' in r]
    return {"msgspec.json.decode (dicts)": (msgspec.json.decode, raws),
            "OrganizationFiled: json.loads (floor)": (json.loads, filed),
            "OrganizationFiled: parse_event": (parse_event, filed),
            "OrganizationFiled: msgspec Struct, bare models": (struct_then_bare, filed)}


def contracts_of(checkout: Path) -> Any:
    """The `contracts` package of another checkout (say a worktree of main before a change),
    imported as `contracts_before`, so that both decoders run in the same process and rounds."""
    spec = importlib.util.spec_from_file_location(
        "contracts_before", checkout / "contracts" / "__init__.py",
        submodule_search_locations=[str(checkout / "contracts")])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["contracts_before"] = module
    spec.loader.exec_module(module)
    return module


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scope", default="5111", help="counties, cities or provinces of the demo divisions")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--limit", type=int, default=20_000)
    ap.add_argument("--before", type=Path, help="a checkout whose parse_event to time alongside")
    opts = ap.parse_args(argv)
    raws = events(opts.scope.split(","), opts.limit)
    types = Counter(json.loads(r)["type"] for r in raws)
    print(f"{len(raws)} events, {sum(map(len, raws)) / len(raws):.0f} bytes on average; "
          + ", ".join(f"{t} {n}" for t, n in types.most_common(4)))
    adapter = union_adapter()
    envelopes = [parse_event(r) for r in raws]
    counted, parsed_again = checks(dict(zip(raws, envelopes, strict=True)))
    ways: dict[str, tuple[Callable[[bytes], Any], list[bytes]]] = {
        "json.loads (floor)": (json.loads, raws),
        "parse_event": (parse_event, raws),
        **({"parse_event of --before": (contracts_of(opts.before).parse_event, raws)} if opts.before else {}),
        "json.loads + model_validate": (full_core, raws),
        "model_validate_json": (model_validate_json, raws),
        "TypeAdapter(union).validate_json": (adapter.validate_json, raws),
        "checks around pydantic: counted (now)": (counted, raws),
        "checks around pydantic: parsed again (before)": (parsed_again, raws),
        **msgspec_ways(raws),
    }
    assert [adapter.validate_json(r) for r in raws[:200]] == envelopes[:200]
    # As in a service: what was built before the work is frozen, young collections are rare. Else
    # the collector's passes over the events held here land in whatever runs when they trigger.
    tune_garbage_collector()
    best = {name: float("inf") for name in ways}
    for _ in range(opts.rounds):
        for name, (decode, data) in ways.items():
            started = time.perf_counter()
            for raw in data:
                decode(raw)
            best[name] = min(best[name], (time.perf_counter() - started) / len(data))
    started = time.perf_counter()
    for envelope in envelopes:
        check_envelope(envelope)
    checked = (time.perf_counter() - started) / len(envelopes)
    floor = best["json.loads (floor)"]
    print(f"{'way':50} {'events/s':>10} {'µs/event':>9} {'÷ floor':>8}")
    for name, seconds in best.items():
        print(f"{name:50} {1 / seconds:10,.0f} {seconds * 1e6:9.1f} {seconds / floor:8.2f}")
    print(f"{'check_envelope (once, after the rounds)':50} {1 / checked:10,.0f} {checked * 1e6:9.1f} "
          f"{checked / floor:8.2f}")


if __name__ == "__main__":
    main()
