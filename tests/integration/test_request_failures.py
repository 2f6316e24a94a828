"""A request that fails on our side (a bug, or the database away) still gets an answer, over NATS
as over HTTP: 500 for a bug, 503 (retry) while the database does not answer, never the exception's
text; and FastStream still counts the exception for the dashboards."""

from __future__ import annotations

import json

import httpx
import pytest
from faststream.nats import NatsMessage
from prometheus_client import REGISTRY

from cso.auth import PUBLIC
from cso.database import make_engine
from cso.service import Runtime
from cso.settings import Settings

pytestmark = pytest.mark.integration

SECRET = "password=hunter2 in a stack trace"


def exceptions_counted(app_name: str) -> float:
    total = 0.0
    for metric in REGISTRY.collect():
        for sample in metric.samples:
            if (sample.name == "faststream_received_processed_messages_exceptions_total"
                    and sample.labels.get("app_name") == app_name):
                total += sample.value
    return total


async def test_failing_handlers_answer_500_for_a_bug_and_503_without_database(settings: Settings) -> None:
    runtime = Runtime("probe-failures", "probe", settings)
    subject = f"{settings.namespace}.probe.cmd.broken"

    async def broken(msg: NatsMessage) -> bytes:
        raise RuntimeError(SECRET)

    runtime.on_request(subject, broken)
    app = runtime.http("probe")

    @app.get("/broken", **PUBLIC)   # a class, as every route declares (cso/auth.py)
    async def broken_http() -> None:
        raise RuntimeError(SECRET)

    await runtime.broker.start()
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
                             base_url="http://probe")
    try:
        before = exceptions_counted("probe-failures")
        reply = await runtime.broker.request(b"{}", subject, timeout=10)
        body = json.loads(reply.body)
        assert body["ok"] is False and body["status"] == 500, body
        assert body["errors"][0]["field"] == "$" and "hunter2" not in reply.body.decode()
        assert exceptions_counted("probe-failures") == before + 1

        response = await http.get("/broken")
        assert response.status_code == 500 and "hunter2" not in response.text
        assert response.json()["errors"][0]["field"] == "$"

        # The database away (nothing listens on port 1): retry later, say both.
        await runtime.engine.dispose()
        runtime.engine = make_engine("postgresql://nobody@127.0.0.1:1/none")
        reply = await runtime.broker.request(b"{}", subject, timeout=10)
        body = json.loads(reply.body)
        assert body["status"] == 503 and "database is unavailable" in body["errors"][0]["message"], body
        response = await http.get("/broken")
        assert response.status_code == 503 and response.headers["retry-after"] == "5"
        assert "database is unavailable" in response.json()["errors"][0]["message"]
    finally:
        await http.aclose()
        await runtime.broker.stop()
        await runtime.engine.dispose()
