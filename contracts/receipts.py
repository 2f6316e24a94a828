"""The receipts query: a publisher hands in event ids and gets one verdict per id.

Asked over NATS request-reply on `cso.query.registry.receipts.<source>` (a publisher's NATS user may
ask for its own source only) or over HTTP, `POST /receipts` on registry (a token's `sub` is the
source, unless the token is admin's). Verdicts:

- `accepted`: registry recorded the fact; `id`, `type`, `region` are those of the record it touched.
- `refused`: registry refused it for good; `field` and `reason` say why. Sending it again changes
  nothing: fix the fact and publish it under a new event_id.
- `unknown`: registry never took it (lost on the bus, or not arrived yet): publish it again, same
  event_id; registry applies an event id at most once, so a repeat is harmless.

Only events whose `source` is the one asked about are answered: another source's are `unknown`.
"""

from __future__ import annotations

from typing import Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

# One NATS message holds at most 1 MiB (nats-server's default max_payload); a reply of 2,000
# verdicts, reasons included, stays well under it. HTTP bodies carry more.
MAX_NATS_IDS = 2_000
MAX_HTTP_IDS = 10_000


class ReceiptsQuery(BaseModel):
    """The request: the event ids to look up (and over HTTP, for admin, the source)."""

    model_config = ConfigDict(extra="forbid")

    event_ids: list[UUID] = Field(min_length=1, max_length=MAX_HTTP_IDS)
    source: str | None = Field(default=None, min_length=1, max_length=100,
                               description="HTTP only: admin may name the source (else the token's sub)")


class Receipt(BaseModel):
    event_id: UUID
    verdict: Literal["accepted", "refused", "unknown"]
    id: str | None = Field(default=None, description="accepted: the record's id")
    type: str | None = Field(default=None, description="accepted: the event's type")
    region: str | None = Field(default=None, description="accepted: the record's region")
    field: str | None = Field(default=None, description="refused: the field at fault")
    reason: str | None = Field(default=None, description="refused: why")


class ReceiptsAnswer(BaseModel):
    ok: Literal[True] = True
    source: str | None
    counts: dict[str, int] = Field(description="how many of each verdict")
    receipts: list[Receipt] = Field(description="one per event id asked, in the order asked")
