"""A durable JetStream pull consumer that applies each event exactly once, a batch per transaction.

Per pull: parse and validate every message (a broken one is dead-lettered at once), claim the event
ids in the service's inbox (an id already there is a duplicate: skipped), let the handler apply the
fresh ones inside the same transaction, commit, ack, then run the handler's `after_commit`, if it
has one (after the acks: its further transaction must not hold them back). Any number of replicas
may share the durable consumer: JetStream hands each message to one of them, and the inbox's
primary key makes a redelivered message that another replica already applied a no-op.

The inbox keeps a row per event id, written by one INSERT a batch (issue 23 asked whether a row per
batch would cost less; `bench/dedup.py` measures both). A row per batch with the ids in a `uuid[]`
has no unique constraint to decide a race between replicas: to stay exact it needs a lock per id
taken before the lookup (in a statement of its own, as a statement sees only what committed
before it started), then a GIN probe per id, then the insert: 10 to 50 times slower than the
primary key (1,700 to 7,300 events/s against 14,000 to 99,000 in the runs of bench/README.md),
which does lock, lookup and insert in one index descent per id. A watermark on the
stream sequence is not exact either: a redelivery and a republished event (a new sequence, the
same id) come in any order.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import io
import json
import logging
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Protocol
from uuid import UUID

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from contracts import PAYLOAD_BY_TYPE, ContractError, Envelope, Topology, parse_event, snake
from contracts.deadletter import MAX_DATA_CHARACTERS, event_id_of
from contracts.subjects import region_tokens

from . import database
from .partitions import Partition, PartitionError, family_durables, layout_durables, partition_filters
from .pull import Pull
from .streams import MIGRATE_HINT

log = logging.getLogger(__name__)
STREAM_NOT_FOUND = 10059   # JetStream's error code
POSITION_SEPARATOR = "#"   # consumer_position's key of a partition: `<stream>#p<i>`

APPLIED = Counter("cso_events_applied_total", "Events applied", ["service", "type"])
SCREENED = Counter("cso_events_screened_total", "Events acked unparsed: no handler of them by subject",
                   ["service"])
DUPLICATES = Counter("cso_events_duplicate_total", "Events skipped as already applied", ["service"])
DEADLETTERED = Counter("cso_deadletter_total", "Messages sent to the dead-letter subject",
                       ["service", "stream"])
# Per durable: the replicas of one durable report the same value (max them), while the partitions
# of a service (cso/partitions.py) each have a durable of their own over disjoint provinces (sum
# them): infra/prometheus/rules.yml.
LAG = Gauge("cso_consumer_lag", "Messages in the stream not yet delivered to the durable consumer",
            ["service", "stream", "durable"])
# How a consumer is stopped (see Consumer.stop): cancelled up to this many times, waiting each time.
STOP_ATTEMPTS, STOP_WAIT_SECONDS = 5, 2.0
BATCH_SECONDS = Histogram("cso_batch_seconds", "Time to apply one pulled batch", ["service"])


class Rejected(Exception):
    """The event is well-formed but cannot be applied (e.g. an unknown community): dead-letter it.
    `code` is the stable name of the refusal (contracts.receipts.RefusalCode) in registry's receipts."""

    def __init__(self, field: str, message: str, code: str = "rule") -> None:
        self.field, self.message, self.code = field, message, code
        super().__init__(f"{field}: {message}")


class OutOfScope(Rejected):
    """The caller may not touch this region (its token's scope): refused, nothing written."""


class NotYet(Rejected):
    """It may apply once an earlier fact arrives (out of order). `waits_for` names what it needs
    (`organization:<id>`, `hub:<id>`, `base:<id>`, `party:<id>`, `county:<code>`): registry parks the
    fact until then (services/registry/waiting.py); a handler that does not is retried, then
    dead-lettered."""

    def __init__(self, field: str, message: str, waits_for: str = "") -> None:
        super().__init__(field, message, code="waited_too_long")
        self.waits_for = waits_for


class Verdicts(Protocol):
    """Told, in a transaction of the consumer's, of what its handler never sees: messages that
    break their contract and event ids already taken. Registry sends its publishers a receipt for
    each (services/registry/verdicts.py)."""

    async def broken(self, conn: AsyncConnection, broken: Sequence[tuple[Msg, str]]) -> None:
        ...

    async def duplicates(self, conn: AsyncConnection, duplicates: Sequence[tuple[Msg, Envelope[Any]]]) -> None:
        ...


