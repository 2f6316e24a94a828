"""Coverage moves are marked, not upserted: dirty_region loses its primary key, so that a batch
marking a region never waits for the coalescer taking that region. (An INSERT … ON CONFLICT waits
for a concurrent, uncommitted DELETE of the conflicting row: every batch touching a province, city
or county waited for the whole evaluation step of the coalescer, seconds after a backfill.)

Revision ID: 0003
Revises: 0002
"""
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade(schema: str) -> None:
    s = f'"{schema}"'
    op.execute(f"ALTER TABLE {s}.dirty_region DROP CONSTRAINT dirty_region_pkey")
    op.execute(f"CREATE INDEX dirty_region_region ON {s}.dirty_region (region)")
