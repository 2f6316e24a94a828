"""The bad-input corpus published to every subscriber of every service, running for real (NATS
JetStream and PostgreSQL): on every subject each service consumes, raw garbage and every mutation
of every event type that travels there, plus events on the wrong subject.

For each service: every bad message lands on `cso.deadletter.<service>` with a reason naming its
field, none leaves a trace in the service's tables (every table is compared before and after), the
consumers are still running, and a valid event published after the garbage is applied."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from datetime import date
from typing import Any

import asyncpg
import nats
import pytest
from fastapi import FastAPI
from nats.errors import MaxPayloadError

from contracts import Envelope, make_event
from contracts import events as ev
from contracts.envelope import event_field
from cso.settings import Settings
from services.notify import app as notify_app
from services.registry import app as registry_app
from services.targets import app as targets_app
from services.training import app as training_app
from tests.fuzz import corpus
from tests.fuzz.corpus import COMMUNITY, COUNTY, Case
from tests.support import GUANGHAN, db_fetch, eventually, publish, recording, running

pytestmark = pytest.mark.integration

# service -> (create_app, run_migrations, the (stream, context) pairs it consumes)
SERVICES: dict[str, tuple[Callable[[Settings], FastAPI], Callable[[Settings], None], list[tuple[str, str]]]] = {
    "registry": (registry_app.create_app, registry_app.run_migrations,
                 [("CSO_INTAKE", "intake"), ("CSO_DIVISIONS", "divisions")]),
    "targets": (targets_app.create_app, targets_app.run_migrations,
                [("CSO_REGISTRY", "registry"), ("CSO_TRAINING", "training"), ("CSO_DIVISIONS", "divisions")]),
    "training": (training_app.create_app, training_app.run_migrations,
                 [("CSO_DIVISIONS", "divisions"), ("CSO_REGISTRY", "registry")]),
    "notify": (notify_app.create_app, notify_app.run_migrations,
               [("CSO_TARGETS", "targets"), ("CSO_REGISTRY", "registry"), ("CSO_TRAINING", "training"),
                ("CSO_DIVISIONS", "divisions")]),
}


# Written for refused events too: the inbox claims an event id the handler then refuses (so a
# redelivery is a duplicate), the position and BusWatch's record move past it.
# Besides the consumers' own: registry's record of each refusal and of who publishes, which receipts
# read (services/registry/receipts.py, losses.py), and the receipts staged for publishers
# (receipt_outbox, services/registry/verdicts.py): a refused fact writes them, and nothing else.
# And where each outbox's relay has got to (cso/outbox.py: outbox_relay, outbox_stream), which moves
# when those receipts are published; an event a refusal wrongly staged still shows in `outbox` itself.
BOOKKEEPING = ("inbox", "consumer_position", "bus_stream", "intake_refusal", "intake_source", "receipt_outbox",
               "outbox_relay", "outbox_stream")
# When a background job last looked, not what it found: targets' coalescer re-evaluates instances
# whenever it runs (status and value are compared; target_history records every change).
WHEN_LOOKED = {"target_instance": "evaluated_at"}


async def snapshot(settings: Settings, schema: str) -> dict[str, str]:
    """A digest of every table of the schema but its bookkeeping, row by row."""
    db = await asyncpg.connect(settings.database_url)
    try:
        tables = [r["tablename"] for r in await db.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = $1 ORDER BY tablename", schema)
            if r["tablename"] not in BOOKKEEPING]
        def row(t: str) -> str:
            return f"(to_jsonb(t) - '{WHEN_LOOKED[t]}')::text" if t in WHEN_LOOKED else "t::text"

        return {t: await db.fetchval(
            f'SELECT count(*) || \':\' || coalesce(md5(string_agg({row(t)}, \'|\' ORDER BY {row(t)})), \'\') '
            f'FROM "{schema}"."{t}" t') for t in tables}
    finally:
        await db.close()


async def settled(settings: Settings, schema: str) -> dict[str, str]:
    """The schema once background work (seeding, evaluation, reminders) has stopped changing it."""
    previous = await snapshot(settings, schema)
    for _ in range(30):
        await asyncio.sleep(1.0)
        current = await snapshot(settings, schema)
        if current == previous:
            return current
        previous = current
    raise AssertionError(f"{schema} kept changing with nothing published")


async def in_inbox(settings: Settings, schema: str, event_ids: list[uuid.UUID]) -> bool:
    db = await asyncpg.connect(settings.database_url)
    try:
        n = await db.fetchval(f"SELECT count(*) FROM {schema}.inbox WHERE event_id = ANY($1::uuid[])", event_ids)
        return bool(n == len(event_ids))
    finally:
        await db.close()


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: `*` is one token, `>` the rest (at least one)."""
    want, got = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(got) > i
        if i >= len(got) or (token != "*" and token != got[i]):
            return False
    return len(want) == len(got)


