"""What every cso service runs: database engine, NATS connection, streams, outbox relay, consumers,
a FastStream broker for request-reply, and the HTTP endpoints operators expect."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from faststream.nats import NatsBroker
from faststream.nats.prometheus import NatsPrometheusMiddleware
from faststream.nats.security import NatsUserPassword
from nats.aio.client import Client
from prometheus_client import REGISTRY, make_asgi_app
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts import ContractError, FieldError, Topology

from . import bus
from .auth import Auth, AuthError
from .buswatch import BusWatch
from .consumer import Consumer, Handler, Subscription
from .database import make_engine
from .outbox import Relay
from .settings import Settings

log = logging.getLogger(__name__)


class Runtime:
    """One replica of a service. Stateless between messages: any number may run side by side."""

    def __init__(self, name: str, schema: str, settings: Settings | None = None) -> None:
        self.name, self.schema = name, schema
        self.settings = settings or Settings()
        self.topology: Topology = self.settings.topology
        self.auth = Auth.from_settings(self.settings)  # who may call the HTTP API (cso/auth.py)
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
        self._tasks: list[asyncio.Task[None]] = []
        self._background: list[Callable[[], Any]] = []

    def consume(self, subscription: Subscription, handler: Handler) -> None:
        self._subscriptions.append((subscription, handler))

    def on_request(self, subject: str, handler: Callable[..., Any]) -> None:
        """A request-reply endpoint (core NATS, queue group per service: one replica answers)."""
        self.broker.subscriber(subject, queue=self.name)(handler)

    def every(self, job: Callable[[], Any]) -> None:
        """A background coroutine function started with the service and cancelled at stop."""
        self._background.append(job)

    async def start(self, with_relay: bool = True) -> None:
        self.nc = await bus.connect(self.settings.nats_url, name=self.name, **self.nats_options)
        js = self.nc.jetstream()
        await bus.ensure_streams(js, self.topology)
        if with_relay:
            self.relay = Relay(self.engine, js, self.schema, self.name, batch=self.settings.batch_size,
                               retention=timedelta(days=self.settings.outbox_retention_days))
            self.relay.start()
        for sub, handler in self._subscriptions:
            consumer = Consumer(nc=self.nc, engine=self.engine, topology=self.topology,
                                schema=self.schema, service=self.name, subscription=sub,
                                handler=handler, batch=self.settings.batch_size,
                                max_deliver=self.settings.max_deliver,
                                ack_wait=self.settings.ack_wait_seconds)
            consumer.start()
            self.consumers.append(consumer)
        self.bus_watch = BusWatch(self, interval=self.settings.bus_check_seconds)
        self._background.append(self.bus_watch.run)
        self._tasks = [asyncio.create_task(job()) for job in self._background]
        await self.broker.start()

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

    async def readiness(self) -> dict[str, str]:
        checks: dict[str, str] = {}
        try:
            async with self.engine.connect() as conn:
                await asyncio.wait_for(conn.execute(text("SELECT 1")), 2)
            checks["database"] = "ok"
        except Exception as e:
            checks["database"] = f"unreachable: {type(e).__name__}"
        checks["nats"] = "ok" if self.nc is not None and self.nc.is_connected else "unreachable"
        return checks

    def http(self, title: str) -> FastAPI:
        """The service's HTTP app: lifespan runs the runtime; /healthz, /readyz, /metrics built in."""

        @asynccontextmanager
        async def lifespan(_: FastAPI) -> AsyncIterator[None]:
            await self.start()
            try:
                yield
            finally:
                await self.stop()

        # With CSO_READ_AUTH=scoped every GET needs a token (the guard does nothing otherwise).
        app = FastAPI(title=title, lifespan=lifespan, dependencies=[Depends(self.auth.read_guard)])
        app.mount("/metrics", make_asgi_app())

        @app.get("/healthz")
        async def healthz() -> dict[str, str]:
            return {"status": "ok", "service": self.name}

        @app.get("/readyz")
        async def readyz() -> JSONResponse:
            checks = await self.readiness()
            ok = all(v == "ok" for v in checks.values())
            return JSONResponse({"status": "ok" if ok else "unavailable", **checks},
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

        @app.exception_handler(RequestValidationError)
        async def request_error(_: Request, e: RequestValidationError) -> JSONResponse:
            errors = [FieldError(field=".".join(str(p) for p in err["loc"] if p != "body") or "$",
                                 message=err["msg"]) for err in e.errors()]
            return JSONResponse(errors_body(errors), status_code=422)

        return app


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
