"""What the benchmark watches while it runs: progress from the databases, processes, sizes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import psutil  # type: ignore[import-untyped]

from cso_local.stack import http_get

# ------------------------------------------------------------------ processes


@dataclass
class Proc:
    """A part of the stack: its processes (PostgreSQL: the postmaster and every backend)."""

    name: str
    pids: list[int]
    tree: bool = False                  # include children (PostgreSQL backends)
    peak_rss: int = 0
    cpu_start: float = 0.0
    _seen: dict[int, float] = field(default_factory=dict)

    def processes(self) -> list[psutil.Process]:
        out: list[psutil.Process] = []
        for pid in self.pids:
            with contextlib.suppress(psutil.Error):
                p = psutil.Process(pid)
                out.append(p)
                if self.tree:
                    out.extend(p.children(recursive=True))
        return out

    def sample(self) -> tuple[int, float]:
        """(RSS of the largest process, CPU seconds so far). PostgreSQL's RSS counts shared buffers
        in every backend, so for a tree the largest single process is reported, not the sum."""
        rss, cpu = 0, 0.0
        for p in self.processes():
            with contextlib.suppress(psutil.Error):
                rss = max(rss, p.memory_info().rss)
                t = p.cpu_times()
                self._seen[p.pid] = t.user + t.system  # a backend that exits keeps its last figure
        cpu = sum(self._seen.values())
        self.peak_rss = max(self.peak_rss, rss)
        return rss, cpu


class Machine:
    """Busy CPU seconds of the whole machine (other people's work included), from /proc/stat."""

    @staticmethod
    def busy() -> float:
        t = psutil.cpu_times()
        return float(t.user + t.nice + t.system + t.irq + t.softirq + getattr(t, "steal", 0.0))


# ------------------------------------------------------------------ progress from the databases


@dataclass
class Progress:
    t: float
    positions: dict[str, int]     # "<schema>:<stream>" -> last applied stream sequence
    rss: dict[str, int]
    cpu: dict[str, float]


# A partition's row is `<stream>#p<i>` (cso/consumer.py): a stream's position is the partitions' largest.
POSITIONS = """
SELECT 'registry:' || split_part(stream, '#', 1), max(last_seq) FROM registry.consumer_position GROUP BY 1
UNION ALL SELECT 'targets:' || split_part(stream, '#', 1), max(last_seq) FROM targets.consumer_position GROUP BY 1
UNION ALL SELECT 'training:' || split_part(stream, '#', 1), max(last_seq) FROM training.consumer_position GROUP BY 1
"""


class Sampler:
    """Every `interval` s: consumer positions from each service's schema, RSS and CPU of the parts."""

    def __init__(self, dsn: str, procs: Sequence[Proc], interval: float = 0.5) -> None:
        self.dsn, self.procs, self.interval = dsn, list(procs), interval
        self.samples: list[Progress] = []
        self._task: asyncio.Task[None] | None = None
        self._db: Any = None

    async def start(self) -> None:
        self._db = await asyncpg.connect(self.dsn)
        self._task = asyncio.create_task(self._run())

    async def positions(self) -> dict[str, int]:
        assert self._db is not None
        return {k: int(v) for k, v in await self._db.fetch(POSITIONS)}

    async def sample(self) -> Progress:
        positions = await self.positions()
        rss, cpu = {}, {}
        for p in self.procs:
            rss[p.name], cpu[p.name] = p.sample()
        s = Progress(time.monotonic(), positions, rss, cpu)
        self.samples.append(s)
        return s

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                await self.sample()
            await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._db is not None:
            await self._db.close()

    def peak_rss(self) -> dict[str, int]:
        return {p.name: p.peak_rss for p in self.procs}

    def cpu_now(self) -> dict[str, float]:
        return {p.name: p.sample()[1] for p in self.procs}


def rate_between(samples: Sequence[Progress], key: str, start: float, end: float,
                 lo: float = 0.1, hi: float = 0.9) -> float | None:
    """Events/s of one consumer between the times its position passed lo and hi of its final value
    (the steady middle of a backfill, without the ramp up and the tail)."""
    points = [(s.t, s.positions.get(key, 0)) for s in samples if start <= s.t <= end]
    if len(points) < 3:
        return None
    final = points[-1][1] - points[0][1]
    base = points[0][1]
    if final <= 0:
        return None
    t_lo = next((t for t, v in points if v - base >= lo * final), None)
    t_hi = next((t for t, v in points if v - base >= hi * final), None)
    if t_lo is None or t_hi is None or t_hi <= t_lo:
        return None
    return (hi - lo) * final / (t_hi - t_lo)


# ------------------------------------------------------------------ services' own metrics


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+([0-9.eE+-]+|NaN|\+Inf)$')


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Prometheus text of `url`/metrics as {(name, labels): value}."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"{url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m:
            continue
        labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def metric_sum(metrics: Mapping[tuple[str, frozenset[tuple[str, str]]], float], name: str,
               **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in metrics.items() if n == name and want <= ls)


# ------------------------------------------------------------------ sizes


async def database_size(dsn: str) -> int:
    db = await asyncpg.connect(dsn)
    try:
        return int(await db.fetchval("SELECT pg_database_size(current_database())"))
    finally:
        await db.close()


def jetstream_size(monitor_url: str | None, store: Path | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if monitor_url:
        with contextlib.suppress(OSError):
            status, body = http_get(f"{monitor_url}/jsz?streams=true", timeout=10)
            if status == 200 and isinstance(body, dict):
                out["jsz_storage_bytes"] = int(body.get("storage", 0))
                out["messages"] = int(body.get("messages", 0))
                streams: dict[str, int] = {}
                for account in body.get("account_details", []) or []:
                    for stream in account.get("stream_detail", []) or []:
                        streams[stream["name"]] = int(stream.get("state", {}).get("bytes", 0))
                out["streams"] = streams
    if store is not None and store.exists():
        out["store_dir_bytes"] = sum(f.stat().st_size for f in store.rglob("*") if f.is_file())
    return out


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()
