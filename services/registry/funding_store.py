"""Funded projects in registry's schema (SQLAlchemy Core tables); written by `record.save`, read by
`funding_api`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, fields
from datetime import date
from typing import Any
from uuid import UUID

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Table,
    Text,
    Uuid,
    and_,
    func,
    or_,
    select,
)
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from .domain.funding import FundedProject
from .store import METADATA, SCHEMA, hub, organization

__all__ = ["SCHEMA", "funded_beneficiary", "funded_project", "load_projects", "project", "projects_in",
           "save_projects", "totals"]

# Made by migration 0008; in registry's one MetaData, so tests/integration/test_schema.py compares them.
funded_project = Table(
    "funded_project", METADATA,
    Column("id", Uuid, primary_key=True),
    Column("name", Text, nullable=False),
    Column("program", Text, CheckConstraint(
        "program IN ('government_purchase', 'venture_philanthropy', 'incubation_fund')"), nullable=False),
    Column("funder_region", Text, nullable=False),
    Column("funder_department", Text, nullable=False),
    Column("recipient_organization_id", Uuid, ForeignKey(organization.c.id), nullable=False),
    Column("hub_id", Uuid, ForeignKey(hub.c.id)),
    Column("region_code", Text, nullable=False),
    Column("amount_fen", BigInteger, CheckConstraint("amount_fen > 0"), nullable=False),
    Column("awarded_on", Date, nullable=False),
    Column("starts_on", Date, nullable=False),
    Column("ends_on", Date, nullable=False),
    Column("status", Text, CheckConstraint("status IN ('active', 'completed', 'terminated')"), nullable=False),
    Column("ended_on", Date),
    Column("end_reason", Text),
    Column("updated_by", Text),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()))
Index("funded_project_region", funded_project.c.region_code, postgresql_ops={"region_code": "text_pattern_ops"})
Index("funded_project_recipient", funded_project.c.recipient_organization_id)
funded_beneficiary = Table(
    "funded_beneficiary", METADATA,
    Column("project_id", Uuid, ForeignKey(funded_project.c.id), primary_key=True),
    Column("organization_id", Uuid, ForeignKey(organization.c.id), primary_key=True))
_PROJECT_COLUMNS = [f.name for f in fields(FundedProject)]


async def load_projects(conn: AsyncConnection, ids: Sequence[UUID]) -> dict[UUID, FundedProject | None]:
    """The projects, locked in id order (replicas lock in the same order: no deadlock)."""
    rows = (await conn.execute(
        select(*(funded_project.c[c] for c in _PROJECT_COLUMNS)).where(funded_project.c.id.in_(sorted(ids)))
        .order_by(funded_project.c.id).with_for_update())).mappings().all()
    found = {r["id"]: FundedProject(**r) for r in rows}
    return {i: found.get(i) for i in ids}


async def save_projects(conn: AsyncConnection, changed: Sequence[tuple[FundedProject, list[UUID], str]]) -> None:
    """Insert new projects with their beneficiaries, or update ended ones (their state after the batch)."""
    if not changed:
        return
    rows = [asdict(p) | {"updated_by": source} for p, _, source in changed]
    stmt = insert(funded_project).values(rows)
    await conn.execute(stmt.on_conflict_do_update(
        index_elements=[funded_project.c.id],
        set_={c: stmt.excluded[c] for c in ("status", "ended_on", "end_reason", "updated_by")}))
    beneficiaries = [{"project_id": p.id, "organization_id": o} for p, orgs, _ in changed for o in orgs]
    if beneficiaries:
        await conn.execute(insert(funded_beneficiary).values(beneficiaries).on_conflict_do_nothing())


def _in_region(code: str) -> Any:
    return funded_project.c.region_code.startswith(code, autoescape=True)


async def projects_in(conn: AsyncConnection, region: str, limit: int, after: UUID | None,
                      status: str | None = None) -> list[dict[str, Any]]:
    """Keyset paging on id of the projects counted in a region (its own and those below it)."""
    query = select(funded_project).where(_in_region(region))
    if after is not None:
        query = query.where(funded_project.c.id > after)
    if status is not None:
        query = query.where(funded_project.c.status == status)
    rows = (await conn.execute(query.order_by(funded_project.c.id).limit(limit))).mappings().all()
    out = [dict(r) for r in rows]
    if out:
        found = (await conn.execute(select(funded_beneficiary).where(
            funded_beneficiary.c.project_id.in_([r["id"] for r in out])))).all()
        by_project: dict[UUID, list[UUID]] = {}
        for project_id, org_id in found:
            by_project.setdefault(project_id, []).append(org_id)
        for r in out:
            r["beneficiary_organization_ids"] = sorted(by_project.get(r["id"], []), key=str)
    return out


async def project(conn: AsyncConnection, project_id: UUID) -> dict[str, Any] | None:
    row = (await conn.execute(select(funded_project).where(funded_project.c.id == project_id))).mappings().first()
    if row is None:
        return None
    orgs = (await conn.execute(select(funded_beneficiary.c.organization_id).where(
        funded_beneficiary.c.project_id == project_id))).scalars().all()
    return dict(row) | {"beneficiary_organization_ids": sorted(orgs, key=str)}


async def totals(conn: AsyncConnection, region: str, as_of: date) -> dict[str, int]:
    """A recount of a region's funding as of a day, straight from the records (for checks): fen and
    projects awarded by then, projects active then."""
    active = and_(funded_project.c.starts_on <= as_of,
                  or_(funded_project.c.ended_on.is_(None), funded_project.c.ended_on > as_of))
    row = (await conn.execute(select(
        func.coalesce(func.sum(funded_project.c.amount_fen), 0), func.count(),
        func.count().filter(active)).where(_in_region(region), funded_project.c.awarded_on <= as_of))).one()
    return {"amount_fen": int(row[0]), "projects": int(row[1]), "active": int(row[2])}
