"""Look up the party organizations covering an organization without scanning (recounts, views).

Revision ID: 0002
"""
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade(schema: str) -> None:
    op.execute(f'CREATE INDEX party_coverage_organization ON "{schema}".party_coverage (organization_id)')
