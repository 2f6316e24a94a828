"""cso.pull against a real nats-server: one request a batch, no lingering, errors surface."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client as NATS
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from cso.pull import Pull, PullFailed

pytestmark = pytest.mark.integration


@pytest.fixture
async def stream(nc: NATS) -> AsyncIterator[str]:
    name = f"PULL{uuid.uuid4().hex[:8].upper()}"
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=name, subjects=[f"{name.lower()}.>"]))
    await js.add_consumer(name, ConsumerConfig(durable_name="d", ack_policy=AckPolicy.EXPLICIT))
    yield name
    await js.delete_stream(name)


async def publish(nc: NATS, stream: str, n: int, start: int = 0) -> None:
    js = nc.jetstream()
    for i in range(start, start + n):
        await js.publish(f"{stream.lower()}.x", str(i).encode())


async def test_what_is_pending_comes_at_once_in_batches(nc: NATS, stream: str) -> None:
    await publish(nc, stream, 7)
    pull = Pull(nc, stream, "d")
    await pull.start()
    try:
        began = time.monotonic()
        first = await pull.next(5, wait=3.0)
        second = await pull.next(5, wait=3.0)
        # Neither waited for its expiry: a full batch ends the request, and so does the server's
        # "nothing more pending".
        assert time.monotonic() - began < 1.5
        assert [m.data for m in first + second] == [str(i).encode() for i in range(7)]
        assert len(first) == 5
        for m in first + second:
            await m.ack()
        assert second[-1].metadata.num_pending == 0
    finally:
        await pull.stop()


async def test_waits_for_the_first_then_returns(nc: NATS, stream: str) -> None:
    pull = Pull(nc, stream, "d")
    await pull.start()
    try:
        began = time.monotonic()
        assert await pull.next(10, wait=0.5) == []  # nothing: the request expired
        assert 0.4 < time.monotonic() - began < 1.4
        later = asyncio.get_running_loop().call_later(0.3, lambda: asyncio.ensure_future(publish(nc, stream, 1)))
        began = time.monotonic()
        got = await pull.next(10, wait=3.0)
        later.cancel()
        assert [m.data for m in got] == [b"0"]
        assert time.monotonic() - began < 1.5  # returned on its arrival, not at the expiry
    finally:
        await pull.stop()


async def test_a_consumer_that_is_gone_is_an_error(nc: NATS, stream: str) -> None:
    pull = Pull(nc, stream, "d")
    await pull.start()
    try:
        await nc.jetstream().delete_consumer(stream, "d")
        with pytest.raises(PullFailed, match=r"pull from \S+: (503|404|409)"):
            await pull.next(10, wait=0.5)
    finally:
        await pull.stop()


async def test_a_stopped_pull_strands_nothing(nc: NATS, stream: str) -> None:
    await publish(nc, stream, 3)
    pull = Pull(nc, stream, "d")
    await pull.start()
    got = await pull.next(1, wait=1.0)
    assert [m.data for m in got] == [b"0"]
    await got[0].ack()
    await pull.stop()
    # Nothing of the stopped pull is held anywhere: a new one gets the rest at once (ack_wait is
    # 30 s, so anything stranded would not be back within this test).
    again = Pull(nc, stream, "d")
    await again.start()
    try:
        rest = await again.next(10, wait=1.0)
        assert [m.data for m in rest] == [b"1", b"2"]
    finally:
        await again.stop()
