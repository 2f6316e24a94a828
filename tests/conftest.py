"""Real servers for the tests: the URLs in CSO_DATABASE_URL / CSO_NATS_URL where set, else
testcontainers where a Docker engine answers, else nats-server and PostgreSQL from their PyPI wheels.

Each test gets its own database and its own NATS namespace (streams and subjects), so tests can
run in parallel against one pair of servers.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest

from cso.settings import Settings
from tests.support import fresh_database, make_streams

# cso.service.tune_garbage_collector freezes the process's objects at the first service start: in
# this one process of many services that would keep every earlier test's objects for good.
os.environ.setdefault("CSO_TUNE_GC", "0")
# HTTP tokens are on by default (CSO_AUTH=jwt, cso/auth.py); most tests call the services without
# one, so the test process asks for CSO_AUTH=off. Tests of tokens set auth="jwt" in their Settings;
# tests of the default itself take CSO_AUTH out of the environment (monkeypatch.delenv).
os.environ.setdefault("CSO_AUTH", "off")


def _admin_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


@pytest.fixture(scope="session")
def servers_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="cso-test-") as d:
        path = Path(d)
        path.chmod(0o755)
        yield path


@pytest.fixture(scope="session")
def nats_url(servers_dir: Path) -> Iterator[str]:
    if url := os.environ.get("CSO_NATS_URL"):
        yield url
        return
    from cso_local import servers

    if servers.docker_answers():
        from testcontainers.nats import NatsContainer

        with NatsContainer(image="nats:2.11", jetstream=True) as container:  # type: ignore[call-arg]
            yield container.nats_uri()
        return
    handle = servers.start_nats(servers_dir / "nats")
    try:
        yield handle.url
    finally:
        servers.stop(handle)


@pytest.fixture(scope="session")
def postgres_url(servers_dir: Path) -> Iterator[str]:
    if url := os.environ.get("CSO_DATABASE_URL"):
        yield _admin_dsn(url)
        return
    from cso_local import servers

    if servers.docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16", driver=None) as container:
            yield container.get_connection_url()
        return
    handle = servers.start_postgres(servers_dir / "postgres")
    try:
        yield handle.url
    finally:
        servers.stop(handle)


@pytest.fixture
async def database_url(postgres_url: str) -> AsyncIterator[str]:
    """A database of its own for one test, dropped after it."""
    async with fresh_database(postgres_url) as url:
        yield url


@pytest.fixture
async def settings(database_url: str, nats_url: str) -> AsyncIterator[Settings]:
    namespace = f"t{uuid.uuid4().hex[:10]}"
    made = Settings(database_url=database_url, nats_url=nats_url, namespace=namespace, max_deliver=3)
    # The operator's step: services wait for their streams, they do not create them.
    await make_streams(made)
    yield made
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        for info in await js.streams_info():
            if info.config.name and info.config.name.startswith(namespace.upper() + "_"):
                await js.delete_stream(info.config.name)
    finally:
        await nc.close()


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[nats.NATS]:
    client = await nats.connect(nats_url)
    yield client
    await client.close()
