"""The bus of `cso up` is not open (issue 18, finding 2): its nats-server requires a user and password
of everyone. An anonymous client is refused; an outside publisher added with `cso publisher add`
may publish its region's intake facts but neither registry's events (which targets would count
though registry never saw them) nor registry's commands; the services, each as its own user, and
the CLI, as admin, work as before. No password reaches stack.json."""

from __future__ import annotations

import asyncio
import json
import re
import stat
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from typer.testing import CliRunner

from contracts import Topology, encode, make_event
from contracts import events as ev
from cso.connect import connect_nats
from cso.natsauth import inbox_prefix
from cso_local import localnats, servers
from cso_local.cli import app
from cso_local.stack import Stack, http_get
from tests.support import http_json

pytestmark = pytest.mark.integration

COMMUNITY = "510681001014"  # 西城社区居民委员会, 雒城街道, 广汉市 (in the demo divisions)
CLI_ENV = {"COLUMNS": "200", "CSO_NAMESPACE": "", "CSO_NATS_URL": "", "CSO_NATS_USER": "",
           "CSO_NATS_PASSWORD": "", "CSO_DATABASE_URL": ""}


def eventually(check: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        if result := check():
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last: {result!r})")
        time.sleep(0.2)


def orgs_counted(targets_url: str) -> int:
    status, body = http_get(f"{targets_url}/coverage/510681")
    return int(body["counters"].get("orgs", 0)) if status == 200 else -1


def filing(name: str) -> bytes:
    payload = ev.OrganizationFiled(name=name, community_code=COMMUNITY, category=ev.Category.CHARITY,
                                   filed_on=date(2024, 5, 1))
    return encode(make_event(payload, source="guanghan-register"))


async def anonymous_refused(url: str) -> str:
    try:
        nc = await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=5)
    except Exception as e:  # nats-py: "nats: 'Authorization Violation'"
        return str(e)
    await nc.close()
    return ""


async def as_publisher(url: str, user: str, password: str) -> dict[str, Any]:
    """What the outside system may and may not do on the bus."""
    errors: list[str] = []

    async def on_error(e: Exception) -> None:
        errors.append(str(e).lower())

    t = Topology()
    nc = await nats.connect(url, user=user, password=password, inbox_prefix=inbox_prefix(user),
                            error_cb=on_error, allow_reconnect=False, max_reconnect_attempts=0,
                            connect_timeout=10)
    out: dict[str, Any] = {}
    try:
        js = nc.jetstream()
        # Straight onto registry's stream: targets would count it, registry never saw it.
        forged = t.event_subject("OrganizationFiled", COMMUNITY)
        try:
            await js.publish(forged, filing("冒充的组织"), timeout=2)
            out["forged"] = "acked"
        except NatsTimeout:
            out["forged"] = "no ack"
        # A command to registry: files an organization anywhere, no token asked.
        try:
            reply = await nc.request("cso.cmd.registry.file", json.dumps({
                "name": "总线上的组织", "community_code": COMMUNITY, "category": "charity",
                "filed_on": "2024-05-01"}).encode(), timeout=3)
            out["command"] = reply.data.decode()
        except (NatsTimeout, NoRespondersError) as e:
            out["command"] = type(e).__name__
        # Its own intake subject is allowed: registry validates, records and counts it.
        ack = await js.publish(t.intake_subject(user, "OrganizationFiled", COMMUNITY), filing("广汉经外部系统的组织"),
                               timeout=10)
        out["intake_stream"] = ack.stream
        await asyncio.sleep(0.5)
    finally:
        await nc.close()
    out["refused"] = sorted({s for e in errors for s in re.findall(r'"([^"]+)"', e) if "permissions violation" in e})
    return out


