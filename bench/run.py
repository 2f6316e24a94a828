"""The national-scale benchmark: `python -m bench.run --scope 51` (see bench/README.md).

1. A local stack (cso_local.stack.Stack: nats-server and PostgreSQL from the wheels, registry, targets and
   training as uvicorn processes) in a temporary data dir; with `--replicas 2` a second registry and
   a second targets process on the same servers.
2. The divisions of the scope, published with the importer; both services load them.
3. Backfill: the seeded workload of the scope (bench.generator) published by an outside publisher as
   fast as JetStream acks; progress read from the services' schemas until targets has applied all.
4. Freshness at steady rates: probe filings whose effect is read back through targets' HTTP API.
5. Sizes, the SQL recount against the projections (the correctness line), the physical floor.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import httpx
import nats
from nats.js import JetStreamContext
from rich.console import Console
from rich.table import Table

from contracts import Topology
from cso.divisions import DEMO_DIVISIONS, editions, publish_divisions
from cso.outbox import count_pending
from cso.roles import role_url
from cso.tokens import service_env
from cso_local import localnats, servers
from cso_local.stack import ROOT, SERVICES, Stack, StackError, http_get

from . import floor, measure, profile
from .generator import TRAINING_COUNTERS, Workload
from .publisher import Backfill, Publisher, durables, outside_process, paced, wait_idle

NATIONAL_DIVISIONS = editions.edition("2023")   # package data: every install has it
RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_RATES = (200.0, 2000.0)
GOALS = {"events_per_second": 8500.0, "p99_ms_at_2000": 500.0, "rss_mb": 400.0}

console = Console(stderr=True)


def say(message: str) -> None:
    console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {message}", highlight=False)


# ------------------------------------------------------------------ options


@dataclass
class Options:
    scope: list[str] | None            # None: national
    divisions: Path
    seed: int = 2023
    replicas: int = 1
    shared: bool = False              # replicas on one durable instead of a partition each
    rates: tuple[float, ...] = DEFAULT_RATES
    fresh_seconds: float = 15.0
    poll_interval: float = 0.02
    floor: bool = True
    profile_seconds: float = 0.0
    profile_delay: float = 5.0
    profile_dir: Path = Path(tempfile.gettempdir()) / "cso-bench-profiles"
    gap: int = 5000
    window: int = 1000
    timeout: float = 3600.0
    output: Path | None = None
    keep: bool = False
    label: str = ""
    postgres_settings: Mapping[str, str] = field(default_factory=dict)
    statements: bool = False          # PostgreSQL's statements over the backfill (pg_stat_statements)
    progress_seconds: float = 60.0    # a progress line (and sample) this often during the backfill

    @property
    def scope_name(self) -> str:
        return "national" if not self.scope else "+".join(self.scope)


def parse_scope(text: str) -> list[str] | None:
    value = text.strip().lower()
    if value in ("national", "all", "china", "cn"):
        return None
    codes = [c.strip() for c in value.split(",") if c.strip()]
    for code in codes:
        if not code.isdigit() or len(code) not in (2, 4, 6):
            raise argparse.ArgumentTypeError(f"{code!r}: a scope is a province (2 digits), city (4) or "
                                             "county (6) code, a comma-separated list of them, or national")
    return codes


def options(argv: Sequence[str] | None = None) -> Options:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scope", type=parse_scope, default=parse_scope("5111,510681"),
                   help="national, a province (51), or codes: 5111,510681 (default: the demo's 12 counties)")
    p.add_argument("--divisions", type=Path, default=None,
                   help="NBS edition directory (default: the demo edition for the demo's scope, else the national "
                        "2023 edition shipped with cso)")
    p.add_argument("--seed", type=int, default=2023)
    p.add_argument("--replicas", type=int, default=1, choices=(1, 2, 3, 4),
                   help="registry and targets processes each (default 1), each a partition of their hot "
                        "consumers (CSO_PARTITIONS=N, cso/partitions.py)")
    p.add_argument("--shared", action="store_true",
                   help="replicas share one durable consumer instead of a partition each (as before issue 23)")
    p.add_argument("--rates", default=",".join(f"{r:g}" for r in DEFAULT_RATES),
                   help="steady rates for the freshness probes, events/s; empty for none")
    p.add_argument("--fresh-seconds", type=float, default=15.0, help="seconds per steady rate")
    p.add_argument("--poll-interval", type=float, default=0.02, help="seconds between reads of the probe")
    p.add_argument("--no-floor", action="store_true", help="skip the COPY and raw JetStream floors")
    p.add_argument("--profile", type=float, default=0.0, metavar="SECONDS",
                   help="py-spy the registry and targets processes for SECONDS during the backfill")
    p.add_argument("--profile-delay", type=float, default=5.0, help="seconds into the backfill to start py-spy")
    p.add_argument("--profile-dir", type=Path, default=Path(tempfile.gettempdir()) / "cso-bench-profiles")
    p.add_argument("--gap", type=int, default=5000, help="intake messages between a fact and its follow-ups")
    p.add_argument("--window", type=int, default=1000, help="publish futures per ack window")
    p.add_argument("--timeout", type=float, default=3600.0, help="give up waiting for the services after this")
    p.add_argument("--output", type=Path, default=None, help="result JSON (default bench/results/<scope>-…json)")
    p.add_argument("--keep", action="store_true", help="keep the stack's temporary data dir")
    p.add_argument("--label", default="", help="a note stored in the result")
    p.add_argument("--progress", type=float, default=60.0, metavar="SECONDS",
                   help="during the backfill, say this often how many events registry and targets have applied")
    p.add_argument("--statements", action="store_true",
                   help="load pg_stat_statements and report the statements of the backfill by PostgreSQL's "
                        "time, with their WAL (what each service's SQL costs the database)")
    p.add_argument("--postgres-defaults", action="store_true",
                   help="PostgreSQL's own defaults (128 MB buffers, 1 GB of WAL between checkpoints) instead "
                        "of settings sized to this machine (cso_local.servers.postgres_sizing)")
    a = p.parse_args(argv)
    demo_scope = a.scope is not None and all(c.startswith(("5111", "510681")) for c in a.scope)
    divisions = a.divisions or (DEMO_DIVISIONS if demo_scope else NATIONAL_DIVISIONS)
    rates = tuple(float(r) for r in a.rates.split(",") if r.strip())
    return Options(scope=a.scope, divisions=divisions, seed=a.seed, replicas=a.replicas, shared=a.shared,
                   rates=rates,
                   fresh_seconds=a.fresh_seconds, poll_interval=a.poll_interval, floor=not a.no_floor,
                   profile_seconds=a.profile, profile_delay=a.profile_delay, profile_dir=a.profile_dir,
                   gap=a.gap, window=a.window, timeout=a.timeout, output=a.output, keep=a.keep, label=a.label,
                   statements=a.statements, progress_seconds=a.progress,
                   postgres_settings={**({} if a.postgres_defaults else servers.postgres_sizing()),
                                      **({"shared_preload_libraries": "pg_stat_statements"}
                                         if a.statements else {})})


# ------------------------------------------------------------------ extra replicas


@dataclass
class Replica:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def start_replica(name: str, index: int, state: dict[str, Any], logs: Path) -> Replica:
    """Another uvicorn process of a service, with the same CSO_* environment as the stack's (its
    NATS user too)."""
    spec = next(s for s in SERVICES if s.name == name)
    port = servers.free_port()
    # As the stack's own process of that service: its database role, not the superuser.
    role = state["services"].get(name, {}).get("database_role")
    database_url = role_url(state["postgres"]["url"], role) if role else state["postgres"]["url"]
    env = {**os.environ, "CSO_DATABASE_URL": database_url, "CSO_NATS_URL": state["nats"]["url"],
           "CSO_NAMESPACE": state.get("namespace", ""), "PYTHONUNBUFFERED": "1",
           **service_env(Path(state["data_dir"]))}   # the stack's CSO_AUTH and token key
    users = localnats.load(Path(state["data_dir"]))
    if users is not None and state["nats"].get("auth") == "users":
        env.update(localnats.service_env(users, name))
    if os.environ.get("CSO_PARTITIONS"):
        env["CSO_PARTITION"] = str(index - 1)   # replica 2 is partition 1, …
    log = logs / f"{name}-{index}.log"
    cmd = [sys.executable, "-m", "uvicorn", "--factory", spec.factory, "--host", "127.0.0.1",
           "--port", str(port), "--no-access-log"]
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                env=env, start_new_session=True)
    return Replica(f"{name}#{index}", port, proc, log)


def wait_ready(replica: Replica, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if replica.proc.poll() is not None:
            raise StackError(f"{replica.name} exited with code {replica.proc.returncode}; see {replica.log}")
        with contextlib.suppress(OSError):
            if http_get(f"{replica.url}/readyz", timeout=2)[0] == 200:
                return
        time.sleep(0.2)
    raise StackError(f"{replica.name} not ready within {timeout:.0f}s; see {replica.log}")


def stop_replica(replica: Replica) -> None:
    if replica.proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            replica.proc.send_signal(signal.SIGTERM)
        try:
            replica.proc.wait(15)
        except subprocess.TimeoutExpired:
            replica.proc.kill()
            replica.proc.wait()


# ------------------------------------------------------------------ the run


@dataclass
class Context:
    opts: Options
    stack: Stack
    state: dict[str, Any]
    replicas: list[Replica]
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def dsn(self) -> str:
        return str(self.state["postgres"]["url"])

    @property
    def nats_url(self) -> str:
        """The stack's NATS as admin (its passwords are hex: safe in a URL)."""
        url = str(self.state["nats"]["url"])
        login = localnats.credentials(self.stack.data_dir, "admin")
        return url.replace("nats://", f"nats://{login[0]}:{login[1]}@", 1) if login else url

    def url(self, service: str) -> str:
        return str(self.state["services"][service]["url"])

    def service_urls(self, service: str) -> list[str]:
        return [self.url(service)] + [r.url for r in self.replicas if r.name.startswith(service + "#")]


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def alive(ctx: Context) -> Callable[[], None]:
    return lambda: check_alive(ctx)


