"""What every cso service runs: database engine, NATS connection, streams, outbox relay, consumers,
a FastStream broker for request-reply, and the HTTP endpoints operators expect."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import gc
import json
import logging
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qsl

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from faststream.nats import NatsBroker, NatsMessage
from faststream.nats.prometheus import NatsPrometheusMiddleware
from faststream.nats.security import NatsUserPassword
from nats.aio.client import Client
from prometheus_client import REGISTRY, make_asgi_app
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from contracts import ContractError, FieldError, Topology
from contracts.jsontext import text_problem

from . import bus, database, natsauth, streams
from .auth import HEALTH, Auth, AuthError, unclassified
from .buswatch import BusWatch, GapListener
from .consumer import Consumer, Handler, Subscription, Verdicts, handled_types
from .database import make_engine
from .outbox import Relay
from .partitions import Partition, partition_from_settings
from .settings import Settings

log = logging.getLogger(__name__)

# A young-generation collection every 50,000 net allocations instead of CPython's 700 (gen1 and gen2
# as before, relative to it).
YOUNG_COLLECTION_EVERY = 50_000


_collector_tuned = False


def tune_garbage_collector() -> None:
    """Once a process (at its first service start; tests start many services in one process).

    What a service built at start (modules, compiled statements, validators, the engine) lives as
    long as the process: freeze it, out of the collector's sight. A pulled batch allocates tens of
    thousands of objects that live until the batch is applied; with a young collection every 700
    allocations the collector traversed them again and again: 11% of targets' CPU (py-spy --native,
    national backfill). Reference counting still frees at once what is not in a cycle."""
    global _collector_tuned
    # The test suite starts hundreds of services in one process: a freeze there would keep every
    # earlier test's objects, so it runs with CSO_TUNE_GC=0 (tests/conftest.py).
    if _collector_tuned or os.environ.get("CSO_TUNE_GC", "1") == "0":
        return
    _collector_tuned = True
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_EVERY, middle, old)


class Runtime:
    """One replica of a service. Stateless between messages: any number may run side by side."""

    def __init__(self, name: str, schema: str, settings: Settings | None = None) -> None:
        self.name, self.schema = name, schema
        self.settings = settings or Settings()
        self.topology: Topology = self.settings.topology
        # Refused here, before anything starts, when CSO_PARTITIONS and CSO_PARTITION disagree.
        self.partition: Partition | None = partition_from_settings(self.settings.partitions,
                                                                   self.settings.partition)
        self.auth = Auth.from_settings(self.settings)  # who may call the HTTP API (cso/auth.py)
        if not self.auth.enabled:
            # Loud on purpose: nobody is asked who they are, and nothing else would show it.
            log.warning("%s: CSO_AUTH=off: HTTP callers are not authenticated; anyone may write anywhere "
                        "and name any source (personal data stays masked). Unset CSO_AUTH and set "
                        "CSO_JWT_SECRET or CSO_JWT_PUBLIC_KEY to require tokens.", name)
        self.engine: AsyncEngine = make_engine(self.settings.database_url)
        # Access logs per request at DEBUG: commands are counted by the Prometheus middleware instead.
        self.nats_options = self.settings.nats_options()
        self.broker = NatsBroker(self.settings.nats_url, max_reconnect_attempts=-1,
                                 log_level=logging.DEBUG,
                                 middlewares=[NatsPrometheusMiddleware(registry=REGISTRY,
                                                                       app_name=name)],
                                 **broker_options(self.nats_options))
        self.nc: Client | None = None
        self.relay: Relay | None = None
        self.consumers: list[Consumer] = []
        self._subscriptions: list[tuple[Subscription, Handler]] = []
        self._verdicts: dict[str, Verdicts] = {}  # by durable: told what the handler never sees
        self._tasks: list[asyncio.Task[None]] = []
        self._background: list[Callable[[], Any]] = []
        self._missing_streams: list[str] = []
        self.gap_listeners: list[GapListener] = []  # told of each bus gap, in the repair's transaction

    def consume(self, subscription: Subscription, handler: Handler, verdicts: Verdicts | None = None) -> None:
        """Pull `subscription` into `handler`. A handler that says which event types it acts on (a
        `handles` attribute: its table's keys) gets only those: the consumer filters on their subjects."""
        if subscription.types is None:
            types = handled_types(subscription.subject, getattr(handler, "handles", None))
            subscription = dataclasses.replace(subscription, types=types)
        subscription = subscription.partitioned(self.partition)
        self._subscriptions.append((subscription, handler))
        if verdicts is not None:
            self._verdicts[subscription.durable] = verdicts

    def on_request(self, subject: str, handler: Callable[..., Any]) -> None:
        """A request-reply endpoint (core NATS, queue group per service: one replica answers). The
        handler reads the raw body itself: FastStream's own decoding (json.loads, whatever the body)
        raised on deep nesting or huge numbers before the handler ran, and no reply went back."""
        self.broker.subscriber(subject, queue=self.name, decoder=_raw_body)(self._answering(handler))

    def _answering(self, handler: Callable[..., Any]) -> Callable[..., Any]:
        """A handler that fails on our side still answers, at once, what its HTTP twin would (503
        while the database is away, else 500), instead of leaving the caller to time out; the
        exception goes on to FastStream, which logs and counts it (the handler-exceptions panel)."""
        @functools.wraps(handler)
        async def answering(msg: NatsMessage) -> Any:
            try:
                return await handler(msg)
            except Exception:
                if msg.reply_to:
                    status, body = await self.failure(msg.raw_message.subject)
                    with contextlib.suppress(Exception):
                        await msg.raw_message.respond(json.dumps({**body, "status": status}).encode())
                raise

        return answering

    async def failure(self, where: str) -> tuple[int, dict[str, Any]]:
        """What a caller is told when a request failed on our side: never the exception's text."""
        if await database.unreachable(self.engine, within=2) is None:
            log.error("%s: %s failed; see the exception logged with it", self.name, where)
            return 500, errors_body([FieldError(field="$", message="internal error; it has been logged")])
        return 503, errors_body([FieldError(field="$", message="the database is unavailable; try again shortly")])

    def every(self, job: Callable[[], Any]) -> None:
        """A background coroutine function started with the service and cancelled at stop."""
        self._background.append(job)

    async def start(self, with_relay: bool = True) -> None:
        self.nc = await bus.connect(self.settings.nats_url, name=self.name, **self.nats_options)
        js = self.nc.jetstream()
        # The operator's migrate step makes the streams; until then this replica waits, not ready,
        # its consumers and relay retrying (cso/streams.py).
        await self.check_streams()
        if with_relay:
            self.relay = Relay(self.engine, js, self.schema, self.name, batch=self.settings.batch_size,
                               retention=timedelta(days=self.settings.outbox_retention_days))
            self.relay.start()
        for sub, handler in self._subscriptions:
            consumer = Consumer(nc=self.nc, engine=self.engine, topology=self.topology,
                                schema=self.schema, service=self.name, subscription=sub,
                                handler=handler, batch=self.settings.batch_size,
                                max_deliver=self.settings.max_deliver,
                                ack_wait=self.settings.ack_wait_seconds,
                                verdicts=self._verdicts.get(sub.durable))
            consumer.start()
            self.consumers.append(consumer)
        self.bus_watch = BusWatch(self, interval=self.settings.bus_check_seconds)
        self._background.append(self.bus_watch.run)
        self._tasks = [asyncio.create_task(job()) for job in self._background]
        await self.broker.start()
        tune_garbage_collector()

    async def stop(self) -> None:
        """Stop taking work, then let go of connections; a part that hangs does not hold the rest."""
        async def bounded(step: Any, what: str) -> None:
            try:
                await asyncio.wait_for(step, 10)
            except Exception:
                log.exception("%s: stopping %s failed", self.name, what)

        await bounded(self.broker.stop(), "broker")
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await bounded(asyncio.gather(*self._tasks, return_exceptions=True), "background tasks")
        for consumer in self.consumers:
            await bounded(consumer.stop(), "consumer")
        if self.relay:
            await bounded(self.relay.stop(), "outbox relay")
        if self.nc:
            await bounded(self.nc.close(), "nats")
        await bounded(self.engine.dispose(), "database pool")

    @property
    def needed_streams(self) -> tuple[str, ...]:
        """The streams this service consumes from and publishes to (namespaced names)."""
        if self.name in natsauth.SERVICES:
            bases = natsauth.service_streams(self.name)
        else:  # a runtime of the tests' own: what it consumes, and where gaps and dead letters go
            bases = tuple(dict.fromkeys([*(sub.stream for sub, _ in self._subscriptions),
                                         "CSO_OPS", "CSO_DEADLETTER"]))
        return tuple(self.topology.stream(base) for base in bases)

    async def check_streams(self) -> list[str]:
        """The needed streams that do not exist; said in the log when that changes."""
        assert self.nc is not None
        missing = await streams.missing(self.nc.jetstream(timeout=2), self.needed_streams)
        if missing != self._missing_streams:
            if missing:
                log.warning("%s: waiting for the operator: %s", self.name, streams.missing_message(missing))
            else:
                log.info("%s: every stream it needs exists", self.name)
            self._missing_streams = missing
        return missing

    async def readiness(self) -> dict[str, str]:
        checks: dict[str, str] = {}
        problem = await database.unreachable(self.engine, within=2)
        checks["database"] = "ok" if problem is None else f"unreachable: {problem}"
        checks["nats"] = "ok" if self.nc is not None and self.nc.is_connected else "unreachable"
        if checks["nats"] == "ok":
            try:
                missing = await self.check_streams()
                checks["streams"] = "ok" if not missing else streams.missing_message(missing)
            except Exception as e:
                checks["streams"] = f"unknown: {type(e).__name__}: {e}"
        return checks

    def http(self, title: str, large_bodies: Mapping[str, int] | None = None) -> FastAPI:
        """The service's HTTP app: lifespan runs the runtime; /healthz, /readyz, /metrics built in.

        Request bodies are limited to `settings.http_max_body_bytes`, but on the paths that
        `large_bodies` matches (regular expressions, whole path) to the size given there."""

        @asynccontextmanager
        async def lifespan(started: FastAPI) -> AsyncIterator[None]:
            # Every route has declared who may call it by now (cso/auth.py), or the service stops.
            if missing := unclassified(started):
                raise RuntimeError(f"{self.name}: routes without an access class (cso/auth.py): "
                                   + ", ".join(missing))
            await self.start()
            try:
                yield
            finally:
                await self.stop()

        # Each route's access class, enforced before the route (cso/auth.py: health, public
        # aggregate, scoped read, personal data, write).
        app = FastAPI(title=title, lifespan=lifespan, dependencies=[Depends(self.auth.guard)])
        app.add_middleware(InputLimits, max_body=self.settings.http_max_body_bytes,
                           large_bodies=dict(large_bodies or {}))
        app.mount("/metrics", make_asgi_app())

        @app.get("/healthz", **HEALTH)
        async def healthz() -> dict[str, str]:
            return {"status": "ok", "service": self.name}

        @app.get("/readyz", **HEALTH)
        async def readyz() -> JSONResponse:
            checks = await self.readiness()
            ok = all(v == "ok" for v in checks.values())
            # `cso status` prints these fields: a stack without tokens shows "auth off".
            return JSONResponse({"status": "ok" if ok else "unavailable", **checks, "auth": self.auth.mode},
                                status_code=200 if ok else 503)

        @app.exception_handler(ContractError)
        async def contract_error(_: Request, e: ContractError) -> JSONResponse:
            return JSONResponse(errors_body(e.errors), status_code=422)

        @app.exception_handler(AuthError)
        async def auth_error(_: Request, e: AuthError) -> JSONResponse:
            challenge = 'Bearer realm="cso"' + (', error="invalid_token"' if e.field.startswith("token") else "")
            headers = {"WWW-Authenticate": challenge} if e.status == 401 else None
            return JSONResponse(errors_body([FieldError(field=e.field, message=e.message)]),
                                status_code=e.status, headers=headers)

        @app.exception_handler(Exception)
        async def failed(request: Request, _: Exception) -> JSONResponse:
            # Starlette logs the exception after this answers; the caller learns only whether to retry.
            status, body = await self.failure(f"{request.method} {request.url.path}")
            return JSONResponse(body, status_code=status, headers={"Retry-After": "5"} if status == 503 else None)

        @app.exception_handler(RequestValidationError)
        async def request_error(_: Request, e: RequestValidationError) -> JSONResponse:
            errors = [FieldError(field=".".join(str(p) for p in err["loc"] if p != "body") or "$",
                                 message=err["msg"]) for err in e.errors()]
            return JSONResponse(errors_body(errors), status_code=422)

        return app


async def _raw_body(msg: Any) -> Any:
    return msg.body


async def repeat(step: Callable[[], Awaitable[Any]], interval: float, what: str) -> None:
    """Run `step` every `interval` seconds for ever; a failing step is logged and tried again."""
    while True:
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s failed; retrying", what)
        await asyncio.sleep(interval)


def broker_options(options: dict[str, Any]) -> dict[str, Any]:
    """FastStream's spelling of Settings.nats_options(): credentials as `security`."""
    out: dict[str, Any] = {}
    if "inbox_prefix" in options:
        out["inbox_prefix"] = options["inbox_prefix"]
    if "user" in options:
        out["security"] = NatsUserPassword(options["user"], options["password"])
    return out


def errors_body(errors: list[FieldError]) -> dict[str, Any]:
    return {"ok": False, "errors": [e.model_dump() for e in errors]}


MAX_PATH_BYTES = 2048
MAX_QUERY_BYTES = 4096


class InputLimits:
    """Refuses, before any route runs: a body over its size (413), a path or query string over
    its length (414), and a path or query parameter holding control characters, NUL among them
    (422; PostgreSQL cannot store NUL in text). Bodies are read here, bounded, and handed on whole."""

    def __init__(self, app: ASGIApp, max_body: int, large_bodies: dict[str, int]) -> None:
        self.app, self.max_body = app, max_body
        self.large = [(re.compile(pattern), limit) for pattern, limit in large_bodies.items()]

    def limit(self, path: str) -> int:
        for pattern, limit in self.large:
            if pattern.fullmatch(path):
                return limit
        return self.max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self.refusal(scope)
        if refusal is not None:
            await _refuse(send, *refusal)
            return
        limit = self.limit(scope["path"])
        declared = Headers(scope=scope).get("content-length")
        if declared is not None:
            if not (declared.isascii() and declared.isdigit()):
                await _refuse(send, 400, "content-length", "not a number of bytes")
                return
            if int(declared) > limit:
                await _refuse(send, 413, "$", f"body of {int(declared)} bytes exceeds {limit}")
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _refuse(send, 413, "$", f"body of more than {limit} bytes")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body: list[Message] = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay() -> Message:
            return body.pop() if body else await receive()

        await self.app(scope, replay, send)

    def refusal(self, scope: Scope) -> tuple[int, str, str] | None:
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        if len(raw_path) > MAX_PATH_BYTES:
            return 414, "path", f"{len(raw_path)} bytes exceeds {MAX_PATH_BYTES}"
        query: bytes = scope.get("query_string", b"")
        if len(query) > MAX_QUERY_BYTES:
            return 414, "query", f"{len(query)} bytes exceeds {MAX_QUERY_BYTES}"
        if problem := text_problem(scope["path"]):
            return 422, "path", problem
        for key, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
            if problem := text_problem(key) or text_problem(value):
                return 422, key if not text_problem(key) else "query", problem
        return None


async def _refuse(send: Send, status: int, field: str, message: str) -> None:
    response = JSONResponse(errors_body([FieldError(field=field, message=message)]), status_code=status)
    await response({"type": "http"}, _no_body, send)


async def _no_body() -> Message:
    return {"type": "http.disconnect"}