def test_cso_up_runs_nats_with_users(tmp_path: Path) -> None:
    data_dir = tmp_path / "stack"
    logged: list[str] = []
    stack = Stack(data_dir, registry_port=servers.free_port(), targets_port=servers.free_port(),
                  training_port=servers.free_port(), notify_port=servers.free_port(), console_port=servers.free_port(),
                  publishers=("leshan-register=5111",), log=logged.append)
    runner = CliRunner()
    try:
        state = stack.start()
        url = state["nats"]["url"]
        registry, targets = state["services"]["registry"]["url"], state["services"]["targets"]["url"]
        assert state["nats"]["auth"] == "users"

        # Passwords: 0600 in the data dir, none in stack.json; --publisher's printed once, not kept.
        users = localnats.load(data_dir)
        assert users is not None
        for path in (users.path, localnats.config_path(data_dir)):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        kept = [a.password for a in users.accounts.values() if a.password]
        assert len(kept) == 6  # four services, divisions, admin
        stack_json = (data_dir / "stack.json").read_text()
        assert not any(p in stack_json for p in kept)
        (shown,) = [m for m in logged if m.startswith("new NATS publisher leshan-register")]
        leshan_password = shown.split("password ")[1].split()[0]
        assert leshan_password not in users.path.read_text()
        assert users.accounts["leshan-register"].region == "5111"

        # Nobody gets on the bus anonymously.
        refusal = asyncio.run(anonymous_refused(url))
        assert "authorization violation" in refusal.lower(), refusal

        # The services work, each as its own user: a filing over HTTP is counted by targets.
        status, body = http_json(f"{registry}/commands/file", {
            "name": "西城社区书画协会", "community_code": COMMUNITY, "category": "culture_sports",
            "filed_on": "2024-03-01"})
        assert status == 200, body
        eventually(lambda: orgs_counted(targets) == 1)

        # An outside system added to the running stack: its password printed once; nats-server reloaded.
        result = runner.invoke(app, ["publisher", "add", "guanghan-register=510681", "--data-dir", str(data_dir)],
                               env=CLI_ENV)
        assert result.exit_code == 0, result.output
        password = re.search(r"password: (\S+)", result.output)
        assert password, result.output
        result = runner.invoke(app, ["publisher", "add", "guanghan-register=510681", "--data-dir", str(data_dir)],
                               env=CLI_ENV)
        assert result.exit_code == 2 and "already a NATS user" in result.output, result.output

        async def publisher_session() -> dict[str, Any]:
            for _ in range(50):  # the reload applies within moments
                try:
                    return await as_publisher(url, "guanghan-register", password.group(1))
                except nats.errors.Error as e:
                    if "authorization" not in str(e).lower():
                        raise
                    await asyncio.sleep(0.2)
            raise AssertionError("guanghan-register was never let in")

        seen = asyncio.run(publisher_session())
        assert seen["forged"] == "no ack", seen
        assert seen["command"] in ("TimeoutError", "NoRespondersError"), seen
        assert seen["intake_stream"] == Topology().stream("CSO_INTAKE"), seen
        assert {"cso.registry.organization_filed.51.5106.510681", "cso.cmd.registry.file"} <= set(seen["refused"]), seen
        # Only the filing that passed registry's intake is counted: 2, not 3 or 4.
        eventually(lambda: orgs_counted(targets) == 2)
        time.sleep(1.5)
        assert orgs_counted(targets) == 2
        assert len(http_get(f"{registry}/regions/510681/organizations?limit=50")[1]["items"]) == 2

        # The CLI connects as admin from the data dir: `cso divisions import` and `cso publish` work.
        result = runner.invoke(app, ["divisions", "import", "--only", "510681", "--data-dir", str(data_dir)],
                               env=CLI_ENV)
        assert result.exit_code == 0 and "published 1 county" in result.output, result.output

        async def intake_count() -> int:
            login = localnats.credentials(data_dir, "admin")
            assert login is not None
            nc = await connect_nats(url, "test", user=login[0], password=login[1])
            try:
                return int((await nc.jetstream().stream_info("CSO_INTAKE")).state.messages)
            finally:
                await nc.close()

        before = asyncio.run(intake_count())
        events = tmp_path / "events.jsonl"
        events.write_text(filing("金山社区志愿服务队").decode() + "\n", encoding="utf-8")
        result = runner.invoke(app, ["publish", str(events), "--data-dir", str(data_dir)], env=CLI_ENV)
        assert result.exit_code == 0, result.output
        assert asyncio.run(intake_count()) == before + 1
        eventually(lambda: orgs_counted(targets) == 3)

        result = runner.invoke(app, ["status", "--data-dir", str(data_dir)], env=CLI_ENV)
        assert result.exit_code == 0 and f"users: {users.path}" in result.output, result.output
        assert "WARNING" not in result.output
    finally:
        stack.stop()


def test_an_open_nats_server_left_running_is_restarted_with_the_users(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A nats-server of an earlier `cso up --nats-auth off` (or of a version before the users) still
    runs on the data dir: it must not be taken as it is, open, by a `cso up` that wants the users."""
    from cso import natsauth

    monkeypatch.setattr(natsauth, "BCRYPT_ROUNDS", 4)
    open_server = servers.start_nats(localnats.nats_dir(tmp_path))
    try:
        assert asyncio.run(anonymous_refused(open_server.url)) == ""
        users, _ = localnats.ensure(tmp_path)
        config = localnats.write_config(tmp_path, users, Topology())
        handle = servers.start_nats(localnats.nats_dir(tmp_path), config=config)
        try:
            assert handle.pid != open_server.pid and not servers.pid_alive(open_server.pid)
            assert handle.port == open_server.port  # same ports and store, as before
            assert "authorization violation" in asyncio.run(anonymous_refused(handle.url)).lower()
            assert servers.started_with(handle) == str(config)
            # Asked again with the same file: the running server is taken as it is.
            assert servers.start_nats(localnats.nats_dir(tmp_path), config=config).pid == handle.pid
        finally:
            servers.stop(handle)
    finally:
        servers.stop(open_server)
