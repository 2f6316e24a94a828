"""NATS users and subject permissions for cso, generated from the topology.

Who may say what on the bus (issue #8):

- one user per service (`registry`, `targets`, `training`, `notify`): publishes only its own events
  (`cso.<its context>.>`), its dead letters (`cso.deadletter.<service>`), operational events
  (`cso.ops.>`), replies to the requests it serves, and exactly the JetStream API calls it makes
  (stream INFO on the streams it uses, nothing else on streams: they belong to the operator's
  migrate step, cso/streams.py; its own durable consumers: info, create, delete, pull, ack). It
  subscribes to its own command/query subjects and its own inbox.
- `divisions`: publishes the division reference data (`cso divisions import`); INFO on its stream.
- one user per outside publisher system, bound to a region (province, city or county code): it may
  publish registry facts only on `cso.intake.<its name>.<event>.<province>.<city>.<county>` subjects
  inside that region (registry refuses a fact whose `source` is not that name), and watch for
  their receipts (`cso.registry.<event>.…` in the same region, plain core NATS).
  No JetStream API at all: it cannot create or delete streams or consumers.
- `admin`: operators (`cso migrate` creating and updating the streams, `cso publish`, the `nats`
  command line, cleanup): everything. Only admin may publish on the version 1 intake subjects
  (`cso.intake.<event>.…`, no publisher name) and send commands (`cso.cmd.…`): there the envelope's
  `source` and the `Cso-Source` header are the operator's word, which no other user can put there.

Every user has its own inbox prefix, `_INBOX_<user>` (the client connects with `inbox_prefix`), so no
user can read the replies and pulled messages meant for another. `render()` writes the
`authorization {}` block of a nats-server configuration; passwords are either references to
environment variables (`$CSO_NATS_REGISTRY_PASSWORD`, resolved by nats-server when it reads the file)
or bcrypt hashes of the values in the environment (then a reload rotates them).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from contracts import Topology, tier_of
from contracts.subjects import region_tokens

from .partitions import family_durables

SERVICES = ("registry", "targets", "training", "notify")
ADMIN = "admin"
DIVISIONS = "divisions"
RESERVED = (*SERVICES, ADMIN, DIVISIONS)
USER_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")

# The durable consumers each service pulls from: (base stream, durable, context of the filter).
# A test builds every service and checks this against what it really subscribes to.
SERVICE_CONSUMERS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "registry": (("CSO_INTAKE", "registry-intake", "intake"),
                 ("CSO_DIVISIONS", "registry-divisions", "divisions")),
    "targets": (("CSO_REGISTRY", "targets-registry", "registry"),
                ("CSO_TRAINING", "targets-training", "training"),
                ("CSO_DIVISIONS", "targets-divisions", "divisions")),
    "training": (("CSO_DIVISIONS", "training-divisions", "divisions"),
                 ("CSO_REGISTRY", "training-registry", "registry")),
    "notify": (("CSO_TARGETS", "notify-targets", "targets"),
               ("CSO_REGISTRY", "notify-registry", "registry"),
               ("CSO_TRAINING", "notify-training", "training"),
               ("CSO_DIVISIONS", "notify-divisions", "divisions")),
}
# The durables replicas may split by province (Subscription.partitionable; a test checks it).
PARTITIONABLE = frozenset({"registry-intake", "targets-registry", "targets-training"})
# The request-reply subjects each service answers: cso.cmd.<service>.… and/or cso.query.<service>.…
SERVICE_REQUESTS: dict[str, tuple[Literal["cmd", "query"], ...]] = {
    "registry": ("cmd", "query"),  # query: receipts (services/registry/receipts.py)
    "targets": ("query",),
    "training": ("cmd",),
    "notify": (),
}

PasswordMode = Literal["env", "bcrypt", "plain"]


@dataclass(frozen=True)
class Publisher:
    """An outside system that publishes registry facts for one region (2, 4 or 6 digits)."""

    name: str
    region: str

    def __post_init__(self) -> None:
        check_name(self.name)
        if self.name in RESERVED:
            raise ValueError(f"publisher {self.name!r}: the name is taken by cso's own users")
        if tier_of(self.region) not in ("province", "city", "county"):
            raise ValueError(f"publisher {self.name!r}: region {self.region!r} must be a province (2 digits), "
                             "city (4) or county (6) code")

    @classmethod
    def parse(cls, spec: str) -> Publisher:
        """`name=region`, e.g. `leshan-civil-affairs=5111`."""
        name, sep, region = spec.partition("=")
        if not sep:
            raise ValueError(f"publisher {spec!r}: expected NAME=REGION, e.g. leshan-register=5111")
        return cls(name.strip(), region.strip())


@dataclass(frozen=True)
class Permissions:
    user: str
    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()
    allow_responses: bool = False
    unrestricted: bool = False  # admin: no permissions block at all
    role: str = ""
    region: str | None = None


@dataclass(frozen=True)
class Users:
    """Every user of one cso deployment: its services, the divisions importer, admin, publishers."""

    publishers: tuple[Publisher, ...] = ()
    services: tuple[str, ...] = SERVICES

    def __post_init__(self) -> None:
        names = [p.name for p in self.publishers]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"publisher names must be unique: {', '.join(dupes)}")
        unknown = set(self.services) - set(SERVICES)
        if unknown:
            raise ValueError(f"unknown services: {', '.join(sorted(unknown))}")


def check_name(name: str) -> str:
    if not USER_NAME.fullmatch(name):
        raise ValueError(f"user {name!r}: lowercase letters, digits, '-' and '_' only (at most 63)")
    return name


def inbox_prefix(user: str) -> str:
    """The inbox prefix a user's connection must use: replies and pulled messages come there."""
    return f"_INBOX_{check_name(user)}"


