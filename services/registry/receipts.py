"""Receipts by event id: what registry did with each fact a publisher sent (contracts/receipts.py).

One call answers thousands of event ids (two indexed lookups), where a publisher used to ask
`GET /organizations/{id}` once per fact. Asked over NATS on `cso.query.registry.receipts.<source>`
(the NATS user may ask for its own source only, see cso/natsauth.py) or over HTTP, `POST /receipts`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any
from uuid import UUID

from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from contracts import ContractError
from contracts.envelope import load_json
from contracts.receipts import (
    LOSSES_DAYS,
    MAX_LOSSES,
    Receipt,
    ReceiptsAnswer,
    ReceiptsQuery,
)

from .domain import NotYet, Rejected
from .losses import announcement
from .store import SCHEMA

REASON_CHARS = 300  # a reply of MAX_NATS_IDS refusals must fit in one NATS message


async def note_refusals(conn: AsyncConnection, envelopes: Sequence[Any], rejected: dict[UUID, Rejected]) -> None:
    """Keep, in the batch's transaction, why each fact was refused for good (not NotYet: retried)."""
    rows = [{"e": e.event_id, "s": e.source, "t": e.type, "f": r.field, "r": r.message, "c": r.code}
            for e in envelopes if (r := rejected.get(e.event_id)) is not None and not isinstance(r, NotYet)]
    if rows:
        await conn.execute(text(
            f"INSERT INTO {SCHEMA}.intake_refusal (event_id, source, type, field, reason, code) "
            "VALUES (:e, :s, :t, :f, :r, :c) ON CONFLICT DO NOTHING"), rows)


async def receipts(conn: AsyncConnection, source: str | None, ids: Sequence[UUID]) -> ReceiptsAnswer:
    """One receipt per id, in the order asked; `source` None: any source (admin)."""
    args = {"ids": list(ids), "source": source}
    mine = "(CAST(:source AS text) IS NULL OR source = :source)"
    accepted = {r.event_id: r for r in (await conn.execute(text(
        f"SELECT event_id, record_id, type, region FROM {SCHEMA}.audit WHERE event_id = ANY(:ids) AND {mine}"),
        args)).all()}
    refused = {r.event_id: r for r in (await conn.execute(text(
        f"SELECT event_id, field, reason, code FROM {SCHEMA}.intake_refusal WHERE event_id = ANY(:ids) AND {mine}"),
        args)).all()}
    waiting = {r.event_id: r for r in (await conn.execute(text(
        f"SELECT event_id, field, reason, until FROM {SCHEMA}.waiting WHERE event_id = ANY(:ids) AND {mine}"),
        args)).all()}
    out: list[Receipt] = []
    for event_id in ids:
        if (a := accepted.get(event_id)) is not None:
            out.append(Receipt(event_id=event_id, verdict="accepted", id=str(a.record_id), type=a.type,
                               region=a.region))
        elif (r := refused.get(event_id)) is not None:
            out.append(Receipt(event_id=event_id, verdict="refused", field=r.field, reason=r.reason[:REASON_CHARS],
                               code=r.code))
        elif (w := waiting.get(event_id)) is not None:
            out.append(Receipt(event_id=event_id, verdict="waiting", field=w.field, reason=w.reason[:REASON_CHARS],
                               until=w.until))
        else:
            out.append(Receipt(event_id=event_id, verdict="unknown"))
    # Told with every answer too: a publisher that was not listening when registry announced a
    # loss learns of it at its next query.
    losses = (await conn.execute(text(
        f"SELECT * FROM {SCHEMA}.intake_loss WHERE detected_at > now() - make_interval(days => :days) "
        "ORDER BY detected_at DESC LIMIT :n"), {"days": LOSSES_DAYS, "n": MAX_LOSSES})).mappings().all()
    return ReceiptsAnswer(source=source, counts=dict(Counter(r.verdict for r in out)), receipts=out,
                          losses=[announcement(loss).payload for loss in losses])


def parse_query(body: bytes, limit: int) -> ReceiptsQuery:
    """The request, or ContractError naming the field (too many ids: `event_ids`)."""
    data = load_json(body)
    if isinstance(data, dict) and isinstance(ids := data.get("event_ids"), list) and len(ids) > limit:
        raise ContractError.single("event_ids", f"{len(ids)} ids; at most {limit} a request: ask in batches")
    try:
        return ReceiptsQuery.model_validate(data)
    except ValidationError as e:
        raise ContractError.from_validation(e) from None


def dump(answer: ReceiptsAnswer) -> bytes:
    return answer.model_dump_json(exclude_none=True).encode()
