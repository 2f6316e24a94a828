"""The outbox is written once (issue 23): each row carries its transaction's id (txid) and is never
updated; what is published is a position per outbox (outbox_relay) and, per stream, the last
sequence JetStream gave it (outbox_stream), written once a batch by the relay (cso/outbox.py).

Revision ID: 0010
"""
from alembic import op

from cso import outbox

revision = "0010"
down_revision = "0009"


def upgrade(schema: str) -> None:
    for statement in outbox.written_once_ddl(schema, ("outbox",)):
        op.execute(statement)