def check_alive(ctx: Context) -> None:
    if died := ctx.stack.dead():
        raise StackError(f"{died[0].name} {died[0].how}; log tail:\n{died[0].tail}")
    for r in ctx.replicas:
        if r.proc.poll() is not None:
            raise StackError(f"{r.name} exited with code {r.proc.returncode}; see {r.log}")


async def wal_bytes(dsn: str) -> int:
    """The WAL position in bytes (pg_current_wal_lsn − 0/0): the difference of two is what was written."""
    return int(await fetchval(dsn, "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint"))


async def statements_reset(dsn: str) -> None:
    db = await asyncpg.connect(dsn)
    try:
        await db.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        await db.execute("SELECT pg_stat_statements_reset()")
    finally:
        await db.close()


async def statements_top(dsn: str, top: int = 25) -> list[dict[str, Any]]:
    """The statements of every role since the reset, by PostgreSQL's execution time: what each
    service's SQL costs the database (calls, rows, time, WAL, full-page images, buffers dirtied)."""
    db = await asyncpg.connect(dsn)
    try:
        rows = await db.fetch(
            "SELECT r.rolname AS role, s.calls, s.rows, s.total_exec_time AS ms, s.wal_bytes::bigint AS wal, "
            "s.wal_fpi AS fpi, s.shared_blks_dirtied AS dirtied, left(regexp_replace(s.query, '\\s+', ' ', 'g'), 160) "
            "AS query FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid "
            "ORDER BY s.total_exec_time DESC LIMIT $1", top)
        return [dict(r) | {"wal": int(r["wal"]), "ms": float(r["ms"])} for r in rows]
    finally:
        await db.close()


