"""training's tables: divisions and organizations it checks against, people and county pools,
sessions with enrolments and completions, exams, outstanding selections.

Personal data is minimal: a name and a phone, and of a resident ID number only a keyed hash (to find
duplicates) and a masked form (to show). None of it leaves this schema except masked.

Revision ID: 0001
"""
from alembic import op

from cso import outbox

revision = "0001"
down_revision = None


def upgrade(schema: str) -> None:
    s = f'"{schema}"'
    for statement in outbox.ddl(schema) + [
        f"""CREATE TABLE {s}.county (
            code char(6) PRIMARY KEY, name text NOT NULL, city_code char(4) NOT NULL,
            province_code char(2) NOT NULL, edition text NOT NULL)""",
        f"CREATE INDEX county_city ON {s}.county (city_code)",
        f"""CREATE TABLE {s}.township (
            code char(9) PRIMARY KEY, name text NOT NULL, county_code char(6) NOT NULL,
            edition text NOT NULL)""",
        f"""CREATE TABLE {s}.organization (
            id uuid PRIMARY KEY, community_code char(12) NOT NULL,
            status text NOT NULL CHECK (status IN ('active', 'deregistered', 'revoked')),
            last_event_id uuid NOT NULL)""",
        f"""CREATE TABLE {s}.person (
            id uuid PRIMARY KEY,
            name text,
            phone text,
            id_hash char(64) UNIQUE,
            id_masked text,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            updated_by text NOT NULL)""",
        f"CREATE INDEX person_contact ON {s}.person (phone, name)",
        f"""CREATE TABLE {s}.membership (
            seq bigserial PRIMARY KEY,
            person_id uuid NOT NULL REFERENCES {s}.person(id),
            county_code char(6) NOT NULL,
            role text NOT NULL CHECK (role IN ('cso_leader', 'social_worker', 'volunteer', 'hub_leader')),
            organization_id uuid,
            added_on date NOT NULL,
            removed_on date,
            removal_reason text,
            hub_id uuid,
            added_event_id uuid NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now(),
            updated_by text NOT NULL,
            CHECK (removed_on IS NULL OR removed_on >= added_on))""",
        # A person is in one county's pool at a time (and so appears once per county).
        f"CREATE UNIQUE INDEX membership_current ON {s}.membership (person_id) WHERE removed_on IS NULL",
        f"CREATE INDEX membership_county ON {s}.membership (county_code, added_on)",
        f"""CREATE TABLE {s}.hub_leader (
            hub_id uuid PRIMARY KEY, person_id uuid NOT NULL, county_code char(6) NOT NULL,
            added_to_pool boolean NOT NULL, event_id uuid NOT NULL,
            recorded_at timestamptz NOT NULL DEFAULT now())""",
        f"""CREATE TABLE {s}.session (
            id uuid PRIMARY KEY,
            organizer_region text NOT NULL,
            topic text NOT NULL,
            starts_on date NOT NULL,
            ends_on date NOT NULL CHECK (ends_on >= starts_on),
            capacity integer NOT NULL CHECK (capacity > 0),
            mode text NOT NULL CHECK (mode IN ('on_site', 'online')),
            status text NOT NULL CHECK (status IN ('scheduled', 'completed', 'cancelled')),
            completed_on date,
            cancelled_on date,
            cancel_reason text,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            updated_by text NOT NULL)""",
        f"CREATE INDEX session_region ON {s}.session (organizer_region, starts_on)",
        f"""CREATE TABLE {s}.enrolment (
            session_id uuid NOT NULL REFERENCES {s}.session(id),
            person_id uuid NOT NULL REFERENCES {s}.person(id),
            status text NOT NULL CHECK (status IN ('enrolled', 'withdrawn', 'released')),
            attended boolean,
            enrolled_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            updated_by text NOT NULL,
            PRIMARY KEY (session_id, person_id))""",
        f"CREATE INDEX enrolment_person ON {s}.enrolment (person_id)",
        f"""CREATE TABLE {s}.completion (
            id uuid PRIMARY KEY,
            session_id uuid NOT NULL REFERENCES {s}.session(id),
            person_id uuid NOT NULL REFERENCES {s}.person(id),
            organizer_region text NOT NULL,
            county_code char(6) NOT NULL,
            completed_on date NOT NULL,
            recorded_at timestamptz NOT NULL DEFAULT now(),
            updated_by text NOT NULL,
            UNIQUE (session_id, person_id))""",
        f"CREATE INDEX completion_person ON {s}.completion (person_id)",
        f"""CREATE TABLE {s}.exam (
            person_id uuid NOT NULL REFERENCES {s}.person(id),
            year smallint NOT NULL,
            level text NOT NULL CHECK (level IN ('assistant', 'intermediate', 'senior')),
            passed boolean NOT NULL,
            county_code char(6) NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now(),
            updated_by text NOT NULL,
            PRIMARY KEY (person_id, year, level))""",
        f"CREATE INDEX exam_county ON {s}.exam (county_code, year)",
        f"""CREATE TABLE {s}.outstanding (
            county_code char(6) NOT NULL,
            year smallint NOT NULL,
            kind text NOT NULL CHECK (kind IN ('organization', 'leader')),
            subject_id uuid NOT NULL,
            title text,
            selected_at timestamptz NOT NULL DEFAULT now(),
            updated_by text NOT NULL,
            PRIMARY KEY (county_code, year, kind, subject_id))""",
    ]:
        op.execute(statement)
