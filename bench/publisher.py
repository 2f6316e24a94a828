"""The outside publisher: plain nats-py, as another government system would publish its facts.

Registry facts go to registry's intake subjects, training facts straight onto training's subjects,
each with `Nats-Msg-Id` = event id. Acks are awaited in windows: at most two windows of futures are
in flight, so the server sets the pace and the client never holds more than that.

The backfill's publisher runs in a process of its own (`outside_process`), in a session of its own
and at the lowest priority: another system on another machine takes none of cso's CPU, and on one
machine generating and publishing 4,000 events/s would otherwise take a fifth of the two cores
(measured on the national run) from the services it is measuring.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import nats
from nats.js import JetStreamContext

from .generator import Item, Workload

ACK_TIMEOUT = 60.0


@dataclass
class Published:
    count: int = 0
    by_stream: Counter[str] = field(default_factory=Counter)
    by_type: Counter[str] = field(default_factory=Counter)
    last_seq: dict[str, int] = field(default_factory=dict)     # JetStream stream -> last ack sequence
    duplicates: int = 0
    first_at: float | None = None      # time.monotonic() of the first publish
    last_at: float | None = None       # ... of the last ack
    bytes: int = 0

    @property
    def seconds(self) -> float:
        return (self.last_at or 0.0) - (self.first_at or 0.0)


class Publisher:
    """Publishes items as fast as JetStream acknowledges them (windows of `window` futures)."""

    def __init__(self, js: JetStreamContext, window: int = 1000) -> None:
        self.js, self.window = js, window
        self.stats = Published()
        self._current: list[asyncio.Future[Any]] = []
        self._previous: list[asyncio.Future[Any]] = []
        self._async = hasattr(js, "publish_async")

    async def _send(self, subject: str, data: bytes, msg_id: str) -> asyncio.Future[Any]:
        headers = {"Nats-Msg-Id": msg_id}
        if self._async:
            future: asyncio.Future[Any] = await self.js.publish_async(subject, data, headers=headers)
            return future
        return asyncio.ensure_future(self.js.publish(subject, data, headers=headers))

    async def publish(self, item: Item) -> None:
        await self.send(item.subject, item.data, item.event_id)
        self.stats.by_stream[item.stream] += 1
        self.stats.by_type[item.type] += 1

    async def send(self, subject: str, data: bytes, msg_id: str) -> None:
        if self.stats.first_at is None:
            self.stats.first_at = time.monotonic()
        self._current.append(await self._send(subject, data, msg_id))
        self.stats.count += 1
        self.stats.bytes += len(data)
        if len(self._current) >= self.window:
            await self._settle(self._previous)
            self._previous, self._current = self._current, []

    async def _settle(self, futures: list[asyncio.Future[Any]]) -> None:
        if not futures:
            return
        acks = await asyncio.wait_for(asyncio.gather(*futures), ACK_TIMEOUT)
        for ack in acks:
            if ack.duplicate:
                self.stats.duplicates += 1
            if ack.seq > self.stats.last_seq.get(ack.stream, 0):
                self.stats.last_seq[ack.stream] = ack.seq
        self.stats.last_at = time.monotonic()

    async def flush(self) -> Published:
        await self._settle(self._previous)
        await self._settle(self._current)
        self._previous, self._current = [], []
        return self.stats

    async def publish_all(self, items: Iterable[Item]) -> Published:
        for item in items:
            await self.publish(item)
        return await self.flush()


async def paced(publisher: Publisher, items: Iterable[Item], rate: float, seconds: float,
                probe: Callable[[int], Item] | None = None, probe_every: float = 0.1,
                on_probe: Callable[[int, float], Awaitable[None] | None] | None = None) -> int:
    """Publish `items` at `rate` events/s for `seconds`; every `probe_every` s one probe (from
    `probe(k)`) instead of a load event, with `on_probe(k, time it was handed to the client)`.
    Returns how many events were published."""
    tick = 0.005
    start = time.monotonic()
    sent = probes = 0
    source = iter(items)
    next_probe = start
    while True:
        now = time.monotonic()
        elapsed = now - start
        if elapsed >= seconds:
            break
        due = int(elapsed * rate) - sent
        for _ in range(max(0, due)):
            if probe is not None and time.monotonic() >= next_probe:
                probes += 1
                item = probe(probes)
                published_at = time.monotonic()
                await publisher.publish(item)
                if on_probe is not None:
                    result = on_probe(probes, published_at)
                    if result is not None:
                        await result
                next_probe += probe_every
            else:
                await publisher.publish(next(source))
            sent += 1
        # Acks of a slow trickle would wait for a full window: settle what is out each tick.
        await publisher.flush()
        await asyncio.sleep(max(0.0, tick - (time.monotonic() - now)))
    await publisher.flush()
    return sent


# ------------------------------------------------------------------ waiting for consumers


async def consumer_idle(js: JetStreamContext, stream: str, durable: str) -> bool:
    try:
        info = await js.consumer_info(stream, durable)
    except Exception:
        return False
    return bool(info.num_pending == 0 and info.num_ack_pending == 0)


def durables(stream: str, durable: str) -> list[tuple[str, str]]:
    """(stream, durable) of a consumer, or of each of its partitions when the run's registry and
    targets replicas split it (CSO_PARTITIONS, set by bench.run for --replicas N: cso/partitions.py)."""
    count = int(os.environ.get("CSO_PARTITIONS") or 1)
    if count == 1:
        return [(stream, durable)]
    return [(stream, f"{durable}-p{i}") for i in range(count)]


async def wait_idle(js: JetStreamContext, consumers: Sequence[tuple[str, str]], limit: float, what: str,
                    alive: Callable[[], None] = lambda: None) -> float:
    """Until every (stream, durable) has nothing pending nor unacked, twice in a row; returns when.
    `alive` raises if a part of the stack died meanwhile."""
    deadline = time.monotonic() + limit
    first: float | None = None
    while True:
        now = time.monotonic()
        if all([await consumer_idle(js, s, d) for s, d in consumers]):
            if first is not None:
                return first
            first = now
        else:
            first = None
        alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not done within {limit:.0f}s")
        await asyncio.sleep(0.25)


# ------------------------------------------------------------------ the backfill


async def publish_backfill(publisher: Publisher, items: Iterable[Item], js: JetStreamContext, limit: float,
                           alive: Callable[[], None] = lambda: None) -> int:
    """Publish the items; at a barrier wait (after the acks) until registry took all intake.
    Returns how many barriers were waited at."""
    barriers = 0
    for item in items:
        if item.barrier:
            await publisher.flush()
            await wait_idle(js, durables("CSO_INTAKE", "registry-intake"), limit, "barrier", alive)
            barriers += 1
            continue
        await publisher.publish(item)
    await publisher.flush()
    return barriers


@dataclass
class Backfill:
    """What the publisher's process sends back: its figures and the workload as generated (the
    samples, expectations and scope counts filled while the events were made)."""

    stats: Published
    barriers: int
    workload: Workload


def outside_process(nats_url: str, workload: Workload, window: int, timeout: float, conn: Connection) -> None:
    """The entry of the publisher's process (multiprocessing, spawn): publishes `workload`'s events
    and sends a `Backfill` (or the error, as text) on `conn`."""
    os.setsid()        # its own session: on Linux its own scheduling group (autogroup), too
    os.nice(19)
    try:
        with open("/proc/self/autogroup", "w") as group:
            group.write("19")
    except OSError:
        pass           # not Linux, or no autogroups: the nice value alone then

    async def publish() -> Backfill:
        nc = await nats.connect(nats_url, name="bench-outside-publisher", max_reconnect_attempts=3)
        try:
            js = nc.jetstream()
            publisher = Publisher(js, window=window)
            barriers = await publish_backfill(publisher, workload.events(), js, timeout)
            return Backfill(publisher.stats, barriers, workload)
        finally:
            await nc.close()

    try:
        done = asyncio.run(publish())
    except BaseException as e:
        conn.send(f"{type(e).__name__}: {e}")
        raise
    done.workload.forget_caches()
    conn.send(done)
