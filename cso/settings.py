"""Where a service finds its servers, from the environment (12-factor)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from contracts import Topology


def env(name: str, default: str) -> str:
    """A setting from the environment; unset or empty: the default."""
    return os.environ.get(name) or default



@dataclass(frozen=True)
class Settings:
    database_url: str = field(default_factory=lambda: env(
        "CSO_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
    # May carry credentials (nats://user:password@host:4222); or give them in CSO_NATS_USER and
    # CSO_NATS_PASSWORD (better: a password with any character, kept out of the URL).
    nats_url: str = field(default_factory=lambda: env("CSO_NATS_URL", "nats://127.0.0.1:4222"))
    nats_user: str = field(default_factory=lambda: env("CSO_NATS_USER", ""))
    nats_password: str = field(default_factory=lambda: env("CSO_NATS_PASSWORD", ""), repr=False)
    # Where replies and pulled messages come; default `_INBOX_<user>` when a user is given (what the
    # permissions of `cso nats-config` allow), NATS's `_INBOX` otherwise.
    nats_inbox_prefix: str = field(default_factory=lambda: env("CSO_NATS_INBOX_PREFIX", ""))
    namespace: str = field(default_factory=lambda: env("CSO_NAMESPACE", ""))
    # A message is retried this many times before it is dead-lettered.
    max_deliver: int = field(default_factory=lambda: int(env("CSO_MAX_DELIVER", "5")))
    # Messages per pull, and per transaction when that many wait (a backfill, a backlog): a quiet
    # stream gives what it has. 1,000 rather than 500: the work of a batch (its statements and
    # round trips) spread over more events, 0.97 → 0.91 ms of CPU per event on a Sichuan backfill,
    # the same hour (bench/README.md, issue 23); registry applied such a batch in about 0.35 s
    # there. A consumer holds two batches unacknowledged at most (cso/consumer.py).
    batch_size: int = field(default_factory=lambda: int(env("CSO_BATCH_SIZE", "1000")))
    # Replicas of a service that split its hot consumers by province (cso/partitions.py): how many
    # partitions, and which one this replica takes (0…N−1). Unset: one durable shared by all.
    partitions: str = field(default_factory=lambda: env("CSO_PARTITIONS", ""))
    partition: str = field(default_factory=lambda: env("CSO_PARTITION", ""))
    # How long JetStream waits for a pulled message's ack before it delivers the message again.
    ack_wait_seconds: float = field(default_factory=lambda: float(env("CSO_ACK_WAIT_SECONDS", "30")))
    # How often a service compares what it published and applied with what the streams hold.
    bus_check_seconds: float = field(default_factory=lambda: float(env("CSO_BUS_CHECK_SECONDS", "5")))
    outbox_retention_days: int = field(
        default_factory=lambda: int(env("CSO_OUTBOX_RETENTION_DAYS", "30")))
    # The largest HTTP request body a service takes (a route may allow more, e.g. attendance sheets).
    http_max_body_bytes: int = field(
        default_factory=lambda: int(env("CSO_HTTP_MAX_BODY_BYTES", str(256 * 1024))))
    # How long a client may hold a connection without sending (cso/http_server.py): complete request
    # headers within this many seconds of connecting (or of the previous response), else closed.
    http_header_timeout_seconds: float = field(
        default_factory=lambda: float(env("CSO_HTTP_HEADER_TIMEOUT_SECONDS", "10")))
    # The whole body within this many seconds of the headers, plus one second for every
    # CSO_HTTP_BODY_MIN_BYTES_PER_SECOND bytes received (a 16 MiB upload on a slow line), else 408.
    http_body_timeout_seconds: float = field(
        default_factory=lambda: float(env("CSO_HTTP_BODY_TIMEOUT_SECONDS", "30")))
    http_body_min_bytes_per_second: int = field(
        default_factory=lambda: int(env("CSO_HTTP_BODY_MIN_BYTES_PER_SECOND", str(16 * 1024))))
    # An idle keep-alive connection is closed after this many seconds.
    http_keepalive_seconds: int = field(
        default_factory=lambda: int(env("CSO_HTTP_KEEPALIVE_SECONDS", "5")))
    # Over this many open connections (or requests in progress), a request is answered 503 and its
    # connection closed; /healthz is always answered.
    http_max_connections: int = field(
        default_factory=lambda: int(env("CSO_HTTP_MAX_CONNECTIONS", "1000")))
    # How long a command's Idempotency-Key is kept with its reply (cso/idempotency.py).
    idempotency_hours: float = field(default_factory=lambda: float(env("CSO_IDEMPOTENCY_HOURS", "24")))
    # HTTP bearer tokens (cso/auth.py): "jwt" (the default: a service without a key does not
    # start) or "off" (only when asked for: anyone may write; loud in the log and /readyz); reads of
    # coverage "open" (no token) or "scoped" (a token, and a region in the path within the token's).
    auth: str = field(default_factory=lambda: env("CSO_AUTH", "jwt"))
    read_auth: str = field(default_factory=lambda: env("CSO_READ_AUTH", "open"))
    # HS256 secret(s) and/or RS256/ES256 public key(s) (PEM text, or a path to a PEM file): the
    # previous secret is accepted too while tokens signed with it are still about (rotation).
    jwt_secret: str = field(default_factory=lambda: env("CSO_JWT_SECRET", ""), repr=False)
    jwt_previous_secret: str = field(default_factory=lambda: env("CSO_JWT_PREVIOUS_SECRET", ""),
                                     repr=False)
    jwt_public_key: str = field(default_factory=lambda: env("CSO_JWT_PUBLIC_KEY", ""), repr=False)
    jwt_issuer: str = field(default_factory=lambda: env("CSO_JWT_ISSUER", ""))
    jwt_audience: str = field(default_factory=lambda: env("CSO_JWT_AUDIENCE", ""))

    def __repr__(self) -> str:
        # Never print a password: not the NATS one, not one inside a URL.
        shown = {f.name: getattr(self, f.name) for f in fields(self) if f.repr}
        shown = {k: redact(v) if k.endswith("_url") else v for k, v in shown.items()}
        return "Settings(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"

    @property
    def topology(self) -> Topology:
        return Topology(self.namespace)

    @property
    def async_database_url(self) -> str:
        return async_url(self.database_url)

    @property
    def nats_username(self) -> str | None:
        """The NATS user this process connects as (from CSO_NATS_USER or the URL), if any."""
        return self.nats_user or url_user(self.nats_url)

    def nats_options(self) -> dict[str, Any]:
        """Keyword arguments for `nats.connect`: credentials (if given apart from the URL) and the
        inbox prefix. Empty without authentication: the connection is exactly as before."""
        return nats_options(self.nats_url, self.nats_user, self.nats_password, self.nats_inbox_prefix)


def url_user(url: str) -> str | None:
    """The user named in the first server of a NATS URL (`nats://user:pass@host:port`)."""
    first = url.split(",")[0].strip()
    username = urlsplit(first if "://" in first else f"nats://{first}").username
    return unquote(username) if username else None


def nats_options(url: str, user: str = "", password: str = "", inbox_prefix: str = "") -> dict[str, Any]:
    options: dict[str, Any] = {}
    if user:
        if url_user(url):
            raise ValueError("NATS credentials given twice: in CSO_NATS_URL and in CSO_NATS_USER; keep one")
        if not password:
            raise ValueError(f"CSO_NATS_USER is {user!r} but CSO_NATS_PASSWORD is not set")
        options["user"], options["password"] = user, password
    name = user or url_user(url)
    prefix = inbox_prefix or (f"_INBOX_{name}" if name else "")
    if prefix:
        options["inbox_prefix"] = prefix
    return options


def redact(url: str) -> str:
    """A URL safe to print: the password (if any) replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def async_url(url: str) -> str:
    """SQLAlchemy's asyncpg URL for a plain postgresql:// one."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix):]
    raise ValueError(f"CSO_DATABASE_URL: not a PostgreSQL URL: {url!r}")
