"""The outbox survives a crash between publish and commit: a registry process dies right after
JetStream acknowledged its events but before it marked them published; the restarted process
publishes them again, and JetStream's duplicate window (Nats-Msg-Id = event id) keeps exactly one."""

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

from cso.settings import Settings
from cso_local.servers import free_port
from services.registry.app import run_migrations
from tests.support import eventually, publish_divisions

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
        row = await db.fetchrow("SELECT published_at FROM registry.outbox WHERE event_id = $1",
                                uuid.UUID(str(reply["event_id"])))
        assert row is not None and row["published_at"] is None, "the crash came before the commit"
        js = nc.jetstream()
        stream = t.stream("CSO_REGISTRY")
        assert (await js.stream_info(stream)).state.messages == 1, "JetStream had the event before the crash"
        with registry_process(settings, crash=False) as (_, url):
            await eventually(lambda: ready(url), timeout=30)

            async def marked() -> bool:
                return await db.fetchval("SELECT count(*) FROM registry.outbox WHERE published_at IS NULL") == 0

            await eventually(marked, timeout=20)
        info = await js.stream_info(stream)
        assert info.state.messages == 1, "published again, but kept once"
        seq = await db.fetchval("SELECT stream_seq FROM registry.outbox WHERE event_id = $1",
                                uuid.UUID(str(reply["event_id"])))
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
        await db.execute(
            "INSERT INTO registry.outbox (event_id, subject, type, data, published_at) VALUES "
            "(gen_random_uuid(), 's', 'T', '', now() - interval '40 days'), "
            "(gen_random_uuid(), 's', 'T', '', now() - interval '1 day'), "
            "(gen_random_uuid(), 's', 'T', '', NULL)")
        relay = Relay(engine, None, "registry", "registry", retention=timedelta(days=30))  # type: ignore[arg-type]
        assert await relay.purge() == 1
        assert await db.fetchval("SELECT count(*) FROM registry.outbox") == 2
    finally:
        await db.close()
        await engine.dispose()
