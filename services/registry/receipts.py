"""Receipts by event id: what registry did with each fact a publisher sent (contracts/receipts.py).

One call answers thousands of event ids (two indexed lookups), where a publisher used to ask
`GET /organizations/{id}` once per fact. Asked over NATS on `cso.query.registry.receipts.<source>`
(the NATS user may ask for its own source only, see cso/natsauth.py) or over HTTP, `POST /receipts`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from typing import Any
from uuid import UUID

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from faststream.nats import NatsMessage
from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from contracts import ContractError
from contracts.envelope import load_json
from contracts.receipts import (
    LOSSES_DAYS,
    MAX_HTTP_IDS,
    MAX_LOSSES,
    MAX_NATS_IDS,
    Receipt,
    ReceiptsAnswer,
    ReceiptsQuery,
)
from cso.auth import ADMIN, WRITE, AuthError, Principal
from cso.service import Runtime, errors_body

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


def _dump(answer: ReceiptsAnswer) -> bytes:
    return answer.model_dump_json(exclude_none=True).encode()


def mount(runtime: Runtime, app: FastAPI) -> None:
    """The NATS endpoint and the HTTP route."""

    async def on_query(msg: NatsMessage) -> bytes:
        source = msg.raw_message.subject.rsplit(".", 1)[-1]
        try:
            query = parse_query(msg.body, MAX_NATS_IDS)
            if query.source is not None and query.source != source:
                raise ContractError.single("source", f"the subject asks for {source!r}; leave source out")
        except ContractError as e:
            return json.dumps({**errors_body(e.errors), "status": 422}).encode()
        async with runtime.engine.connect() as conn:
            data = _dump(await receipts(conn, source, query.event_ids))
        max_payload = runtime.nc.max_payload if runtime.nc is not None else 1024 * 1024
        if len(data) > max_payload:
            error = ContractError.single("event_ids", f"the answer ({len(data)} bytes) exceeds a NATS message "
                                                      f"({max_payload}); ask for fewer ids")
            return json.dumps({**errors_body(error.errors), "status": 413}).encode()
        return data

    runtime.on_request(runtime.topology.query_subject("registry", "receipts.*"), on_query)
    caller = Depends(runtime.auth.caller())

    # Declared a write (it is a POST): a token always, since the caller's source is the token's.
    @app.post("/receipts", **WRITE)
    async def post_receipts(request: Request, who: Principal = caller) -> JSONResponse:
        """What registry did with each event id: accepted (the record), refused (why), or unknown
        (send it again). A token answers for its own source (its `source` claim, else its `sub`);
        admin for any `source`."""
        query = parse_query(await request.body(), MAX_HTTP_IDS)
        source = query.source
        if who.authenticated and ADMIN not in who.roles:
            if source is not None and source != who.source:
                raise AuthError(403, "source", f"{source!r} is not you ({who.source!r}); other sources need admin")
            source = who.source
        async with runtime.engine.connect() as conn:
            answer = await receipts(conn, source, query.event_ids)
        return JSONResponse(json.loads(_dump(answer)))
