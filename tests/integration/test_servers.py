"""Real nats-server and PostgreSQL from the venv's wheels: start, reuse, restart, crash."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import nats
import pytest

from cso_local import servers
from cso_local.servers import Kind, ServerHandle

pytestmark = pytest.mark.integration


@pytest.fixture
def cleanup() -> Iterator[list[tuple[Path, Kind]]]:
    """Data dirs a test started servers in; whatever still runs there is stopped afterwards."""
    started: list[tuple[Path, Kind]] = []
    yield started
    for data_dir, kind in started:
        handle = servers.running(data_dir, kind)
        if handle is not None:
            servers.stop(handle)
        assert servers.running(data_dir, kind) is None


def _jsz(handle: ServerHandle) -> dict[str, object]:
    assert handle.monitor_url is not None
    # No proxy: an http_proxy in the environment must not see 127.0.0.1.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"{handle.monitor_url}/jsz", timeout=5) as resp:
        body: dict[str, object] = json.loads(resp.read())
    return body


async def test_nats_jetstream_survives_restart(
    tmp_path: Path, cleanup: list[tuple[Path, Kind]]
) -> None:
    data_dir = tmp_path / "nats"
    cleanup.append((data_dir, "nats"))

    handle = await asyncio.to_thread(servers.start_nats, data_dir)
    assert handle.kind == "nats"
    assert handle.url.startswith("nats://127.0.0.1:")
    assert servers.answers(handle.url)
    assert servers.running(data_dir, "nats") == handle
    again = await asyncio.to_thread(servers.start_nats, data_dir)
    assert again.pid == handle.pid
    state = json.loads((data_dir / "server.json").read_text())
    assert state["pid"] == handle.pid and state["kind"] == "nats"

    nc = await nats.connect(handle.url)
    try:
        assert nc.connected_server_version.major == 2
        assert nc.connected_server_version.minor >= 10  # not Debian's 2.9
        js = nc.jetstream()
        await js.add_stream(name="T", subjects=["t.>"])
        ack = await js.publish("t.a", b"hello")
        assert ack.seq == 1
    finally:
        await nc.close()
    assert _jsz(handle)["streams"] == 1

    await asyncio.to_thread(servers.stop, handle)
    assert servers.running(data_dir, "nats") is None
    assert not servers.answers(handle.url)

    restarted = await asyncio.to_thread(servers.start_nats, data_dir)
    assert restarted.pid != handle.pid
    assert restarted.url == handle.url  # port reused, so clients reconnect by URL
    nc = await nats.connect(restarted.url)
    try:
        js = nc.jetstream()
        info = await js.stream_info("T")
        assert info.state.messages == 1
        msg = await js.get_msg("T", seq=1)
        assert msg.data == b"hello"
    finally:
        await nc.close()


async def test_postgres_table_survives_restart(
    tmp_path: Path, cleanup: list[tuple[Path, Kind]]
) -> None:
    data_dir = tmp_path / "pg"
    cleanup.append((data_dir, "postgres"))

    handle = await asyncio.to_thread(servers.start_postgres, data_dir)
    assert handle.kind == "postgres"
    assert handle.monitor_url is None
    assert handle.url.startswith("postgresql://postgres@127.0.0.1:")
    assert servers.running(data_dir, "postgres") == handle
    again = await asyncio.to_thread(servers.start_postgres, data_dir)
    assert again.pid == handle.pid

    conn = await asyncpg.connect(handle.url)
    try:
        assert await conn.fetchval("SHOW max_connections") == "200"
        await conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        await conn.execute("INSERT INTO t VALUES (1, 'kept')")
    finally:
        await conn.close()

    await asyncio.to_thread(servers.stop, handle)
    assert servers.running(data_dir, "postgres") is None
    assert not servers.answers(handle.url)

    restarted = await asyncio.to_thread(servers.start_postgres, data_dir)
    assert restarted.pid != handle.pid
    assert restarted.url == handle.url
    conn = await asyncpg.connect(restarted.url)
    try:
        assert await conn.fetchval("SELECT v FROM t WHERE id = 1") == "kept"
    finally:
        await conn.close()


async def test_postgres_takes_settings_sized_to_the_machine(
    tmp_path: Path, cleanup: list[tuple[Path, Kind]]
) -> None:
    data_dir = tmp_path / "pg"
    cleanup.append((data_dir, "postgres"))
    sized = servers.postgres_sizing(2 * 2**30)
    assert sized["shared_buffers"] == "512MB" and sized["max_wal_size"] == "16GB"
    handle = await asyncio.to_thread(servers.start_postgres, data_dir, settings=sized)
    conn = await asyncpg.connect(handle.url)
    try:
        assert await conn.fetchval("SHOW shared_buffers") == "512MB"
        assert await conn.fetchval("SHOW max_wal_size") == "16GB"
        assert await conn.fetchval("SHOW checkpoint_timeout") == "30min"
        assert await conn.fetchval("SHOW max_connections") == "200"
    finally:
        await conn.close()


def test_postgres_refuses_a_setting_the_shell_would_split(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="shared_buffers"):
        servers.start_postgres(tmp_path / "pg", settings={"shared_buffers": "1GB -c fsync=off"})
    assert not (tmp_path / "pg").exists()  # refused before anything was made or started


async def test_crash_and_restart_keeps_committed_data(
    tmp_path: Path, cleanup: list[tuple[Path, Kind]]
) -> None:
    pg_dir, nats_dir = tmp_path / "pg", tmp_path / "nats"
    cleanup += [(pg_dir, "postgres"), (nats_dir, "nats")]
    pg, ns = await asyncio.gather(
        asyncio.to_thread(servers.start_postgres, pg_dir),
        asyncio.to_thread(servers.start_nats, nats_dir),
    )

    conn = await asyncpg.connect(pg.url)
    try:
        await conn.execute("CREATE TABLE t (id int)")
        await conn.execute("INSERT INTO t VALUES (7)")
    finally:
        await conn.close(timeout=1)

    servers.kill(pg)
    servers.kill(ns)
    assert servers.running(pg_dir, "postgres") is None
    assert servers.running(nats_dir, "nats") is None

    pg2 = await asyncio.to_thread(servers.start_postgres, pg_dir)
    ns2 = await asyncio.to_thread(servers.start_nats, nats_dir)
    assert (pg2.url, ns2.url) == (pg.url, ns.url)
    conn = await asyncpg.connect(pg2.url)
    try:
        assert await conn.fetchval("SELECT id FROM t") == 7
    finally:
        await conn.close()
    nc = await nats.connect(ns2.url)
    await nc.close()


async def test_postgres_ignores_ancestor_permissions(
    tmp_path: Path, cleanup: list[tuple[Path, Kind]]
) -> None:
    """Another pytest session strips group/other bits from the shared /tmp/pytest-of-<user>
    whenever it starts; an ancestor clamped to 0700 all along must not matter."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    data_dir = private / "pg"
    cleanup.append((data_dir, "postgres"))
    done = threading.Event()

    def clamp() -> None:
        while not done.is_set():
            mode = stat.S_IMODE(private.stat().st_mode)
            if mode & 0o077:
                private.chmod(mode & ~0o077)
            time.sleep(0.002)

    clamper = threading.Thread(target=clamp, daemon=True)
    clamper.start()
    try:
        handle = await asyncio.to_thread(servers.start_postgres, data_dir)
        await asyncio.to_thread(servers.stop, handle)
        handle = await asyncio.to_thread(servers.start_postgres, data_dir)
        conn = await asyncpg.connect(handle.url)
        try:
            await conn.execute("CREATE TABLE t (id int)")
            await conn.execute("INSERT INTO t VALUES (3)")
        finally:
            await conn.close()
        servers.kill(handle)
        handle = await asyncio.to_thread(servers.start_postgres, data_dir)
        conn = await asyncpg.connect(handle.url)
        try:
            assert await conn.fetchval("SELECT id FROM t") == 3
        finally:
            await conn.close()
    finally:
        done.set()
        clamper.join()
    assert stat.S_IMODE(private.stat().st_mode) == 0o700


def test_running_is_none_without_a_server(tmp_path: Path) -> None:
    assert servers.running(tmp_path, "nats") is None
    assert servers.running(tmp_path, "postgres") is None


def test_answers_is_false_on_a_closed_port() -> None:
    assert not servers.answers(f"nats://127.0.0.1:{servers.free_port()}", timeout=0.5)
    assert not servers.answers(f"postgresql://x@127.0.0.1:{servers.free_port()}/db")


@pytest.mark.skipif(
    os.path.exists("/var/run/docker.sock") or "DOCKER_HOST" in os.environ,
    reason="a Docker engine may be configured here",
)
def test_docker_answers_false_without_engine() -> None:
    began = time.monotonic()
    assert servers.docker_answers() is False
    assert time.monotonic() - began < 5
