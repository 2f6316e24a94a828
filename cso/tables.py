"""The tables the runtime keeps in every service's schema, as SQLAlchemy Core tables.

A service adds them to its own MetaData (`runtime_tables(METADATA, SCHEMA)` in its store.py, and
`idempotency_table` if it keeps command replies), so
that its MetaData describes its whole schema and the schema test (tests/integration/test_schema.py)
can compare it with what its migrations made. The migrations themselves run the runtime's DDL
(cso/outbox.py `ddl`, cso/idempotency.py `ddl`): migrations are history and must not change
when these definitions do; the schema test keeps the two in step.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    LargeBinary,
    MetaData,
    SmallInteger,
    Table,
    Text,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSON


def outbox_table(metadata: MetaData, schema: str, name: str = "outbox") -> Table:
    """An outbox (cso/outbox.py): messages written once in a transaction, published by a relay in
    seq order up to its position (`outbox_relay`)."""
    table = Table(
        name, metadata,
        Column("seq", BigInteger, primary_key=True, autoincrement=True),
        Column("event_id", Uuid, nullable=False, unique=True),
        Column("subject", Text, nullable=False),
        Column("type", Text, nullable=False),
        Column("aggregate_id", Text),
        Column("data", LargeBinary, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        # Read and written only by replicas of the version before the position (cso/outbox.py
        # `written_once_ddl`): a new row's published_at is its creation time. A later migration
        # drops them, and the index, once no such replica is left.
        Column("published_at", DateTime(timezone=True), server_default=func.now()),
        Column("stream", Text),
        Column("stream_seq", BigInteger),
        schema=schema)
    Index(f"{name}_unpublished", table.c.seq, postgresql_where=table.c.published_at.is_(None))
    return table


def outbox_positions(metadata: MetaData, schema: str) -> None:
    """How far each outbox of the schema is published (cso/outbox.py): its relay's position, and per
    stream the last sequence JetStream gave it."""
    Table("outbox_relay", metadata,
          Column("outbox", Text, primary_key=True),
          Column("seq", BigInteger, nullable=False),
          Column("published_at", DateTime(timezone=True)),
          schema=schema)
    Table("outbox_stream", metadata,
          Column("outbox", Text, primary_key=True),
          Column("stream", Text, primary_key=True),
          Column("last_seq", BigInteger, nullable=False),
          Column("first_published_at", DateTime(timezone=True), nullable=False),
          Column("published_at", DateTime(timezone=True), nullable=False),
          schema=schema)


def runtime_tables(metadata: MetaData, schema: str) -> None:
    """outbox (with outbox_relay and outbox_stream), inbox, consumer_position and bus_stream
    (cso/outbox.py `ddl` and `written_once_ddl`)."""
    outbox = outbox_table(metadata, schema)
    outbox_positions(metadata, schema)
    Index("outbox_aggregate", outbox.c.aggregate_id, outbox.c.seq)
    Table("inbox", metadata,
          Column("event_id", Uuid, primary_key=True),
          Column("stream", Text, nullable=False),
          Column("stream_seq", BigInteger, nullable=False),
          Column("applied_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
          schema=schema)
    Table("consumer_position", metadata,
          Column("stream", Text, primary_key=True),
          Column("last_seq", BigInteger, nullable=False),
          Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
          schema=schema)
    Table("bus_stream", metadata,
          Column("stream", Text, primary_key=True),
          Column("created", DateTime(timezone=True)),
          Column("last_seq", BigInteger, nullable=False),
          Column("messages", BigInteger, nullable=False, server_default=text("0")),
          Column("checked_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
          schema=schema)


def idempotency_table(metadata: MetaData, schema: str) -> Table:
    """Kept command replies (cso/idempotency.py `ddl`), for a service that takes Idempotency-Key."""
    idempotency = Table(
        "idempotency", metadata,
        Column("caller", Text, primary_key=True),
        Column("key", Text, primary_key=True),
        Column("fingerprint", Text, nullable=False),
        Column("status", SmallInteger),
        Column("reply", JSON),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        schema=schema)
    Index("idempotency_created", idempotency.c.created_at)
    return idempotency
