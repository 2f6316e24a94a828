"""A service's handler table: which handler applies each event type it consumes.

Each service writes its table in `services/<name>/handlers.py`, the one place to look for what
happens to an event. A consumer (cso/consumer.py) pulls a batch from one stream, in one
transaction, and a batch may mix types: `HandlerTable` is the consumer's handler and hands each
handler its share of the batch in one call, in stream order, so a handler that decides facts one
after another against a batch ledger (registry) sees them as they came. Handlers are called in
the order of their first event in the batch.

An event type the table does not name goes to `otherwise`. Without it, the type is not this
subscription's business: the runtime filters the consumer to the table's types (`handles`), so
JetStream does not deliver it; one that still arrives (a consumer made before with the whole
context's filter) is applied as nothing, acknowledged, no effect.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from contracts import Envelope, Payload

from .consumer import Handler, Rejected


class HandlerTable:
    """Event type -> handler, for one subscription; itself a consumer Handler."""

    def __init__(self, handlers: Mapping[type[Payload], Handler], otherwise: Handler | None = None) -> None:
        self.handlers = dict(handlers)
        self.otherwise = otherwise
        self._by_type = {payload.TYPE: handler for payload, handler in self.handlers.items()}

    @property
    def handles(self) -> frozenset[str] | None:
        """The event types the table acts on, or None (every type) when it has `otherwise`. The
        runtime filters the consumer to these (Runtime.consume): the others are never delivered."""
        return frozenset(self._by_type) if self.otherwise is None else None

    def handler_of(self, event_type: str) -> Handler | None:
        """The handler of an event type (by its name, e.g. "OrganizationFiled"), or `otherwise`."""
        return self._by_type.get(event_type, self.otherwise)

    async def apply(self, conn: AsyncConnection, events: Sequence[Envelope[Any]]) -> dict[UUID, Rejected]:
        shares: dict[int, tuple[Handler, list[Envelope[Any]]]] = {}
        for envelope in events:
            handler = self.handler_of(envelope.type)
            if handler is not None:
                shares.setdefault(id(handler), (handler, []))[1].append(envelope)
        rejected: dict[UUID, Rejected] = {}
        for handler, share in shares.values():
            rejected |= await handler.apply(conn, share)
        return rejected

    async def after_commit(self, engine: AsyncEngine) -> None:
        """Once the consumer committed a batch: each handler that has an `after_commit` does its
        part (cso/consumer.py, Consumer._after_commit)."""
        handlers = {id(h): h for h in [*self.handlers.values(), self.otherwise] if h is not None}
        for handler in handlers.values():
            after_commit = getattr(handler, "after_commit", None)
            if after_commit is not None:
                await after_commit(engine)
