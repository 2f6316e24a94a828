"""The waiting room: intake facts that wait for a predecessor or their county's divisions, kept
until what they need arrives or they have waited too long (services/registry/waiting.py); and the
stable code of each refusal, for the receipts.

Revision ID: 0006
"""
from alembic import op

revision = "0006"
down_revision = "0005"


def upgrade(schema: str) -> None:
    op.execute(f"""CREATE TABLE "{schema}".waiting (
        seq bigserial UNIQUE,                -- arrival order: woken facts are decided in it
        event_id uuid PRIMARY KEY,
        source text NOT NULL,
        type text NOT NULL,
        region text NOT NULL,
        waits_for text NOT NULL,             -- organization:<id>, hub:<id>, base:<id>, party:<id>, county:<code>
        field text NOT NULL,
        reason text NOT NULL,
        data bytea NOT NULL,                 -- the envelope as taken in (its stream sequence: inbox)
        arrived_at timestamptz NOT NULL,
        until timestamptz NOT NULL)""")
    op.execute(f'CREATE INDEX waiting_for ON "{schema}".waiting (waits_for)')
    op.execute(f'CREATE INDEX waiting_until ON "{schema}".waiting (until)')
    op.execute(f"""ALTER TABLE "{schema}".intake_refusal ADD COLUMN code text NOT NULL DEFAULT 'rule'""")