async def table_writes(dsn: str, top: int = 15) -> list[dict[str, Any]]:
    """Rows written per table since the start (pg_stat_user_tables): inserts, updates and how many
    of those were HOT (no index entry written), the most written first."""
    db = await asyncpg.connect(dsn)
    try:
        rows = await db.fetch(
            "SELECT schemaname || '.' || relname AS name, n_tup_ins AS ins, n_tup_upd AS upd, "
            "n_tup_hot_upd AS hot, n_tup_del AS del, pg_total_relation_size(relid) AS bytes "
            "FROM pg_stat_user_tables ORDER BY n_tup_ins + n_tup_upd + n_tup_del DESC LIMIT $1", top)
        return [dict(r) for r in rows]
    finally:
        await db.close()


async def outbox_backlog(db_dsn: str) -> int:
    db = await asyncpg.connect(db_dsn)
    try:
        return int(await db.fetchval(count_pending('registry')))
    finally:
        await db.close()


async def fetchval(dsn: str, sql: str) -> Any:
    db = await asyncpg.connect(dsn)
    try:
        return await db.fetchval(sql)
    finally:
        await db.close()


async def settle(js: JetStreamContext, ctx: Context, limit: float) -> dict[str, float]:
    """Wait until registry took all intake, published its outbox, and targets and training applied it."""
    done: dict[str, float] = {}
    done["registry"] = await wait_idle(js, durables("CSO_INTAKE", "registry-intake"), limit, "registry intake",
                                       alive(ctx))
    deadline = time.monotonic() + limit
    while await outbox_backlog(ctx.dsn):
        check_alive(ctx)
        if time.monotonic() > deadline:
            raise TimeoutError("registry's outbox was not published in time")
        await asyncio.sleep(0.25)
    done["targets"] = await wait_idle(js, durables("CSO_REGISTRY", "targets-registry")
                                      + durables("CSO_TRAINING", "targets-training"),
                                      limit, "targets", alive(ctx))
    done["training"] = await wait_idle(js, [("CSO_REGISTRY", "training-registry")], limit, "training", alive(ctx))
    return done


