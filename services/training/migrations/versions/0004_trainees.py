"""Trainees beyond the pools (issue 21): a person trained outside any county's pool is recorded
with a role (training.domain.TRAINEE_ROLES) and the county they work in; each completion keeps the
trainee's role and whether they were in a pool then (NULL on completions of before: they were
recorded only for people with a pool membership).

Revision ID: 0004
"""
from alembic import op

revision = "0004"
down_revision = "0003"

ROLES = ("cso_leader", "social_worker", "volunteer", "hub_leader", "civil_affairs_assistant",
         "children_director", "community_worker")


def upgrade(schema: str) -> None:
    s = f'"{schema}"'
    roles = ", ".join(f"'{r}'" for r in ROLES)
    for statement in [
        f"""CREATE TABLE {s}.trainee (
            person_id uuid PRIMARY KEY REFERENCES {s}.person(id),
            role text NOT NULL CHECK (role IN ({roles})),
            county_code char(6) NOT NULL,
            added_on date NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now(),
            updated_by text NOT NULL)""",
        f"CREATE INDEX trainee_county ON {s}.trainee (county_code)",
        f"ALTER TABLE {s}.completion ADD COLUMN role text, ADD COLUMN in_pool boolean",
    ]:
        op.execute(statement)
