"""Funded projects (政府购买服务, 公益创投, 孵化培育资金): the project with its funder, recipient (or the
hub acting for organizations without legal personality), region, amount in whole fen, period and
status; and the organizations a project through a hub supports (services/registry/funding.py).

Revision ID: 0008
"""
from alembic import op

revision = "0008"
down_revision = "0007"


def upgrade(schema: str) -> None:
    s = f'"{schema}"'
    op.execute(f"""CREATE TABLE {s}.funded_project (
        id uuid PRIMARY KEY,
        name text NOT NULL,
        program text NOT NULL CHECK (program IN ('government_purchase', 'venture_philanthropy', 'incubation_fund')),
        funder_region text NOT NULL,
        funder_department text NOT NULL,
        recipient_organization_id uuid NOT NULL REFERENCES {s}.organization (id),
        hub_id uuid REFERENCES {s}.hub (id),
        region_code text NOT NULL,
        amount_fen bigint NOT NULL CHECK (amount_fen > 0),
        awarded_on date NOT NULL,
        starts_on date NOT NULL,
        ends_on date NOT NULL CHECK (ends_on >= starts_on),
        status text NOT NULL CHECK (status IN ('active', 'completed', 'terminated')),
        ended_on date,
        end_reason text,
        updated_by text,
        created_at timestamptz NOT NULL DEFAULT now())""")
    op.execute(f"CREATE INDEX funded_project_region ON {s}.funded_project (region_code text_pattern_ops)")
    op.execute(f"CREATE INDEX funded_project_recipient ON {s}.funded_project (recipient_organization_id)")
    op.execute(f"""CREATE TABLE {s}.funded_beneficiary (
        project_id uuid NOT NULL REFERENCES {s}.funded_project (id),
        organization_id uuid NOT NULL REFERENCES {s}.organization (id),
        PRIMARY KEY (project_id, organization_id))""")
    # The audit trail keeps who recorded a project and what changed, like any record's.
    op.execute(f"ALTER TABLE {s}.audit DROP CONSTRAINT audit_record_kind_check")
    op.execute(f"ALTER TABLE {s}.audit ADD CONSTRAINT audit_record_kind_check "
               "CHECK (record_kind IN ('organization', 'hub', 'base', 'party', 'project'))")
