"""The dashboards against a live stack: a real Prometheus scrapes the running services while events
flow, and every PromQL panel returns data; every SQL panel returns rows from the live database.

The NATS panel's data comes from prometheus-nats-exporter, which the test starts when it is on
PATH (infra/README.md, "prometheus-nats-exporter without Docker" builds it from Debian's Go
packages). It is on no registry a fresh machine reaches, so without it Prometheus scrapes a
recording of its output instead (tests/infra/data/prometheus-nats-exporter.prom, taken from the
real exporter against this test's stack): the panel's metric and label names are still checked
against what the exporter really serves. Where the exporter runs, the test also checks that the
recording still has the shape of its live output (metric families, label names, every durable
consumer), and CSO_RECORD_NATS_EXPORTER=1 rewrites the recording from it."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cso.connect import connect_nats
from cso.natsauth import SERVICE_CONSUMERS
from cso_local import localnats, servers
from cso_local.stack import Stack, recorded
from tests.support import eventually, http_json, missing
from tests.support.grafana import dashboards, panels, substitute

pytestmark = pytest.mark.integration

# The failures the panels show, the test causes: a dead letter, the bus losing messages, a handler
# failing (database away).
NATS_EXPORTER = shutil.which("prometheus-nats-exporter")
NATS_PANELS = {"JetStream pending per durable consumer (NATS)"}
RECORDING = Path(__file__).resolve().parent / "data" / "prometheus-nats-exporter.prom"
VARIABLES = {"region": "5106", "figure": "orgs", "service": "registry|targets|training|notify",
             "__rate_interval": "30s", "__range": "10m"}


def text_of(url: str) -> str:
    """GET, no proxy."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=10) as resp:
        return resp.read().decode()  # type: ignore[no-any-return]


def get(url: str) -> Any:
    return json.loads(text_of(url))


class Quiet(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler], port: int = 0) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 in a thread: its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def hooks() -> Iterator[str]:
    """A real HTTP receiver that refuses every delivery: /gone for good (410: notify gives up at
    once), /busy for now (503: notify schedules another attempt)."""

    class Refuse(Quiet):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(410 if self.path == "/gone" else 503)
            self.send_header("Content-Length", "0")
            self.end_headers()

    with serving(Refuse) as url:
        yield url


def replaying(text: str, port: int) -> AbstractContextManager[str]:
    """The recorded exporter output served at /metrics on `port`, as the exporter would."""

    class Replay(Quiet):
        def do_GET(self) -> None:
            body = text.encode()
            self.send_response(200 if self.path == "/metrics" else 404)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return serving(Replay, port)


def shape(exposition: str) -> tuple[set[tuple[str, tuple[str, ...]]], set[tuple[str, str]]]:
    """What a panel can rely on in an exporter's output: the JetStream metric families with
    their label names, and the (stream, durable consumer) pairs they report."""
    families, consumers = set(), set()
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name.startswith("jetstream_"):
                families.add((sample.name, tuple(sorted(sample.labels))))
            if sample.name.startswith("jetstream_consumer_"):
                consumers.add((sample.labels["stream_name"], sample.labels["consumer_name"]))
    return families, consumers


def test_the_recording_reports_every_durable_consumer() -> None:
    """A new or renamed durable makes the recording stale: record it again (module docstring)."""
    _, consumers = shape(RECORDING.read_text(encoding="utf-8"))
    assert consumers == {(stream, durable) for service in SERVICE_CONSUMERS.values()
                         for stream, durable, _ in service}