async def run(ctx: Context) -> dict[str, Any]:
    opts, r = ctx.opts, ctx.result
    nc = await nats.connect(ctx.nats_url, name="bench-outside-publisher", max_reconnect_attempts=3)
    js = nc.jetstream()
    topology = Topology(ctx.state.get("namespace", ""))
    procs = [measure.Proc("registry", [ctx.state["services"]["registry"]["pid"]]),
             measure.Proc("targets", [ctx.state["services"]["targets"]["pid"]]),
             measure.Proc("training", [ctx.state["services"]["training"]["pid"]])]
    # notify hears every registry, targets and training event too: its cost is part of the pipeline's.
    if "notify" in ctx.state["services"]:
        procs.append(measure.Proc("notify", [ctx.state["services"]["notify"]["pid"]]))
    procs += [measure.Proc(rep.name, [rep.proc.pid]) for rep in ctx.replicas]
    procs += [measure.Proc("nats-server", [ctx.state["nats"]["pid"]]),
              measure.Proc("postgres", [ctx.state["postgres"]["pid"]], tree=True),
              measure.Proc("bench (harness)", [os.getpid()])]
    sampler = measure.Sampler(ctx.dsn, procs)
    await sampler.start()
    try:
        # ---- divisions
        started = time.monotonic()
        counties = await publish_divisions(js, topology, opts.divisions, only=opts.scope)
        say(f"published the divisions of {counties} counties; waiting for registry, targets and training")
        await wait_idle(js, [("CSO_DIVISIONS", d) for d in ("registry-divisions", "targets-divisions",
                                                            "training-divisions")],
                        opts.timeout, "divisions", alive(ctx))
        r["divisions"] = {"counties": counties, "seconds": time.monotonic() - started}
        say(f"divisions loaded in {r['divisions']['seconds']:.1f}s")

        # ---- backfill
        workload = Workload(opts.divisions, opts.scope, seed=opts.seed, gap=opts.gap)
        metrics_before = {s: [measure.scrape(u) for u in ctx.service_urls(s)] for s in ("registry", "targets")}
        cpu_before, machine_before = sampler.cpu_now(), measure.Machine.busy()
        wal_before = await wal_bytes(ctx.dsn)
        if opts.statements:
            await statements_reset(ctx.dsn)
        profiling = asyncio.create_task(run_profiles(ctx, opts)) if opts.profile_seconds else None
        say("backfill: publishing the workload (the outside publisher's own process, at the lowest priority)")
        t0 = time.monotonic()
        progress: list[dict[str, float]] = []
        reporting = asyncio.create_task(report_progress(ctx, metrics_before, progress))
        try:
            backfill = await publish_outside(ctx, workload, sampler)
            pub, barriers, workload = backfill.stats, backfill.barriers, backfill.workload
            t0 = pub.first_at or t0   # from the first publish, not from starting the publisher's process
            say(f"published {pub.count:,} events in {pub.seconds:.1f}s "
                f"({pub.count / max(pub.seconds, 1e-9):,.0f}/s); waiting for the services")
            done = await settle(js, ctx, opts.timeout)
        finally:
            reporting.cancel()
        cpu_after, machine_after = sampler.cpu_now(), measure.Machine.busy()
        wal = await wal_bytes(ctx.dsn) - wal_before
        statements = await statements_top(ctx.dsn) if opts.statements else []
        tables = await table_writes(ctx.dsn) if opts.statements else []
        metrics_after = {s: [measure.scrape(u) for u in ctx.service_urls(s)] for s in ("registry", "targets")}
        await sampler.sample()
        profiles = await profiling if profiling else {}
        r["workload"] = {"seed": opts.seed, "events": pub.count, "by_stream": dict(pub.by_stream),
                         "by_type": dict(pub.by_type.most_common()), "bytes": pub.bytes,
                         "counties": workload.scope.counties, "townships": workload.scope.townships,
                         "communities": dict(workload.scope.communities),
                         "duplicates_acked": pub.duplicates, "barriers": barriers}
        r["backfill"] = backfill_report(ctx, sampler, workload, pub, t0, done, metrics_before, metrics_after,
                                        cpu_before, cpu_after, machine_after - machine_before)
        r["backfill"]["progress"] = progress
        r["profiles"] = profiles
        r["statements"], r["table_writes"] = statements, tables
        # What PostgreSQL wrote to its WAL over the backfill (for sizing disks: bench/README.md).
        r["backfill"]["wal_bytes"] = wal
        r["backfill"]["wal_bytes_per_event"] = wal / max(pub.count, 1)
        b = r["backfill"]
        say(f"backfill done: {b['end_to_end']['events_per_second']:,.0f} events/s end to end "
            f"({b['end_to_end']['seconds']:.1f}s)")

        # ---- freshness
        r["freshness"] = []
        capacity = b["end_to_end"]["events_per_second"]
        for rate in opts.rates:
            # Above what the pipeline sustains the backlog only grows: a short burst shows it.
            seconds = opts.fresh_seconds if rate <= 1.2 * capacity else \
                max(2.0, min(opts.fresh_seconds, 15 * capacity / rate))
            say(f"freshness at {rate:g} events/s for {seconds:g}s")
            f = await freshness(ctx, js, workload, rate, opts, seconds)
            f["sustainable"] = rate <= capacity
            r["freshness"].append(f)
            say(f"  p50 {fmt_ms(f['p50_ms'])}, p99 {fmt_ms(f['p99_ms'])}, max {fmt_ms(f['max_ms'])} "
                f"over {f['probes_seen']}/{f['probes']} probes")
            await settle(js, ctx, opts.timeout)
        r["rss_peak_bytes"] = sampler.peak_rss()
        r["sizes"] = {"postgres_database_bytes": await measure.database_size(ctx.dsn),
                      "jetstream": measure.jetstream_size(ctx.state["nats"].get("monitor_url"),
                                                          ctx.stack.data_dir / "nats" / "jetstream")}
        # ---- correctness, and the recount's time
        say("recounting from registry's tables (SQL) and comparing with targets' projections")
        r["correctness"] = await correctness(ctx, js, workload)
        c = r["correctness"]
        r["recount_vs_incremental"] = headline(r)
        say(f"recount took {c['recount_seconds']:.2f}s; projections "
            f"{'EQUAL' if c['equal'] else 'DIFFER from'} the recount at tiers {c['tiers']}")
        # ---- the floor
        if opts.floor:
            say("floor: COPY of the same organization rows, raw JetStream publish of as many messages")
            rows = Workload(opts.divisions, opts.scope, seed=opts.seed).organization_rows()
            copy = await floor.copy_floor(ctx.dsn, rows)
            pool = [(item.subject.replace("cso.", "bench.floor.", 1), item.data)
                    for _, item in zip(range(20_000), (i for i in Workload(opts.divisions, opts.scope,
                                                                             seed=opts.seed).events()
                                                       if not i.barrier), strict=False)]
            raw = await floor.jetstream_floor(js, pub.count, pool, window=opts.window)
            r["floor"] = {"copy": copy, "jetstream": raw}
            e2e = r["backfill"]["end_to_end"]["events_per_second"]
            r["floor"]["cso_fraction_of_copy"] = e2e / copy["rows_per_second"] if copy["rows_per_second"] else None
            r["floor"]["cso_fraction_of_jetstream"] = (e2e / raw["messages_per_second"]
                                                       if raw["messages_per_second"] else None)
        r["samples"] = series(sampler, t0)
        return r
    finally:
        await sampler.stop()
        await nc.close()


async def report_progress(ctx: Context, before: Mapping[str, list[Any]], into: list[dict[str, float]]) -> None:
    """Every `progress_seconds` of the backfill: how many events registry and targets have applied
    since it began (their cso_events_applied_total, replicas summed) and at what rate over the last
    interval, said on the console and kept in `into` (the result's backfill.progress). A national
    run is over an hour of waiting: this is what shows it moving, and whether it slows."""
    started = last_at = time.monotonic()
    last = {"registry": 0.0, "targets": 0.0}
    while True:
        await asyncio.sleep(ctx.opts.progress_seconds)
        try:
            now = {s: await asyncio.to_thread(applied_since, ctx, s, before[s]) for s in last}
        except OSError as e:          # a service busy past the scrape's timeout: say so, go on
            say(f"progress: metrics not read ({e})")
            continue
        at = time.monotonic()
        rates = {s: (now[s] - last[s]) / max(at - last_at, 1e-9) for s in now}
        into.append({"seconds": round(at - started, 1), **{f"{s}_applied": now[s] for s in now},
                     **{f"{s}_per_second": round(rates[s], 1) for s in now}})
        say(f"progress: registry applied {now['registry']:,.0f} ({rates['registry']:,.0f}/s), "
            f"targets {now['targets']:,.0f} ({rates['targets']:,.0f}/s)")
        last, last_at = now, at


def applied_since(ctx: Context, service: str, before: list[Any]) -> float:
    """Events `service` (all its replicas) applied since the `before` scrapes."""
    return sum(measure.metric_sum(measure.scrape(url), "cso_events_applied_total", service=service)
               for url in ctx.service_urls(service)) \
        - sum(measure.metric_sum(b, "cso_events_applied_total", service=service) for b in before)


