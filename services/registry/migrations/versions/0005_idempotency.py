"""Idempotent commands: each caller's Idempotency-Key with the reply its command gave
(cso/idempotency.py).

Revision ID: 0005
"""
from alembic import op

from cso import idempotency

revision = "0005"
down_revision = "0004"


def upgrade(schema: str) -> None:
    for statement in idempotency.ddl(schema):
        op.execute(statement)
