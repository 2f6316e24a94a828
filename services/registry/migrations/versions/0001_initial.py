"""registry's tables: divisions it checks against, organizations, hubs, bases, party organizations.

Revision ID: 0001
"""
from alembic import op

from cso import outbox

revision = "0001"
down_revision = None


def upgrade(schema: str) -> None:
    s = f'"{schema}"'
    for statement in outbox.ddl(schema) + [
        f"""CREATE TABLE {s}.township (
            code char(9) PRIMARY KEY, name text NOT NULL, kind text NOT NULL,
            county_code char(6) NOT NULL, edition text NOT NULL)""",
        f"""CREATE TABLE {s}.community (
            code char(12) PRIMARY KEY, name text NOT NULL, kind text NOT NULL,
            township_code char(9) NOT NULL, edition text NOT NULL)""",
        f"""CREATE TABLE {s}.county (
            code char(6) PRIMARY KEY, name text NOT NULL, city_code char(4) NOT NULL,
            city_name text NOT NULL, province_code char(2) NOT NULL, province_name text NOT NULL,
            edition text NOT NULL)""",
        f"""CREATE TABLE {s}.organization (
            id uuid PRIMARY KEY,
            name text NOT NULL,
            community_code char(12) NOT NULL,
            tier text NOT NULL CHECK (tier IN ('registered', 'filed', 'guided')),
            category text NOT NULL,
            status text NOT NULL CHECK (status IN ('active', 'deregistered', 'revoked')),
            legal_form text,
            social_credit_code char(18) UNIQUE,
            filing_number text,
            filed_on date,
            registered_on date,
            ended_on date,
            end_reason text,
            brand boolean NOT NULL DEFAULT false,
            brand_projects integer NOT NULL DEFAULT 0,
            hub_demonstration boolean NOT NULL DEFAULT false,
            rating text,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            updated_by text NOT NULL,
            last_event_id uuid NOT NULL)""",
        f"CREATE INDEX organization_community ON {s}.organization (community_code, id)",
        f"""CREATE TABLE {s}.hub (
            id uuid PRIMARY KEY, organization_id uuid NOT NULL REFERENCES {s}.organization(id),
            region_code text NOT NULL, name text, leader_person_id uuid,
            started_on date NOT NULL, ended_on date, updated_by text NOT NULL)""",
        f"CREATE INDEX hub_region ON {s}.hub (region_code)",
        f"""CREATE TABLE {s}.incubation_base (
            id uuid PRIMARY KEY, name text NOT NULL, region_code text NOT NULL,
            started_on date NOT NULL, ended_on date, updated_by text NOT NULL)""",
        f"""CREATE TABLE {s}.base_township (
            base_id uuid NOT NULL REFERENCES {s}.incubation_base(id), township_code char(9) NOT NULL,
            PRIMARY KEY (base_id, township_code))""",
        f"""CREATE TABLE {s}.party_organization (
            id uuid PRIMARY KEY, kind text NOT NULL, members integer NOT NULL,
            region_code text NOT NULL, started_on date NOT NULL, ended_on date,
            updated_by text NOT NULL)""",
        f"""CREATE TABLE {s}.party_coverage (
            party_organization_id uuid NOT NULL REFERENCES {s}.party_organization(id),
            organization_id uuid NOT NULL REFERENCES {s}.organization(id),
            PRIMARY KEY (party_organization_id, organization_id))""",
    ]:
        op.execute(statement)
