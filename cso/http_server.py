"""How a service's HTTP server runs: uvicorn, with deadlines on reading a request and a cap on
connections, so that slow or many clients cannot hold a service.

    python -m cso.http_server services.registry.app:create_app --host 0.0.0.0 --port 8000

`cso up` and the image both start every service this way. uvicorn bounds only idle keep-alive
connections and the number of requests; a client that sends its headers or its body one byte a
second kept a connection for as long as it liked (200 of them held a service for 20 s and more).
hypercorn's `read_timeout` is per read, which a byte a second passes. So the deadlines are kept
here, in a subclass of uvicorn's h11 protocol (the one uvicorn uses without httptools):

- headers: complete within CSO_HTTP_HEADER_TIMEOUT_SECONDS of connecting or of the previous
  response, else the connection is closed (with a 408 if part of a request had come);
- body: complete within CSO_HTTP_BODY_TIMEOUT_SECONDS of the headers, plus a second for every
  CSO_HTTP_BODY_MIN_BYTES_PER_SECOND bytes received, else 408 naming the limit, and closed;
- idle keep-alive connections: closed after CSO_HTTP_KEEPALIVE_SECONDS (uvicorn's own timer);
- over CSO_HTTP_MAX_CONNECTIONS open connections or requests in progress, a request is answered
  503 and its connection closed, but /healthz is always answered: a liveness probe must not fail
  (and restart the service) because clients crowd it.

Each cut is counted in `cso_http_cut_off_total{reason}`."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from dataclasses import dataclass
from typing import Any

import h11
import uvicorn
from prometheus_client import Counter
from uvicorn._types import ASGIReceiveCallable, ASGISendCallable, Scope
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from contracts import FieldError

from .settings import Settings

log = logging.getLogger(__name__)

CUT_OFF = Counter("cso_http_cut_off_total", "HTTP connections closed or requests refused by a limit "
                  "(headers_timeout, body_timeout, over_capacity)", ["reason"])

# Answered whatever the load: what a liveness probe asks (infra/Dockerfile HEALTHCHECK, k8s).
ALWAYS_ANSWERED = frozenset({"/healthz"})

STARTUP_FAILURE = 3  # uvicorn's exit code when the app did not start


@dataclass(frozen=True)
class Limits:
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    body_min_bytes_per_second: int = 16 * 1024
    keepalive: int = 5
    max_connections: int = 1000

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        """The limits of settings; ValueError naming the variable of one that cannot work."""
        for name, value in (("CSO_HTTP_HEADER_TIMEOUT_SECONDS", settings.http_header_timeout_seconds),
                            ("CSO_HTTP_BODY_TIMEOUT_SECONDS", settings.http_body_timeout_seconds),
                            ("CSO_HTTP_KEEPALIVE_SECONDS", settings.http_keepalive_seconds),
                            ("CSO_HTTP_MAX_CONNECTIONS", settings.http_max_connections)):
            if not value > 0:
                raise ValueError(f"{name} must be more than 0, not {value}")
        if settings.http_body_min_bytes_per_second < 0:
            raise ValueError("CSO_HTTP_BODY_MIN_BYTES_PER_SECOND must be 0 (no extension) or more, "
                             f"not {settings.http_body_min_bytes_per_second}")
        return cls(header_timeout=settings.http_header_timeout_seconds,
                   body_timeout=settings.http_body_timeout_seconds,
                   body_min_bytes_per_second=settings.http_body_min_bytes_per_second,
                   keepalive=settings.http_keepalive_seconds,
                   max_connections=settings.http_max_connections)

    def body_deadline(self, started: float, received: int) -> float:
        """When a body begun at `started`, of which `received` bytes came, must be complete."""
        rate = self.body_min_bytes_per_second
        return started + self.body_timeout + (received / rate if rate else 0.0)


class ServerConfig(uvicorn.Config):
    """uvicorn's configuration for an app factory, served by BoundedH11Protocol under `limits`."""

    def __init__(self, factory: str, limits: Limits, **options: Any) -> None:
        # limit_concurrency stays off: uvicorn's check would refuse /healthz too (BoundedH11Protocol
        # applies max_connections itself).
        super().__init__(factory, factory=True, http=BoundedH11Protocol,
                         timeout_keep_alive=limits.keepalive, limit_concurrency=None, **options)
        self.limits = limits


HEADERS, BODY = "headers", "body"