async def publish_outside(ctx: Context, workload: Workload, sampler: measure.Sampler) -> Backfill:
    """The backfill, published by `bench.publisher.outside_process` in a process of its own; its
    CPU and memory are sampled as "outside publisher"."""
    spawn = multiprocessing.get_context("spawn")
    receive, send = spawn.Pipe(duplex=False)
    proc = spawn.Process(target=outside_process, name="bench-outside-publisher",
                         args=(ctx.nats_url, workload, ctx.opts.window, ctx.opts.timeout, send))
    proc.start()
    send.close()
    assert proc.pid is not None
    publisher = measure.Proc("outside publisher", [proc.pid])
    sampler.procs.append(publisher)
    try:
        while not receive.poll():
            if not proc.is_alive() and not receive.poll():
                raise StackError(f"the outside publisher exited with code {proc.exitcode}")
            check_alive(ctx)
            await asyncio.sleep(0.5)
        done = receive.recv()
        publisher.sample()   # its last CPU figure, while it still exists (the sampler's own loop goes on)
    finally:
        await asyncio.to_thread(proc.join, 30)
        if proc.is_alive():
            proc.kill()
    if not isinstance(done, Backfill):
        raise StackError(f"the outside publisher failed: {done}")
    return done


def fmt_ms(v: float | None) -> str:
    return "–" if v is None else f"{v:,.0f} ms"


def backfill_report(ctx: Context, sampler: measure.Sampler, workload: Workload, pub: Any, t0: float,
                    done: dict[str, float], before: dict[str, list[Any]], after: dict[str, list[Any]],
                    cpu_before: dict[str, float], cpu_after: dict[str, float], machine_busy: float) -> dict[str, Any]:
    intake = pub.by_stream.get("intake", 0)
    training = pub.by_stream.get("training", 0)
    end = done["targets"]
    samples = sampler.samples

    def applied(service: str) -> tuple[float, float, float]:
        """(events applied, seconds spent in batches, batches) over the backfill, replicas summed."""
        events = seconds = batches = 0.0
        for b, a in zip(before[service], after[service], strict=True):
            events += (measure.metric_sum(a, "cso_events_applied_total", service=service)
                       - measure.metric_sum(b, "cso_events_applied_total", service=service))
            seconds += (measure.metric_sum(a, "cso_batch_seconds_sum", service=service)
                        - measure.metric_sum(b, "cso_batch_seconds_sum", service=service))
            batches += (measure.metric_sum(a, "cso_batch_seconds_count", service=service)
                        - measure.metric_sum(b, "cso_batch_seconds_count", service=service))
        return events, seconds, batches

    reg_events, reg_seconds, reg_batches = applied("registry")
    tgt_events, tgt_seconds, tgt_batches = applied("targets")
    wall = end - t0
    cpu = {k: cpu_after.get(k, 0.0) - cpu_before.get(k, 0.0) for k in cpu_after}
    return {
        # Publishing includes the waits at the stream's two barriers (registry catching up).
        "publish": {"events": pub.count, "seconds": pub.seconds,
                    "events_per_second": pub.count / pub.seconds if pub.seconds else None},
        "end_to_end": {"events": pub.count, "seconds": wall, "events_per_second": pub.count / wall},
        "registry": {"events": intake, "seconds": done["registry"] - t0,
                     "events_per_second": intake / (done["registry"] - t0),
                     "steady_events_per_second": measure.rate_between(samples, "registry:CSO_INTAKE", t0, end),
                     "applied_by_metrics": reg_events, "batch_seconds": reg_seconds, "batches": reg_batches,
                     "ms_per_event_in_batches": 1000 * reg_seconds / reg_events if reg_events else None},
        "targets": {"events": tgt_events, "seconds": wall, "events_per_second": tgt_events / wall,
                    "steady_events_per_second": measure.rate_between(samples, "targets:CSO_REGISTRY", t0, end),
                    "batch_seconds": tgt_seconds, "batches": tgt_batches,
                    "ms_per_event_in_batches": 1000 * tgt_seconds / tgt_events if tgt_events else None,
                    "training_events": training},
        "training_service": {"seconds": done["training"] - t0},
        "cpu_seconds": cpu,
        # What the pipeline costs per event, all processes of the run (the publisher too).
        "cpu_ms_per_event": {k: 1000 * v / pub.count for k, v in cpu.items()},
        "cpu_ms_per_event_total": 1000 * sum(cpu.values()) / pub.count,
        "machine_busy_cpu_seconds": machine_busy,
        "others_cpu_seconds": max(0.0, machine_busy - sum(cpu.values())),
        "machine_cpu_capacity_seconds": wall * (os.cpu_count() or 1),
    }