def password_env(user: str) -> str:
    """The environment variable that holds a user's password, e.g. CSO_NATS_REGISTRY_PASSWORD."""
    return f"CSO_NATS_{check_name(user).upper().replace('-', '_')}_PASSWORD"


def region_pattern(region: str) -> str:
    """The subject tokens `<province>.<city>.<county>` that cover a region, with wildcards."""
    tier = tier_of(region)
    province, city, county = region_tokens(region)
    if tier == "province":
        return f"{province}.>"
    if tier == "city":
        return f"{province}.{city}.>"
    if tier == "county":
        return f"{province}.{city}.{county}"
    raise ValueError(f"region {region!r}: a province, city or county code")


def matches(pattern: str, subject: str) -> bool:
    """Does a NATS subject pattern (`*` one token, `>` the rest) cover a subject (or a narrower
    pattern)? The same rule nats-server applies to permissions."""
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(want) == len(have)


def allowed(perm: Permissions, action: Literal["publish", "subscribe"], subject: str) -> bool:
    if perm.unrestricted:
        return True
    return any(matches(p, subject) for p in (perm.publish if action == "publish" else perm.subscribe))


def _ns(topology: Topology, subject: str) -> str:
    return f"{topology.namespace}.{subject}" if topology.namespace else subject


# Streams a service publishes to besides those it consumes: its own events, BusGapDetected, and
# its dead letters.
OWN_STREAM = {"registry": "CSO_REGISTRY", "targets": "CSO_TARGETS", "training": "CSO_TRAINING",
              "notify": "CSO_NOTIFY"}


def service_streams(service: str) -> tuple[str, ...]:
    """The base names of the streams a service needs: it waits for them (readiness) and BusWatch
    compares them with what it published and applied. Its only stream right is INFO on these."""
    if service not in SERVICES:
        raise ValueError(f"unknown service {service!r}")
    names = [base for base, _, _ in SERVICE_CONSUMERS[service]]
    names += [OWN_STREAM[service], "CSO_OPS", "CSO_DEADLETTER"]
    if service == "registry":
        names.append("CSO_RECEIPTS")  # its receipts to publishers, from its outbox
    return tuple(dict.fromkeys(names))


def service_durables(service: str) -> list[tuple[str, str, str]]:
    """SERVICE_CONSUMERS, and for each partitionable one (PARTITIONABLE) the durable of every
    partition of every layout a replica may take (`<durable>-p<i>of<N>-<assignment>`, and the
    `<durable>-p<i>` of the first partitioned release, which it retires: cso/partitions.py): named
    one by one, as a permission cannot match part of a token. A change of the assignment changes
    the names: generate the configuration again (`cso nats-config`)."""
    durables = []
    for base, durable, context in SERVICE_CONSUMERS[service]:
        if durable in PARTITIONABLE:
            durables += [(base, name, context) for name in family_durables(durable)]
        else:
            durables.append((base, durable, context))
    return durables