async def delivered(js: Any, settings: Settings, service: str, stream: str,
                    context: str) -> Callable[[str], bool]:
    """Whether the service's consumer of `stream` parses a message on a subject: its durable's
    filter subjects (a consumer takes only the types its handler table names), and for notify's
    screened contexts the screen of its live subscriptions (services/notify/domain.Screen), which
    acks unparsed what no subscription can match."""
    config = (await js.consumer_info(settings.topology.stream(stream), f"{service}-{context}")).config
    filters = list(config.filter_subjects or []) or [config.filter_subject]
    screen: Callable[[str], bool] = lambda _: True  # noqa: E731
    if service == "notify":
        from services.notify.domain import Screen
        rules = await db_fetch(settings, "SELECT DISTINCT kind, region, include_subregions FROM "
                               "notify.subscription, unnest(events) AS kind WHERE deleted_at IS NULL")
        screen = Screen([(r["kind"], r["region"], r["include_subregions"]) for r in rules])
    return lambda subject: any(subject_matches(f, subject) for f in filters) and screen(subject)


def consumer_tasks(service: str) -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith(f"consumer-{service}-")]


def sentinel(context: str) -> Envelope[Any]:
    """A valid event for `context`, new each time: applied once the garbage before it is dealt with."""
    today = date(2024, 5, 1)
    payload: ev.Payload
    if context in ("intake", "registry"):
        payload = ev.OrganizationFiled(name=f"哨兵 {uuid.uuid4().hex[:6]}", community_code=COMMUNITY,
                                       category="charity", filed_on=today)
    elif context == "training":
        payload = ev.TalentPoolMemberAdded(person_id=uuid.uuid4(), county_code=COUNTY, role="volunteer",
                                           added_on=today)
    elif context == "targets":
        payload = ev.CoverageChanged(region_code=COUNTY, figures={"orgs": 1.0})
    else:
        return make_event(GUANGHAN, source="fuzz")  # the same divisions again: applied, changes nothing
    return make_event(payload, source="fuzz")


# A context's events on another context's subjects, and a type of the context that is not the first's.
FOREIGN = {"intake": "training", "registry": "training", "training": "registry", "targets": "registry",
           "divisions": "registry"}
OTHER_TYPE = {"intake": "HubDissolved", "registry": "HubDissolved", "training": "TalentPoolMemberRemoved",
              "targets": "TaskOverdue", "divisions": "DivisionChanged"}


def wrong_subject_cases(context: str) -> list[Case]:
    """Valid events on a subject that is not theirs: another region's, another type's, another
    context's (on intake, registry refuses what is no registry fact)."""
    envelope = corpus.events_for(context)[0]
    data = envelope.model_dump_json().encode()
    foreign = corpus.events_for(FOREIGN[context])[0]
    return [
        Case(f"{envelope.type} on Leshan's subject", data, "region", "511102001001", envelope.type),
        Case(f"{envelope.type} on {OTHER_TYPE[context]}'s subject", data, "type", envelope.region,
             OTHER_TYPE[context]),
        Case(f"{foreign.type} on {context}", foreign.model_dump_json().encode(), "type", foreign.region,
             foreign.type),
    ]


