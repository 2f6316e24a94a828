"""The JetStream streams belong to the operator: created and kept to their specification by the
migrate step (`cso migrate`, `cso streams`, `cso up`) connected as NATS's admin user.

Services get no stream configuration rights at all (cso/natsauth.py): a service that could UPDATE a
stream could set `max_msgs=1` and delete what it holds, and on CSO_INTAKE nothing else holds those
facts. A service whose stream is missing waits and says so (`missing`), it never creates it.

What the migrate step does to each stream of the topology: create it when missing, update the
settings it manages when they drifted (subjects, description, duplicate window, age and size
limits, replicas), and never delete a stream or a message. A difference JetStream cannot apply in
place (storage, retention) stops it with the stream and the field named.

Replicas are the deployment's choice, not the contract's: `CSO_STREAM_REPLICAS` for every stream,
`<STREAM>_REPLICAS` (e.g. `CSO_INTAKE_REPLICAS`) for one, each `auto` (the default) or 1-5. `auto`
is 3 on a clustered NATS (one node may fail without losing a message or stopping the stream) and 1
on a single server, which can hold only one. infra/README.md, "Streams", says what each costs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

from contracts import StreamSpec, Topology
from contracts.subjects import STREAMS

REPLICAS_ENV = "CSO_STREAM_REPLICAS"
MAX_REPLICAS = 5        # JetStream's own limit
CLUSTER_REPLICAS = 3    # survives one node of three; more costs writes and disk for little
UNLIMITED = -1
MIGRATE_HINT = "run `cso migrate` (the operator's step creates streams)"


class StreamMigrationError(RuntimeError):
    """The migrate step cannot bring a stream to its specification; the message names it. `code`:
    JetStream's error code when the server refused."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


def replicas_env(base: str) -> str:
    """The variable that sets one stream's replicas: CSO_INTAKE -> CSO_INTAKE_REPLICAS."""
    return f"{base}_REPLICAS"


def _parse_replicas(variable: str, value: str) -> int | None:
    text = value.strip().lower()
    if text in ("", "auto"):
        return None
    if not text.isdigit() or not 1 <= int(text) <= MAX_REPLICAS:
        raise ValueError(f"{variable}={value!r}: 'auto' or a number of replicas from 1 to {MAX_REPLICAS}")
    return int(text)


@dataclass(frozen=True)
class Replicas:
    """How many copies of each stream JetStream keeps; None means auto."""

    default: int | None = None
    per_stream: Mapping[str, int] = field(default_factory=dict)   # base stream name -> replicas

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Replicas:
        env = os.environ if env is None else env
        default = _parse_replicas(REPLICAS_ENV, env.get(REPLICAS_ENV, ""))
        per_stream: dict[str, int] = {}
        for spec in STREAMS:
            variable = replicas_env(spec.name)
            value = _parse_replicas(variable, env.get(variable, ""))
            if value is not None:
                per_stream[spec.name] = value
        return cls(default, per_stream)

    def source(self, base: str) -> str:
        """Which setting decides a stream's replicas, for messages."""
        if base in self.per_stream:
            return f"{replicas_env(base)}={self.per_stream[base]}"
        if self.default is not None:
            return f"{REPLICAS_ENV}={self.default}"
        return "auto"

    def of(self, base: str, clustered: bool) -> int:
        wanted = self.per_stream.get(base, self.default)
        if wanted is None:
            return CLUSTER_REPLICAS if clustered else 1
        if wanted > 1 and not clustered:
            raise StreamMigrationError(
                f"{base}: {self.source(base)}, but the NATS server is a single server (not in a cluster), "
                "which keeps one copy: set it to 1 or auto")
        return wanted


def clustered(nc: Client) -> bool:
    """Is the server we talk to part of a cluster? It says so in the INFO it greets clients with
    (nats-py keeps it as `_server_info`; there is no public accessor)."""
    info: dict[str, Any] = getattr(nc, "_server_info", None) or {}
    return bool(info.get("cluster"))


def base_streams(topology: Topology) -> list[tuple[str, StreamSpec]]:
    """(base name, the topology's spec) of every stream: CSO_INTAKE and, say, T1_CSO_INTAKE."""
    return [(base.name, spec) for base, spec in zip(STREAMS, topology.streams, strict=True)]