class Handler(Protocol):
    """A handler may also have an `after_commit(engine)`: called once a transaction in which it
    applied fresh events committed and the batch's messages were settled (acked, put back or
    dead-lettered), so that its own transaction never delays the acks (Consumer._after_commit)."""

    async def apply(self, conn: AsyncConnection, events: Sequence[Envelope[Any]]) -> dict[UUID, Rejected]:
        """Apply fresh events in the caller's transaction. Return the rejected ones; a rejected
        event must leave no effect behind (use a savepoint per event where that is possible)."""
        ...


# A county's DivisionsImported carries its whole tree (hundreds of communities, with names), some
# hundred times a filing: a batch of them is held in memory at once (the messages, the parsed
# payloads, the statements' parameters). The national import at batches of 1,000 took targets to
# 681 MB at its peak and left it at 462 MB; at 100, 313 MB and 305 MB, in about the same time
# (67 s against 72 s). Every consumer of the stream takes this many at most, whatever the
# service's batch size (CSO_BATCH_SIZE).
STREAM_BATCH = {"CSO_DIVISIONS": 100}


@dataclass(frozen=True)
class Subscription:
    stream: str          # base stream name, e.g. "CSO_REGISTRY"; the topology adds the namespace
    subject: str         # e.g. topology.context_subjects("registry")
    durable: str         # shared by every replica of the service
    # The event types the handler acts on (None: every event on `subject`). JetStream then delivers
    # only those (the consumer's filter_subjects), so the rest is never sent, parsed, claimed nor acked.
    types: frozenset[str] | None = None
    # A hot consumer that replicas may split by province (cso/partitions.py); `partition` is the
    # share this replica takes (its durable then `<durable>-p<i>of<N>-<assignment>`), None: the whole stream.
    partitionable: bool = False
    partition: Partition | None = None
    base: str = ""       # the durable's name before partitioning (its siblings share it)

    def partitioned(self, partition: Partition | None) -> Subscription:
        """This subscription as `partition` takes it (itself when not partitionable or None)."""
        if not self.partitionable or partition is None:
            return self
        return dataclasses.replace(self, durable=partition.durable(self.durable), partition=partition,
                                   base=self.durable)

    @property
    def family(self) -> str:
        return self.base or self.durable

    def filters(self) -> list[str]:
        """The consumer's filter subjects: one per event type, `<context prefix>.<event>.>`, or the
        subject itself. The types' subjects are disjoint, as JetStream requires of a filter list.
        A partition's: its provinces' subjects, every type of the context (partition_filters)."""
        if self.partition is not None:
            if not self.subject.endswith(".>"):
                raise ValueError(f"{self.durable}: a partition needs a subject ending in '.>', not {self.subject!r}")
            return partition_filters(self.subject.removesuffix(">"), None, self.partition)
        if self.types is None:
            return [self.subject]
        if not self.subject.endswith(".>") or not self.types:
            raise ValueError(f"{self.durable}: types need a subject ending in '.>' and at least one type, "
                             f"not {self.subject!r} with {sorted(self.types)}")
        prefix = self.subject.removesuffix(">")
        return [f"{prefix}{snake(t)}.>" for t in sorted(self.types)]


def handled_types(subject: str, handles: Iterable[str] | None) -> frozenset[str] | None:
    """Of the event types a handler acts on (`handles`), those that can arrive on `subject`
    (`cso.<context>.>`: events of that context). None, meaning every event, when the handler does
    not say, when the subject is intake (whose subjects carry the publisher's name), or when none
    of its types is of that context (a consumer cannot be filtered to nothing)."""
    if handles is None:
        return None
    tokens = subject.split(".")
    if len(tokens) < 3 or tokens[-1] != ">" or tokens[-2] == "intake":
        return None
    context = tokens[-2]
    types = frozenset(t for t in handles if t in PAYLOAD_BY_TYPE and PAYLOAD_BY_TYPE[t].CONTEXT == context)
    unknown = sorted(t for t in handles if t not in PAYLOAD_BY_TYPE)
    if unknown:
        raise ValueError(f"handles: unknown event types {unknown}")
    return types or None


def _header_text(text: str) -> str:
    """A header value can hold neither a line break nor text that is not UTF-8."""
    return re.sub(r"[\x00-\x1f\x7f]", " ", text.encode("utf-8", "replace").decode("utf-8"))


