"""Facilities (FacilityOpened, contracts 1.8.0, issue 22): innovation bases (创新发展基地),
demonstration parks (创新示范园), social-work stations (社工站) and rooms (社工室), each running at
the division it opened at until it closes; their audit rows are of record_kind 'facility'.

audit is one of registry's busiest tables: the widened CHECK is added NOT VALID (no scan, a brief
lock) and validated in a transaction of its own (a scan under a lock that lets writers on, review
finding 10). A database that ran this migration before it was written so has the same constraint,
validated: this migration's effect is unchanged, only the locks it takes on the way. If the
validation fails (it cannot: every row met the narrower CHECK), the constraint stays NOT VALID and
this revision is not recorded; `ALTER TABLE registry.audit VALIDATE CONSTRAINT
audit_record_kind_check` by hand, then `alembic stamp 0010`.

Revision ID: 0010
"""
from alembic import op

revision = "0010"
down_revision = "0009"


def upgrade(schema: str) -> None:
    s = f'"{schema}"'
    op.execute(f"""CREATE TABLE {s}.facility (
        id uuid PRIMARY KEY,
        kind text NOT NULL CHECK (kind IN ('innovation_base', 'demonstration_park', 'social_work_station',
                                           'social_work_room')),
        name text NOT NULL,
        region_code text NOT NULL,
        started_on date NOT NULL,
        ended_on date,
        updated_by text NOT NULL)""")
    op.execute(f"CREATE INDEX facility_region ON {s}.facility (region_code)")
    op.execute(f"ALTER TABLE {s}.audit DROP CONSTRAINT audit_record_kind_check")
    op.execute(f"ALTER TABLE {s}.audit ADD CONSTRAINT audit_record_kind_check "
               "CHECK (record_kind IN ('organization', 'hub', 'base', 'party', 'project', 'facility')) NOT VALID")
    # Committed first: the lock the ADD took is held to its transaction's end, and the scan below
    # would run under it.
    with op.get_context().autocommit_block():
        op.execute(f"ALTER TABLE {s}.audit VALIDATE CONSTRAINT audit_record_kind_check")


def downgrade(schema: str) -> None:
    s = f'"{schema}"'
    op.execute(f"DELETE FROM {s}.audit WHERE record_kind = 'facility'")
    op.execute(f"ALTER TABLE {s}.audit DROP CONSTRAINT audit_record_kind_check")
    op.execute(f"ALTER TABLE {s}.audit ADD CONSTRAINT audit_record_kind_check "
               "CHECK (record_kind IN ('organization', 'hub', 'base', 'party', 'project'))")
    op.execute(f"DROP TABLE {s}.facility")
