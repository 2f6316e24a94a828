"""NATS connection and the JetStream streams of the contracts."""

from __future__ import annotations

import logging
from typing import Any

import nats
from nats.aio.client import Client

from contracts import Topology

from .streams import Replicas, migrate_streams, stream_config

log = logging.getLogger(__name__)


async def connect(url: str, name: str, **options: Any) -> Client:
    """A long-lived connection that reconnects for ever; `options` may carry `user`, `password`
    and `inbox_prefix` (Settings.nats_options())."""
    # connect_timeout: a server checking many bcrypt hashes at once (every service starting) on a
    # loaded machine answers the first CONNECT in seconds, not nats-py's default 2.
    return await nats.connect(url, name=name, max_reconnect_attempts=-1, connect_timeout=10,
                              reconnect_time_wait=0.5, **options)


async def ensure_streams(nc: Client, topology: Topology) -> None:
    """Create or update every stream of the topology, one replica each: the operator's step on a
    single server (tests, tools). Services never call it: cso.streams.migrate_streams is the
    migrate step, which also sets replicas; this needs the admin user's rights."""
    await migrate_streams(nc, topology, Replicas(default=1))


__all__ = ["connect", "ensure_streams", "stream_config"]
