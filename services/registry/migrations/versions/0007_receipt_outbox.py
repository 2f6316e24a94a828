"""registry's receipts to publishers (and the dead letters of facts refused after waiting) get an
outbox of their own, published by a relay of their own to CSO_RECEIPTS and CSO_DEADLETTER: the
`outbox` table stays the log of registry's events, which BusWatch republishes and others count.

Revision ID: 0007
"""
from alembic import op

revision = "0007"
down_revision = "0006"


def upgrade(schema: str) -> None:
    op.execute(f"""CREATE TABLE "{schema}".receipt_outbox (
        seq bigserial PRIMARY KEY,
        event_id uuid NOT NULL UNIQUE,       -- the receipt's id (its Nats-Msg-Id)
        subject text NOT NULL,
        type text NOT NULL,
        aggregate_id text,
        data bytea NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        published_at timestamptz,
        stream text,
        stream_seq bigint)""")
    op.execute(f'CREATE INDEX receipt_outbox_unpublished ON "{schema}".receipt_outbox (seq) '
               "WHERE published_at IS NULL")
