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

from . import store
from .domain import NotYet, Rejected
from .losses import announcement

REASON_CHARS = 300  # a reply of MAX_NATS_IDS refusals must fit in one NATS message


async def note_refusals(conn: AsyncConnection, envelopes: Sequence[Any], rejected: dict[UUID, Rejected]) -> None:
    """Keep, in the batch's transaction, why each fact was refused for good (not NotYet: retried)."""
    await store.note_refusals(conn, [
        {"event_id": e.event_id, "source": e.source, "type": e.type, "field": r.field, "reason": r.message,
         "code": r.code}
        for e in envelopes if (r := rejected.get(e.event_id)) is not None and not isinstance(r, NotYet)])


async def receipts(conn: AsyncConnection, source: str | None, ids: Sequence[UUID]) -> ReceiptsAnswer:
    """One receipt per id, in the order asked; `source` None: any source (admin)."""
    accepted = await store.accepted_events(conn, ids, source)
    refused = await store.refused_events(conn, ids, source)
    waiting = await store.waiting_events(conn, ids, source)
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
    losses = await store.recent_losses(conn, LOSSES_DAYS, MAX_LOSSES)
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
