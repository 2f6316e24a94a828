"""A JetStream stand-in for the outbox relay (cso.outbox.Relay) where no NATS is wanted: the relay's
tests that drive it by hand, and bench/dedup.py, which measures only PostgreSQL's share."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


@dataclass
class Ack:
    """The fields of nats-py's PubAck the relay reads."""

    stream: str
    seq: int


class AckingJetStream:
    """Acknowledges every publish at once, with the next sequence of one stream, and records what
    was published, in order: `subjects` and `sent` (each message's Nats-Msg-Id, the event id).

    Both publish forms: `publish_async` is what cso.outbox.Relay calls; `publish` is what the relay
    before issue 23 called (bench/dedup.py's MarkedRelay measures that form)."""

    def __init__(self, stream: str = "S") -> None:
        self.stream = stream
        self.subjects: list[str] = []
        self.sent: list[str] = []

    async def publish(self, subject: str, data: bytes, headers: dict[str, str]) -> Ack:
        self.subjects.append(subject)
        self.sent.append(headers["Nats-Msg-Id"])
        return Ack(self.stream, len(self.sent))

    async def publish_async(self, subject: str, data: bytes, headers: dict[str, str]) -> asyncio.Future[Ack]:
        acked: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
        acked.set_result(await self.publish(subject, data, headers))
        return acked
