"""The pure parts of registry's receipts and waiting room: refusal codes, what a waiting fact waits
for, receipt ids, the keys an accepted fact frees, and the dead letter's event id."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from contracts import events as ev
from contracts import make_event
from contracts.deadletter import event_id_of
from contracts.receipts import IntakeReceipt, RefusalCode
from services.registry import domain
from services.registry.domain import NotYet, Rejected
from services.registry.record import Recorded
from services.registry.verdicts import ACTIONS, code_of, receipt_id, waits_for
from services.registry.waiting import Room, key_of


def test_a_refusal_names_its_stable_code() -> None:
    assert code_of(Rejected("ended_on", "x", code="date_order")) is RefusalCode.DATE_ORDER
    assert code_of(Rejected("x", "y")) is RefusalCode.RULE           # the default
    assert code_of(Rejected("x", "y", code="made-up")) is RefusalCode.RULE


def test_domain_refusals_carry_their_codes() -> None:
    org = uuid.uuid4()
    filed = ev.OrganizationFiled(organization_id=org, name="某队", community_code="510681001014",
                                 category=ev.Category.CHARITY, filed_on="2024-03-01")
    existing = domain.file(None, True, filed)
    with pytest.raises(Rejected) as already:
        domain.file(existing, True, filed)
    assert already.value.code == "already_on_record"
    with pytest.raises(Rejected) as unknown:
        domain.file(None, False, filed)
    assert unknown.value.code == "unknown_division"
    early = ev.OrganizationDeregistered(organization_id=org, reason="解散", ended_on="2023-01-01")
    with pytest.raises(Rejected) as before:
        domain.deregister(existing, early)
    assert (before.value.field, before.value.code) == ("ended_on", "date_order")


def test_a_fact_without_its_predecessor_says_what_it_waits_for() -> None:
    org, hub = uuid.uuid4(), uuid.uuid4()
    with pytest.raises(NotYet) as missing:
        domain.deregister(None, ev.OrganizationDeregistered(organization_id=org, reason="解散", ended_on="2024-01-01"))
    assert missing.value.waits_for == f"organization:{org}"
    assert waits_for(missing.value).kind == "predecessor"
    with pytest.raises(NotYet) as no_hub:
        domain.dissolve_hub(None, ev.HubDissolved(hub_id=hub, dissolved_on="2024-01-01"))
    assert no_hub.value.waits_for == f"hub:{hub}"
    divisions = waits_for(NotYet("community_code", "divisions of county 511111 are not loaded yet",
                                 waits_for="county:511111"))
    assert (divisions.kind, divisions.key) == ("divisions", "county:511111")


def test_an_accepted_fact_frees_what_waits_for_its_record() -> None:
    org = uuid.uuid4()
    filed = make_event(ev.OrganizationFiled(organization_id=org, name="某队", community_code="510681001014",
                                            category=ev.Category.CHARITY, filed_on="2024-03-01"), source="s")
    assert key_of(filed, Recorded(str(org), "510681001014")) == f"organization:{org}"
    hub = make_event(ev.HubEstablished(hub_id=uuid.uuid4(), organization_id=org, region_code="510681001",
                                       name="枢纽", established_on="2024-03-02"), source="s")
    assert key_of(hub, Recorded("h", "510681001")) == "hub:h"


def test_receipt_ids_are_derived_so_a_verdict_staged_twice_is_one_receipt() -> None:
    event = uuid.uuid4()
    assert receipt_id(event, "accepted") == receipt_id(event, "accepted")
    assert receipt_id(event, "accepted") != receipt_id(event, "refused")
    assert receipt_id(event, "duplicate", "CSO_INTAKE", 7) != receipt_id(event, "duplicate", "CSO_INTAKE", 8)


def test_the_receipt_contract() -> None:
    now = datetime.now(timezone.utc)
    receipt = IntakeReceipt(receipt_id=uuid.uuid4(), event_id=None, msg_id="m-1", source="leshan-city",
                            verdict="refused", field="event_id", reason="Field required",
                            code=RefusalCode.CONTRACT, action=ACTIONS["refused"], decided_at=now)
    assert IntakeReceipt.model_validate_json(receipt.model_dump_json()) == receipt
    with pytest.raises(ValueError):
        IntakeReceipt.model_validate({**receipt.model_dump(), "verdict": "maybe"})
    assert "NEW event_id" in ACTIONS["refused"]


def test_the_dead_letter_reads_the_event_id_leniently() -> None:
    event = str(uuid.uuid4())
    assert event_id_of(json.dumps({"event_id": event, "payload": {"filed_on": 12}}).encode()) == event
    assert event_id_of(b'{"event_id": "not-a-uuid"}') is None
    assert event_id_of(b"\xff not json") is None
    assert event_id_of(b"[1, 2]") is None


def test_the_room_needs_a_wait() -> None:
    with pytest.raises(ValueError, match="CSO_WAITING_MAX_DAYS"):
        Room(topology=None, clock=lambda: datetime.now(timezone.utc), max_wait=timedelta(0))  # type: ignore[arg-type]
