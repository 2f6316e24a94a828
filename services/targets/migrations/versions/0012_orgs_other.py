"""orgs_<tier> is read from its community kinds' (issue 23): the history (coverage) keeps
orgs_urban_<tier>, orgs_rural_<tier> and the new orgs_other_<tier> (organizations in no urban or
rural community), and no longer orgs_<tier> (domain/metrics.py DERIVED). This fills
orgs_other_<tier> from what is kept: on each region and day, and in coverage_now, it is orgs_<tier>
less the urban and rural ones, exactly, since every organization state counted under orgs_<tier>
and under at most one of the other two.

orgs_<tier>'s own rows stay, for a replica of before still running during the roll (infra/README,
*Upgrade*): the new code never reads them; `cso rebuild --apply` clears them, and puts right an
organization in no urban or rural community that a replica of before applied during the roll.

Revision ID: 0012
Revises: 0011
"""
from alembic import op

revision = "0012"
down_revision = "0011"

TIERS = ("registered", "filed", "guided")   # contracts.events.ManagementTier, as of this revision


def statements(schema: str) -> list[str]:
    """The upgrade's SQL (tests/integration/test_targets.py runs it on a projection of before)."""
    s = f'"{schema}"'
    out = []
    for tier in TIERS:
        whole, urban, rural, other = f"orgs_{tier}", f"orgs_urban_{tier}", f"orgs_rural_{tier}", f"orgs_other_{tier}"
        moved = f"sum(CASE counter WHEN '{whole}' THEN delta ELSE -delta END)"
        out.append(f"""
            INSERT INTO {s}.coverage (region, counter, month, delta)
            SELECT region, '{other}', month, {moved}
            FROM {s}.coverage WHERE counter IN ('{whole}', '{urban}', '{rural}')
            GROUP BY region, month HAVING {moved} <> 0
            ON CONFLICT (region, counter, month) DO UPDATE SET delta = excluded.delta""")
        value = f"sum(CASE counter WHEN '{whole}' THEN value ELSE -value END)"
        out.append(f"""
            INSERT INTO {s}.coverage_now (region, counter, value)
            SELECT region, '{other}', {value}
            FROM {s}.coverage_now WHERE counter IN ('{whole}', '{urban}', '{rural}')
            GROUP BY region HAVING {value} <> 0
            ON CONFLICT (region, counter) DO UPDATE SET value = excluded.value""")
    return out


def upgrade(schema: str) -> None:
    for statement in statements(schema):
        op.execute(statement)


def downgrade(schema: str) -> None:
    # orgs_<tier>'s history rows are kept by upgrade; those written since are not: a rebuild
    # (`cso rebuild --apply`) of the code of before writes them again.
    s = f'"{schema}"'
    others = ", ".join(f"'orgs_other_{t}'" for t in TIERS)
    op.execute(f"DELETE FROM {s}.coverage WHERE counter IN ({others})")
    op.execute(f"DELETE FROM {s}.coverage_now WHERE counter IN ({others})")
