"""The transactional outbox: a service's events commit with its state, then a relay publishes them.

An event is written once: its row is inserted in the transaction that makes it and never updated.
What has been published is a position, not a flag on each row: `outbox_relay` holds, per outbox
table, the `seq` of the last row its relay published, and every row at or below it is published.
A batch of rows costs the relay one statement (the new position, and per stream the last sequence
JetStream gave the batch, `outbox_stream`), not an UPDATE of each row.

Rows are published in `seq` order, which keeps cause before effect: a transaction that read what
another committed draws its seqs after all of the other's. But `seq` is drawn at insert and a
transaction commits later, so a row can appear below rows already visible (its transaction took
seq 10 and commits after the one that took 11), and a seq may never appear at all (its
transaction rolled back, or an insert met a conflict). So the relay publishes the rows that follow
its position without a hole, and stops at a hole. A hole is settled by a probe: the relay reads the
sequence's last value L, then takes a transaction id X of its own (`pg_current_xact_id()`, above
every id assigned before); once every transaction below X has ended (`pg_snapshot_xmin` ≥ X), every
seq up to L is either visible or never will be, and the relay goes on past the holes up to L. This holds
because a row's transaction has its id before it draws its seq (the seq's default asks for the
transaction id first, `seq_position_ddl`): whoever drew a seq ≤ L had an id below X.

What it costs: nothing while rows come without holes; a hole (a transaction still writing below
others that committed, or one that rolled back) holds the rows after it until the transactions
that were running at the probe have ended, in any database of the server (transaction ids are the
server's): a long writing transaction delays publishing past a hole (not throughput: the relay
then publishes a larger batch). The alternatives were worse: a lock serialising every writer of
the outbox until it commits (every transaction that emits an event would queue behind the
others); ordering by transaction id instead of seq (two transactions that contend for one row
commit in lock order, not in the order of their ids: an update could go out before the filing it
updates, and training skips an update of an organization it has not seen).

Republishing (BusWatch after the bus lost a stream, `cso replay`) moves the position back
(`rewind`: to the first row it keeps of the lost stream): the relay publishes every row
above it again; JetStream's duplicate window (`Nats-Msg-Id` = event id) and every consumer's
inbox drop what was already there. Rows are kept for `outbox_retention_days` after they were made,
so the outbox is also a log the service can replay if the bus ever loses messages.

Relays of several replicas take turns (a transaction-scoped advisory lock, tried: a replica whose
neighbour is publishing skips its turn), and a relay moves the position only from where it read it
(compare and set): a rewind that lands while a batch is in flight is kept, not overwritten.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.errors import NoStreamResponseError
from prometheus_client import Counter, Gauge
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from contracts import Envelope, Topology, encode

from .streams import MIGRATE_HINT

log = logging.getLogger(__name__)

CRASH_AFTER_PUBLISH = os.environ.get("CSO_FAULT_CRASH_AFTER_PUBLISH") == "1"
PUBLISHED = Counter("cso_outbox_published_total", "Outbox events published", ["service"])
# Counted up to BACKLOG_CAP: past it the gauge says "more than BACKLOG_CAP - 1" (Relay.backlog),
# which is all the alerts ask (infra/prometheus/rules.yml: CsoOutboxBacklog fires above 1000).
BACKLOG_CAP = 1001
BACKLOG = Gauge("cso_outbox_backlog",
                f"Outbox events not yet published, counted up to {BACKLOG_CAP} "
                f"({BACKLOG_CAP}: more than {BACKLOG_CAP - 1})", ["service"])
# The backlog is counted at most this often (Relay.run): after every drained round it cost 1,054
# counts of 6.6 ms of PostgreSQL each on a Sichuan backfill (registry, bench --statements), for a
# gauge Prometheus scrapes every 15 s. The round that finds nothing left after publishing counts
# too, so the gauge reads 0 a poll after the relay drained.
BACKLOG_SECONDS = 1.0
# How long a batch's publishes may wait for JetStream's acknowledgements (as js.publish's timeout did).
PUBLISH_ACK_SECONDS = 10.0
HOLE_WAIT = Gauge("cso_outbox_hole_wait_seconds",
                  "How long the relay has waited at a hole not yet settled (0: none)", ["service", "outbox"])


def ddl(schema: str) -> list[str]:
    """Tables every service keeps in its own schema: outbox, inbox (dedup), consumer positions."""
    return [
        f"""CREATE TABLE "{schema}".outbox (
            seq bigserial PRIMARY KEY,
            event_id uuid NOT NULL UNIQUE,
            subject text NOT NULL,
            type text NOT NULL,
            aggregate_id text,
            data bytea NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            published_at timestamptz,
            stream text,
            stream_seq bigint)""",
        f'CREATE INDEX outbox_unpublished ON "{schema}".outbox (seq) WHERE published_at IS NULL',
        f'CREATE INDEX outbox_aggregate ON "{schema}".outbox (aggregate_id, seq)',
        f"""CREATE TABLE "{schema}".inbox (
            event_id uuid PRIMARY KEY,
            stream text NOT NULL,
            stream_seq bigint NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now())""",
        f"""CREATE TABLE "{schema}".consumer_position (
            stream text PRIMARY KEY,
            last_seq bigint NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now())""",
        # The identity of each stream as last seen (its creation time), to notice a recreated one.
        f"""CREATE TABLE "{schema}".bus_stream (
            stream text PRIMARY KEY,
            created timestamptz,
            last_seq bigint NOT NULL,
            messages bigint NOT NULL DEFAULT 0,
            checked_at timestamptz NOT NULL DEFAULT now())""",
    ]


def written_once_ddl(schema: str, tables: Sequence[str] = ("outbox",)) -> list[str]:
    """The migration from rows marked published one by one to a position per outbox (issue 23):
    a `txid` on every row, `outbox_relay` and `outbox_stream`. Rows there before get txid 0, in seq
    order below every later one; the position starts just below the first row not yet published
    (rows published after it are published again: harmless, see the module's docstring).
    `published_at`, `stream` and `stream_seq` stay for the replicas of before (see below).
    The txid went again in `seq_position_ddl` (a position in seq order).
    History, like `ddl`: a later change is a migration of its own. One exception: the (txid, seq)
    index this built (without CONCURRENTLY: a scan of the busiest table blocking its writers,
    review finding 10), which the next migration dropped, is no longer built. This schema (8843572)
    was never released: it lived on main for under an hour of one working session, and every
    release runs this migration and the next together, so no database depends on the index (the
    next migration drops it IF EXISTS, for the development databases that have it)."""
    s = f'"{schema}"'
    out = [
        f"""CREATE TABLE {s}.outbox_relay (
            outbox text PRIMARY KEY,
            txid xid8 NOT NULL,
            seq bigint NOT NULL,
            published_at timestamptz)""",
        f"""CREATE TABLE {s}.outbox_stream (
            outbox text NOT NULL,
            stream text NOT NULL,
            last_seq bigint NOT NULL,
            first_published_at timestamptz NOT NULL,
            published_at timestamptz NOT NULL,
            PRIMARY KEY (outbox, stream))""",
    ]
    for table in tables:
        out += [
            # A constant default fills the old rows without rewriting the table; new rows get
            # their transaction's id.
            f"ALTER TABLE {s}.{table} ADD COLUMN txid xid8 NOT NULL DEFAULT '0'",
            f"ALTER TABLE {s}.{table} ALTER COLUMN txid SET DEFAULT pg_current_xact_id()",
            f"""INSERT INTO {s}.outbox_relay (outbox, txid, seq, published_at)
                SELECT '{table}', '0', coalesce(min(seq) FILTER (WHERE published_at IS NULL) - 1,
                                                 max(seq), 0), max(published_at)
                FROM {s}.{table}""",
            f"""INSERT INTO {s}.outbox_stream (outbox, stream, last_seq, first_published_at, published_at)
                SELECT '{table}', stream, max(stream_seq), min(published_at), max(published_at)
                FROM {s}.{table} WHERE published_at IS NOT NULL AND stream IS NOT NULL GROUP BY stream""",
            # Replicas of the version before run on during the roll (infra/README.md, Upgrade): a
            # new row's published_at is its creation time, so their relays leave it alone (it
            # never enters {table}_unpublished either) and their purge keeps it its 30 days.
            # The three columns go in a later migration, once no such replica is left.
            f"ALTER TABLE {s}.{table} ALTER COLUMN published_at SET DEFAULT now()",
        ]
    return out


def seq_position_ddl(schema: str, tables: Sequence[str] = ("outbox",)) -> list[str]:
    """The position becomes a seq (see the module's docstring); the txid column of
    `written_once_ddl` goes. A row's seq is drawn after its transaction has its id. The new
    position is just below the first row the old one had not passed (some are published again:
    harmless). History, like `ddl`.
    Dropping a column the release before added goes against infra/README's Upgrade rule (drop only
    once no replica of before is left), and is safe here only because that release never was:
    `written_once_ddl`'s schema (8843572) lived on main for under an hour of one session and was
    never deployed, so no running replica reads txid. Both migrations run in the same upgrade."""
    s = f'"{schema}"'
    out = []
    for table in tables:
        out += [
            f"""UPDATE {s}.outbox_relay r SET seq = coalesce(
                    (SELECT min(o.seq) - 1 FROM {s}.{table} o WHERE (o.txid, o.seq) > (r.txid, r.seq)),
                    (SELECT max(o.seq) FROM {s}.{table} o), r.seq)
                WHERE r.outbox = '{table}'""",
            f"DROP INDEX IF EXISTS {s}.{table}_position",
            f"ALTER TABLE {s}.{table} DROP COLUMN txid",
            f"""ALTER TABLE {s}.{table} ALTER COLUMN seq SET DEFAULT
                CASE WHEN pg_current_xact_id() IS NOT NULL THEN nextval('{s}.{table}_seq_seq'::regclass) END""",
        ]
    return out + [f"ALTER TABLE {s}.outbox_relay DROP COLUMN txid"]


def pending(schema: str, table: str = "outbox", alias: str = "") -> str:
    """A condition on `table`'s rows (named `alias` in the query, if it names them): not yet
    published. For counts (the backlog, tests, the benchmark)."""
    row = f"{alias}." if alias else ""
    return f"{row}seq > (SELECT r.seq FROM \"{schema}\".outbox_relay r WHERE r.outbox = '{table}')"


def count_pending(schema: str, table: str = "outbox", where: str = "TRUE") -> str:
    """SQL: how many rows of `table` (and `where`, on its rows as `o`) wait to be published."""
    return f'SELECT count(*) FROM "{schema}".{table} o WHERE {pending(schema, table, "o")} AND ({where})'


def subjects_regex(patterns: Sequence[str]) -> str:
    """A PostgreSQL regular expression (`~`) matching the subjects NATS subject `patterns` take
    (`*` one token, `>` one or more at the end): which of the outbox's rows go to a stream."""
    def one(pattern: str) -> str:
        tokens = []
        for token in pattern.split("."):
            tokens.append("[^.]+" if token == "*" else ".+" if token == ">" else re.escape(token))
        return r"\.".join(tokens)
    return "^(" + "|".join(one(p) for p in patterns) + ")$"


async def rewind(conn: AsyncConnection, schema: str, table: str = "outbox", stream: str | None = None,
                 subjects: Sequence[str] = (), since: datetime | None = None) -> None:
    """Publish again the rows of `table` from the first one whose subject goes to `stream`
    (`subjects`, its NATS subjects) made at or after `since` (all it holds, if None): BusWatch,
    when the bus lost `stream`. What was recorded as acknowledged there is forgotten until the relay
    publishes it again. The position is one for every stream, so the rows of other streams above
    that row go out again too (JetStream's duplicate window and every consumer's inbox drop them);
    not from the outbox's first row (review finding 5: a gap on CSO_OPS republished every stream's
    30 days). Never moves the position forward. Without `subjects`, from the first row."""
    s = f'"{schema}"'
    if not subjects:
        await conn.execute(text(f"UPDATE {s}.outbox_relay SET seq = 0 WHERE outbox = :o"), {"o": table})
    else:
        await conn.execute(text(
            f"UPDATE {s}.outbox_relay r SET seq = first.seq - 1 FROM "
            f"(SELECT min(seq) AS seq FROM {s}.{table} WHERE subject ~ :re "
            "AND created_at >= coalesce(CAST(:since AS timestamptz), '-infinity')) first "
            "WHERE r.outbox = :o AND first.seq - 1 < r.seq"),
            {"o": table, "re": subjects_regex(subjects), "since": since})
    if stream is not None:
        await conn.execute(text(f'DELETE FROM {s}.outbox_stream WHERE outbox = :o AND stream = :s'),
                           {"o": table, "s": stream})


def replay_sql(schema: str, where: str, table: str = "outbox") -> str:
    """For `cso replay` (asyncpg, `where` on the outbox's rows with $1): move the position back to
    just below the first row `where` holds, so that every row from there on is published again.
    Never moves it forward."""
    s = f'"{schema}"'
    return (f"UPDATE {s}.outbox_relay r SET seq = first.seq - 1 FROM "
            f"(SELECT min(seq) AS seq FROM {s}.{table} WHERE {where}) first "
            f"WHERE r.outbox = '{table}' AND first.seq - 1 < r.seq")


async def add(conn: AsyncConnection, schema: str, topology: Topology,
              events: Iterable[tuple[Envelope[Any], str | None]]) -> int:
    """Stage events in the caller's transaction; they are published only if it commits."""
    return await add_messages(conn, schema, [(e.event_id, topology.event_subject(e.type, e.region), e.type,
                                              aggregate, encode(e)) for e, aggregate in events])


async def add_messages(conn: AsyncConnection, schema: str,
                       rows: Sequence[tuple[UUID, str, str, str | None, bytes]], table: str = "outbox") -> int:
    """Stage messages of any kind on subjects of their own (id, subject, type, aggregate, data), e.g.
    registry's receipts (in a table of their own, `table`, with its own relay): a stream must take
    the subject. An id already staged is left as it is."""
    if rows:
        # One statement for the whole batch (an executemany runs the insert once per row), in the
        # order given: the relay publishes by seq.
        ids, subjects, types, aggregates, data = (list(c) for c in zip(*rows, strict=True))
        await conn.execute(text(
            f'INSERT INTO "{schema}".{table} (event_id, subject, type, aggregate_id, data) '
            "SELECT e, s, t, a, d FROM unnest(CAST(:e AS uuid[]), CAST(:s AS text[]), CAST(:t AS text[]), "
            "CAST(:a AS text[]), CAST(:d AS bytea[])) WITH ORDINALITY AS u(e, s, t, a, d, n) "
            # An id already in the outbox is filtered out before the insert, so it draws no seq:
            # ON CONFLICT alone evaluates the seq's default first, and every re-staged id (a
            # command retried, a message redelivered) would leave a hole that holds the relay
            # until every transaction of the server running then has ended (module docstring).
            # ON CONFLICT stays for the race (a transaction staging the same id, not committed yet).
            f'WHERE NOT EXISTS (SELECT 1 FROM "{schema}".{table} x WHERE x.event_id = u.e) ORDER BY n '
            "ON CONFLICT (event_id) DO NOTHING"),
            {"e": ids, "s": subjects, "t": types, "a": aggregates, "d": data})
    return len(rows)


@dataclass(frozen=True)
class Probe:
    """Every seq up to `last_seq` was drawn by a transaction whose id is below `xid` (an id the
    relay took after reading `last_seq`): once none below it runs any more, the holes up to
    `last_seq` are final (the module's docstring)."""

    last_seq: int
    xid: str   # the relay's own transaction id (xid8), as text


def publishable(position: int, seqs: Sequence[int], settled: int) -> tuple[int, int]:
    """Of the visible seqs above `position` (ascending), how many to publish now and the position
    after them. Every seq up to `settled` is final (holes there will stay holes): its rows are
    taken, then the rows that follow without a hole. The caller passes a `settled` no further than
    the seqs it has seen."""
    taken, at = 0, position
    for seq in seqs:
        if seq <= settled or seq == max(at, settled) + 1:
            taken, at = taken + 1, seq
        else:
            break
    return taken, max(at, settled)


class Relay:
    """Publishes the outbox's rows above its position in seq order, pipelined, each with
    `Nats-Msg-Id` = event id, then records the new position: one statement a batch.

    JetStream drops a second publish of the same id inside its duplicate window, and every consumer
    drops an event id it has already applied, so a crash between publish and recording the position
    costs a harmless re-publish, never a double count.
    """

    def __init__(self, engine: AsyncEngine, js: JetStreamContext, schema: str, service: str,
                 batch: int = 500, poll_seconds: float = 0.5,
                 retention: timedelta = timedelta(days=30), table: str = "outbox") -> None:
        self.engine, self.js, self.schema, self.service = engine, js, schema, service
        self.table = table  # another table of the outbox's columns, e.g. registry's receipt_outbox
        self.batch, self.poll_seconds, self.retention = batch, poll_seconds, retention
        self.wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._waiting = False   # for a stream: said once, not every second
        self._probe: Probe | None = None   # of the hole the relay stopped at, if any
        self._probed_at = 0.0   # monotonic time of that probe, for cso_outbox_hole_wait_seconds

    def notify(self) -> None:
        self.wake.set()

    async def publish_pending(self) -> int:
        """Publish one batch; returns how many rows it published."""
        s = f'"{self.schema}"'
        probe = self._probe
        async with self.engine.begin() as conn:
            # One statement: the turn (one relay of the service's replicas at a time, the others
            # skip theirs: no row), the position, the rows above it, and whether the probe's
            # transactions have all ended, all in one snapshot.
            rows = (await conn.execute(text(
                f"SELECT r.seq AS position, o.seq, o.event_id, o.subject, o.data, "
                "pg_snapshot_xmin(pg_current_snapshot()) >= CAST(CAST(:xid AS text) AS xid8) AS settled "
                f"FROM {s}.outbox_relay r LEFT JOIN LATERAL (SELECT seq, event_id, subject, data "
                f"FROM {s}.{self.table} WHERE seq > r.seq ORDER BY seq LIMIT :n) o ON true "
                "WHERE r.outbox = :o AND pg_try_advisory_xact_lock(hashtext(:k)) ORDER BY o.seq"),
                {"o": self.table, "k": f"cso outbox relay {self.schema}.{self.table}", "n": self.batch,
                 "xid": probe.xid if probe else None})).all()
            if not rows:
                return 0   # another replica's turn
            position = rows[0].position
            visible = [r for r in rows if r.seq is not None]
            settled = position
            if probe is not None and rows[0].settled:
                # Every seq up to the probe's is final; rows beyond a batch are not seen yet.
                settled = probe.last_seq if len(visible) < self.batch else min(probe.last_seq, visible[-1].seq)
            taken, new_position = publishable(position, [r.seq for r in visible], settled)
            if taken < len(visible) and probe is None:
                # Stopped at a hole: probe it. The sequence's last value first, then a transaction
                # id of our own, assigned after every id of a transaction that drew a seq up to it
                # (a snapshot's xmax will not do: it is the last ended transaction's id + 1, and
                # transactions running with later ids are not in it).
                last_seq = (await conn.execute(text(
                    f"SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END "
                    f"FROM {s}.{self.table}_seq_seq"))).scalar_one()
                xid = (await conn.execute(text("SELECT pg_current_xact_id()::text"))).scalar_one()
                self._probe = Probe(int(last_seq), str(xid))
                self._probed_at = time.monotonic()
            elif probe is not None and new_position >= probe.last_seq:
                self._probe = None
            # A hole waits for transactions anywhere on the server (one idle in transaction holds
            # every relay): the operators see how long (an alert, infra/prometheus/rules.yml).
            HOLE_WAIT.labels(self.service, self.table).set(
                time.monotonic() - self._probed_at if self._probe is not None else 0)
            if new_position == position:
                return 0
            publish = visible[:taken]
            acks = await self._publish(publish)
            if CRASH_AFTER_PUBLISH and publish:
                # Fault injection (tests/faults): die between publish and commit, as a kill -9 would.
                os._exit(137)
            last: dict[str, int] = {}
            for ack in acks:
                last[ack.stream] = max(last.get(ack.stream, 0), ack.seq)
            # Compare and set: a rewind (BusWatch, cso replay) since the position was read stands.
            await conn.execute(text(
                f"WITH moved AS (UPDATE {s}.outbox_relay SET seq = :new, published_at = now() "
                "WHERE outbox = :o AND seq = :old RETURNING outbox) "
                f"INSERT INTO {s}.outbox_stream AS k (outbox, stream, last_seq, first_published_at, published_at) "
                "SELECT moved.outbox, u.stream, u.last_seq, now(), now() FROM moved, "
                "unnest(CAST(:streams AS text[]), CAST(:seqs AS bigint[])) AS u(stream, last_seq) "
                "ON CONFLICT (outbox, stream) DO UPDATE SET last_seq = GREATEST(k.last_seq, excluded.last_seq), "
                "published_at = excluded.published_at"),
                {"o": self.table, "old": position, "new": new_position,
                 "streams": list(last), "seqs": list(last.values())})
        PUBLISHED.labels(self.service).inc(len(publish))
        return len(publish)

    async def _publish(self, rows: Sequence[Any]) -> list[PubAck]:
        """Every row's publish goes out at once, then the acknowledgements of all are awaited
        together. nats-py's `publish_async` answers on one reply subscription into a future per
        message; `js.publish` made each a request of its own (a task, a reply token and a timer per
        message: 11% of registry's CPU on a Sichuan backfill, bench/README.md). A publish the stream
        refuses raises its error here (NoStreamResponseError: no stream takes the subject)."""
        futures: list[asyncio.Future[PubAck]] = []
        try:
            for r in rows:
                futures.append(await self.js.publish_async(
                    r.subject, bytes(r.data), headers={"Nats-Msg-Id": str(r.event_id)}))
            return list(await asyncio.wait_for(asyncio.gather(*futures), PUBLISH_ACK_SECONDS))
        finally:
            for future in futures:
                if not future.done():
                    # Given up on (an error, or no answer in time): cancelling it frees its place
                    # among publish_async's pending publishes. The row is published again next time;
                    # JetStream drops the copy (Nats-Msg-Id).
                    future.cancel()

    async def backlog(self) -> int:
        """How many rows wait above the position, counted up to BACKLOG_CAP (1001: "more than
        1000"). A count(*) of every row pending read each of them after every drained batch (14.6 µs
        of PostgreSQL per event for registry's receipts on a Sichuan backfill, bench/README.md);
        the LIMIT bounds it to 1001 entries of the seq index (the primary key), however deep the
        backlog. The last seq less the position, one index probe, was cheaper but counted seqs, not
        rows: every hole (a transaction rolled back, an insert that met a conflict) and, after a
        rewind, every hole ever left between the new position and the last row. The count is 0
        exactly when nothing is pending and above 1000 exactly when more than 1000 rows are: the
        alerts' conditions (CsoOutboxStalled, CsoOutboxBacklog)."""
        async with self.engine.connect() as conn:
            n = (await conn.execute(text(
                f'SELECT count(*) FROM (SELECT 1 FROM "{self.schema}".{self.table} o '
                f"WHERE {pending(self.schema, self.table, 'o')} LIMIT :cap) p"),
                {"cap": BACKLOG_CAP})).scalar_one()
        BACKLOG.labels(self.service).set(n)
        return int(n)

    async def purge(self) -> int:
        """Drop the published rows made longer ago than the retention."""
        s = f'"{self.schema}"'
        async with self.engine.begin() as conn:
            result = await conn.execute(text(
                f"DELETE FROM {s}.{self.table} o USING {s}.outbox_relay r WHERE r.outbox = :o "
                "AND o.seq <= r.seq AND o.created_at < now() - CAST(:keep AS interval)"),
                {"o": self.table, "keep": self.retention})
        return int(result.rowcount)

    async def _ensure_position(self) -> None:
        """Its migration made the position's row; made here too, so that a missing row cannot stop
        the relay for good (it would find nothing above a position that is not there)."""
        async with self.engine.begin() as conn:
            await conn.execute(text(f'INSERT INTO "{self.schema}".outbox_relay (outbox, seq) '
                                    "VALUES (:o, 0) ON CONFLICT DO NOTHING"), {"o": self.table})

    async def run(self) -> None:
        last_purge = last_count = 0.0
        ensured = False
        drained = True      # the last round found nothing to publish
        loop = asyncio.get_running_loop()

        async def count(now: bool = False) -> None:
            # Once a BACKLOG_SECONDS while the relay publishes, waits at a hole, is not the one
            # whose turn it is (another replica's relay publishes), or fails (the bus away: the
            # alerts must see the rows pile up); and as soon as it has drained.
            nonlocal last_count
            if now or loop.time() - last_count >= BACKLOG_SECONDS:
                last_count = loop.time()
                await self.backlog()

        while True:
            try:
                if not ensured:
                    await self._ensure_position()
                    ensured = True
                while (n := await self.publish_pending()) == self.batch:
                    drained = False
                    await count()
                await count(now=not n and not drained)
                drained = not n
                if loop.time() - last_purge > 3600:
                    last_purge = loop.time()
                    await self.purge()
            except asyncio.CancelledError:
                raise
            except NoStreamResponseError:
                # No stream takes the subject: the operator has not made it (again) yet. The rows
                # wait in the outbox; the service's readiness names the stream.
                if not self._waiting:
                    log.warning("outbox relay of %s: no stream takes its events yet (%s); holding them",
                                self.service, MIGRATE_HINT)
                self._waiting = True
                with contextlib.suppress(Exception):
                    await count()
                await asyncio.sleep(1)
                continue
            except Exception:
                # The bus or the database is away; the rows wait in the outbox.
                log.exception("outbox relay of %s failed; retrying", self.service)
                with contextlib.suppress(Exception):   # the database may be the one away
                    await count()
                await asyncio.sleep(1)
            self._waiting = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.poll_seconds)
            self.wake.clear()

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name=f"outbox-relay-{self.service}-{self.table}")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
