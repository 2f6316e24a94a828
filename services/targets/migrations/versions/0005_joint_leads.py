"""Joint lead units: a plan task may be led by several units (「市委组织部、市民政局」牵头).

`plan_task.leads` holds every lead unit in the plan's order; `lead` keeps the first, which the
task's own progress line and TaskOverdue's `lead_unit` name, so a replica of before (which writes
`lead` only) keeps working: readers take `leads`, or `lead` alone when a row of before has none.

Revision ID: 0005
Revises: 0004
"""
from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade(schema: str) -> None:
    s = f'"{schema}"'
    op.execute(f"ALTER TABLE {s}.plan_task ADD COLUMN leads text[] NOT NULL DEFAULT '{{}}'")
    op.execute(f"UPDATE {s}.plan_task SET leads = ARRAY[lead]")
