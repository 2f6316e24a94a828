"""Division changes (DivisionChanged, issue 22): each merge, recode or abolition training has heard
of, by code and day. A command naming a county retired on or before its day is refused, naming the
successor (domain.not_retired); what training keeps at a retired code follows it
(handlers.DivisionChangesHandler).

Revision ID: 0007
"""
from alembic import op

revision = "0007"
down_revision = "0006"


def upgrade(schema: str) -> None:
    s = f'"{schema}"'
    op.execute(f"""CREATE TABLE {s}.division_change (
        code text NOT NULL,
        effective_on date NOT NULL,
        change text NOT NULL CHECK (change IN ('merged', 'recoded', 'abolished')),
        successor_code text,
        PRIMARY KEY (code, effective_on))""")