def series(sampler: measure.Sampler, t0: float, points: int = 400) -> list[dict[str, Any]]:
    samples = sampler.samples
    step = max(1, len(samples) // points)
    return [{"t": round(s.t - t0, 2), "positions": s.positions, "rss": s.rss} for s in samples[::step]]


async def run_profiles(ctx: Context, opts: Options) -> dict[str, Any]:
    await asyncio.sleep(opts.profile_delay)
    opts.profile_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    targets = {name: ctx.state["services"][name]["pid"] for name in ("registry", "targets", "training")}
    say(f"py-spy on {', '.join(targets)} for {opts.profile_seconds:g}s")
    paths = await asyncio.gather(*(profile.record(pid, opts.profile_seconds,
                                                  opts.profile_dir / f"{name}-{stamp}.txt")
                                   for name, pid in targets.items()))
    out: dict[str, Any] = {}
    for (name, _), path in zip(targets.items(), paths, strict=True):
        if path is not None:
            out[name] = {"raw": str(path), **profile.summarize(path)}
    return out


# ------------------------------------------------------------------ freshness


async def freshness(ctx: Context, js: JetStreamContext, workload: Workload, rate: float,
                    opts: Options, seconds: float) -> dict[str, Any]:
    """Steady load at `rate`; every 100 ms one probe: a filing of category neighbourly_help in one
    community (the load never uses that category), read back from GET /coverage/{county}."""
    community = workload.first_community
    assert community is not None
    county = community[:6]
    counter = "orgs_cat_neighbourly_help"
    others = [c for c in workload.sample if not c.startswith(county)] or list(workload.sample)
    load = workload.filings(f"steady-{rate:g}", others, [c for c in ("resident_services", "charity",
                                                                      "culture_sports", "mediation")])
    probes = workload.filings(f"probe-{rate:g}", [community], ["neighbourly_help"])
    url = f"{ctx.url('targets')}/coverage/{county}"
    sent: dict[int, float] = {}
    delays: list[float] = []
    polls = 0

    async with httpx.AsyncClient(timeout=10.0) as http:
        async def value() -> int:
            nonlocal polls
            polls += 1
            body = (await http.get(url)).json()
            return int(body["counters"].get(counter, 0))

        base = await value()
        stop = asyncio.Event()

        async def poll() -> None:
            seen = 0
            while True:
                v = await value() - base
                now = time.monotonic()
                for k in range(seen + 1, v + 1):
                    if k in sent:
                        delays.append(now - sent[k])
                seen = max(seen, v)
                if stop.is_set() and seen >= len(sent):
                    return
                await asyncio.sleep(opts.poll_interval)

        def on_probe(k: int, at: float) -> None:
            sent[k] = at

        poller = asyncio.create_task(poll())
        publisher = Publisher(js, window=opts.window)
        started = time.monotonic()
        count = await paced(publisher, load, rate, seconds, probe=lambda _k: next(probes),
                            probe_every=0.1, on_probe=on_probe)
        elapsed = time.monotonic() - started
        stop.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(poller), 60)
        poller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await poller
    ms = [1000 * d for d in delays]
    return {"rate": rate, "seconds": seconds, "achieved_rate": count / elapsed, "events": count, "probes": len(sent),
            "probes_seen": len(delays), "poll_interval_ms": 1000 * opts.poll_interval, "polls": polls,
            "p50_ms": percentile(ms, 0.5), "p90_ms": percentile(ms, 0.9), "p99_ms": percentile(ms, 0.99),
            "max_ms": max(ms) if ms else None, "mean_ms": sum(ms) / len(ms) if ms else None,
            "county": county, "counter": counter}


# ------------------------------------------------------------------ correctness


async def correctness(ctx: Context, js: JetStreamContext, workload: Workload) -> dict[str, Any]:
    from tests.support.recount import REGISTRY_COUNTERS, projected, recount

    started = time.perf_counter()
    expected = await recount(ctx.dsn)
    recount_seconds = time.perf_counter() - started
    actual = await projected(ctx.dsn, REGISTRY_COUNTERS)
    diff = {k: (actual.get(k), expected.get(k)) for k in actual.keys() | expected.keys()
            if actual.get(k) != expected.get(k)}
    training = await projected(ctx.dsn, set(TRAINING_COUNTERS))
    wanted = Counter({k: v for k, v in workload.training_expected.items() if v})
    training_diff = {k: (training.get(k), wanted.get(k)) for k in training.keys() | wanted.keys()
                     if training.get(k) != wanted.get(k)}
    tiers = sorted({len(region) for region, _ in actual})
    intake = int(await fetchval(ctx.dsn, "SELECT count(*) FROM registry.inbox WHERE stream = 'CSO_INTAKE'"))
    accepted = int(await fetchval(ctx.dsn, "SELECT count(*) FROM registry.outbox"))
    dead = 0
    with contextlib.suppress(Exception):
        dead = int((await js.stream_info("CSO_DEADLETTER")).state.messages)
    reasons = await dead_letter_reasons(js) if dead else []
    equal = not diff and not training_diff and tiers == [2, 4, 6, 9, 12]
    return {"equal": equal, "tiers": tiers, "counters_compared": len(expected), "registry_differences": len(diff),
            "registry_difference_sample": [[list(k), v[0], v[1]] for k, v in list(diff.items())[:10]],
            "training_counters_compared": len(wanted), "training_differences": len(training_diff),
            "training_difference_sample": [[list(k), v[0], v[1]] for k, v in list(training_diff.items())[:10]],
            "recount_seconds": recount_seconds, "intake_facts": intake, "registry_accepted": accepted,
            "registry_rejected": intake - accepted, "dead_letters": dead, "dead_letter_reasons": reasons,
            "active_organizations": sum(v for (reg, c), v in expected.items() if c == "orgs" and len(reg) == 2)}


async def dead_letter_reasons(js: JetStreamContext, limit: int = 5) -> list[str]:
    try:
        sub = await js.pull_subscribe("cso.deadletter.>", durable=None, stream="CSO_DEADLETTER")
        msgs = await sub.fetch(limit, timeout=2)
        await sub.unsubscribe()
        return [json.loads(m.data).get("reason", "")[:300] for m in msgs]
    except Exception as e:
        return [repr(e)]


def headline(r: dict[str, Any]) -> dict[str, Any]:
    """One incremental update against one recount: targets' batch time per event vs the recount."""
    recount = r["correctness"]["recount_seconds"]
    per_event_ms = r["backfill"]["targets"]["ms_per_event_in_batches"]
    e2e = r["backfill"]["end_to_end"]
    wall_per_event_ms = 1000 * e2e["seconds"] / e2e["events"]
    return {"recount_seconds": recount, "targets_ms_per_event": per_event_ms,
            "end_to_end_ms_per_event": wall_per_event_ms,
            "recount_over_one_update": 1000 * recount / per_event_ms if per_event_ms else None,
            "recount_over_one_event_end_to_end": 1000 * recount / wall_per_event_ms}


