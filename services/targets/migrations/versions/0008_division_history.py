"""Divisions with history (issue 22): the changes an edition brings (DivisionChanged: merged,
recoded, abolished, renamed) by code and day, the days a division code is valid, and the names a
renamed division had before, so coverage "as of" a past day answers in that day's divisions.

Revision ID: 0008
Revises: 0007
"""
from alembic import op

revision = "0008"
down_revision = "0007"


def upgrade(schema: str) -> None:
    s = f'"{schema}"'
    op.execute(f"""CREATE TABLE {s}.division_change (
        code text NOT NULL, effective_on date NOT NULL, change text NOT NULL,
        successor_code text, name text, event_id uuid NOT NULL,
        PRIMARY KEY (code, effective_on))""")
    op.execute(f"CREATE INDEX division_change_successor ON {s}.division_change (successor_code)")
    # valid_from: NULL since the first edition; valid_until: NULL while the code is in force.
    op.execute(f"ALTER TABLE {s}.division ADD COLUMN valid_from date, ADD COLUMN valid_until date")
    op.execute(f"""CREATE TABLE {s}.division_name (
        code text NOT NULL, until date NOT NULL, name text NOT NULL, PRIMARY KEY (code, until))""")


def downgrade(schema: str) -> None:
    s = f'"{schema}"'
    op.execute(f"DROP TABLE {s}.division_name")
    op.execute(f"ALTER TABLE {s}.division DROP COLUMN valid_from, DROP COLUMN valid_until")
    op.execute(f"DROP TABLE {s}.division_change")
