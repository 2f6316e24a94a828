"""NATS connection and the JetStream streams of the contracts."""

from __future__ import annotations

import logging
from typing import Any

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

from contracts import StreamSpec, Topology

log = logging.getLogger(__name__)


async def connect(url: str, name: str, **options: Any) -> Client:
    """A long-lived connection that reconnects for ever; `options` may carry `user`, `password`
    and `inbox_prefix` (Settings.nats_options())."""
    return await nats.connect(url, name=name, max_reconnect_attempts=-1,
                              reconnect_time_wait=0.5, **options)


def stream_config(spec: StreamSpec) -> StreamConfig:
    return StreamConfig(
        name=spec.name,
        subjects=list(spec.subjects),
        description=spec.description,
        retention=RetentionPolicy(spec.retention),
        storage=StorageType(spec.storage),
        duplicate_window=spec.duplicate_window_seconds,
        max_age=spec.max_age_days * 86400 if spec.max_age_days else None,
    )


async def ensure_streams(js: JetStreamContext, topology: Topology) -> None:
    """Create or update every stream of the topology (idempotent, safe from many replicas)."""
    for spec in topology.streams:
        config = stream_config(spec)
        try:
            await js.stream_info(spec.name)
            await js.update_stream(config)
        except NotFoundError:
            try:
                await js.add_stream(config)
            except BadRequestError:
                # Another replica created it between our lookup and our add.
                await js.update_stream(config)