# ------------------------------------------------------------------ output


def mb(n: float | None) -> str:
    return "–" if n is None else f"{n / 1e6:,.0f} MB"


def num(v: float | None, digits: int = 0) -> str:
    return "–" if v is None else f"{v:,.{digits}f}"


def render(r: dict[str, Any], out: Console) -> None:
    w, b = r["workload"], r["backfill"]
    t = Table(title=f"cso benchmark · scope {r['scope']} · {r['replicas']} replica(s) of registry and targets"
                    f"{' (partitioned by province)' if r.get('partitions', 1) > 1 else ''} · "
                    f"{r['machine']['cpus']} CPUs", title_justify="left", show_lines=False)
    t.add_column("measure")
    t.add_column("value", justify="right")
    t.add_column("note")
    comm = w["communities"]
    t.add_row("workload", f"{w['events']:,} events",
              f"{w['counties']} counties, {w['townships']:,} townships, {comm.get('urban', 0):,} urban + "
              f"{comm.get('rural', 0):,} rural communities; intake {w['by_stream'].get('intake', 0):,}, "
              f"training {w['by_stream'].get('training', 0):,}")
    t.add_row("divisions loaded", f"{r['divisions']['seconds']:.1f} s", f"{r['divisions']['counties']} counties")
    t.add_row("publish (outside publisher)", f"{num(b['publish']['events_per_second'])} ev/s",
              f"{b['publish']['seconds']:.1f} s, acks in windows of {r['options']['window']}")
    t.add_row("[bold]end to end[/bold]", f"[bold]{num(b['end_to_end']['events_per_second'])} ev/s[/bold]",
              f"first publish → targets applied the last event: {b['end_to_end']['seconds']:.1f} s")
    t.add_row("registry intake applied", f"{num(b['registry']['events_per_second'])} ev/s",
              f"done after {b['registry']['seconds']:.1f} s; steady {num(b['registry']['steady_events_per_second'])}"
              f" ev/s; {num(b['registry']['ms_per_event_in_batches'], 2)} ms/event in batches "
              f"({num(b['registry']['events'] / max(b['registry']['batches'], 1))} events/batch)")
    t.add_row("targets applied", f"{num(b['targets']['events_per_second'])} ev/s",
              f"{b['targets']['events']:,.0f} events; steady {num(b['targets']['steady_events_per_second'])} ev/s;"
              f" {num(b['targets']['ms_per_event_in_batches'], 2)} ms/event in batches "
              f"({num(b['targets']['events'] / max(b['targets']['batches'], 1))} events/batch)")
    t.add_row("training service (registry events)", f"{b['training_service']['seconds']:.1f} s", "until caught up")
    t.add_row("CPU per event (all processes)", f"{num(b['cpu_ms_per_event_total'], 2)} ms",
              f"2 cores allow ≤ {num(2000 / b['cpu_ms_per_event_total'])} ev/s at this cost; other users took "
              f"{num(b['others_cpu_seconds'])} of {num(b['machine_cpu_capacity_seconds'])} CPU-s (load "
              f"{r['machine']['load_average_at_start'][0]:.1f} at start)")
    for f in r["freshness"]:
        t.add_row(f"freshness at {f['rate']:g} ev/s", f"p99 {fmt_ms(f['p99_ms'])}",
                  f"p50 {fmt_ms(f['p50_ms'])}, max {fmt_ms(f['max_ms'])}; {f['probes_seen']}/{f['probes']} probes "
                  f"over {f['seconds']:.0f} s at {f['achieved_rate']:,.0f} ev/s, polled every "
                  f"{f['poll_interval_ms']:.0f} ms" + ("" if f["sustainable"] else
                                                       "; above capacity: the backlog grows"))
    for name, rss in r["rss_peak_bytes"].items():
        cpu = b["cpu_seconds"].get(name)
        t.add_row(f"peak RSS {name}", mb(rss),
                  f"CPU in backfill {num(cpu, 1)} s = {num(b['cpu_ms_per_event'].get(name), 2)} ms/event")
    js = r["sizes"]["jetstream"]
    pg = r["options"].get("postgres_settings")
    t.add_row("PostgreSQL database", mb(r["sizes"]["postgres_database_bytes"]), "pg_database_size; " + (
        ", ".join(f"{k}={v}" for k, v in pg.items()) if isinstance(pg, dict) else "PostgreSQL's default settings"))
    if "wal_bytes" in b:
        t.add_row("PostgreSQL WAL in backfill", mb(b["wal_bytes"]),
                  f"{b['wal_bytes_per_event'] / 1024:,.1f} KB per event (pg_current_wal_lsn before and after)")
    t.add_row("JetStream storage", mb(js.get("jsz_storage_bytes")),
              f"store dir {mb(js.get('store_dir_bytes'))}; {js.get('messages', 0):,} messages")
    h = r["recount_vs_incremental"]
    t.add_row("SQL recount (from scratch)", f"{h['recount_seconds']:.2f} s", "tests/recount.recount, 5 tiers")
    t.add_row("one incremental update", f"{num(h['targets_ms_per_event'], 3)} ms",
              "targets' batch time per event applied (cso_batch_seconds)")
    t.add_row("[bold]recount ÷ one update[/bold]", f"[bold]{num(h['recount_over_one_update'])}×[/bold]",
              f"÷ end-to-end time per event: {num(h['recount_over_one_event_end_to_end'])}×")
    if "floor" in r:
        fl = r["floor"]
        t.add_row("floor: COPY into PostgreSQL", f"{num(fl['copy']['rows_per_second'])} rows/s",
                  f"{fl['copy']['rows']:,} organization rows in {fl['copy']['seconds']:.1f} s; cso end to end = "
                  f"{100 * (fl['cso_fraction_of_copy'] or 0):.1f}%")
        t.add_row("floor: raw JetStream publish", f"{num(fl['jetstream']['messages_per_second'])} msg/s",
                  f"{fl['jetstream']['messages']:,} messages in {fl['jetstream']['seconds']:.1f} s; cso end to end = "
                  f"{100 * (fl['cso_fraction_of_jetstream'] or 0):.1f}%")
    c = r["correctness"]
    line = ("[bold green]EQUAL[/bold green]" if c["equal"] else "[bold red]DIFFERENT[/bold red]")
    t.add_row("[bold]correctness[/bold]", line,
              f"{c['counters_compared']:,} (region, counter) pairs at tiers {c['tiers']} vs the SQL recount, "
              f"{c['training_counters_compared']:,} training counters vs the generator; "
              f"{c['registry_rejected']} facts rejected, {c['dead_letters']} dead letters")
    out.print(t)
    if r.get("statements"):
        events = max(r["workload"]["events"], 1)
        st = Table(title="PostgreSQL statements in the backfill (pg_stat_statements), by time",
                   title_justify="left")
        for col in ("role", "calls", "µs/event", "WAL B/event", "FPI", "query"):
            st.add_column(col, justify="left" if col in ("role", "query") else "right")
        for s in r["statements"]:
            st.add_row(s["role"], f"{s['calls']:,}", f"{1000 * s['ms'] / events:,.1f}",
                       f"{s['wal'] / events:,.0f}", f"{s['fpi']:,}", s["query"])
        out.print(st)
        tt = Table(title="rows written per table (pg_stat_user_tables, divisions included)", title_justify="left")
        for col in ("table", "inserted", "updated", "of which HOT", "deleted", "per event", "size"):
            tt.add_column(col, justify="left" if col == "table" else "right")
        for w in r.get("table_writes", []):
            tt.add_row(w["name"], f"{w['ins']:,}", f"{w['upd']:,}", f"{w['hot']:,}", f"{w['del']:,}",
                       f"{(w['ins'] + w['upd'] + w['del']) / events:,.1f}", mb(w["bytes"]))
        out.print(tt)
    if r.get("profiles"):
        for name, p in r["profiles"].items():
            pt = Table(title=f"py-spy {name}: {p['samples']} samples", title_justify="left")
            pt.add_column("inclusive (project code)")
            pt.add_column("%", justify="right")
            pt.add_column("self (any code)")
            pt.add_column("%", justify="right")
            rows = max(len(p["inclusive_project"]), len(p["self"]))
            for i in range(min(rows, 12)):
                a = p["inclusive_project"][i] if i < len(p["inclusive_project"]) else ("", "")
                s = p["self"][i] if i < len(p["self"]) else ("", "")
                pt.add_row(a[0], str(a[1]), s[0], str(s[1]))
            out.print(pt)


