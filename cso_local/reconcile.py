"""`cso publish --reconcile FILE`: publish again only what registry has no receipt for.

After the intake stream lost facts (registry announces it on `cso.receipts.<source>.lost`), the
publisher holds the only copies. It asks registry for the receipts of its events in batches
(`cso.query.registry.receipts.<source>`, contracts/receipts.py), and publishes again, under the
same event_id and `Nats-Msg-Id`, those registry never took ("unknown"). Accepted ones are done;
refused ones would be refused again, so they are listed instead. Asking again is always safe:
registry applies an event id at most once.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from contracts import Topology
from contracts.receipts import MAX_NATS_IDS

PUBLISH_WINDOW = 200  # publishes in flight at once, each awaited for its JetStream ack


class ReconcileError(RuntimeError):
    """Registry refused the query, or did not answer; the message names the field or the cause."""


@dataclass(frozen=True)
class Entry:
    subject: str
    data: bytes
    event_id: UUID
    source: str


@dataclass
class Outcome:
    events: int = 0
    accepted: int = 0
    refused: list[tuple[UUID, str, str]] = field(default_factory=list)   # event id, field, reason
    resent: int = 0
    duplicates: int = 0       # of those sent again, how many the stream still had (no-ops)
    calls: int = 0            # receipt queries made
    losses: list[dict[str, Any]] = field(default_factory=list)   # registry's recent IntakeLost, newest first
    seconds: float = 0.0


async def reconcile(nc: Any, topology: Topology, entries: Sequence[Entry], batch: int = MAX_NATS_IDS,
                    progress: Callable[[str], None] = lambda _: None, reply_seconds: float = 30.0) -> Outcome:
    started = time.monotonic()
    unique: dict[UUID, Entry] = {}
    for entry in entries:
        unique.setdefault(entry.event_id, entry)
    out = Outcome(events=len(unique))
    by_source: dict[str, list[Entry]] = {}
    for entry in unique.values():
        by_source.setdefault(entry.source, []).append(entry)
    send: list[Entry] = []
    asked = 0
    for source, mine in sorted(by_source.items()):
        subject = topology.receipts_query_subject(source)
        for start in range(0, len(mine), batch):
            chunk = mine[start:start + batch]
            body = json.dumps({"event_ids": [str(e.event_id) for e in chunk]}).encode()
            try:
                reply = await nc.request(subject, body, timeout=reply_seconds)
            except Exception as e:
                raise ReconcileError(f"no answer from registry on {subject} ({type(e).__name__}: {e}); "
                                     "is registry running, and may your NATS user ask there?") from None
            out.calls += 1
            answer = json.loads(reply.data)
            if not answer.get("ok"):
                errors = "; ".join(f"{x.get('field')}: {x.get('message')}" for x in answer.get("errors", []))
                raise ReconcileError(f"registry refused the receipts query: {errors}")
            receipts = answer["receipts"]
            out.losses = out.losses or list(answer.get("losses") or [])
            if len(receipts) != len(chunk):
                raise ReconcileError(f"receipts: {len(receipts)} answers for {len(chunk)} event ids")
            for entry, receipt in zip(chunk, receipts, strict=True):
                verdict = receipt["verdict"]
                if verdict == "accepted":
                    out.accepted += 1
                elif verdict == "refused":
                    out.refused.append((entry.event_id, receipt.get("field", "?"), receipt.get("reason", "")))
                else:
                    send.append(entry)
            asked += len(chunk)
            progress(f"receipts {asked:,}/{out.events:,} ({out.calls} calls): {out.accepted:,} accepted, "
                     f"{len(out.refused):,} refused, {len(send):,} unknown")
    js = nc.jetstream()
    for start in range(0, len(send), PUBLISH_WINDOW):
        chunk = send[start:start + PUBLISH_WINDOW]
        acks = await asyncio.gather(*(js.publish(e.subject, e.data, headers={"Nats-Msg-Id": str(e.event_id)})
                                      for e in chunk))
        out.duplicates += sum(1 for ack in acks if ack.duplicate)
        out.resent += len(chunk)
        progress(f"sent again {out.resent:,}/{len(send):,}")
    out.seconds = time.monotonic() - started
    return out