@pytest.mark.parametrize("service", list(SERVICES))
async def test_bad_input_is_dead_lettered_naming_the_field(service: str, settings: Settings,
                                                           nc: nats.NATS) -> None:
    create_app, migrate, streams = SERVICES[service]
    t = settings.topology
    js = nc.jetstream()
    await asyncio.to_thread(migrate, settings)
    async with running(create_app, settings) as _:
        divisions = make_event(GUANGHAN, source="fuzz")
        await publish(nc, t.event_subject("DivisionsImported", COUNTY), divisions)
        await eventually(lambda: in_inbox(settings, service, [divisions.event_id]), timeout=30)
        tasks = consumer_tasks(service)
        assert len(tasks) == len(streams)
        before = await settled(settings, service)

        sent: dict[tuple[str, int], Case] = {}
        skipped = 0     # on a subject the service's consumer does not take, or notify's screen skips
        async with recording(nc, t.deadletter_subject(service), t.stream("CSO_DEADLETTER")) as dead:
            for stream, context in streams:
                parses = await delivered(js, settings, service, stream, context)
                cases = [(c, context) for c in corpus.subscriber_cases(context, corpus.FULL)]
                cases += [(c, context) for c in corpus.draw(corpus.random_event_case(context))]
                cases += [(c, context) for c in corpus.draw(corpus.random_garbage_case())]
                cases += [(c, context) for c in wrong_subject_cases(context)]
                for case, on in cases:
                    subject = t.event_subject(case.event_type, case.subject_region, context=on)
                    ack = await js.publish(subject, case.data)
                    assert ack.stream == t.stream(stream)
                    if parses(subject):
                        sent[(ack.stream, ack.seq)] = case
                    else:
                        skipped += 1
                with pytest.raises(MaxPayloadError):  # over NATS's own limit: refused at the edge
                    await js.publish(t.event_subject("OrganizationFiled", COMMUNITY, context=context),
                                     b"{" + b" " * nc.max_payload + b"}")

            async def all_dead() -> bool:
                return len(dead.messages) >= len(sent)

            assert sent, f"{service}: no bad message on a subject it takes: the test would test nothing"
            await eventually(all_dead, timeout=60 + (len(sent) + skipped) / 50)

            pending: dict[str, tuple[int, int]] = {}

            async def all_acked() -> bool:  # what it does not take is not left pending either
                for stream, context in streams:
                    i = await js.consumer_info(t.stream(stream), f"{service}-{context}")
                    pending[context] = (i.num_pending, i.num_ack_pending)
                return all(p == (0, 0) for p in pending.values())

            await eventually(all_acked, timeout=30, describe=lambda: f"(pending, ack pending): {pending}")
            await asyncio.sleep(0.5)
            records = [json.loads(m.data) for m in dead.messages]

        # Every bad message, once, with a reason naming its field.
        got = {(r["stream"], r["stream_seq"]): r for r in records}
        assert len(got) == len(records) == len(sent), "a message was dead-lettered twice, or one that was not sent"
        misnamed = []
        for key, case in sent.items():
            reason = got[key]["reason"]
            if not corpus.names(corpus.fields_named(reason), case.field):
                misnamed.append(f"{case.label}: expected {case.field}, got {reason[:200]}")
        assert not misnamed, "\n".join(misnamed)
        assert all(m.headers and m.headers.get("Cso-Reason") for m in dead.messages)

        # Nothing half-applied: every table as it was; the consumers still run and take a valid event.
        assert await snapshot(settings, service) == before
        assert all(not task.done() for task in tasks)
        sentinels = []
        for stream, context in streams:
            event = sentinel(context)
            subject = t.event_subject(event.type, event.region, context=context)
            await publish(nc, subject, event)
            if (await delivered(js, settings, service, stream, context))(subject):
                sentinels.append(event.event_id)  # else skipped unparsed by notify's screen: no inbox row
        assert sentinels
        await eventually(lambda: in_inbox(settings, service, sentinels), timeout=30)
        await eventually(all_acked, timeout=30, describe=lambda: f"(pending, ack pending): {pending}")


# --- registry: facts that parse but break a rule, and text that must be stored verbatim ---------

