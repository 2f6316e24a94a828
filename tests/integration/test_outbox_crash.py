"""The outbox survives a crash between publish and commit: a registry process dies right after
JetStream acknowledged its events but before its relay recorded its new position; the restarted
process publishes them again, and JetStream's duplicate window (Nats-Msg-Id = event id) keeps
exactly one. And the relay's position never passes a row that commits late (cso/outbox.py)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg
import httpx
import nats
import pytest

from cso.outbox import count_pending, pending
from cso.settings import Settings
from cso_local.servers import free_port
from services.registry.app import run_migrations
from tests.support import eventually, publish_divisions
from tests.support.jetstream import AckingJetStream

pytestmark = pytest.mark.integration


@contextmanager
def registry_process(settings: Settings, crash: bool) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    env = os.environ | {"CSO_DATABASE_URL": settings.database_url, "CSO_NATS_URL": settings.nats_url,
                        "CSO_NAMESPACE": settings.namespace,
                        "CSO_FAULT_CRASH_AFTER_PUBLISH": "1" if crash else "0"}
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "services.registry.app:create_app",
                             "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"], env=env)
    try:
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


async def ready(url: str) -> bool:
    try:
        async with httpx.AsyncClient() as client:
            return (await client.get(url + "/readyz", timeout=1)).status_code == 200
    except httpx.HTTPError:
        return False


async def test_crash_between_publish_and_commit_publishes_once(settings: Settings, nc: nats.NATS) -> None:
    await asyncio.to_thread(run_migrations, settings)
    t = settings.topology
    with registry_process(settings, crash=True) as (proc, url):
        await eventually(lambda: ready(url), timeout=30)
        await publish_divisions(nc, t)
        body = {"name": "西城社区舞蹈队", "community_code": "510681001014", "category": "culture_sports",
                "filed_on": "2024-03-01"}

        async def filed() -> dict[str, object] | None:
            reply = json.loads((await nc.request(t.command_subject("registry", "file"),
                                                 json.dumps(body).encode(), timeout=5)).data)
            return reply if reply.get("ok") else None

        reply = await eventually(filed, timeout=20, interval=0.5)
        await asyncio.to_thread(proc.wait, 30)
        assert proc.returncode == 137
    db = await asyncpg.connect(settings.database_url)
    try:
        row = await db.fetchrow(f"SELECT {pending('registry', alias='o')} AS pending FROM registry.outbox o "
                                "WHERE event_id = $1", uuid.UUID(str(reply["event_id"])))
        assert row is not None and row["pending"], "the crash came before the commit"
        js = nc.jetstream()
        stream = t.stream("CSO_REGISTRY")
        assert (await js.stream_info(stream)).state.messages == 1, "JetStream had the event before the crash"
        with registry_process(settings, crash=False) as (_, url):
            await eventually(lambda: ready(url), timeout=30)

            async def marked() -> bool:
                return await db.fetchval(count_pending("registry")) == 0

            await eventually(marked, timeout=20)
        info = await js.stream_info(stream)
        assert info.state.messages == 1, "published again, but kept once"
        seq = await db.fetchval("SELECT last_seq FROM registry.outbox_stream WHERE outbox = 'outbox' "
                                "AND stream = $1", stream)
        assert seq == 1
    finally:
        await db.close()


async def test_purge_drops_only_published_rows_past_retention(settings: Settings) -> None:
    from datetime import timedelta

    from cso.database import make_engine
    from cso.outbox import Relay

    await asyncio.to_thread(run_migrations, settings)
    engine = make_engine(settings.database_url)
    db = await asyncpg.connect(settings.database_url)
    try:
        # Made 40 days ago and published; made a day ago and published; made 40 days ago, not
        # published yet (its relay's position is below it).
        made = await db.fetch(
            "INSERT INTO registry.outbox (event_id, subject, type, data, created_at) VALUES "
            "(gen_random_uuid(), 's', 'T', '', now() - interval '40 days'), "
            "(gen_random_uuid(), 's', 'T', '', now() - interval '1 day'), "
            "(gen_random_uuid(), 's', 'T', '', now() - interval '40 days') RETURNING seq")
        await db.execute("UPDATE registry.outbox_relay SET seq = $1 WHERE outbox = 'outbox'", made[1]["seq"])
        relay = Relay(engine, None, "registry", "registry", retention=timedelta(days=30))  # type: ignore[arg-type]
        assert await relay.purge() == 1
        assert await db.fetchval("SELECT count(*) FROM registry.outbox") == 2
        assert await db.fetchval(count_pending("registry")) == 1
    finally:
        await db.close()
        await engine.dispose()


@pytest.mark.parametrize("first_xid", ["late", "early"])
async def test_a_row_committed_late_is_published(settings: Settings, first_xid: str) -> None:
    """Two transactions write the outbox; the one that took the lower seq commits last, and the
    relay publishes in between. Its position must not pass the late row: it is published once it
    commits, before the other (seq order), and nothing twice. `first_xid`: which of the two took
    its transaction id first (the relay must not care)."""
    from cso.database import make_engine
    from cso.outbox import Relay

    await asyncio.to_thread(run_migrations, settings)
    engine = make_engine(settings.database_url)
    late, early = await asyncpg.connect(settings.database_url), await asyncpg.connect(settings.database_url)
    insert = "INSERT INTO registry.outbox (event_id, subject, type, data) VALUES ($1, 's', 'T', '') RETURNING seq"
    late_id, early_id = uuid.uuid4(), uuid.uuid4()
    bus = AckingJetStream()
    relay = Relay(engine, bus, "registry", "registry")  # type: ignore[arg-type]
    try:
        late_tx, early_tx = late.transaction(), early.transaction()
        await late_tx.start()
        await early_tx.start()
        for conn in (late, early) if first_xid == "late" else (early, late):
            await conn.fetchval("SELECT pg_current_xact_id()")   # takes its transaction id now
        assert await late.fetchval(insert, late_id) < await early.fetchval(insert, early_id)
        await early_tx.commit()
        # The relay's turns while the late transaction is open: it probes the hole, and the probe
        # cannot settle while the late transaction runs.
        for _ in range(20):
            await relay.publish_pending()
            await asyncio.sleep(0.05)
        assert bus.sent == [], bus.sent
        await late_tx.commit()

        async def published() -> bool:
            await relay.publish_pending()
            return len(bus.sent) >= 2

        await eventually(published, timeout=30, describe=lambda: bus.sent)
        assert bus.sent == [str(late_id), str(early_id)], "each once, in seq order"
        assert await late.fetchval(count_pending("registry")) == 0
    finally:
        await late.close()
        await early.close()
        await engine.dispose()


async def test_a_hole_rolled_back_is_passed(settings: Settings) -> None:
    """A transaction that took a seq and rolled back leaves a hole that never fills: once the
    transactions running at the relay's probe have ended, the relay goes on past it."""
    from cso.database import make_engine
    from cso.outbox import Relay

    await asyncio.to_thread(run_migrations, settings)
    engine = make_engine(settings.database_url)
    db = await asyncpg.connect(settings.database_url)
    insert = "INSERT INTO registry.outbox (event_id, subject, type, data) VALUES ($1, 's', 'T', '') RETURNING seq"
    kept = uuid.uuid4()
    bus = AckingJetStream()
    relay = Relay(engine, bus, "registry", "registry")  # type: ignore[arg-type]
    try:
        tx = db.transaction()
        await tx.start()
        hole = await db.fetchval(insert, uuid.uuid4())
        await tx.rollback()
        assert await db.fetchval(insert, kept) == hole + 1

        async def published() -> bool:
            await relay.publish_pending()
            return bool(bus.sent)

        await eventually(published, timeout=30, describe=lambda: bus.sent)
        assert bus.sent == [str(kept)]
        assert await db.fetchval(count_pending("registry")) == 0
    finally:
        await db.close()
        await engine.dispose()


