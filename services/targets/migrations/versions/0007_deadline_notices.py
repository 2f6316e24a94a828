"""Deadline notices targets has published (TargetDeadlineApproaching): one row per instance,
deadline and lead time, so replicas and restarts publish each at most once.

Revision ID: 0007
Revises: 0006
"""
from alembic import op

revision = "0007"
down_revision = "0006"


def upgrade(schema: str) -> None:
    s = f'"{schema}"'
    op.execute(f"""CREATE TABLE {s}.deadline_notice (
        instance_id text NOT NULL, deadline date NOT NULL, days_ahead integer NOT NULL,
        PRIMARY KEY (instance_id, deadline, days_ahead))""")


def downgrade(schema: str) -> None:
    op.execute(f'DROP TABLE "{schema}".deadline_notice')
