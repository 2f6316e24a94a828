"""The receipts query: a publisher hands in event ids and gets one verdict per id.

Asked over NATS request-reply on `cso.query.registry.receipts.<source>` (a publisher's NATS user may
ask for its own source only) or over HTTP, `POST /receipts` on registry (a token's `sub` is the
source, unless the token is admin's). Verdicts:

- `accepted`: registry recorded the fact; `id`, `type`, `region` are those of the record it touched.
- `refused`: registry refused it for good; `field` and `reason` say why. Sending it again changes
  nothing: fix the fact and publish it under a new event_id.
- `waiting`: it waits for a fact it follows or its county's divisions (`field`, `reason`; refused at
  `until` if still waiting): nothing to do.
- `unknown`: registry never took it (lost on the bus, or not arrived yet): publish it again, same
  event_id; registry applies an event id at most once, so a repeat is harmless.

Only events whose `source` is the one asked about are answered: another source's are `unknown`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from .events import IntakeLost

# One NATS message holds at most 1 MiB (nats-server's default max_payload); a reply of 2,000
# verdicts, reasons included, stays well under it. HTTP bodies carry more.
MAX_NATS_IDS = 2_000
MAX_HTTP_IDS = 10_000
# Each answer also carries the intake stream's recent losses (IntakeLost payloads).
LOSSES_DAYS, MAX_LOSSES = 30, 10


class ReceiptsQuery(BaseModel):
    """The request: the event ids to look up (and over HTTP, for admin, the source)."""

    model_config = ConfigDict(extra="forbid")

    event_ids: list[UUID] = Field(min_length=1, max_length=MAX_HTTP_IDS)
    source: str | None = Field(default=None, min_length=1, max_length=100,
                               description="HTTP only: admin may name the source (else the token's sub)")


class Receipt(BaseModel):
    event_id: UUID
    verdict: Literal["accepted", "refused", "waiting", "unknown"]
    id: str | None = Field(default=None, description="accepted: the record's id")
    type: str | None = Field(default=None, description="accepted: the event's type")
    region: str | None = Field(default=None, description="accepted: the record's region")
    field: str | None = Field(default=None, description="refused: the field at fault")
    reason: str | None = Field(default=None, description="refused: why; waiting: what it waits for")
    code: str | None = Field(default=None, description="refused: the stable code (RefusalCode)")
    until: AwareDatetime | None = Field(default=None, description="waiting: refused if still waiting then")


class ReceiptsAnswer(BaseModel):
    ok: Literal[True] = True
    source: str | None
    counts: dict[str, int] = Field(description="how many of each verdict")
    receipts: list[Receipt] = Field(description="one per event id asked, in the order asked")
    losses: list[IntakeLost] = Field(default_factory=list, description=(
        f"the intake stream's losses registry noticed in the last {LOSSES_DAYS} days, newest first (at most "
        f"{MAX_LOSSES}): what cso.receipts.<source>.lost announced, for a publisher that was not listening"))


# --- receipts pushed to the publisher: one per verdict ------------------------------------------

Verdict = Literal["accepted", "refused", "duplicate", "waiting"]
VERDICTS: tuple[Verdict, ...] = ("accepted", "refused", "duplicate", "waiting")
RECEIPT_SUBJECT = "cso.receipts.<source>.<verdict>"


class RefusalCode(StrEnum):
    """Why a fact was refused, as a stable code a program can branch on (`reason` is for people).

    Every refusal spends the event_id: fix the fact and publish it under a NEW event_id. The same
    id sent again is answered `duplicate`, with this refusal as its first verdict."""

    CONTRACT = "contract"                    # the message breaks its contract (JSON, a field, the subject)
    NOT_A_REGISTRY_FACT = "not_a_registry_fact"
    UNKNOWN_DIVISION = "unknown_division"    # a community, township or county that is not on record
    ALREADY_ON_RECORD = "already_on_record"  # the organization, hub, base or party exists already
    CREDIT_CODE_TAKEN = "credit_code_taken"  # the social credit code belongs to another organization
    ENDED = "ended"                          # the organization, hub, base or party has ended
    DATE_ORDER = "date_order"                # a date before the record's start (e.g. ended_on)
    REGION_MISMATCH = "region_mismatch"      # the envelope's region is not the record's
    RULE = "rule"                            # another of registry's rules (the reason says which)
    WAITED_TOO_LONG = "waited_too_long"      # what it waited for did not arrive in time


class WaitsFor(BaseModel):
    """What a waiting fact needs before registry can decide it."""

    kind: Literal["predecessor", "divisions"]
    key: str = Field(description="organization:<id>, hub:<id>, base:<id>, party:<id> or county:<code>")
    field: str = Field(description="the fact's field that names what is missing")
    reason: str


class FirstVerdict(BaseModel):
    """duplicate: what registry decided when the event_id first arrived (its verdict stands)."""

    verdict: Literal["accepted", "refused", "waiting"]
    id: str | None = None
    region: str | None = None
    field: str | None = None
    reason: str | None = None
    code: RefusalCode | None = None
    until: AwareDatetime | None = None


class IntakeReceipt(BaseModel):
    """What registry decided about one fact a publisher sent on intake, published on
    `cso.receipts.<source>.<verdict>` (the publisher's own NATS user may subscribe to
    `cso.receipts.<source>.>`). Registry stages it in the transaction of the verdict (its outbox), so
    a crash loses none; a receipt may come twice (same receipt_id), never not at all while the
    subscriber is connected. Missed ones: the receipts query (ReceiptsQuery)."""

    model_config = ConfigDict(extra="allow")

    kind: Literal["IntakeReceipt"] = "IntakeReceipt"
    version: Literal[1] = 1
    receipt_id: UUID = Field(description="this receipt's own id (also its Nats-Msg-Id)")
    event_id: UUID | None = Field(description="the fact's event_id; null only for a message without a "
                                              "readable one (then msg_id)")
    msg_id: str | None = Field(default=None, description="the Nats-Msg-Id header of a message without "
                                                         "a readable event_id")
    source: str = Field(description="the publisher (its NATS user)")
    verdict: Verdict
    type: str | None = Field(default=None, description="the fact's type")
    region: str | None = Field(default=None, description="accepted: the record's region; else the fact's")
    id: str | None = Field(default=None, description="accepted: the record's id")
    field: str | None = Field(default=None, description="refused: the field at fault")
    reason: str | None = Field(default=None, description="refused, waiting: why, for people")
    code: RefusalCode | None = Field(default=None, description="refused: why, for programs")
    first: FirstVerdict | None = Field(default=None, description="duplicate: the verdict that stands")
    waits_for: WaitsFor | None = Field(default=None, description="waiting: what it waits for")
    until: AwareDatetime | None = Field(default=None, description="waiting: refused (waited_too_long) "
                                                                  "if still waiting then")
    action: str = Field(description="what the publisher should do now")
    decided_at: AwareDatetime