def stream_config(spec: StreamSpec, replicas: int = 1) -> StreamConfig:
    """What the operator keeps every stream at. No size or count limits: cso never lets JetStream
    drop a message it did not ask to drop (infra/README.md, "Streams")."""
    return StreamConfig(
        name=spec.name,
        subjects=list(spec.subjects),
        description=spec.description,
        retention=RetentionPolicy(spec.retention),
        storage=StorageType(spec.storage),
        duplicate_window=spec.duplicate_window_seconds,
        max_age=spec.max_age_days * 86400 if spec.max_age_days else 0,
        num_replicas=replicas,
        max_msgs=UNLIMITED,
        max_bytes=UNLIMITED,
        max_msgs_per_subject=UNLIMITED,
        max_msg_size=UNLIMITED,
        max_consumers=UNLIMITED,
        discard=DiscardPolicy.OLD,
    )


def _managed(config: StreamConfig) -> dict[str, Any]:
    """The settings the migrate step owns, normalised (the server says -1 or 0 for 'none')."""
    def limit(value: int | None) -> int:
        return UNLIMITED if value is None or value < 0 else int(value)

    return {
        "subjects": sorted(config.subjects or []),
        "description": config.description or "",
        "retention": RetentionPolicy(config.retention or RetentionPolicy.LIMITS).value,
        "storage": StorageType(config.storage or StorageType.FILE).value,
        "duplicate_window": round(float(config.duplicate_window or 0), 3),
        "max_age": round(float(config.max_age or 0), 3),
        "num_replicas": int(config.num_replicas or 1),
        "max_msgs": limit(config.max_msgs),
        "max_bytes": limit(config.max_bytes),
        "max_msgs_per_subject": limit(config.max_msgs_per_subject),
        "max_msg_size": limit(config.max_msg_size),
        "max_consumers": limit(config.max_consumers),
        "discard": DiscardPolicy(config.discard or DiscardPolicy.OLD).value,
    }


IMMUTABLE = ("storage", "retention")  # JetStream cannot change these on an existing stream


def drift(have: StreamConfig, want: StreamConfig) -> dict[str, tuple[Any, Any]]:
    """field -> (the server's value, the specification's) for every managed setting that differs."""
    a, b = _managed(have), _managed(want)
    return {key: (a[key], b[key]) for key in b if a[key] != b[key]}


@dataclass(frozen=True)
class StreamChange:
    stream: str
    action: str                                   # "created", "updated" or "unchanged"
    replicas: int
    fields: Mapping[str, tuple[Any, Any]] = field(default_factory=dict)

    def __str__(self) -> str:
        if self.action == "updated":
            changes = ", ".join(_field_change(k, old, new) for k, (old, new) in self.fields.items())
            return f"{self.stream}: updated ({changes})"
        return f"{self.stream}: {self.action}, {self.replicas} replica{'s' if self.replicas > 1 else ''}"


LISTED_AT_MOST = 10   # of the subjects a change adds or removes, named in the log line


def _field_change(key: str, old: Any, new: Any) -> str:
    """One setting's change for the log. A list (the subjects: CSO_INTAKE has 204) as its counts
    and what it gains and loses, not both lists whole: the line stays readable."""
    if not (isinstance(old, list) and isinstance(new, list)):
        return f"{key} {old!r} -> {new!r}"
    had, has = set(old), set(new)
    added, removed = [v for v in new if v not in had], [v for v in old if v not in has]

    def named(values: list[Any]) -> str:
        shown = ", ".join(str(v) for v in values[:LISTED_AT_MOST])
        more = len(values) - LISTED_AT_MOST
        return shown + (f" and {more} more" if more > 0 else "")

    parts = [f"{sign}{len(values)}: {named(values)}" for sign, values in (("+", added), ("-", removed)) if values]
    return f"{key} {len(old)} -> {len(new)} ({'; '.join(parts) or 'reordered'})"


async def migrate_streams(nc: Client, topology: Topology, replicas: Replicas | None = None,
                          only: Iterable[str] | None = None) -> list[StreamChange]:
    """Create the missing streams and bring the others back to their specification (as admin).

    `only`: base names of the streams to look at (default: all of them). Never deletes anything."""
    replicas = Replicas.from_env() if replicas is None else replicas
    js = nc.jetstream()
    on_cluster = clustered(nc)
    wanted = set(only) if only is not None else None
    changes: list[StreamChange] = []
    for base, spec in base_streams(topology):
        if wanted is not None and base not in wanted:
            continue
        config = stream_config(spec, replicas.of(base, on_cluster))
        changes.append(await _migrate_one(js, config))
    return changes


