"""Evidence with a number (issue 22, numeric community tasks): the count an evidence file carries
(activities held) and who confirmed it when. A community task's `evidence_count` target sums the
confirmed counts only.

Revision ID: 0009
Revises: 0008
"""
from alembic import op

revision = "0009"
down_revision = "0008"


def upgrade(schema: str) -> None:
    s = f'"{schema}"'
    op.execute(f"ALTER TABLE {s}.plan_evidence ADD COLUMN count integer, ADD COLUMN confirmed_by text, "
               "ADD COLUMN confirmed_on date")


def downgrade(schema: str) -> None:
    s = f'"{schema}"'
    op.execute(f"ALTER TABLE {s}.plan_evidence DROP COLUMN count, DROP COLUMN confirmed_by, "
               "DROP COLUMN confirmed_on")