async def test_registry_refuses_facts_that_break_a_rule_and_keeps_odd_text_verbatim(
        settings: Settings, nc: nats.NATS) -> None:
    t = settings.topology
    await asyncio.to_thread(registry_app.run_migrations, settings)
    async with running(registry_app.create_app, settings) as _:
        await publish(nc, t.event_subject("DivisionsImported", COUNTY), make_event(GUANGHAN, source="fuzz"))
        await eventually(lambda: _count(settings, "SELECT count(*) FROM registry.community", 4), timeout=30)
        org = uuid.uuid4()
        filed = make_event(ev.OrganizationFiled(organization_id=org, name="西城社区舞蹈队", community_code=COMMUNITY,
                                                category="culture_sports", filed_on=date(2023, 3, 1)), source="fuzz")
        await publish(nc, t.intake_subject(filed.source, filed.type, COMMUNITY), filed)
        await eventually(lambda: _count(settings, "SELECT count(*) FROM registry.organization", 1))
        before = await settled(settings, "registry")

        d = date(2023, 5, 1)
        breaking: list[tuple[ev.Payload, str, str]] = [
            (ev.OrganizationFiled(name="x", community_code="510681001999", category="charity", filed_on=d),
             "510681001999", "community_code"),
            (ev.OrganizationFiled(organization_id=org, name="again", community_code=COMMUNITY, category="charity",
                                  filed_on=d), COMMUNITY, "organization_id"),
            (ev.OrganizationUpdated(organization_id=org, effective_on=date(2000, 1, 1), brand=True),
             COMMUNITY, "effective_on"),
            (ev.HubEstablished(organization_id=org, region_code="510681002", established_on=d),
             "510681002", "region_code"),
            (ev.IncubationBaseOpened(name="base", region_code=COUNTY, covered_townships=["510681999"], opened_on=d),
             COUNTY, "covered_townships"),
            (ev.OrganizationDeregistered(organization_id=org, reason="r", ended_on=d), "510681002010", "region"),
            (ev.TrainingCompleted(session_id=uuid.uuid4(), person_id=uuid.uuid4(), organizer_region=COUNTY,
                                  county_code=COUNTY, completed_on=d), COUNTY, "type"),
            # (A fact whose predecessor is not known yet waits in registry's waiting room instead:
            # tests/integration/test_intake_verdicts.py.)
        ]
        odd = {uuid.uuid4(): name for name in corpus.ODD_BUT_VALID}
        async with recording(nc, t.deadletter_subject("registry"), t.stream("CSO_DEADLETTER")) as dead:
            expected = {}
            for payload, region, field in breaking:
                event = make_event(payload, source="fuzz", region=region)
                await publish(nc, t.intake_subject(event.source, event.type, region), event)
                # Named by the field's path in the event, whether the contract or the record refuses it.
                expected[str(event.event_id)] = event_field(field)

            async def all_dead() -> bool:
                return len(dead.messages) >= len(expected)

            await eventually(all_dead, timeout=60)
            reasons = {json.loads(m.data)["event_id"]: json.loads(m.data)["reason"] for m in dead.messages}
        assert reasons.keys() == expected.keys()
        for event_id, field in expected.items():
            assert corpus.names(corpus.fields_named(reasons[event_id]), field), (field, reasons[event_id])
        assert await snapshot(settings, "registry") == before

        for org_id, name in odd.items():
            fact = make_event(ev.OrganizationFiled(organization_id=org_id, name=name, community_code=COMMUNITY,
                                                   category="charity", filing_number=name[:64], filed_on=d),
                              source="fuzz")
            await publish(nc, t.intake_subject(fact.source, fact.type, COMMUNITY), fact)
        await eventually(lambda: _count(settings, "SELECT count(*) FROM registry.organization", 1 + len(odd)),
                         timeout=30)
        stored = {r["id"]: (r["name"], r["filing_number"]) for r in await db_fetch(
            settings, "SELECT id, name, filing_number FROM registry.organization WHERE id = ANY($1::uuid[])",
            list(odd))}
        assert stored == {i: (n, n[:64]) for i, n in odd.items()}
        assert await _count(settings, "SELECT count(*) FROM registry.community", 4)
        # The accepted events carry the text as it came, too.
        out = await db_fetch(settings, "SELECT data FROM registry.outbox WHERE aggregate_id = ANY($1::text[])",
                            [str(i) for i in odd])
        assert {json.loads(bytes(r["data"]))["payload"]["name"] for r in out} == set(odd.values())


