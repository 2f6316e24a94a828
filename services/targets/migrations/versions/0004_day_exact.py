"""Day-exact time: coverage deltas are kept per day, and target definitions keep their history.

`coverage.month` holds a day from now on: a delta is put at the day its state began, so that
coverage as of 2022-03-01 leaves out a filing of 03-02. The column keeps its name while replicas of
before may run (they write at the first of the month, which is still a day: month ends and the
monthly series stay right); a later release renames it. Rows at the first of their month are made
day-exact by a rebuild (0006 flags them; targets rebuilds at start).

`target_instance_version` records each target instance's definition (threshold, deadline, start …)
from the day it was set, and NULL from the day it was retired: the status of a past day is
evaluated with the definition in force that day. Today's instances are its first versions.

Revision ID: 0004
Revises: 0003
"""
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade(schema: str) -> None:
    s = f'"{schema}"'
    for statement in [
        f"""CREATE TABLE {s}.target_instance_version (
            id text NOT NULL, region text NOT NULL, instance jsonb, from_day date NOT NULL,
            recorded_at timestamptz NOT NULL DEFAULT clock_timestamp())""",
        f"""CREATE INDEX target_instance_version_region
            ON {s}.target_instance_version (region text_pattern_ops, id, from_day)""",
        f"CREATE INDEX target_history_day ON {s}.target_history (instance_id, on_day)",
        f"""INSERT INTO {s}.target_instance_version (id, region, instance, from_day)
            SELECT id, region, instance, current_date FROM {s}.target_instance""",
    ]:
        op.execute(statement)
