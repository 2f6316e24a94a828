"""Division changes (DivisionChanged, issue 22): each merge, recode, rename or abolition registry
has heard of, by code and day. Filings are checked against them (a retired code on or after its
day is refused, naming its successor) and records at a retired code follow it
(services/registry/divisions.py).

Revision ID: 0009
"""
from alembic import op

revision = "0009"
down_revision = "0008"


def upgrade(schema: str) -> None:
    s = f'"{schema}"'
    op.execute(f"""CREATE TABLE {s}.division_change (
        code text NOT NULL,
        effective_on date NOT NULL,
        change text NOT NULL CHECK (change IN ('renamed', 'merged', 'recoded', 'abolished')),
        successor_code text,
        name text,
        event_id uuid NOT NULL,
        PRIMARY KEY (code, effective_on))""")