async def publish_deadletter(js: JetStreamContext, topology: Topology, service: str,
                             msg: Msg, reason: str) -> None:
    meta = msg.metadata
    event_id = event_id_of(msg.data)
    record = {
        "service": service,
        # The publisher's event_id (null if the message names none readable) and Nats-Msg-Id.
        "event_id": event_id,
        "msg_id": (msg.headers or {}).get("Nats-Msg-Id"),
        "reason": reason,
        "subject": msg.subject,
        "stream": meta.stream,
        "stream_seq": meta.sequence.stream,
        "deliveries": meta.num_delivered,
        "dead_lettered_at": datetime.now(timezone.utc).isoformat(),
        # contracts/deadletter.py: the record's fields, and why data is cut.
        "data": msg.data.decode("utf-8", errors="replace")[:MAX_DATA_CHARACTERS],
        "data_bytes": len(msg.data),
        "truncated": len(msg.data) > MAX_DATA_CHARACTERS
        and len(msg.data.decode("utf-8", errors="replace")) > MAX_DATA_CHARACTERS,
    }
    await js.publish(topology.deadletter_subject(service), json.dumps(record).encode(),
                     headers={"Cso-Reason": _header_text(reason[:512]), "Cso-Event-Id": event_id or "",
                              "Nats-Msg-Id": f"dl:{meta.stream}:{meta.sequence.stream}"})
    DEADLETTERED.labels(service, meta.stream).inc()
    log.warning("dead-lettered %s seq %s: %s", meta.stream, meta.sequence.stream, reason)


def check_subject(topology: Topology, subject: str, envelope: Envelope[Any]) -> None:
    """The subject must be the one the event's type and region give (in its own context, or on
    intake), so that who may publish where (subject permissions) decides what is accepted."""
    tokens = subject.removeprefix(f"{topology.namespace}.").split(".")
    context = tokens[1] if len(tokens) > 1 else ""
    payload = PAYLOAD_BY_TYPE[envelope.type]
    if context not in ("intake", payload.CONTEXT):
        raise ContractError.single("type", f"{envelope.type} is not a {context} event")
    if context == "intake":
        check_intake_subject(topology, subject, envelope)
        return
    expected = topology.event_subject(envelope.type, envelope.region, context=context)
    if subject != expected:
        field = "type" if tokens[2:3] != [snake(envelope.type)] else "region"
        raise ContractError.single(field, f"{envelope.type} about {envelope.region} belongs on {expected}, "
                                          f"not {subject}")


def check_intake_subject(topology: Topology, subject: str, envelope: Envelope[Any]) -> None:
    """An intake subject names the publisher (version 2), and NATS lets a publisher's user publish
    under its own name only: so the envelope's `source` must be that name, or anyone could speak for
    another system. Version 1 (no name) is the operators' (admin only): their word is taken."""
    parsed = topology.parse_intake_subject(subject)
    expected = topology.intake_subject_for(envelope.source, envelope.type, envelope.region)
    where = f"{envelope.type} about {envelope.region} from {envelope.source} belongs on {expected}, not {subject}"
    if parsed is None or parsed.event != snake(envelope.type):
        raise ContractError.single("type", where)
    if parsed.region != region_tokens(envelope.region):
        raise ContractError.single("region", where)
    if parsed.source is not None and parsed.source != envelope.source:
        raise ContractError.single("source", f"{parsed.source!r} published this on {subject}; its events must "
                                             f"say source {parsed.source!r}, not {envelope.source!r}")