async def test_staging_a_published_id_again_leaves_no_hole(settings: Settings) -> None:
    """An event id staged again (a command retried, a message redelivered) draws no seq: the next
    row follows the last without a hole and the relay publishes it at once, without a probe (a hole
    would wait for every transaction of the server running at the probe, review finding 6)."""
    from cso.database import make_engine
    from cso.outbox import HOLE_WAIT, Relay, add_messages

    await asyncio.to_thread(run_migrations, settings)
    engine = make_engine(settings.database_url)
    bus = AckingJetStream()
    relay = Relay(engine, bus, "registry", "registry")  # type: ignore[arg-type]
    first, second = uuid.uuid4(), uuid.uuid4()

    async def stage(event_id: uuid.UUID) -> None:
        async with engine.begin() as conn:
            await add_messages(conn, "registry", [(event_id, "s", "T", None, b"")])

    try:
        await stage(first)
        assert await relay.publish_pending() == 1
        await stage(first)
        await stage(second)
        assert await relay.publish_pending() == 1
        assert bus.sent == [str(first), str(second)]
        assert HOLE_WAIT.labels("registry", "outbox")._value.get() == 0
    finally:
        await engine.dispose()


async def test_a_refused_publish_keeps_the_position(settings: Settings, nc: nats.NATS) -> None:
    """On the real JetStream: a batch in which one row's subject no stream takes raises that
    refusal, and the relay's position stays below the batch. Once a stream takes the subject, the
    next turn publishes the whole batch again and JetStream keeps each event once (the rows before
    the refused one went out the first time, and are dropped as copies by Nats-Msg-Id)."""
    from nats.js.errors import NoStreamResponseError

    from cso.database import make_engine
    from cso.outbox import Relay, add_messages

    await asyncio.to_thread(run_migrations, settings)
    js = nc.jetstream()
    root = f"relaytest{uuid.uuid4().hex[:8]}"
    stream = root.upper()
    await js.add_stream(name=stream, subjects=[f"{root}.ok.>"])
    engine = make_engine(settings.database_url)
    relay = Relay(engine, js, "registry", "registry")
    ids = [uuid.uuid4() for _ in range(3)]
    try:
        async with engine.begin() as conn:
            await add_messages(conn, "registry", [
                (ids[0], f"{root}.ok.a", "T", None, b"1"),
                (ids[1], f"{root}.refused.b", "T", None, b"2"),
                (ids[2], f"{root}.ok.c", "T", None, b"3")])
        with pytest.raises(NoStreamResponseError):
            await relay.publish_pending()
        db = await asyncpg.connect(settings.database_url)
        try:
            assert await db.fetchval(count_pending("registry")) == 3, "the position passed a refused row"
        finally:
            await db.close()
        await js.update_stream(name=stream, subjects=[f"{root}.ok.>", f"{root}.refused.>"])
        assert await relay.publish_pending() == 3
        info = await js.stream_info(stream)
        assert info.state.messages == 3, "each event kept once"
        held = [(await js.get_msg(stream, seq)).headers or {} for seq in range(1, 4)]
        assert sorted(h["Nats-Msg-Id"] for h in held) == sorted(str(i) for i in ids)
    finally:
        await js.delete_stream(stream)
        await engine.dispose()