def promql(expr: str, **overrides: str) -> str:
    for name, value in sorted((VARIABLES | overrides).items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace("${" + name + "}", value).replace("$" + name, value)
    assert "$" not in expr, expr
    return expr


async def positive(base: str, title: str, labels: dict[str, str]) -> bool:
    """Whether the panel's first query has a series with these labels and a value above 0; rates
    over the test's whole length, so that one event seen stays seen while the test waits."""
    (panel,) = [p for d in dashboards().values() for p in panels(d) if p["title"] == title]
    expr = promql(panel["targets"][0]["expr"], __rate_interval=VARIABLES["__range"])
    answer = await asyncio.to_thread(get, f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    return any(all(r["metric"].get(k) == v for k, v in labels.items()) and float(r["value"][1]) > 0
               for r in answer["data"]["result"])


async def test_every_panel_answers_on_a_live_stack(tmp_path: Path, hooks: str) -> None:
    if shutil.which("prometheus") is None:
        missing("prometheus", "prometheus is not installed (apt-get install -y --no-install-recommends prometheus)")
    titles = {p["title"] for dashboard in dashboards().values() for p in panels(dashboard)}
    assert NATS_PANELS <= titles, NATS_PANELS - titles
    ports = {name: servers.free_port()
             for name in ("registry", "targets", "training", "notify", "prometheus", "nats")}
    stack = Stack(tmp_path / "stack", registry_port=ports["registry"], targets_port=ports["targets"],
                  training_port=ports["training"], notify_port=ports["notify"], console_port=servers.free_port())
    prometheus: subprocess.Popen[bytes] | None = None
    exporter: subprocess.Popen[bytes] | None = None
    replay = ExitStack()
    try:
        await asyncio.to_thread(stack.start)
        nats_url, database_url = recorded(stack.data_dir, "nats"), recorded(stack.data_dir, "database")
        assert nats_url and database_url
        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                  "scrape_configs": [{"job_name": name, "metrics_path": "/metrics/",
                                      "static_configs": [{"targets": [f"127.0.0.1:{ports[name]}"]}]}
                                     for name in ("registry", "targets", "training", "notify")]}
        if NATS_EXPORTER:
            # As compose runs it: JetStream's streams and consumers read from the server's monitor.
            monitor = stack.state["nats"]["monitor_url"]
            exporter = subprocess.Popen(  # noqa: ASYNC220 (a server for the test's whole length)
                [NATS_EXPORTER, "-jsz=all", "-varz", "-addr=127.0.0.1", f"-port={ports['nats']}", monitor],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        else:
            replay.enter_context(replaying(RECORDING.read_text(encoding="utf-8"), ports["nats"]))
        config["scrape_configs"].append({"job_name": "nats", "static_configs": [
            {"targets": [f"127.0.0.1:{ports['nats']}"]}]})
        (tmp_path / "prometheus.yml").write_text(json.dumps(config))
        prometheus = subprocess.Popen(  # noqa: ASYNC220 (a server for the test's whole length)
            ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{ports['prometheus']}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{ports['prometheus']}"

        # Prometheus has scraped every job once before anything happens: a counter's first sample
        # taken after its events would hide them from increase() and rate().
        async def all_scraped() -> bool:
            try:
                answer = await asyncio.to_thread(get, f"{base}/api/v1/query?query=up")
            except OSError:
                return False
            up = {r["metric"]["job"]: r["value"][1] for r in answer["data"]["result"]}
            return len(up) == len(config["scrape_configs"]) and set(up.values()) == {"1"}

        await eventually(all_scraped, timeout=60, interval=0.5)

        # Subscribers of 广汉市's filings: an inbox (delivered), a webhook refusing for good (a
        # delivery failure), one refusing for now (a retry).
        for recipient, channels in (("dashboards.inbox", {"inbox": True}),
                                    ("dashboards.gone", {"webhook": {"url": f"{hooks}/gone"}}),
                                    ("dashboards.busy", {"webhook": {"url": f"{hooks}/busy"}})):
            status, sub = http_json(f"http://127.0.0.1:{ports['notify']}/subscriptions", {
                "recipient": recipient, "channels": channels, "events": ["OrganizationFiled"],
                "region": "510681", "include_subregions": True})
            assert status == 201, sub

        # Events through the pipeline: filings, a hub, a refused fact (a dead letter).
        registry = f"http://127.0.0.1:{ports['registry']}"
        first = None
        for i, community in enumerate(["510681001014", "510681001011", "510681002010"] * 3):
            _, reply = http_json(f"{registry}/commands/file", {"name": f"组织{i}", "community_code": community,
                                                       "category": "culture_sports", "filed_on": "2024-03-01"})
            first = first or reply["id"]
        http_json(f"{registry}/commands/establish_hub", {"organization_id": first, "region_code": "510681001",
                                                    "established_on": "2024-04-01"})
        admin = localnats.credentials(stack.data_dir, "admin")
        assert admin is not None
        nc = await connect_nats(nats_url, "dashboards-test", user=admin[0], password=admin[1])
        await nc.jetstream().publish("cso.intake.organization_filed.51.5106.510681", b"not an event")
        # A command over NATS request-reply: what FastStream's own metrics count.
        reply = await nc.request("cso.cmd.registry.file", json.dumps({
            "name": "经 NATS 备案", "community_code": "510681001014", "category": "charity",
            "filed_on": "2024-05-01"}).encode(), timeout=10)
        assert json.loads(reply.data)["ok"], reply.data
        # registry's database refuses it for a moment: a command then fails on our side (the
        # handler-exceptions panel), and its caller is told so at once (503), over NATS and HTTP.
        admin = await asyncpg.connect(database_url)
        try:
            await admin.execute("ALTER ROLE cso_registry NOLOGIN")
            await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                "WHERE usename = 'cso_registry'")
            reply = await nc.request("cso.cmd.registry.file", json.dumps({
                "name": "数据库不在时", "community_code": "510681001014", "category": "charity",
                "filed_on": "2024-05-01"}).encode(), timeout=15)
            refused = json.loads(reply.data)
            assert refused["status"] == 503 and not refused["ok"], refused
            status, body = await asyncio.to_thread(http_json, f"{registry}/commands/file", {
                "name": "数据库不在时", "community_code": "510681001014", "category": "charity",
                "filed_on": "2024-05-01"})
            assert status == 503 and "database is unavailable" in body["errors"][0]["message"], body
        finally:
            await admin.execute("ALTER ROLE cso_registry LOGIN")
            await admin.close()
        # The bus loses what it held of registry's events: every service's BusWatch sees the gap
        # (the bus-gaps panel), registry refills the stream from its outbox.
        await nc.jetstream().purge_stream("CSO_REGISTRY")
        await nc.close()

        deadline = time.monotonic() + 60
        unanswered: dict[str, str] = {}
        while time.monotonic() < deadline:
            unanswered = {}
            for dashboard in dashboards().values():
                for p in panels(dashboard):
                    for t in p.get("targets", []):
                        if "expr" in t:
                            try:
                                answer = get(f"{base}/api/v1/query?" + urllib.parse.urlencode(
                                    {"query": promql(t["expr"])}))
                            except OSError as e:
                                unanswered[p["title"]] = repr(e)
                                continue
                            if not answer["data"]["result"]:
                                unanswered[p["title"]] = t["expr"]
            # Not only a series: the failures the test caused are counted where operators look.
            for title, series in (("Delivery failures in the time range", {"channel": "webhook"}),
                                  ("Retries scheduled /s", {"channel": "webhook"}),
                                  ("Deliveries finished /s by channel and outcome",
                                   {"channel": "inbox", "outcome": "sent"})):
                if title not in unanswered and not await positive(base, title, series):
                    unanswered[title] = f"no {series} above 0 yet"
            if not unanswered:
                break
            await asyncio.sleep(2)
        assert not unanswered, unanswered

        if NATS_EXPORTER:
            live = await asyncio.to_thread(text_of, f"http://127.0.0.1:{ports['nats']}/metrics")
            if os.environ.get("CSO_RECORD_NATS_EXPORTER") == "1":
                version = (await asyncio.to_thread(subprocess.run, [NATS_EXPORTER, "--version"],
                                                   capture_output=True, text=True)).stdout
                RECORDING.write_text(f"# {version.strip()} -jsz=all -varz, recorded by "
                                     f"{Path(__file__).name} (CSO_RECORD_NATS_EXPORTER=1)\n{live}",
                                     encoding="utf-8")
            assert shape(live) == shape(RECORDING.read_text(encoding="utf-8")), \
                "the recording is stale: CSO_RECORD_NATS_EXPORTER=1 pytest " + Path(__file__).name

        db = await asyncpg.connect(database_url)
        try:
            empty = []
            for dashboard in dashboards().values():
                for p in panels(dashboard):
                    for t in p.get("targets", []):
                        if "rawSql" in t:
                            rows = await db.fetch(substitute(t["rawSql"], region="510681", scope="51"))
                            # A row of counts is there even over empty tables: some cell must
                            # hold something (not NULL, not 0).
                            if not any(value not in (None, 0) for row in rows for value in row.values()):
                                empty.append(p["title"])
            assert not empty, empty
        finally:
            await db.close()
    finally:
        replay.close()
        for server in (prometheus, exporter):
            if server is not None:
                server.terminate()
                server.wait(10)
        await asyncio.to_thread(stack.stop)