async def _count(settings: Settings, sql: str, n: int) -> bool:
    rows = await db_fetch(settings, sql)
    return bool(rows[0][0] == n)



# --- request-reply: commands and queries over core NATS ---------------------------------------------

REQUESTS: dict[str, list[str]] = {
    "registry": [f"cmd.registry.{name}" for name in ("file", "register", "update", "establish_hub", "open_base",
                                                      "form_party", "nonsense")],
    "training": [f"cmd.training.{name}" for name in ("add_member", "schedule", "record_exam", "attendance_sheet",
                                                      "nonsense")],
    "targets": [f"query.targets.{name}" for name in ("coverage", "targets", "at_risk", "series", "nonsense")]
    + [f"query.targets.plan.{name}" for name in ("plans", "ledger", "task", "todo", "nonsense")],
}
QUERY_BODIES = [json.dumps(q).encode() for q in (
    {"region": "５１"}, {"region": "\x00"}, {"region": 510681}, {"region": ["51"]}, {"region": "51" * 1000},
    {"region": COUNTY, "as_of": "9999-99-99"}, {"region": COUNTY, "figure": "{{7*7}}"}, {"plan": "'; --"},
    {"plan": "x", "task": {"a": 1}}, {"unit": "\ud800"}, {"view": 5})]


@pytest.mark.parametrize("service", list(REQUESTS))
async def test_requests_over_nats_get_a_refusal_naming_the_field(service: str, settings: Settings,
                                                                 nc: nats.NATS) -> None:
    create_app, migrate, _ = SERVICES[service]
    t = settings.topology
    await asyncio.to_thread(migrate, settings)
    async with running(create_app, settings) as _:
        divisions = make_event(GUANGHAN, source="fuzz")
        await publish(nc, t.event_subject("DivisionsImported", COUNTY), divisions)
        await eventually(lambda: in_inbox(settings, service, [divisions.event_id]), timeout=30)
        bodies = [data for _, data, _ in corpus.RAW_GARBAGE if len(data) < nc.max_payload - 1024]
        bodies += [c.data for c in corpus.draw(corpus.random_garbage_case(), corpus.EXAMPLES)]
        if service == "targets":
            bodies += QUERY_BODIES
        silent, unnamed = [], []
        for suffix in REQUESTS[service]:
            subject = f"{t.namespace}.cso.{suffix}"
            for body in bodies:
                for headers in ({}, {"Cso-Source": "bad source! \x1b"}):
                    try:
                        reply = await nc.request(subject, body, timeout=5, headers=headers or None)
                    except nats.errors.TimeoutError:
                        silent.append(f"{suffix} {headers} {body[:60]!r}")
                        assert len(silent) < 3, f"no reply (a handler raised): {silent}"
                        continue
                    answer = json.loads(reply.data)
                    errors = answer.get("errors") if isinstance(answer, dict) else None
                    if errors is not None and not all(e.get("field") for e in errors):
                        unnamed.append(f"{suffix} {body[:60]!r}: {reply.data[:200]!r}")
        assert not silent, f"no reply (a handler raised): {silent}"
        assert not unnamed, "\n".join(unnamed)
        # And a valid request is still answered.
        valid = {"registry": ("cmd.registry.file", {"name": "有效", "community_code": COMMUNITY,
                                                    "category": "charity", "filed_on": "2023-03-01"}),
                 "training": ("cmd.training.add_member", {"county_code": COUNTY, "role": "volunteer",
                                                          "name": "李四", "phone": "13900139000"}),
                 "targets": ("query.targets.coverage", {"region": COUNTY})}[service]
        reply = json.loads((await nc.request(f"{t.namespace}.cso.{valid[0]}", json.dumps(valid[1]).encode(),
                                             timeout=10)).data)
        assert "errors" not in reply and reply.get("ok", True), reply
