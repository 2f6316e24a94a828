"""The dead letter: what a service's consumer publishes on `cso.deadletter.<service>` when it refuses
a message for good (cso/consumer.py, publish_deadletter). Operators read it (stream CSO_DEADLETTER,
kept 90 days); outside publishers learn their verdicts from receipts instead.

Headers: `Cso-Reason` (the reason, at most 512 characters, control characters as spaces),
`Cso-Event-Id` (the event_id, empty if none is readable) and
`Nats-Msg-Id: dl:<stream>:<stream_seq>` (one dead letter per refused stream message, however often
the refusal is repeated).
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from . import jsontext

# The refused message is kept as text, cut at this many characters: a DivisionsImported may hold
# 1 MiB, and the dead letter, JSON-escaped, must itself fit in one NATS message (1 MiB).
MAX_DATA_CHARACTERS = 65_536


class DeadLetter(BaseModel):
    """A message a consumer refused, with why."""

    model_config = ConfigDict(extra="allow")

    service: str = Field(description="the service whose consumer refused it")
    reason: str = Field(description="`field: message` (several joined by `; `); field names as in "
                                    "contracts/README.md, e.g. `payload.community_code`")
    subject: str = Field(description="where the message was published")
    stream: str = Field(description="the stream it was read from, e.g. CSO_INTAKE")
    stream_seq: int = Field(ge=1, description="its sequence in that stream")
    deliveries: int = Field(ge=1, description="how often it was delivered before the refusal")
    dead_lettered_at: datetime
    event_id: UUID | None = Field(description="the event's id, when its envelope names a valid one; "
                                              "null for a message that is no readable event")
    msg_id: str | None = Field(default=None, description="the refused message's Nats-Msg-Id header, if it had one")
    data: str = Field(description=f"the message as received, as UTF-8 (bytes that are not: U+FFFD), "
                                  f"cut at {MAX_DATA_CHARACTERS} characters")
    data_bytes: int = Field(ge=0, description="the size of the message as received")
    truncated: bool = Field(description=f"whether `data` was cut at {MAX_DATA_CHARACTERS} characters")


def event_id_of(raw: bytes) -> str | None:
    """The event_id a refused message names, if it is a JSON object whose `event_id` is a UUID."""
    try:
        data = jsontext.loads(raw)
        return str(UUID(data["event_id"])) if isinstance(data, dict) and isinstance(data.get("event_id"), str) \
            else None
    except (jsontext.TextError, ValueError, KeyError):
        return None
