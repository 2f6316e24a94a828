"""Personal data rights: a person's record can be erased (the personal fields go, the anonymous
rows that figures count stay, `erased_at` says when), and every unmasked read, export and erasure
is recorded with who asked (token subject, region, roles), from which system, and when.

Revision ID: 0002
"""
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade(schema: str) -> None:
    s = f'"{schema}"'
    for statement in [
        f"ALTER TABLE {s}.person ADD COLUMN erased_at timestamptz",
        f"""CREATE TABLE {s}.personal_data_request (
            id bigserial PRIMARY KEY,
            action text NOT NULL CHECK (action IN ('read_unmasked', 'export', 'erase')),
            person_id uuid,
            county_code char(6),
            sub text NOT NULL,
            region text NOT NULL,
            roles text[] NOT NULL,
            source text NOT NULL,
            at timestamptz NOT NULL DEFAULT now(),
            CHECK (person_id IS NOT NULL OR county_code IS NOT NULL))""",
        f"CREATE INDEX personal_data_request_person ON {s}.personal_data_request (person_id, at)",
    ]:
        op.execute(statement)
