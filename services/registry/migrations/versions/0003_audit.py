"""The audit trail: who changed which record, when, from which system, and what changed.

Revision ID: 0003
"""
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade(schema: str) -> None:
    # No unique index on event_id: the inbox, in the same transaction, already lets an event
    # through once; the audit is read per record.
    op.execute(f"""CREATE TABLE "{schema}".audit (
        seq bigserial PRIMARY KEY,
        event_id uuid NOT NULL,
        record_kind text NOT NULL CHECK (record_kind IN ('organization', 'hub', 'base', 'party')),
        record_id uuid NOT NULL,
        type text NOT NULL,
        actor text NOT NULL,
        source text NOT NULL,
        region text NOT NULL,
        recorded_at timestamptz NOT NULL DEFAULT now(),
        changes jsonb NOT NULL)""")
    op.execute(f'CREATE INDEX audit_record ON "{schema}".audit (record_id, seq)')
