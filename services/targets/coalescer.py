"""targets' evaluation loop: once a second, the figures of regions whose coverage moved go out
(CoverageChanged) and their targets are re-evaluated; once a day, every target; when the
catalogue or the divisions changed, the catalogue is expanded into instances again first.

At start one replica seeds the default catalogue into an empty table and the projection is
rebuilt if an older targets kept it (rebuild.upgrade)."""

from __future__ import annotations

import asyncio
from datetime import date
from pathlib import Path

import yaml
from sqlalchemy.ext.asyncio import AsyncConnection

from cso.service import Runtime, repeat

from . import evaluation, rebuild, store
from .domain.catalogue import load_catalogue


async def seed_catalogue(conn: AsyncConnection, path: Path) -> int:
    """Load the default catalogue once (a fresh database); later changes go through the API."""
    if not await store.lock_catalogue(conn):
        return 0
    load_catalogue(path)  # validates the whole file before anything is written
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))["targets"]  # noqa: ASYNC240 (once, at start)
    for item in raw:
        await store.upsert_spec(conn, item, str(path))
    return len(raw)


class Coalescer:
    """Once a second: figures of moved regions out, their targets re-evaluated; daily: every target.

    Others tell it what changed: `catalogue_changed` (a target put or retired, a plan imported)
    and `regions_changed` (divisions imported); `ready` says it has evaluated once."""

    def __init__(self, runtime: Runtime, clock: evaluation.Clock, catalogue: Path, interval: float = 1.0) -> None:
        self.runtime, self.clock, self.catalogue, self.interval = runtime, clock, catalogue, interval
        self.resync = asyncio.Event()
        self.resync.set()
        self.evaluated_on: date | None = None

    def catalogue_changed(self) -> None:
        self.resync.set()

    def regions_changed(self) -> None:
        self.resync.set()

    @property
    def ready(self) -> bool:
        """The catalogue has been seeded and evaluated once."""
        return self.evaluated_on is not None

    async def step(self) -> None:
        today = self.clock.today()
        topology = self.runtime.topology
        async with self.runtime.engine.begin() as conn:
            if self.resync.is_set():
                self.resync.clear()
                await evaluation.sync_instances(conn, await store.load_specs(conn), today)
                self.evaluated_on = None
            if self.evaluated_on != today:
                await evaluation.evaluate_instances(conn, topology, today)
                self.evaluated_on = today
            await evaluation.drain_dirty(conn, topology, today)
        if self.runtime.relay:
            self.runtime.relay.notify()

    async def run(self) -> None:
        """Seed, upgrade the projection if it is stale, then step for ever."""
        async with self.runtime.engine.begin() as conn:
            await seed_catalogue(conn, self.catalogue)
        await rebuild.upgrade(self.runtime.engine)
        await repeat(self.step, self.interval, "targets: evaluation")