async def test_backlog_counts_rows_up_to_its_cap(settings: Settings) -> None:
    """cso_outbox_backlog counts the rows waiting, not the seqs: a seq rolled back between two
    pending rows is no event (the last seq less the position said 3 here). Past BACKLOG_CAP rows it
    says BACKLOG_CAP ("more than 1000"), which is what the alerts compare with."""
    from cso.database import make_engine
    from cso.outbox import BACKLOG, BACKLOG_CAP, Relay

    await asyncio.to_thread(run_migrations, settings)
    engine = make_engine(settings.database_url)
    db = await asyncpg.connect(settings.database_url)
    insert = "INSERT INTO registry.outbox (event_id, subject, type, data) VALUES ($1, 's', 'T', '') RETURNING seq"
    relay = Relay(engine, AckingJetStream(), "registry", "registry")  # type: ignore[arg-type]
    try:
        first = await db.fetchval(insert, uuid.uuid4())
        tx = db.transaction()
        await tx.start()
        hole = await db.fetchval(insert, uuid.uuid4())
        await tx.rollback()
        assert await db.fetchval(insert, uuid.uuid4()) == hole + 1 == first + 2
        assert await relay.backlog() == 2
        assert BACKLOG.labels("registry")._value.get() == 2
        await db.execute("INSERT INTO registry.outbox (event_id, subject, type, data) "
                         "SELECT gen_random_uuid(), 's', 'T', '' FROM generate_series(1, 1100)")
        assert BACKLOG_CAP == 1001
        assert await relay.backlog() == BACKLOG_CAP
        assert BACKLOG.labels("registry")._value.get() == BACKLOG_CAP
    finally:
        await db.close()
        await engine.dispose()