async def _migrate_one(js: JetStreamContext, config: StreamConfig) -> StreamChange:
    name, count = str(config.name), int(config.num_replicas or 1)
    try:
        info = await js.stream_info(name)
    except NotFoundError:
        try:
            await js.add_stream(config)
            return StreamChange(name, "created", count)
        except BadRequestError as e:
            if e.err_code != 10058:  # "stream name already in use": another migrate step won the race
                raise StreamMigrationError(f"{name}: creating it failed: {e.description}", e.err_code) from None
            info = await js.stream_info(name)
    differences = drift(info.config, config)
    if not differences:
        return StreamChange(name, "unchanged", count)
    fixed = [key for key in IMMUTABLE if key in differences]
    if fixed:
        key = fixed[0]
        have, want = differences[key]
        raise StreamMigrationError(
            f"{name}: {key} is {have!r}, the specification says {want!r}, and JetStream cannot change it "
            f"in place; back the stream up (`nats stream backup {name}`), delete it, and migrate again")
    try:
        await js.update_stream(config)
    except BadRequestError as e:
        raise StreamMigrationError(f"{name}: updating {', '.join(differences)} failed: {e.description}",
                                   e.err_code) from None
    return StreamChange(name, "updated", count, differences)


async def missing(js: JetStreamContext, names: Iterable[str]) -> list[str]:
    """The streams among `names` that do not exist (a service may ask only STREAM.INFO)."""
    out = []
    for name in names:
        try:
            await js.stream_info(name)
        except NotFoundError:
            out.append(name)
    return out


# JetStream's answers while a cluster is still forming (no meta leader yet, peers not all known):
# "temporarily unavailable", "no suitable peers for placement", "insufficient resources".
NOT_YET = {10008, 10005, 10023}


async def migrate_at(url: str, namespace: str, replicas: Replicas | None = None,
                     wait: float = 0.0, login: tuple[str, str] = ("", "")) -> list[StreamChange]:
    """The migrate step against one NATS, as its admin user: `login` (the local stack's admin,
    cso_local.localnats), else CSO_NATS_USER / CSO_NATS_PASSWORD (cso.connect.connect_nats). For up to `wait` seconds it
    tries again while NATS is not there yet or its cluster is still forming (compose starts it
    with the servers)."""
    import asyncio

    from nats.errors import TimeoutError as NatsTimeout
    from nats.js.errors import APIError, ServiceUnavailableError

    from .connect import connect_nats

    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        try:
            nc = await connect_nats(url, "cso-migrate", user=login[0], password=login[1])
            try:
                return await migrate_streams(nc, Topology(namespace), replicas)
            finally:
                await nc.close()
        except (ConnectionError, NatsTimeout, ServiceUnavailableError, StreamMigrationError, APIError) as e:
            transient = isinstance(e, ConnectionError | NatsTimeout | ServiceUnavailableError) or (
                isinstance(e, StreamMigrationError) and e.code in NOT_YET) or (
                isinstance(e, APIError) and e.err_code in NOT_YET)
            if not transient or loop.time() >= deadline:
                if isinstance(e, NatsTimeout):
                    # A refused JetStream API request is dropped by the server: the client only
                    # times out. (Or a cluster without a leader: then --wait longer.)
                    raise StreamMigrationError(
                        "NATS did not answer the stream API: connect as the admin user (CSO_NATS_USER=admin "
                        "and CSO_NATS_PASSWORD); services and publishers may not create or change "
                        "streams") from None
                raise
        await asyncio.sleep(2)


def missing_message(names: Iterable[str]) -> str:
    return f"missing stream(s) {', '.join(names)}: {MIGRATE_HINT}"


__all__ = [
    "MIGRATE_HINT",
    "REPLICAS_ENV",
    "Replicas",
    "StreamChange",
    "StreamMigrationError",
    "base_streams",
    "clustered",
    "drift",
    "migrate_at",
    "migrate_streams",
    "missing",
    "missing_message",
    "replicas_env",
    "stream_config",
]