def write(r: dict[str, Any], path: Path | None) -> Path:
    if path is None:
        RESULTS.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        path = RESULTS / f"{r['scope']}-{r['replicas']}r-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(r, indent=1, ensure_ascii=False, default=str) + "\n")
    tmp.replace(path)
    return path


# ------------------------------------------------------------------ main


def benchmark(opts: Options) -> dict[str, Any]:
    """Start the stack, run everything, stop the stack; the result (raises if something broke)."""
    data_dir = Path(tempfile.mkdtemp(prefix="cso-bench-"))
    data_dir.chmod(0o755)
    stack = Stack(data_dir, registry_port=servers.free_port(), targets_port=servers.free_port(),
                  training_port=servers.free_port(), notify_port=servers.free_port(),
                  console_port=servers.free_port(), demo=False, log=say,
                  postgres_settings=opts.postgres_settings)
    replicas: list[Replica] = []
    load_start = measure.load_average()
    if opts.replicas > 1 and not opts.shared:
        # The stack's registry and targets (and the outside publisher, for its barriers) read it
        # from the environment; the stack's processes are partition 0, replica i partition i − 1.
        os.environ.update(CSO_PARTITIONS=str(opts.replicas), CSO_PARTITION="0")
    try:
        state = stack.start()
        for i in range(2, opts.replicas + 1):
            replicas += [start_replica("registry", i, state, stack.logs_dir),
                         start_replica("targets", i, state, stack.logs_dir)]
        for rep in replicas:
            wait_ready(rep)
            say(f"started {rep.name} on {rep.url} (pid {rep.proc.pid})")
        ctx = Context(opts, stack, state, replicas)
        ctx.result.update({
            "scope": opts.scope_name, "replicas": opts.replicas, "label": opts.label,
            "partitions": 1 if opts.shared else opts.replicas,
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "options": {"seed": opts.seed, "divisions": str(opts.divisions), "rates": list(opts.rates),
                        "fresh_seconds": opts.fresh_seconds, "gap": opts.gap, "window": opts.window,
                        "batch_size": os.environ.get("CSO_BATCH_SIZE", "1000 (default)"),
                        "postgres_settings": dict(opts.postgres_settings) or "PostgreSQL's defaults"},
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "platform": platform.platform(), "load_average_at_start": load_start},
        })
        result = asyncio.run(run(ctx))
        result["machine"]["load_average_at_end"] = measure.load_average()
        return result
    finally:
        for rep in replicas:
            stop_replica(rep)
        stack.stop()
        if not opts.keep:
            shutil.rmtree(data_dir, ignore_errors=True)
        else:
            say(f"kept {data_dir}")


def main(argv: Sequence[str] | None = None) -> int:
    opts = options(argv)
    say(f"scope {opts.scope_name} from {opts.divisions}; seed {opts.seed}; {opts.replicas} replica(s)")
    result = benchmark(opts)
    path = write(result, opts.output)
    render(result, Console(width=160))
    say(f"result written to {path}")
    return 0 if result["correctness"]["equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
