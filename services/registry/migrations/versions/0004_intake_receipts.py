"""Lost intake made visible and recoverable: who publishes on intake, what registry refused and
why, what the intake stream lost; and receipts looked up by event id.

Revision ID: 0004
"""
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade(schema: str) -> None:
    # Every source seen on intake: each is told when the intake stream loses facts.
    op.execute(f"""CREATE TABLE "{schema}".intake_source (
        source text PRIMARY KEY,
        first_seen timestamptz NOT NULL DEFAULT now())""")
    # A fact refused for good, with the reason: the receipts query answers "refused" with it.
    op.execute(f"""CREATE TABLE "{schema}".intake_refusal (
        event_id uuid PRIMARY KEY,
        source text NOT NULL,
        type text NOT NULL,
        field text NOT NULL,
        reason text NOT NULL,
        refused_at timestamptz NOT NULL DEFAULT now())""")
    # Each loss of the intake stream that registry noticed, and when its publishers were told.
    op.execute(f"""CREATE TABLE "{schema}".intake_loss (
        event_id uuid PRIMARY KEY,
        stream text NOT NULL,
        detected_at timestamptz NOT NULL DEFAULT now(),
        applied_sequence bigint NOT NULL,
        last_seen_sequence bigint NOT NULL,
        lost_at_least bigint NOT NULL,
        intact_at timestamptz,
        stream_recreated boolean NOT NULL,
        stream_first_sequence bigint NOT NULL,
        stream_last_sequence bigint NOT NULL,
        announced_to text[],
        announced_at timestamptz)""")
    # The receipts query looks accepted facts up by event id.
    op.execute(f'CREATE INDEX audit_event ON "{schema}".audit (event_id)')