class Consumer:
    def __init__(self, *, nc: Client, engine: AsyncEngine, topology: Topology, schema: str,
                 service: str, subscription: Subscription, handler: Handler,
                 batch: int = 1000, max_deliver: int = 5, ack_wait: float = 30.0,
                 verdicts: Verdicts | None = None) -> None:
        self.nc, self.js = nc, nc.jetstream()
        self.verdicts = verdicts
        self.engine, self.topology, self.schema, self.service = engine, topology, schema, service
        self.sub, self.handler = subscription, handler
        self.batch = min(batch, STREAM_BATCH.get(subscription.stream, batch))
        self.max_deliver, self.ack_wait = max_deliver, ack_wait
        self.stream = topology.stream(subscription.stream)
        # Its row in consumer_position: one per partition, so partitions never wait on each
        # other's update of a shared row (the stream's position is the largest of them: BusWatch).
        self.position_key = self.stream if subscription.partition is None else \
            f"{self.stream}{POSITION_SEPARATOR}p{subscription.partition.index}"
        self._task: asyncio.Task[None] | None = None
        self.idle = asyncio.Event()
        # The stream's last sequence as this consumer saw it (when, what), newest last: what a
        # stream that is then lost held at least, beyond what BusWatch's periodic look recorded.
        self.seen: collections.deque[tuple[datetime, int]] = collections.deque(maxlen=64)

    async def _subscribe(self) -> Pull:
        config = ConsumerConfig(
            # `name` makes nats-py create it on CONSUMER.CREATE.<stream>.<name>.<filter>, the subject
            # a service's NATS user may publish to (cso/natsauth.py); without it nats-py takes the
            # legacy DURABLE.CREATE subject, which a least-privilege user may not.
            name=self.sub.durable, durable_name=self.sub.durable, ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL, ack_wait=self.ack_wait,
            # The consumer dead-letters by itself; JetStream must keep redelivering until then.
            # Two batches in hand at once (two replicas of a shared durable, or one applying while
            # the next is pulled; partitions have a durable each). It also bounds how far a killed
            # replica's batch, back after ack_wait, can be overtaken by later messages: 2,000 at the
            # default batch, below the fault workload's gap (tests/faults/harness.py Workload.build).
            max_deliver=-1, max_ack_pending=self.batch * 2)
        filters = self.sub.filters()
        if self.sub.types is None and self.sub.partition is None:
            config.filter_subject = filters[0]   # nats-py names it in the create subject (natsauth)
        else:
            config.filter_subjects = filters
        label = self.sub.partition.label if self.sub.partition is not None else ""
        config.description = label or None
        try:
            info = await self.js.consumer_info(self.stream, self.sub.durable)
        except NotFoundError as e:
            if e.err_code == STREAM_NOT_FOUND:
                raise
            info = None
        if info is None:
            # A durable of this layout made for the first time (or again, by BusWatch's repair): from
            # the lowest ack floor of every durable of the other layouts, so that no province,
            # whichever partition of the old layout held it, skips what its old durable had not
            # acknowledged (what comes twice the inbox drops); from the stream's first when none,
            # or when their floors do not fit the stream as it is now (_handed_over_start).
            start = await self._handed_over_start() if self.sub.partitionable else None
            await self._create(config, start)
        else:
            have = info.config.filter_subjects or [info.config.filter_subject or ""]
            if sorted(have) != sorted(filters) or info.config.max_ack_pending != config.max_ack_pending:
                # Made by an earlier version with other filters: other event types (the handler's
                # `handles` changed), or a partition's subjects derived otherwise (partition_filters;
                # its name fixes which provinces it takes, not how their subjects are written); or
                # with another batch size (CSO_BATCH_SIZE). An update keeps its position.
                log.info("%s: %s filters %s, max_ack_pending %s, not %s, %s: updating it", self.service,
                         self.sub.durable, have, info.config.max_ack_pending, filters, config.max_ack_pending)
                await self.js.add_consumer(self.stream, config)
        if self.sub.partitionable:
            await self._retire_other_layouts()
        pull = Pull(self.nc, self.stream, self.sub.durable)
        await pull.start()
        return pull

    def _layout(self) -> list[str]:
        """The durables of the layout this replica runs (ours among them)."""
        count = 1 if self.sub.partition is None else self.sub.partition.count
        return layout_durables(self.sub.family, count)

    async def _other_layouts_info(self) -> list[tuple[str, Any]]:
        """(name, info) of the durables of this subscription's other layouts on the server."""
        found = []
        mine = set(self._layout())
        for name in family_durables(self.sub.family):
            if name in mine:
                continue
            try:
                found.append((name, await self.js.consumer_info(self.stream, name)))
            except NotFoundError:
                continue
        return found

    @staticmethod
    def _in_use(info: Any) -> bool:
        """A replica pulls from it (a request waiting) or holds messages it has not acknowledged:
        one busy applying a batch has no request waiting at that moment (review finding 7)."""
        return bool(int(getattr(info, "num_waiting", 0) or 0) or int(getattr(info, "num_ack_pending", 0) or 0))

    async def _refuse_if_pulled(self, name: str, info: Any) -> None:
        """A durable of another layout that a replica still pulls from: two layouts at once would
        split the provinces two ways; the operator stops the old replicas first."""
        if int(getattr(info, "num_waiting", 0) or 0) > 0:
            count = 1 if self.sub.partition is None else self.sub.partition.count
            raise PartitionError(
                f"CSO_PARTITIONS={count}, but {name} ({info.config.description or 'unpartitioned'}) is still "
                f"pulled by a replica of the old layout: stop every replica of {self.service} before changing "
                "CSO_PARTITIONS (infra/README.md, Partitions)")

    async def _other_layouts(self) -> list[tuple[str, int]]:
        """(name, ack floor: the stream sequence up to which it acknowledged everything) of the
        durables of other layouts."""
        result = []
        for name, info in await self._other_layouts_info():
            await self._refuse_if_pulled(name, info)
            floor = int(info.ack_floor.stream_seq or 0) if info.ack_floor else 0
            result.append((name, floor))
        return result

    async def _handed_over_start(self) -> int | None:
        """Where a new durable of this layout starts: after the lowest ack floor of the other
        layouts' durables, when there are any and every floor fits the stream as it is now (from
        the sequence before its first to its last); None, the stream's first, otherwise.

        A floor beyond the stream's last sequence is of messages the stream no longer has (a store
        that lost its tail, a stream made again): starting after it would skip whatever is
        published, or republished from an outbox, up to it. A floor below the sequence before the
        stream's first is of messages the stream has since dropped (purged, aged out): no position
        in it (the server would start at its first anyway). Either way the durable is a stale
        leftover, and so may be the others: reading the stream from its first loses nothing, and
        the inbox drops what comes twice."""
        others = await self._other_layouts()
        if not others:
            return None
        state = (await self.js.stream_info(self.stream)).state
        first, last = int(state.first_seq or 0), int(state.last_seq or 0)
        stale = [(name, floor) for name, floor in others if not first - 1 <= floor <= last]
        if stale:
            log.warning("%s: %s starts at the stream's first message, not at the lowest ack floor of the "
                        "previous layout: %s, outside what the stream holds now (sequences %d to %d), so "
                        "of a stream since lost or cut", self.service, self.sub.durable,
                        ", ".join(f"{name} acknowledged up to {floor}" for name, floor in stale), first, last)
            return None
        return min(floor for _, floor in others) + 1

    async def _create(self, config: ConsumerConfig, start: int | None) -> None:
        """Make our durable: from `start` (where the old layout had acknowledged everything before:
        what follows comes again, the inbox skips what was applied) or from the stream's first."""
        if start is not None:
            config.deliver_policy, config.opt_start_seq = DeliverPolicy.BY_START_SEQUENCE, start
            log.warning("%s: %s starts at stream sequence %d, after the lowest ack floor of the previous layout",
                        self.service, self.sub.durable, start)
        await self.js.add_consumer(self.stream, config)

    async def _retire_other_layouts(self) -> None:
        """Once every durable of this layout exists, those of other layouts are deleted, so they
        neither pile up pending messages nor come back stale; but only when no replica of theirs is
        alive (nothing waiting, nothing unacknowledged): a replica of the old layout still running
        keeps its durable, said in the log, and the next subscription looks again."""
        for name in self._layout():
            if name == self.sub.durable:
                continue
            try:
                await self.js.consumer_info(self.stream, name)
            except NotFoundError:
                return
        await self._delete_idle_other_layouts()

    async def _delete_idle_other_layouts(self) -> None:
        """Delete the durables of other layouts that no replica holds (see _retire_other_layouts)."""
        for name, info in await self._other_layouts_info():
            if self._in_use(info):
                log.warning("%s: keeping %s (%s), of a previous layout: %d requests waiting, %d messages "
                            "unacknowledged; a replica of that layout is still alive (stop it; once it has "
                            "stopped for ack_wait, `nats consumer rm` it if it crashed mid-batch)",
                            self.service, name, info.config.description or "unpartitioned",
                            int(info.num_waiting or 0), int(info.num_ack_pending or 0))
                continue
            log.warning("%s: deleting %s (%s), of a previous layout: no replica pulls from it and nothing "
                        "of it is unacknowledged", self.service, name, info.config.description or "unpartitioned")
            with contextlib.suppress(NotFoundError):
                await self.js.delete_consumer(self.stream, name)

    async def run(self) -> None:
        pull: Pull | None = None
        waiting = False
        try:
            while True:
                try:
                    if pull is None:
                        pull = await self._subscribe()
                        waiting = False
                    # One request: waits for the first message, then takes at once what else is
                    # pending, up to a batch (cso/pull.py). A quiet stream costs no lingering.
                    msgs = await pull.next(self.batch, wait=1.0)
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    # The server restarted, or the stream or consumer is gone: subscribe afresh.
                    # A missing stream is the operator's to make: said once, not every second.
                    missing = isinstance(e, NotFoundError) and e.err_code == STREAM_NOT_FOUND
                    if not (missing and waiting):
                        log.warning("%s: pulling from %s failed (%s); subscribing again%s", self.service,
                                    self.stream, e, f" once it exists ({MIGRATE_HINT})" if missing else "")
                    waiting = missing
                    if pull is not None:
                        await pull.stop()
                    pull = None
                    await asyncio.sleep(1)
                    continue
                if not msgs:
                    self.idle.set()
                    await self._record_lag()
                    continue
                last = msgs[-1].metadata
                # Delivered but not yet acknowledged (this batch), plus what the stream holds beyond.
                LAG.labels(self.service, self.stream, self.sub.durable).set(last.num_pending + len(msgs))
                self._saw(last.sequence.stream + last.num_pending)
                await self._take(msgs)
        finally:
            if pull is not None:
                await pull.stop()

    async def _take(self, msgs: list[Msg]) -> None:
        self.idle.clear()
        try:
            with BATCH_SECONDS.labels(self.service).time():
                await self.process(msgs)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Whatever a batch does (a dead letter that cannot be published, a bug), the consumer
            # lives on: the batch's unacknowledged messages come back after ack_wait.
            log.exception("%s: a batch from %s failed; its messages will be redelivered",
                          self.service, self.stream)
            await asyncio.sleep(1)

    async def restart(self, from_start: bool = False) -> None:
        """Start pulling again; from the stream's first message when the bus lost what we had.

        From the start, every durable of our layout goes, not only ours: BusWatch, which calls
        this, runs in each replica, but the gap is recorded in tables all partitions share (every
        partition's consumer_position row is reset, bus_stream holds the stream's new state), so
        the other partitions' replicas never see it. Their pulls then fail (the durable is gone)
        and they subscribe afresh, from the stream's first message (_subscribe); the inbox drops
        what they had applied. So that nothing hands them a position over instead, the idle
        durables of other layouts (left while a partition of ours had not yet subscribed) go
        first: their ack floors are of the stream before the loss."""
        await self.stop()
        if from_start:
            self.seen.clear()  # what it saw was of the stream that is gone
            if self.sub.partitionable:
                try:
                    await self._delete_idle_other_layouts()
                except Exception as e:
                    # The new durables still check a floor handed over against the stream.
                    log.warning("%s: deleting the idle durables of other layouts on %s failed (%s)",
                                self.service, self.stream, e)
            for durable in self._layout():
                with contextlib.suppress(Exception):
                    await self.js.delete_consumer(self.stream, durable)
        self.start()

    def _saw(self, last_seq: int) -> None:
        """Note the stream's extent: the last message delivered plus those pending after it (the
        consumer's filter takes the whole stream)."""
        self.seen.append((datetime.now(timezone.utc), last_seq))

    def last_seen_before(self, moment: datetime | None) -> int:
        """The highest last sequence this consumer saw before `moment` (a lost stream's end), 0 if none."""
        return max((seq for at, seq in self.seen if moment is None or at < moment), default=0)

    async def _record_lag(self) -> None:
        with contextlib.suppress(Exception):
            info = await self.js.consumer_info(self.stream, self.sub.durable)
            LAG.labels(self.service, self.stream, self.sub.durable).set(info.num_pending + info.num_ack_pending)
            self._saw(int(info.delivered.stream_seq) + int(info.num_pending))

    async def _screened(self, msgs: list[Msg]) -> list[Msg]:
        """The messages the handler may act on, by subject, when it can tell (a `screen(engine)`
        giving a predicate on the subject, read once a batch: notify's subscriptions); the others
        are acked unparsed, as the handler would have done nothing with them. When the screen cannot
        be read (the database away), nothing is skipped: the batch goes the usual way."""
        screen = getattr(self.handler, "screen", None)
        if screen is None:
            return msgs
        try:
            wants = await screen(self.engine)
        except Exception as e:
            log.debug("%s: screening a batch failed (%s); taking it all", self.service, e)
            return msgs
        kept = [m for m in msgs if wants(m.subject)]
        if len(kept) < len(msgs):
            SCREENED.labels(self.service).inc(len(msgs) - len(kept))
            await asyncio.gather(*(m.ack() for m in msgs if not wants(m.subject)))
        return kept

    async def process(self, msgs: list[Msg]) -> None:
        msgs = await self._screened(msgs)
        valid: list[tuple[Msg, Envelope[Any]]] = []
        broken: list[tuple[Msg, str]] = []
        for msg in msgs:
            try:
                envelope = parse_event(msg.data)
                check_subject(self.topology, msg.subject, envelope)
            except ContractError as e:
                broken.append((msg, e.reason))
                continue
            except Exception as e:  # a contract that breaks on some input must not stop the consumer
                log.exception("%s: parsing seq %s failed", self.service, msg.metadata.sequence.stream)
                broken.append((msg, f"$: unreadable ({type(e).__name__}: {e})"))
                continue
            valid.append((msg, envelope))
        if broken and self.verdicts is not None:
            await self._tell_broken(broken)
        # A flood of garbage is dead-lettered a batch at a time, not one round trip after another.
        await asyncio.gather(*(self._deadletter(msg, reason) for msg, reason in broken))
        if not valid:
            return
        while True:
            try:
                rejected, applied = await self._apply(valid)
            except Exception as e:
                if await self._waited_for_database(valid, e):
                    continue  # the database is back: the whole batch again
                if len(valid) > 1:
                    # Isolate the message that breaks the batch; the others still apply.
                    await self._isolate(valid)
                    return
                await self._failed(valid[0][0], f"{type(e).__name__}: {e}")
                return
            await self._settle(valid, rejected)
            if applied:
                await self._after_commit()
            return

    async def _tell_broken(self, broken: list[tuple[Msg, str]]) -> None:
        """The verdicts of broken messages, committed before they are dead-lettered and acked."""
        assert self.verdicts is not None
        held: list[tuple[Msg, Any]] = [(msg, None) for msg, _ in broken]
        while True:
            try:
                async with self.engine.begin() as conn:
                    await self.verdicts.broken(conn, broken)
                return
            except Exception as e:
                if await self._waited_for_database(held, e):
                    continue
                log.exception("%s: recording the verdicts of %d broken messages failed", self.service, len(broken))
                return

    async def _isolate(self, valid: list[tuple[Msg, Envelope[Any]]]) -> None:
        """Each message of a broken batch applied alone, a transaction each. A batch of a thousand
        takes longer than ack_wait that way: the ones still waiting are marked in progress (the
        ack wait starts again) before and then every third of it, so that JetStream does not hand
        them to another replica meanwhile, nor spend their deliveries towards max_deliver."""
        loop = asyncio.get_running_loop()
        marked = -math.inf
        for i, one in enumerate(valid):
            if loop.time() - marked >= self.ack_wait / 3:
                marked = loop.time()
                await asyncio.gather(*(msg.in_progress() for msg, _ in valid[i:]), return_exceptions=True)
            await self._apply_alone(one)

    async def _apply_alone(self, one: tuple[Msg, Envelope[Any]]) -> None:
        while True:
            try:
                rejected, applied = await self._apply([one])
            except Exception as e:
                if await self._waited_for_database([one], e):
                    continue
                log.exception("%s: applying %s failed", self.service, one[1].event_id)
                await self._failed(one[0], f"{type(e).__name__}: {e}")
                return
            await self._settle([one], rejected)
            if applied:
                await self._after_commit()
            return

    async def _database_answers(self) -> bool:
        return await database.unreachable(self.engine) is None

    async def _waited_for_database(self, held: list[tuple[Msg, Envelope[Any]]], error: Exception) -> bool:
        """A failure while the database does not answer is the database's, not the messages': it
        must not use up their retries (and dead-letter good events during an outage). Hold them (in
        progress, so JetStream does not hand them to another replica) until it answers; True then."""
        if await self._database_answers():
            return False
        log.warning("%s: the database is away (%s: %s); holding %d messages until it answers",
                    self.service, type(error).__name__, error, len(held))
        while not await self._database_answers():
            for msg, _ in held:
                with contextlib.suppress(Exception):
                    await msg.in_progress()
            await asyncio.sleep(1)
        log.info("%s: the database answers again; applying the held messages", self.service)
        return True

    async def _apply(self, valid: list[tuple[Msg, Envelope[Any]]]) -> tuple[dict[UUID, Rejected], bool]:
        """Apply the batch in one transaction: the rejected events, and whether the handler was given
        fresh ones (the committed transaction then calls for its `after_commit`, once settled)."""
        async with self.engine.begin() as conn:
            fresh, duplicates = await self._claim(conn, valid)
            rejected = await self.handler.apply(conn, fresh) if fresh else {}
            if duplicates and self.verdicts is not None:
                await self.verdicts.duplicates(conn, duplicates)
            retry = {eid for eid, r in rejected.items() if isinstance(r, NotYet)}
            if retry:
                # Forget the claim so the retried delivery is not taken for a duplicate.
                await conn.execute(text(f'DELETE FROM "{self.schema}".inbox WHERE event_id = ANY(:ids)'),
                                   {"ids": list(retry)})
            last = max(m.metadata.sequence.stream for m, _ in valid)
            await conn.execute(text(
                f'INSERT INTO "{self.schema}".consumer_position (stream, last_seq) VALUES (:s, :q) '
                "ON CONFLICT (stream) DO UPDATE SET last_seq = GREATEST(consumer_position.last_seq, "
                "excluded.last_seq), updated_at = now()"), {"s": self.position_key, "q": last})
        applied = {e.event_id for e in fresh} - rejected.keys()
        for _, env in valid:
            if env.event_id in applied:
                APPLIED.labels(self.service, env.type).inc()
        return rejected, bool(fresh)

    async def _after_commit(self) -> None:
        """The handler's work once its batch committed, if it has any (an `after_commit(engine)`:
        registry decides the waiting facts a concurrent replica's batch kept from this one,
        services/registry/waiting.py). Called after the batch's messages are settled: a further
        transaction, slow or failing, must not keep them unacknowledged towards ack_wait and a
        redelivery. The batch is applied: a failure here is logged, never a reason to take the
        batch again."""
        after_commit = getattr(self.handler, "after_commit", None)
        if after_commit is None:
            return
        try:
            await after_commit(self.engine)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: the work after committing a batch from %s failed", self.service, self.stream)

    async def _claim(self, conn: AsyncConnection, valid: list[tuple[Msg, Envelope[Any]]]
                     ) -> tuple[list[Envelope[Any]], list[tuple[Msg, Envelope[Any]]]]:
        """The fresh events (their ids claimed now), and the duplicates: messages whose event id was
        taken before, or by an earlier message of this batch."""
        seen: dict[UUID, tuple[Msg, Envelope[Any]]] = {}
        for msg, env in valid:
            seen.setdefault(env.event_id, (msg, env))
        claimed = set((await conn.execute(text(
            f'INSERT INTO "{self.schema}".inbox (event_id, stream, stream_seq) '
            "SELECT * FROM unnest(CAST(:ids AS uuid[]), CAST(:streams AS text[]), "
            "CAST(:seqs AS bigint[])) ON CONFLICT DO NOTHING RETURNING event_id"),
            {"ids": list(seen), "streams": [self.stream] * len(seen),
             "seqs": [m.metadata.sequence.stream for m, _ in seen.values()]})).scalars())
        DUPLICATES.labels(self.service).inc(len(valid) - len(claimed))
        duplicates = [(msg, env) for msg, env in valid
                      if env.event_id not in claimed or seen[env.event_id][0] is not msg]
        return [env for eid, (_, env) in seen.items() if eid in claimed], duplicates

    async def _settle(self, valid: list[tuple[Msg, Envelope[Any]]],
                      rejected: dict[UUID, Rejected]) -> None:
        for msg, env in valid:
            reason = rejected.get(env.event_id)
            if reason is None:
                await msg.ack()
            elif isinstance(reason, NotYet) and msg.metadata.num_delivered < self.max_deliver:
                await msg.nak(delay=min(2.0 ** msg.metadata.num_delivered, 30.0))
            else:
                await self._deadletter(msg, str(reason))

    async def _failed(self, msg: Msg, reason: str) -> None:
        if msg.metadata.num_delivered >= self.max_deliver:
            await self._deadletter(msg, f"failed {msg.metadata.num_delivered} times: {reason}")
        else:
            await msg.nak(delay=min(2.0 ** msg.metadata.num_delivered, 30.0))

    async def _deadletter(self, msg: Msg, reason: str) -> None:
        await publish_deadletter(self.js, self.topology, self.service, msg, reason)
        await msg.ack()

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name=f"consumer-{self.service}-{self.stream}")

    async def stop(self) -> None:
        """Cancel the pulling task and wait for it to end, cancelling again while it does not.

        A cancellation can be lost inside nats-py's fetch: after a wiped store, registry's intake
        consumer was seen "cancelling" for minutes, still waiting in Subscription.next_msg, and
        BusWatch, which restarts consumers during a repair, hung with it: no gap was checked again,
        and registry's outbox was never republished (tests/faults/test_intake_loss.py)."""
        task = self._task
        if task is None:
            return
        for attempt in range(1, STOP_ATTEMPTS + 1):
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=STOP_WAIT_SECONDS)
            if done:
                break
            log.warning("%s: the consumer of %s is still running %g s after cancellation %d; cancelling again",
                        self.service, self.stream, STOP_WAIT_SECONDS, attempt)
        else:
            stack = io.StringIO()
            task.print_stack(file=stack)
            log.error("%s: the consumer of %s did not stop after %d cancellations; left behind:\n%s",
                      self.service, self.stream, STOP_ATTEMPTS, stack.getvalue())
            return
        with contextlib.suppress(asyncio.CancelledError, Exception):
            task.result()
