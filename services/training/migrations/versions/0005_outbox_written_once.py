"""The outbox is written once (issue 23): each row carries its transaction's id (txid) and is never
updated; what is published is a position per outbox (outbox_relay) and, per stream, the last
sequence JetStream gave it (outbox_stream), written once a batch by the relay (cso/outbox.py).
Its schema (commit 8843572) was never released (on main for under an hour of one session): the
next migration drops the txid again, and the (txid, seq) index is no longer built
(cso.outbox.written_once_ddl).

Revision ID: 0005
"""
from alembic import op

from cso import outbox

revision = "0005"
down_revision = "0004"


def upgrade(schema: str) -> None:
    for statement in outbox.written_once_ddl(schema, ("outbox",)):
        op.execute(statement)
