"""The outbox's position is a seq (issue 23): its relay publishes in seq order, which keeps cause
before effect, and settles the holes a late or rolled-back transaction leaves with a probe of the
transactions running (cso/outbox.py). A row's seq is drawn once its transaction has an id; the
txid column of the previous migration goes: against infra/README's Upgrade rule (drop only in
a later release), safe because the previous migration's schema (commit 8843572) was never
released: it lived on main for under an hour of one session, no deployment ran it alone, and no
replica reads txid (cso.outbox.seq_position_ddl).

Revision ID: 0006
"""
from alembic import op

from cso import outbox

revision = "0006"
down_revision = "0005"


def upgrade(schema: str) -> None:
    for statement in outbox.seq_position_ddl(schema, ("outbox",)):
        op.execute(statement)
