"""Pulling from a durable JetStream consumer: one request a batch, answered into a subscription.

nats-py's `fetch` spends a task, a uuid4 and a timer on every message (`next_msg`), 8–12% of each
service's CPU on the national backfill, and it cannot ask for "what is pending, up to n, once there
is one": the consumer made three round trips a batch (fetch one, consumer info, fetch the rest).

A pull request with `no_wait` *and* `expires` asks for exactly that: nats-server waits up to
`expires` for the first message, then hands over what is pending, up to the batch, and ends the
request with a status (404 when nothing more is pending, 408 at expiry). A full batch ends it
without a status. The answers go to one wildcard inbox subscription with a callback; each request
has its own reply token, so the end of an earlier request is never taken for this one's, while a
message that arrives late (its request given up on) is kept for the next batch, not lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

API_PREFIX = "$JS.API"
# What ends a request without an error: nothing (more) pending, or its time is up.
_DONE = frozenset({"404", "408"})
_HEARTBEAT = "100"
# How long past the request's own expiry to wait for the server's word before giving up on it.
_GRACE_SECONDS = 1.0


class PullFailed(Exception):
    """The server refused or ended a pull with an error (the consumer is gone, no responders, a
    leadership change): subscribe afresh."""


class Pull:
    def __init__(self, nc: Client, stream: str, durable: str) -> None:
        self.nc = nc
        self.subject = f"{API_PREFIX}.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self.inbox = nc.new_inbox()
        self._sub: Subscription | None = None
        self._ready: list[Msg] = []
        self._token = 0
        self._wanted = 0
        self._ended = asyncio.Event()
        self._failure: str | None = None

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(f"{self.inbox}.*", cb=self._arrived)

    async def _arrived(self, msg: Msg) -> None:
        status = msg.headers.get("Status") if msg.headers else None
        if status is None:
            self._ready.append(msg)
            if len(self._ready) >= self._wanted:
                self._ended.set()
            return
        if status == _HEARTBEAT or msg.subject.rsplit(".", 1)[-1] != str(self._token):
            return  # the end of a request already given up on
        if status not in _DONE:
            description = msg.headers.get("Description", "") if msg.headers else ""
            self._failure = f"{status} {description}".strip()
        self._ended.set()

    async def next(self, batch: int, wait: float) -> list[Msg]:
        """Up to `batch` messages, after waiting up to `wait` seconds for the first; [] if none came.
        Raises PullFailed when the server answers the pull with an error."""
        if not self._ready:
            self._token += 1
            self._wanted, self._failure = batch, None
            self._ended.clear()
            request = {"batch": batch, "expires": int(wait * 1e9), "no_wait": True}
            await self.nc.publish(self.subject, json.dumps(request).encode(),
                                  reply=f"{self.inbox}.{self._token}")
            with contextlib.suppress(TimeoutError):
                # No word at all (a reconnect lost the request): an empty pull; a message of it
                # that still comes is kept for the next one.
                await asyncio.wait_for(self._ended.wait(), wait + _GRACE_SECONDS)
            if self._failure is not None and not self._ready:
                raise PullFailed(f"pull from {self.subject}: {self._failure}")
        msgs, self._ready = self._ready[:batch], self._ready[batch:]
        return msgs

    async def stop(self) -> None:
        """Withdraw the request still open on the server and wait until the server has it; hand
        back what was received but not taken, so that another replica gets it now.

        A stopped consumer's last request waits on the server until it expires. A message published
        meanwhile would be handed to it, i.e. to nobody, and come back only after ack_wait (30 s): a
        replica restarted at once would sit idle over it. The unsubscribe, confirmed by a flush,
        takes the request's interest away first."""
        with contextlib.suppress(Exception):
            if self._sub is not None:
                await self._sub.unsubscribe()
            for msg in self._ready:
                await msg.nak()
            self._ready = []
            if self.nc.is_connected:  # else the server dropped the request with the connection
                await asyncio.wait_for(self.nc.flush(), 2)
