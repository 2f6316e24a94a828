"""NATS connections for one command (the migrate step, `cso streams`, `cso publish`, the divisions
import): they fail fast, with no retry loop and no tracebacks printed, where a service's own
connection (cso.service) reconnects for ever."""

from __future__ import annotations

import logging
import socket
from typing import Any
from urllib.parse import urlsplit

from .settings import Settings, nats_options, redact

_DEFAULT_PORTS = {"nats": 4222, "postgresql": 5432, "postgres": 5432}


def answers(url: str, timeout: float = 1.0) -> bool:
    """Whether something accepts a TCP connection at the URL's host and port (the scheme's default
    port when it names none)."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    try:
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        return False
    if port is None:
        return False
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


async def connect_nats(url: str, name: str, *, user: str = "", password: str = "") -> Any:
    """A NATS connection for one command: fails fast (no retry loop, no tracebacks printed).

    Credentials: `user` and `password` if given (the local stack's, cso_local.localnats), else with the
    URL or from CSO_NATS_USER / CSO_NATS_PASSWORD (see Settings)."""
    import nats

    if not answers(url, timeout=3):
        raise ConnectionError(f"nothing answers at {redact(url)}")

    async def quiet(error: Exception) -> None:
        # A refused publish reaches the caller only as a timeout: say which subject was refused.
        if "permissions violation" in str(error).lower():
            logging.getLogger(__name__).warning("NATS refused it: %s", error)

    options = nats_options(url, user, password) if user else Settings(nats_url=url).nats_options()
    return await nats.connect(url, name=name, connect_timeout=5, allow_reconnect=False,
                              max_reconnect_attempts=0, error_cb=quiet, **options)


__all__ = ["answers", "connect_nats"]