def _stream_info(topology: Topology, bases: Iterable[str]) -> list[str]:
    """STREAM.INFO only: streams belong to the operator (cso/streams.py). CREATE and UPDATE are
    the admin's alone, since an UPDATE to `max_msgs=1` deletes messages as surely as a PURGE."""
    return [f"$JS.API.STREAM.INFO.{topology.stream(base)}" for base in bases]


def service_permissions(topology: Topology, service: str) -> Permissions:
    if service not in SERVICES:
        raise ValueError(f"unknown service {service!r}")
    publish = [
        topology.context_subjects(service),            # its own events, from its outbox
        topology.deadletter_subject(service),          # what its consumers refuse
        topology.context_subjects("ops"),              # BusGapDetected
        *_stream_info(topology, service_streams(service)),
    ]
    if service == "registry":
        publish.append(_ns(topology, "cso.receipts.>"))  # receipts and IntakeLost, to each publisher
    for base, durable, context in service_durables(service):
        stream = topology.stream(base)
        publish += [
            f"$JS.API.CONSUMER.INFO.{stream}.{durable}",
            # nats-py names the filter in the subject, so the server checks it is the one allowed.
            f"$JS.API.CONSUMER.CREATE.{stream}.{durable}.{topology.context_subjects(context)}",
            # A consumer filtered to the event types its handler acts on (several filter subjects,
            # which nats-py cannot name in the subject): any filter, within a stream it may read.
            f"$JS.API.CONSUMER.CREATE.{stream}.{durable}",
            # BusWatch restarts it from the start (every partition's: Consumer.restart).
            f"$JS.API.CONSUMER.DELETE.{stream}.{durable}",
            f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}",
            f"$JS.ACK.{stream}.{durable}.>",
        ]
    subscribe = [f"{inbox_prefix(service)}.>"]
    for kind in SERVICE_REQUESTS[service]:
        subscribe.append(_ns(topology, f"cso.{kind}.{service}.>"))
    return Permissions(service, tuple(publish), tuple(subscribe),
                       allow_responses=bool(SERVICE_REQUESTS[service]), role="service")


def divisions_permissions(topology: Topology) -> Permissions:
    # INFO on its stream: `cso divisions import` checks that the operator made it before publishing.
    return Permissions(DIVISIONS, (topology.context_subjects("divisions"),
                                   *_stream_info(topology, ("CSO_DIVISIONS",))),
                       (f"{inbox_prefix(DIVISIONS)}.>",), role="divisions importer")


def intake_pattern(topology: Topology, publisher: Publisher) -> str:
    """Where a publisher may publish: `cso.intake.<its name>.<any event>.<its region>`, so that the
    subject names who published (registry holds the envelope's `source` to it). Exactly seven tokens
    (`*` for the tokens below its tier, never `>`): nothing it publishes reads as another form."""
    province, city, county = region_tokens(publisher.region)
    tier = tier_of(publisher.region)
    tokens = (province, city if tier != "province" else "*", county if tier == "county" else "*")
    return _ns(topology, f"cso.intake.{publisher.name}.*.{'.'.join(tokens)}")


def publisher_permissions(topology: Topology, publisher: Publisher) -> Permissions:
    tokens = region_pattern(publisher.region)
    return Permissions(
        publisher.name,
        # Its facts on intake, and the receipts of its own events asked in bulk (request-reply).
        publish=(intake_pattern(topology, publisher), topology.receipts_query_subject(publisher.name)),
        # The JetStream ack of its publish and the query's reply come to its inbox; its receipts are
        # registry's accepted events of its region, watched with a plain (core NATS) subscription;
        # registry tells it there when the intake stream lost its facts (cso.receipts.<name>.lost).
        subscribe=(f"{inbox_prefix(publisher.name)}.>", _ns(topology, f"cso.registry.*.{tokens}"),
                   _ns(topology, f"cso.receipts.{publisher.name}.>")),
        role="outside publisher", region=publisher.region)