async def test_a_busy_relay_counts_its_backlog_once_a_second(settings: Settings,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The backlog is counted at most every BACKLOG_SECONDS while the relay publishes (a count after
    every drained round cost registry 6.6 ms of PostgreSQL a time on a backfill), while the bus is
    away (the alerts must see the rows pile up), and at once when the relay has drained."""
    from cso import outbox
    from cso.database import make_engine
    from cso.outbox import BACKLOG, BACKLOG_SECONDS, Relay

    await asyncio.to_thread(run_migrations, settings)
    engine = make_engine(settings.database_url)
    db = await asyncpg.connect(settings.database_url)
    js = AckingJetStream()
    relay = Relay(engine, js, "registry", "registry", batch=10, poll_seconds=0.2)  # type: ignore[arg-type]
    counts = 0
    count = relay.backlog

    async def counted() -> int:
        nonlocal counts
        counts += 1
        return await count()

    async def drained(n: int) -> bool:
        return bool(BACKLOG.labels("registry")._value.get() == 0 and len(js.sent) == n)

    async def commit(rows: int = 1) -> None:
        await db.execute("INSERT INTO registry.outbox (event_id, subject, type, data) "
                         "SELECT gen_random_uuid(), 's', 'T', '' FROM generate_series(1, $1)", rows)
        relay.wake.set()

    class Away:
        async def publish_async(self, *args: object, **kwargs: object) -> None:
            raise OSError("the bus is away")

    relay.backlog = counted  # type: ignore[method-assign]
    try:
        await commit(5)
        relay.start()
        await eventually(lambda: drained(5), timeout=10)
        counts = 0
        loop = asyncio.get_running_loop()
        began = loop.time()
        while loop.time() - began < 2 * BACKLOG_SECONDS:   # a commit every 10 ms, each waking the relay
            await commit()
            await asyncio.sleep(0.01)
        busy, sent = counts, len(js.sent)
        assert sent > 5 + 50, "the relay published in many rounds"
        # A count a second, and one when a stall (a slow round) let the relay drain for a moment:
        # not one a round.
        assert 1 <= busy <= 12, f"{busy} backlog counts in {sent - 5} events over 2 s"
        await eventually(lambda: drained(sent), timeout=2)
        # The bus away: every publish fails, and the gauge shows the rows waiting.
        relay.js = Away()  # type: ignore[assignment]
        await commit(3)
        await eventually(lambda: asyncio.sleep(0, BACKLOG.labels("registry")._value.get() == 3), timeout=5)
        # Back, and drained: the gauge says 0 at once, however long since the last count.
        relay.js = js  # type: ignore[assignment]
        monkeypatch.setattr(outbox, "BACKLOG_SECONDS", 3600.0)
        BACKLOG.labels("registry").set(7)
        await commit()
        await eventually(lambda: drained(sent + 4), timeout=2)
    finally:
        await relay.stop()
        await db.close()
        await engine.dispose()
