"""The waiting room: intake facts that cannot be decided yet, kept in PostgreSQL until they can.

A fact may overtake the one it follows (a deregistration before its filing, a hub's dissolution
before its establishment) or its county's divisions, which come on another stream. Such a fact
(`NotYet`, naming what it `waits_for`) is parked in registry's `waiting` table and acked: it no
longer rides on JetStream redeliveries, which gave up after about 30 s. It is decided again:

- in the transaction that applies what it waits for: a batch of intake facts (`settle`), the
  divisions of its county (`handlers.Waking`, after `cso.reference.DivisionsHandler`), each woken
  fact waking those that wait for it in turn;
- once that transaction has committed, in a short one of its own (`rechecking`, from the
  handlers' `after_commit`, which the consumer calls after its commit): the facts waiting for the
  keys it applied, and for what the facts it parked wait for, whose need is on record now
  (`recheck`, by the `waits_for` index: a batch does not read the whole room). Decided as the
  sweep decides them (`settle`: same verdicts, receipts, wake-ups in turn);
- by the periodic sweep (`Room.sweep`, every CSO_WAITING_SWEEP_SECONDS), for what arrived another
  way (a command, an import), for what a failed check after a commit left, and for facts that
  waited too long: after CSO_WAITING_MAX_DAYS (7) such a fact is refused (`waited_too_long`), with
  a receipt and a dead letter.

Why the check after the commit: with two replicas, A may park a fact F waiting for X while B, in a
concurrent transaction, applies X. B looked for facts waiting on X before A committed F, and A
looked for X before B committed it: neither transaction sees the other's row, and F would wait for
the sweep (up to a minute; the publisher's `accepted` receipt that late). Each side looks again
once it has committed: A for X (the key F waits for), B for facts waiting on X. One of the two
commits second, and its check starts after both commits; each of its statements (READ COMMITTED)
sees every row committed before it began, so it finds F and X both on record, takes F out of the
room and decides it. F held at that moment by another transaction (the other side's check, the
sweep, a batch that applied X: each decides it, and should it fail, the sweep does) is skipped
(SKIP LOCKED), never decided twice. Facts the check accepts apply keys in turn, looked at again the same way. A check
that fails is logged; the committed batch is acked as usual, and the sweep decides what it left
(tests/integration/test_registry_waiting_race.py drives both orders by hand).

Lock order, and why the check and the sweep wait for a lock only briefly: a batch (and `Waking`)
locks the records its facts touch first (record_batch: organizations, hubs, … FOR UPDATE, in id
order), then takes the facts waiting for what it applied out of the room (store.take_waiting: the
DELETE locks their rows). The check after a commit and the sweep lock the other way round: a
waiting fact's row first (store.take_satisfied_waiting, take_due_waiting), then, deciding it, the
records it touches. A check holding fact F and waiting for organization X, while a batch holds X
and waits to take F, is a deadlock; PostgreSQL breaks it only after deadlock_timeout (1 s), by
aborting either side: the batch, then, fails and is delivered again. So the check's and the
sweep's transactions (theirs only: never a batch's, which waits as long as it takes) wait at most
LOCK_WAIT (200 ms) for any lock (store.wait_for_locks_at_most): one that waits longer gives way
before a deadlock is even looked for, rolls back (what it took is back in the room), and leaves
its facts to the transaction holding the lock (a batch decides the facts waiting for what it
applies, and checks again after its commit) or to the next sweep. This is no failure, only a
debug line: the check is a shortcut, the sweep decides whatever it leaves
(tests/integration/test_registry_waiting_race.py holds an organization's row and runs both).

The publisher hears `waiting` (with what it waits for and until when), then `accepted` or
`refused` (services/registry/verdicts.py); operators see the count and the oldest (metrics below,
the pipeline dashboard). The clock is injected, so that tests can let days pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from prometheus_client import Counter, Gauge
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from contracts import ContractError, Envelope, Topology, encode, parse_event
from contracts.envelope import event_field

from . import store
from .domain import NotYet, Rejected
from .record import Recorded, record_batch

log = logging.getLogger(__name__)
Clock = Callable[[], datetime]

WAITING = Gauge("cso_waiting_facts", "Intake facts in registry's waiting room", ["service"])
OLDEST = Gauge("cso_waiting_oldest_seconds", "How long the oldest fact in the waiting room has waited",
               ["service"])
EXPIRED = Counter("cso_waiting_expired_total", "Waiting facts refused for having waited too long", ["service"])
SWEEP_BATCH = 500
# How long the check after a commit and the sweep wait for a lock (module docstring): well under
# PostgreSQL's deadlock_timeout (1 s), so that they give way before a deadlock is even looked for.
LOCK_WAIT = timedelta(milliseconds=200)


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def key_of(envelope: Envelope[Any], recorded: Recorded) -> str:
    """What an accepted fact may let waiting facts go on with: the record it touched."""
    kind = ("organization" if envelope.type.startswith("Organization") else
            "hub" if envelope.type.startswith("Hub") else
            "base" if envelope.type.startswith("IncubationBase") else
            "project" if envelope.type in ("ProjectFunded", "FundedProjectEnded") else
            "facility" if envelope.type.startswith("Facility") else "party")
    return f"{kind}:{recorded.aggregate_id}"


@dataclass
class Waiter:
    envelope: Envelope[Any]
    reason: NotYet
    arrived_at: datetime
    until: datetime
    seq: int | None = None          # its place in the room (arrival order), once parked

    @property
    def in_room(self) -> bool:
        return self.seq is not None


@dataclass
class Settled:
    """What one transaction decided, for the receipts: `from_room` marks facts woken from the room
    (their messages were acked long ago, so their dead letters are staged here)."""

    accepted: list[tuple[Envelope[Any], Recorded]] = field(default_factory=list)
    refused: list[tuple[Envelope[Any], Rejected, bool]] = field(default_factory=list)
    waiting: list[Waiter] = field(default_factory=list)        # newly parked: a `waiting` receipt each
    refused_after: dict[Any, datetime] = field(default_factory=dict)  # event_id -> waited since
    # For the check once the transaction commits (Room.recheck): the keys it applied, and what the
    # facts it parked wait for.
    applied: set[str] = field(default_factory=set)
    parked_for: set[str] = field(default_factory=set)

    @property
    def unchecked(self) -> set[str]:
        """The keys to look at again after the commit: another replica may have parked a fact for
        what this transaction applied, or applied what a fact parked here waits for."""
        return self.applied | self.parked_for


class Room:
    def __init__(self, topology: Topology, clock: Clock, max_wait: timedelta) -> None:
        if max_wait <= timedelta(0):
            raise ValueError(f"CSO_WAITING_MAX_DAYS: {max_wait} must be more than nothing")
        self.topology, self.clock, self.max_wait = topology, clock, max_wait

    async def settle(self, conn: AsyncConnection, decided: Sequence[tuple[Envelope[Any], Recorded | Rejected]],
                     keys: set[str] | None = None, woken: Sequence[Waiter] = ()) -> Settled:
        """Take a batch's decisions; decide again, in this transaction, the facts that waited for
        what it applied (`keys`: also those of divisions), and those they let go on, in arrival
        order; park what still waits."""
        now = self.clock()
        settled = Settled()
        keys = set(keys or ())
        pending: list[Waiter] = []
        for envelope, result in decided:
            if isinstance(result, NotYet):
                pending.append(Waiter(envelope, result, now, now + self.max_wait))
            elif isinstance(result, Rejected):
                settled.refused.append((envelope, result, False))
            else:
                settled.accepted.append((envelope, result))
                keys.add(key_of(envelope, result))
        retry = list(woken)
        settled.applied |= keys
        while keys or retry:
            retry += await self._take(conn, sorted(keys))
            retry += [w for w in pending if w.reason.waits_for in keys]
            pending = [w for w in pending if w.reason.waits_for not in keys]
            keys = set()
            if not retry:
                break
            results = await record_batch(conn, [w.envelope for w in retry], self.topology)
            for waiter, result in zip(retry, results, strict=True):
                if isinstance(result, NotYet):
                    waiter.reason = result
                    if waiter.until <= now:
                        expired = Rejected(result.field, f"waited since {waiter.arrived_at.isoformat()} "
                                                         f"(CSO_WAITING_MAX_DAYS): {result.message}",
                                           code="waited_too_long")
                        settled.refused.append((waiter.envelope, expired, waiter.in_room))
                        settled.refused_after[waiter.envelope.event_id] = waiter.arrived_at
                        EXPIRED.labels("registry").inc()
                    else:
                        pending.append(waiter)
                elif isinstance(result, Rejected):
                    settled.refused.append((waiter.envelope, result, waiter.in_room))
                    settled.refused_after[waiter.envelope.event_id] = waiter.arrived_at
                else:
                    settled.accepted.append((waiter.envelope, result))
                    keys.add(key_of(waiter.envelope, result))
            settled.applied |= keys
            retry = []
        settled.waiting = [w for w in pending if not w.in_room]
        settled.parked_for = {w.reason.waits_for for w in pending}
        await self._park(conn, pending)
        return settled

    @staticmethod
    def _waiters(rows: Sequence[Any]) -> list[Waiter]:
        """Facts taken out of the room (store.take_waiting, take_due_waiting), in arrival order."""
        waiters = []
        for row in sorted(rows, key=lambda r: r["seq"]):
            try:
                envelope = parse_event(bytes(row["data"]))
            except ContractError as e:  # the contract changed under it: refused when decided
                log.error("registry: a waiting fact %s no longer parses: %s", row["event_id"], e.reason)
                continue
            waiters.append(Waiter(envelope, NotYet(row["field"], row["reason"], waits_for=row["waits_for"]),
                                  row["arrived_at"], row["until"], seq=row["seq"]))
        return waiters

    async def _take(self, conn: AsyncConnection, keys: list[str]) -> list[Waiter]:
        """Take the facts waiting for these keys out of the room (locked: one transaction decides
        each), in arrival order."""
        return self._waiters(await store.take_waiting(conn, keys))

    async def _park(self, conn: AsyncConnection, waiters: Sequence[Waiter]) -> None:
        await store.park_waiting(conn, [
            {"seq": w.seq, "event_id": w.envelope.event_id, "source": w.envelope.source, "type": w.envelope.type,
             "region": w.envelope.region, "waits_for": w.reason.waits_for, "field": event_field(w.reason.field),
             "reason": w.reason.message, "data": encode(w.envelope), "arrived_at": w.arrived_at, "until": w.until}
            for w in waiters])

    async def sweep(self, conn: AsyncConnection, limit: int = SWEEP_BATCH) -> Settled:
        """Decide again the facts whose need is on record now (it came another way: a command, an
        import) and those that waited too long (refused, unless they apply now)."""
        woken = self._waiters(await store.take_due_waiting(conn, self.clock(), limit))
        return await self.settle(conn, [], woken=woken)

    async def recheck(self, conn: AsyncConnection, keys: Collection[str]) -> Settled:
        """Decide again the facts waiting for these keys whose need is on record now, as the sweep
        does (and those they let go on); run after a transaction committed (`rechecking`)."""
        woken = self._waiters(await store.take_satisfied_waiting(conn, sorted(keys)))
        return await self.settle(conn, [], woken=woken)

    async def measure(self, conn: AsyncConnection) -> tuple[int, float]:
        """(how many wait, seconds the oldest has waited), set on the metrics."""
        count, oldest = await store.waiting_extent(conn)
        age = max(0.0, (self.clock() - oldest).total_seconds()) if oldest is not None else 0.0
        WAITING.labels("registry").set(count)
        OLDEST.labels("registry").set(age)
        return int(count), age


async def _deciding(engine: AsyncEngine, decide: Callable[[AsyncConnection], Awaitable[Settled]],
                    tell: Callable[[AsyncConnection, Settled], Any]) -> Settled | None:
    """One short transaction of the check after a commit or of the sweep: `decide`, then tell what
    it decided. It waits at most LOCK_WAIT for a lock (module docstring: it locks in the order
    opposite to a batch's); None when it waited longer, rolled back: what it took is back in the
    room, for the next check or the sweep."""
    try:
        async with engine.begin() as conn:
            await store.wait_for_locks_at_most(conn, LOCK_WAIT)
            settled = await decide(conn)
            if settled.accepted or settled.refused:
                await tell(conn, settled)
        return settled
    except DBAPIError as e:
        if not store.lock_not_available(e):
            raise
        return None


async def rechecking(engine: AsyncEngine, room: Room, tell: Callable[[AsyncConnection, Settled], Any],
                     keys: Collection[str]) -> None:
    """After a transaction that applied or parked facts committed: decide, each in a short
    transaction of its own, the waiting facts it let go on that another replica's concurrent
    transaction kept from it (module docstring). Facts it accepts apply keys in turn, which another
    replica may be parking for at the same moment: those are looked at again, until nothing is
    accepted. A failure is only logged: the sweep decides what is left, and the batch (committed,
    acked) is not taken again."""
    unchecked = set(keys)
    try:
        while unchecked:
            settled = await _deciding(engine, functools.partial(room.recheck, keys=unchecked), tell)
            if settled is None:
                log.debug("registry: the check after a commit met a lock held by another transaction; "
                          "the facts waiting for %d keys are left to that transaction's check or the sweep",
                          len(unchecked))
                return
            # Only what was applied: a fact taken again that still waits (its need on record but
            # not as it needs it) is back in the room, and would be taken again and again.
            unchecked = settled.applied
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("registry: deciding the waiting facts of %d keys after a commit failed; "
                      "the sweep decides them", len(keys))


async def sweep(engine: AsyncEngine, room: Room, tell: Callable[[AsyncConnection, Settled], Any]) -> None:
    """One sweep of the room: SWEEP_BATCH facts a transaction, until a transaction decides fewer.
    One that meets a lock held longer than LOCK_WAIT leaves the rest to the next sweep."""
    while True:
        settled = await _deciding(engine, room.sweep, tell)
        if settled is None:
            log.debug("registry: the sweep met a lock held by another transaction; the next sweep goes on")
            return
        if len(settled.accepted) + len(settled.refused) < SWEEP_BATCH:
            return


def sweeping(engine: AsyncEngine, room: Room, tell: Callable[[AsyncConnection, Settled], Any],
             interval: float) -> Callable[[], Any]:
    """The background job: sweep, tell (receipts), measure; every `interval` seconds."""

    async def run() -> None:
        while True:
            try:
                await sweep(engine, room, tell)
                async with engine.connect() as conn:
                    await room.measure(conn)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("registry: sweeping the waiting room failed; trying again")
            with contextlib.suppress(TimeoutError):
                await asyncio.sleep(interval)

    return run