class BoundedH11Protocol(H11Protocol):
    """One HTTP/1.1 connection, with a clock on what the client owes: its request headers (while h11
    waits for them: state IDLE) or its body (SEND_BODY). The clock is set when the wait begins and
    stopped when it ends; when it runs out, the connection is cut."""

    def __init__(self, config: uvicorn.Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = config.limits if isinstance(config, ServerConfig) else Limits()
        self._served = self.app
        self.app = self._capped  # what uvicorn runs for each request
        self._waiting_for: str | None = None
        self._since = 0.0
        self._body_bytes = 0
        self._clock: asyncio.TimerHandle | None = None

    # uvicorn's protocol calls these; each may change what the client owes.
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._follow()

    def data_received(self, data: bytes) -> None:
        if self._waiting_for == BODY:
            self._body_bytes += len(data)
        super().data_received(data)
        self._follow()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_clock()
        super().connection_lost(exc)

    def _follow(self) -> None:
        """Start the clock when the client starts owing headers or a body; stop it when it stops."""
        state = self.conn.their_state
        owed = HEADERS if state is h11.IDLE else BODY if state is h11.SEND_BODY else None
        if self.transport.is_closing():
            owed = None
        if owed == self._waiting_for:
            return
        self._stop_clock()
        self._waiting_for, self._since, self._body_bytes = owed, self.loop.time(), 0
        if owed is not None:
            self._clock = self.loop.call_at(self._deadline(), self._on_clock)

    def _deadline(self) -> float:
        if self._waiting_for == HEADERS:
            return self._since + self.limits.header_timeout
        return self.limits.body_deadline(self._since, self._body_bytes)

    def _stop_clock(self) -> None:
        if self._clock is not None:
            self._clock.cancel()
            self._clock = None

    def _on_clock(self) -> None:
        self._clock = None
        if self.transport.is_closing() or self._waiting_for is None:
            return
        deadline = self._deadline()
        if self._waiting_for == BODY and self.flow.read_paused:
            # uvicorn stopped reading because the app has not taken what came: the server is
            # behind, not the client. The clock runs again once reading resumes.
            deadline = max(deadline, self.loop.time() + 1)
        if self.loop.time() < deadline:  # the body came faster than the minimum rate: more time
            self._clock = self.loop.call_at(deadline, self._on_clock)
            return
        self._cut_off()

    def _cut_off(self) -> None:
        limits = self.limits
        if self._waiting_for == HEADERS:
            reason, field = "headers_timeout", "headers"
            message = (f"request headers not complete within {limits.header_timeout:g} s "
                       "(CSO_HTTP_HEADER_TIMEOUT_SECONDS)")
            # Only to a client that began a request: a 408 on an idle keep-alive connection could be
            # read as the answer to the request it is sending at that moment.
            answer = bool(self.conn.trailing_data[0])
        else:
            reason, field = "body_timeout", "body"
            rate = (f" plus 1 s per {limits.body_min_bytes_per_second} bytes received"
                    if limits.body_min_bytes_per_second else "")
            message = (f"request body not complete within {limits.body_timeout:g} s{rate} "
                       f"(CSO_HTTP_BODY_TIMEOUT_SECONDS); {self._body_bytes} bytes came")
            answer = self.cycle is not None and not self.cycle.response_started
        CUT_OFF.labels(reason).inc()
        log.debug("%s: %s; connection closed", _peer(self.client), message)
        if self.cycle is not None and not self.cycle.response_complete:
            # The app may still answer (it is woken by connection_lost): nothing more goes out.
            self.cycle.disconnected = True
        if answer:
            self.transport.write(_answer(408, "Request Timeout", field, message))
        self._waiting_for = None
        self.transport.close()

    async def _capped(self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        """The app, unless more than max_connections connections are open or requests in progress
        (this one counted): then 503, and the connection closed to shed the load."""
        cap = self.limits.max_connections
        if scope["type"] == "http" and scope["path"] not in ALWAYS_ANSWERED and (
                len(self.connections) > cap or len(self.tasks) > cap):
            CUT_OFF.labels("over_capacity").inc()
            body = _json(FieldError(field="$", message=f"more than {cap} connections or requests "
                                    "at once (CSO_HTTP_MAX_CONNECTIONS); try again shortly"))
            await send({"type": "http.response.start", "status": 503,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode()),
                                    (b"retry-after", b"1"), (b"connection", b"close")]})
            await send({"type": "http.response.body", "body": body, "more_body": False})
            return
        await self._served(scope, receive, send)


def _json(error: FieldError) -> bytes:
    # The shape of every cso error answer (cso/service.py errors_body).
    return json.dumps({"ok": False, "errors": [error.model_dump()]}).encode()


def _answer(status: int, phrase: str, field: str, message: str) -> bytes:
    """A whole HTTP/1.1 response that closes the connection, written past h11 (which, while the
    request is unfinished, has no state to send one from)."""
    body = _json(FieldError(field=field, message=message))
    head = (f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n")
    return head.encode() + body


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "a client"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m cso.http_server",
        description="Serve a cso service's app with the HTTP limits of CSO_HTTP_* (infra/README.md).")
    parser.add_argument("factory", metavar="MODULE:FUNCTION",
                        help="the app factory, e.g. services.registry.app:create_app")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--log-level", default="info",
                        choices=["critical", "error", "warning", "info", "debug", "trace"])
    parser.add_argument("--no-access-log", action="store_true", help="no line per request")
    args = parser.parse_args(argv)
    try:
        limits = Limits.from_settings(Settings())
    except ValueError as e:
        parser.exit(2, f"{parser.prog}: {e}\n")
    config = ServerConfig(args.factory, limits, host=args.host, port=args.port,
                          log_level=args.log_level, access_log=not args.no_access_log)
    server = uvicorn.Server(config)
    # uvicorn's own signal handling: SIGTERM (the image's PID 1, `cso down`) drains and exits 0.
    server.run()
    if not server.started:
        sys.exit(STARTUP_FAILURE)


if __name__ == "__main__":
    main()