def permissions(topology: Topology, users: Users) -> list[Permissions]:
    out = [service_permissions(topology, s) for s in users.services]
    out.append(divisions_permissions(topology))
    out.append(Permissions(ADMIN, unrestricted=True, role="operators"))
    out += [publisher_permissions(topology, p) for p in users.publishers]
    return out


# ---------------------------------------------------------------- rendering


def _quote(value: str) -> str:
    # Quoted strings are taken literally by nats-server ("$JS.API…" is not a variable).
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _list(values: Iterable[str], indent: str) -> str:
    items = list(values)
    if not items:
        return "[]"
    inner = "\n".join(f"{indent}  {_quote(v)}" for v in items)
    return f"[\n{inner}\n{indent}]"


BCRYPT_ROUNDS = 11  # nats-server checks a hash at every connect: costly enough, not more


def bcrypt_hash(password: str, rounds: int = BCRYPT_ROUNDS) -> str:
    import bcrypt

    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds)).decode()


def password_value(user: str, mode: PasswordMode, env: Mapping[str, str] | None = None) -> str:
    """The `password:` value of a user in the rendered config."""
    if mode == "env":
        return "$" + password_env(user)  # unquoted: nats-server substitutes the environment variable
    env = os.environ if env is None else env
    secret = env.get(password_env(user))
    if not secret:
        raise ValueError(f"{password_env(user)} is not set (the password of NATS user {user!r})")
    return _quote(bcrypt_hash(secret) if mode == "bcrypt" else secret)


def render(topology: Topology, users: Users, *, passwords: PasswordMode = "env",
           env: Mapping[str, str] | None = None, header: str = "") -> str:
    """The `authorization { users = [...] }` block for nats-server (include it from nats.conf)."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    lines += ["authorization {", "  users = ["]
    for perm in permissions(topology, users):
        what = perm.role + (f" for region {perm.region}" if perm.region else "")
        lines.append(f"    # {perm.user}: {what}")
        lines.append("    {")
        lines.append(f"      user: {_quote(perm.user)}")
        lines.append(f"      password: {password_value(perm.user, passwords, env)}")
        if not perm.unrestricted:
            lines.append("      permissions: {")
            lines.append(f"        publish: {{ allow: {_list(perm.publish, '        ')} }}")
            lines.append(f"        subscribe: {{ allow: {_list(perm.subscribe, '        ')} }}")
            if perm.allow_responses:
                lines.append("        allow_responses: true")
            lines.append("      }")
        lines.append("    }")
    lines += ["  ]", "}", ""]
    return "\n".join(lines)


def explain(topology: Topology, users: Users) -> str:
    """Who may publish and subscribe what, as plain text (`cso nats-config --explain`)."""
    out: list[str] = []
    for p in permissions(topology, users):
        what = p.role + (f" for region {p.region}" if p.region else "")
        out.append(f"{p.user} ({what}); password ${password_env(p.user)}; inbox {inbox_prefix(p.user)}")
        if p.unrestricted:
            out += ["  publish    > (everything)", "  subscribe  > (everything)", ""]
            continue
        infos = [s.rpartition(".")[2] for s in p.publish if s.startswith("$JS.API.STREAM.INFO.")]
        publish = [s for s in p.publish if not s.startswith("$JS.API.STREAM.INFO.")]
        if infos:
            publish.append(f"$JS.API.STREAM.INFO.{{{','.join(infos)}}} (no other stream verb: "
                           "the operator's migrate step owns the streams)")
        for label, subjects in (("publish", publish), ("subscribe", list(p.subscribe))):
            for i, subject in enumerate(subjects):
                out.append(f"  {label if i == 0 else '':<10} {subject}")
        if p.allow_responses:
            out.append("  and replies to the requests it receives (allow_responses)")
        out.append("")
    return "\n".join(out)


__all__ = [
    "ADMIN",
    "DIVISIONS",
    "SERVICES",
    "SERVICE_CONSUMERS",
    "SERVICE_REQUESTS",
    "Permissions",
    "Publisher",
    "Users",
    "allowed",
    "explain",
    "inbox_prefix",
    "intake_pattern",
    "matches",
    "password_env",
    "permissions",
    "publisher_permissions",
    "region_pattern",
    "render",
    "service_permissions",
    "service_streams",
]
