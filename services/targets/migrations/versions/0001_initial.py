"""targets' tables: divisions, facts per entity, entity timelines, coverage deltas, targets.

Revision ID: 0001
"""
from alembic import op

from cso import outbox

revision = "0001"
down_revision = None


def upgrade(schema: str) -> None:
    s = f'"{schema}"'
    for statement in outbox.ddl(schema) + [
        f"""CREATE TABLE {s}.division (
            code text PRIMARY KEY, name text NOT NULL, tier text NOT NULL, kind text,
            parent_code text, edition text NOT NULL)""",
        f"CREATE INDEX division_parent ON {s}.division (parent_code)",
        f"CREATE INDEX division_tier ON {s}.division (tier, code text_pattern_ops)",
        # Every fact targets counts, by the entity it is about: the log its projections fold.
        f"""CREATE TABLE {s}.fact (
            event_id uuid PRIMARY KEY, entity_key text NOT NULL, type text NOT NULL,
            effective date NOT NULL, occurred_at timestamptz NOT NULL, payload jsonb NOT NULL)""",
        f"CREATE INDEX fact_entity ON {s}.fact (entity_key)",
        # Which organizations a party organization covers, which townships a hub or base serves.
        f"""CREATE TABLE {s}.membership (
            owner_key text NOT NULL, member text NOT NULL, PRIMARY KEY (owner_key, member))""",
        f"CREATE INDEX membership_member ON {s}.membership (member)",
        f"""CREATE TABLE {s}.entity (
            key text PRIMARY KEY, kind text NOT NULL, region text, timeline jsonb)""",
        f"CREATE INDEX entity_region ON {s}.entity (kind, region text_pattern_ops)",
        f"""CREATE TABLE {s}.coverage (
            region text NOT NULL, counter text NOT NULL, month date NOT NULL, delta bigint NOT NULL,
            PRIMARY KEY (region, counter, month))""",
        f"""CREATE TABLE {s}.coverage_now (
            region text NOT NULL, counter text NOT NULL, value bigint NOT NULL,
            PRIMARY KEY (region, counter))""",
        f"""CREATE TABLE {s}.dirty_region (
            region text PRIMARY KEY, since timestamptz NOT NULL DEFAULT now())""",
        f"""CREATE TABLE {s}.target (
            id text PRIMARY KEY, spec jsonb NOT NULL, retired boolean NOT NULL DEFAULT false,
            origin text NOT NULL, updated_at timestamptz NOT NULL DEFAULT now())""",
        f"""CREATE TABLE {s}.target_instance (
            id text PRIMARY KEY, target_id text NOT NULL, region text NOT NULL, figure text NOT NULL,
            threshold double precision NOT NULL, deadline date NOT NULL, instance jsonb NOT NULL,
            status text, value double precision, evaluated_at timestamptz)""",
        f"CREATE INDEX target_instance_region ON {s}.target_instance (region)",
        f"""CREATE TABLE {s}.target_history (
            instance_id text NOT NULL, status text NOT NULL, previous_status text,
            value double precision, changed_at timestamptz NOT NULL DEFAULT now(), on_day date NOT NULL)""",
        f"CREATE INDEX target_history_instance ON {s}.target_history (instance_id, changed_at)",
    ]:
        op.execute(statement)
