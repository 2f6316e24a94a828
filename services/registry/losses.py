"""Lost intake made visible: registry tells each publisher when the intake stream lost its facts.

No outbox backs `CSO_INTAKE`: what outside systems published there and registry had not applied
yet is gone for good when the stream loses it (a wiped or truncated store). Only the publishers
still hold those facts. So when BusWatch finds a gap on registry's side of the intake stream,
registry records the loss (in the repair's transaction) and announces `IntakeLost` on
`cso.receipts.<source>.lost` to every source it has seen on intake; each publisher then asks for
its receipts and publishes again what has none (contracts/README.md, *When intake is lost*).

The announcement is core NATS (publishers have no JetStream rights): a loss stays recorded in
`intake_loss`, marked announced once told, and is announced again by the next registry replica
to start if the telling failed half-way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from contracts import Envelope, encode, make_event
from contracts import events as ev
from contracts.subjects import SOURCE_TOKEN
from cso.buswatch import Gap
from cso.service import Runtime

from . import store

log = logging.getLogger(__name__)
ANNOUNCER = "cso-registry"


async def note_sources(conn: AsyncConnection, envelopes: Sequence[Envelope[Any]]) -> None:
    """Remember every source seen on intake (once each), in the batch's transaction."""
    await store.note_sources(conn, sorted({e.source for e in envelopes}))


class IntakeLosses:
    """Records each loss of the intake stream and announces it to the publishers."""

    def __init__(self, runtime: Runtime, interval: float = 5.0) -> None:
        self.runtime, self.interval = runtime, interval
        self.stream = runtime.topology.stream("CSO_INTAKE")
        self.wake = asyncio.Event()
        runtime.gap_listeners.append(self.on_gap)
        runtime.every(self.run)

    async def on_gap(self, conn: AsyncConnection, gap: Gap) -> None:
        if gap.side != "consumer" or gap.stream != self.stream:
            return
        # Replicas that find the same gap record it once.
        loss_id = uuid.uuid5(uuid.NAMESPACE_URL, f"cso/intake-lost/{gap.stream}/{gap.seen_last_seq}/"
                                                 f"{gap.intact_at}/{gap.stream_created}")
        applied = gap.known_seq
        if gap.recreated and gap.stream_created is not None:
            # The consumer may have applied messages of the new stream before this check noticed it
            # (its position keeps the greatest sequence of either): what it applied of the old one
            # is what it took before the new stream was made.
            applied = await store.applied_before(conn, gap.stream, gap.stream_created)
        seen = max(gap.seen_last_seq, applied)
        await store.note_loss(conn, {
            "event_id": loss_id, "stream": gap.stream, "applied_sequence": applied, "last_seen_sequence": seen,
            "lost_at_least": max(seen - applied, gap.lost if not gap.recreated else 0), "intact_at": gap.intact_at,
            "stream_recreated": gap.recreated, "stream_first_sequence": gap.stream_first_seq,
            "stream_last_sequence": gap.stream_last_seq})
        log.error("registry: the intake stream lost facts after sequence %d (at least %d, through %d and "
                  "maybe later ones); announcing it to the publishers", applied, seen - applied, seen)
        self.wake.set()

    async def announce(self) -> int:
        """Tell every known source of each loss not yet announced; how many announcements."""
        rt = self.runtime
        if rt.nc is None or not rt.nc.is_connected:
            return 0
        told = 0
        async with rt.engine.begin() as conn:
            losses = await store.unannounced_losses(conn)
            if not losses:
                return 0
            sources = await store.intake_sources(conn)
            reachable = [s for s in sources if SOURCE_TOKEN.fullmatch(s)]
            if len(reachable) < len(sources):
                log.error("registry: cannot announce the intake loss to sources that are no subject token: %s",
                          ", ".join(sorted(set(sources) - set(reachable))))
            for loss in losses:
                data = encode(announcement(loss))
                for source in reachable:
                    await rt.nc.publish(rt.topology.receipts_subject(source, "lost"), data)
                    told += 1
            await rt.nc.flush(timeout=10)
            await store.mark_announced(conn, [loss["event_id"] for loss in losses], reachable)
        log.warning("registry: announced %d intake loss(es) to %d publisher(s): %s", len(losses), len(reachable),
                    ", ".join(reachable) or "none known")
        return told

    async def run(self) -> None:
        while True:
            try:
                await self.announce()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("registry: announcing an intake loss failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.interval)
            self.wake.clear()


def announcement(loss: Any) -> Envelope[ev.IntakeLost]:
    applied = int(loss["applied_sequence"])
    at_least = int(loss["lost_at_least"])
    action = (f"facts you published on intake after sequence {applied} of {loss['stream']} are gone"
              + (f" (at least {at_least}, through sequence {loss['last_seen_sequence']})" if at_least else "")
              + (f"; any acknowledged after {loss['intact_at'].isoformat()} may be among them"
                 if loss["intact_at"] else "")
              + ". Ask for the receipts of what you published since then and publish again, same event_id, "
                "what registry does not know (cso publish --reconcile FILE)")
    payload = ev.IntakeLost(
        stream=loss["stream"], applied_sequence=applied, last_seen_sequence=int(loss["last_seen_sequence"]),
        lost_at_least=int(loss["lost_at_least"]), intact_at=loss["intact_at"],
        detected_at=loss["detected_at"] or datetime.now(timezone.utc),
        stream_recreated=bool(loss["stream_recreated"]),
        stream_first_sequence=int(loss["stream_first_sequence"]),
        stream_last_sequence=int(loss["stream_last_sequence"]), action=action)
    return make_event(payload, source=ANNOUNCER, region="00", event_id=loss["event_id"])
