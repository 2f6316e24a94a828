"""Coverage kept per month (before 0004 made it per day) is flagged, and targets rebuilds it by
itself at start, once, putting each delta at its day (services/targets/rebuild.py `upgrade`; the
swap deletes the flag). A replica of before still running during the roll keeps writing at the
first of the month: `cso rebuild` lists those rows, `cso rebuild --apply` puts them right.

Revision ID: 0006
Revises: 0005
"""
from alembic import op

revision = "0006"
down_revision = "0005"


def upgrade(schema: str) -> None:
    s = f'"{schema}"'
    op.execute(f"CREATE TABLE {s}.projection_stale (reason text PRIMARY KEY)")
    op.execute(f"""INSERT INTO {s}.projection_stale (reason)
        SELECT 'coverage kept per month (before day-exact time)' WHERE EXISTS (SELECT 1 FROM {s}.coverage)""")
