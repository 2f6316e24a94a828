"""Subjects and JetStream streams: `cso.<context>.<event>.<province>.<city>.<county>`.

Intake, where outside systems publish registry facts, carries the publisher's name as well:
`cso.intake.<source>.<event>.<province>.<city>.<county>`. The name is the publisher's NATS user, whose
permissions allow only its own name there, so registry can hold the envelope's `source` to it. The
six-token form without a source (`cso.intake.<event>.…`, version 1) is for operators only.

A `Topology` carries an optional namespace so that tests (or a second tenant) can share one NATS
server; production uses the empty namespace and exactly the subjects documented here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from .codes import tier_of
from .events import PAYLOAD_BY_TYPE

# A region above county tier leaves the lower tokens as "_" so every subject has six tokens.
ABSENT = "_"
CONTEXTS = ("registry", "divisions", "training", "targets", "notify", "intake", "ops", "receipts")
# A source that can stand in a subject: the shape of a NATS user name (cso.natsauth.USER_NAME).
SOURCE_TOKEN = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
# Every token a subject's province may be: two digits (a region's code starts with its province's).
PROVINCE_TOKENS = tuple(f"{n:02d}" for n in range(100))
INTAKE_PREFIX = "cso.intake."


def snake(event_type: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", event_type).lower()


def region_tokens(region: str) -> tuple[str, str, str]:
    tier_of(region)
    province = region[:2]
    city = region[:4] if len(region) >= 4 else ABSENT
    county = region[:6] if len(region) >= 6 else ABSENT
    return province, city, county


@dataclass(frozen=True)
class IntakeSubject:
    """An intake subject taken apart: `source` is None on version 1 (operators' form)."""

    source: str | None
    event: str                      # snake case, e.g. organization_filed
    region: tuple[str, ...]         # (province, city, county) tokens, "_" where absent


def is_source_token(source: str) -> bool:
    """Can this envelope `source` name a publisher in an intake subject?"""
    return SOURCE_TOKEN.fullmatch(source) is not None


@dataclass(frozen=True)
class StreamSpec:
    name: str
    subjects: tuple[str, ...]
    description: str
    retention: Literal["limits", "interest", "workqueue"] = "limits"
    storage: Literal["file", "memory"] = "file"
    duplicate_window_seconds: float = 120.0
    max_age_days: float | None = None


@dataclass(frozen=True)
class Topology:
    namespace: str = ""
    streams: tuple[StreamSpec, ...] = field(init=False)

    def __post_init__(self) -> None:
        if self.namespace and not re.fullmatch(r"[a-z0-9_]+", self.namespace):
            raise ValueError("namespace: lowercase letters, digits and _ only")
        object.__setattr__(self, "streams", tuple(
            StreamSpec(name=self.stream(spec.name), subjects=tuple(self._ns(s) for s in spec.subjects),
                       description=spec.description, retention=spec.retention, storage=spec.storage,
                       duplicate_window_seconds=spec.duplicate_window_seconds,
                       max_age_days=spec.max_age_days)
            for spec in STREAMS))

    def _ns(self, subject: str) -> str:
        return f"{self.namespace}.{subject}" if self.namespace else subject

    def stream(self, name: str) -> str:
        return f"{self.namespace.upper()}_{name}" if self.namespace else name

    def event_subject(self, event_type: str, region: str, context: str | None = None) -> str:
        payload = PAYLOAD_BY_TYPE.get(event_type)
        if payload is None:
            raise ValueError(f"type: unknown event type {event_type!r}")
        province, city, county = region_tokens(region)
        ctx = context or payload.CONTEXT
        return self._ns(f"cso.{ctx}.{snake(event_type)}.{province}.{city}.{county}")

    def intake_subject(self, source: str, event_type: str, region: str) -> str:
        """Where the outside system `source` (its NATS user) publishes a registry fact for registry
        to validate and record: `cso.intake.<source>.<event>.<province>.<city>.<county>`."""
        if not is_source_token(source):
            raise ValueError(f"source: {source!r} cannot stand in an intake subject "
                             "(lowercase letters, digits, '-' and '_', at most 63)")
        province, city, county = region_tokens(region)
        return self._ns(f"cso.intake.{source}.{self._snake_of(event_type)}.{province}.{city}.{county}")

    def operator_intake_subject(self, event_type: str, region: str) -> str:
        """Intake version 1, without the publisher's name: `cso.intake.<event>.<province>.<city>.<county>`.
        registry still accepts it, but only operators (the admin user) may publish there."""
        return self.event_subject(event_type, region, context="intake")

    def intake_subject_for(self, source: str, event_type: str, region: str) -> str:
        """The intake subject an operator (admin) publishes a fact on: version 2 under the fact's own
        `source` where that can stand in a subject, else version 1."""
        if is_source_token(source):
            return self.intake_subject(source, event_type, region)
        return self.operator_intake_subject(event_type, region)

    def parse_intake_subject(self, subject: str) -> IntakeSubject | None:
        """The parts of an intake subject of either version; None if it is not one."""
        prefix = self._ns("cso.intake.")
        if not subject.startswith(prefix):
            return None
        tokens = subject.removeprefix(prefix).split(".")
        if len(tokens) == 5:  # version 2: the publisher's name first
            return IntakeSubject(tokens[0], tokens[1], tuple(tokens[2:]))
        if len(tokens) == 4:  # version 1 (operators)
            return IntakeSubject(None, tokens[0], tuple(tokens[1:]))
        return None

    @staticmethod
    def _snake_of(event_type: str) -> str:
        if event_type not in PAYLOAD_BY_TYPE:
            raise ValueError(f"type: unknown event type {event_type!r}")
        return snake(event_type)

    def context_subjects(self, context: str) -> str:
        return self._ns(f"cso.{context}.>")

    def deadletter_subject(self, service: str) -> str:
        return self._ns(f"cso.deadletter.{service}")

    def command_subject(self, service: str, command: str) -> str:
        # Commands are core NATS request-reply, outside every stream's subjects on purpose.
        return self._ns(f"cso.cmd.{service}.{command}")

    def query_subject(self, service: str, query: str) -> str:
        return self._ns(f"cso.query.{service}.{query}")

    def receipts_subject(self, source: str, kind: str) -> str:
        """What registry tells one publisher: `cso.receipts.<source>.<verdict>` (accepted, refused,
        duplicate, waiting) and `cso.receipts.<source>.lost`; kept in CSO_RECEIPTS."""
        return self._ns(f"cso.receipts.{source_token(source)}.{kind}")

    def receipts_query_subject(self, source: str) -> str:
        """Where a publisher asks registry for the receipts of its own events (request-reply)."""
        return self.query_subject("registry", f"receipts.{source_token(source)}")


def intake_fact_subjects(prefix: str, provinces: Iterable[str]) -> list[str]:
    """The subjects of intake facts about `provinces` under `prefix` (`cso.intake.`, namespace
    included): version 1, `<prefix><event>.<p>.<city>.<county>`, then version 2,
    `<prefix><source>.<event>.<p>.<city>.<county>`, one wildcard subject per province and version."""
    provinces = list(provinces)
    return [f"{prefix}*.{p}.*.*" for p in provinces] + [f"{prefix}*.*.{p}.*.*" for p in provinces]


def intake_other_shapes(prefix: str) -> list[str]:
    """The intake subjects of neither fact's shape: fewer than four tokens after `prefix`, or more
    than five. CSO_INTAKE takes them, so that registry dead-letters them (with a receipt when the
    envelope names its publisher), and so does partition 0 of a partitioned registry."""
    return [f"{prefix}*", f"{prefix}*.*", f"{prefix}*.*.*", f"{prefix}*.*.*.*.*.>"]


def intake_stream_subjects(prefix: str = INTAKE_PREFIX) -> list[str]:
    """CSO_INTAKE's subjects: a fact's two shapes with a two-digit province token, and every other
    shape; not a fact's shape whose province token is anything else (`5x`, `5`, `guangdong`).

    No wildcard can tell a two-digit token from another, so a consumer split by province
    (cso/partitions.py) lists its tokens, and a subject of a fact's shape with another token would
    be taken by no partition: stored, never delivered, never answered. The stream does not take it
    instead, so nothing holds it silently: a JetStream publish there fails at once ("no response
    from stream", nats-py's NoStreamResponseError), which the sender sees, partitioned or not (a
    core NATS publish, which nothing acknowledges, is lost, as is any that no stream takes). Only
    the operators' user may publish such a subject at all (a publisher's permission names its own
    province token, cso/natsauth.py), and Topology.intake_subject never makes one."""
    return intake_fact_subjects(prefix, PROVINCE_TOKENS) + intake_other_shapes(prefix)


def source_token(source: str) -> str:
    """A source usable as one subject token, or ValueError naming it."""
    if not SOURCE_TOKEN.fullmatch(source):
        raise ValueError(f"source: {source!r} cannot stand in a subject (lowercase letters, digits, '-' and '_', "
                         "at most 63)")
    return source


STREAMS: tuple[StreamSpec, ...] = (
    # Not `cso.intake.>`: a fact's shape with a province token of other than two digits is no
    # intake subject (intake_stream_subjects), so that its publish fails where the sender sees it.
    StreamSpec("CSO_INTAKE", tuple(intake_stream_subjects()),
               "Registry facts published by outside systems, before registry validates them"),
    StreamSpec("CSO_REGISTRY", ("cso.registry.>",), "Accepted registry facts (registry's outbox)"),
    StreamSpec("CSO_DIVISIONS", ("cso.divisions.>",), "Division reference data, per county"),
    StreamSpec("CSO_TRAINING", ("cso.training.>",), "Training facts (training's outbox)"),
    StreamSpec("CSO_TARGETS", ("cso.targets.>",), "Coverage and target status changes"),
    StreamSpec("CSO_NOTIFY", ("cso.notify.>",), "Notification outcomes"),
    StreamSpec("CSO_OPS", ("cso.ops.>",), "Operational events: gaps found in the bus and their repair"),
    # Registry's receipts to each publisher (cso.receipts.<source>.<verdict>, IntakeLost), from its
    # outbox: the stream acknowledges each, so a receipt is published for sure once staged. Publishers
    # read them with a plain subscription; the receipts query answers what they missed.
    StreamSpec("CSO_RECEIPTS", ("cso.receipts.>",),
               "Receipts registry sends each publisher: its verdicts and lost intake", max_age_days=30),
    StreamSpec("CSO_DEADLETTER", ("cso.deadletter.>",),
               "Messages a consumer refused, with the reason", max_age_days=90),
)
