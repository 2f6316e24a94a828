"""Reminders by each subscription's own lead times: `subscription.reminder_days` (default 30 and
7), the deadlines notify has learned from targets' events (`deadline`), and the reminders made
(`reminder`: one per subscription, deadline and lead time). The `reminder` table of 0001, one per
target and offset whoever subscribed, was never written since notify stopped reading targets'
catalogue: it is replaced.

Revision ID: 0002
Revises: 0001
"""
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade(schema: str) -> None:
    s = f'"{schema}"'
    for statement in [
        f"""ALTER TABLE {s}.subscription ADD COLUMN reminder_days integer[] NOT NULL DEFAULT '{{30,7}}'
            CHECK (cardinality(reminder_days) BETWEEN 1 AND 10
                   AND 0 <= ALL (reminder_days) AND 366 >= ALL (reminder_days))""",
        f"DROP TABLE {s}.reminder",
        # What notify knows of each deadline, from the latest event about it (as_of: its occurred_at).
        f"""CREATE TABLE {s}.deadline (
            key text PRIMARY KEY,
            kind text NOT NULL,
            region text NOT NULL,
            deadline date NOT NULL,
            title text NOT NULL,
            details jsonb NOT NULL,
            as_of timestamptz NOT NULL,
            event_id uuid NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now())""",
        f"CREATE INDEX deadline_due ON {s}.deadline (deadline)",
        f"""CREATE TABLE {s}.reminder (
            subscription_id uuid NOT NULL REFERENCES {s}.subscription(id),
            deadline_key text NOT NULL,
            deadline date NOT NULL,
            lead_days integer NOT NULL,
            event_id uuid NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (subscription_id, deadline_key, deadline, lead_days))""",
    ]:
        op.execute(statement)


def downgrade(schema: str) -> None:
    s = f'"{schema}"'
    for statement in [
        f"DROP TABLE {s}.reminder",
        f"DROP TABLE {s}.deadline",
        f"ALTER TABLE {s}.subscription DROP COLUMN reminder_days",
        f"""CREATE TABLE {s}.reminder (
            target_id text NOT NULL, deadline date NOT NULL, offset_days integer NOT NULL,
            event_id uuid NOT NULL UNIQUE, recipients integer NOT NULL DEFAULT 0,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (target_id, deadline, offset_days))""",
    ]:
        op.execute(statement)
