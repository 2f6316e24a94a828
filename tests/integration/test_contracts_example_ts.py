"""The contracts README's TypeScript example (contracts/examples/typescript/, nats.js from npm), run
under node as an outside system would: with its own publisher-scoped NATS user, against a
nats-server that enforces cso's generated permissions and a live registry. One of its facts is
lost on the way (the example's drill skips its first publish): the example must learn from the
receipts query that registry never took it, send exactly that one again with its event_id, and
see it accepted; a fact for an unknown community comes back refused, naming the field."""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import asyncpg
import nats
import pytest

from contracts import Topology
from cso import bus, natsauth
from cso.natsauth import Publisher, Users
from cso.settings import Settings
from cso_local import servers
from services.registry.app import create_app, run_migrations
from tests.support import eventually, missing, publish_divisions, running

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).parents[2] / "contracts" / "examples" / "typescript"
NAMESPACE = "tsexample"
PUBLISHER = "guanghan-register"  # 广汉市 510681's register, as its NATS user is named
GOOD = ("510681001014", "510681001011", "510681002010")
UNKNOWN_COMMUNITY = "510681001999"  # a community code of the right shape that 广汉市 does not have
VIOLATION = re.compile(r'"\$G/user:([^"]+)" - (Publish|Subscription) Violation - Subject "([^"]+)"')


@dataclass
class AuthServer:
    handle: servers.ServerHandle
    passwords: dict[str, str]

    def violations(self) -> list[tuple[str, str, str]]:
        text = (self.handle.data_dir / "nats.log").read_text(errors="replace")
        return VIOLATION.findall(text)


@pytest.fixture
def auth_server(tmp_path: Path) -> Iterator[AuthServer]:
    """nats-server enforcing the permissions `cso nats-config` generates, with one publisher."""
    users = Users(publishers=(Publisher(PUBLISHER, "510681"),))
    names = [*natsauth.SERVICES, natsauth.DIVISIONS, natsauth.ADMIN, PUBLISHER]
    passwords = {n: "p" + secrets.token_hex(16) for n in names}  # a letter first: see infra/README.md
    config = tmp_path / "auth.conf"
    config.write_text(natsauth.render(Topology(NAMESPACE), users))
    handle = servers.start_nats(tmp_path / "nats", config=config,
                                env={natsauth.password_env(n): p for n, p in passwords.items()})
    try:
        yield AuthServer(handle, passwords)
    finally:
        servers.stop(handle)


def example_built() -> Path:
    """The example compiled with its own tsc (a type error fails here): its dist/publish.js."""
    node = shutil.which("node")
    if node is None or not (EXAMPLE / "node_modules" / "@nats-io" / "transport-node").is_dir():
        missing("node", "node and contracts/examples/typescript/node_modules "
                        "(cd contracts/examples/typescript && npm ci) are needed")
    done = subprocess.run([node, "node_modules/typescript/bin/tsc", "-p", "."], cwd=EXAMPLE,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return EXAMPLE / "dist" / "publish.js"


def filing(community: str) -> dict[str, Any]:
    now = datetime.now(timezone.utc).isoformat()
    return {"event_id": str(uuid.uuid4()), "type": "OrganizationFiled", "version": 1, "occurred_at": now,
            "recorded_at": now, "source": PUBLISHER, "region": community,
            "payload": {"organization_id": str(uuid.uuid4()), "name": f"{community}志愿服务队",
                        "community_code": community, "category": "neighbourly_help", "tier": "filed",
                        "filed_on": date.today().isoformat()}}


async def test_typescript_publisher_resends_what_registry_never_took(
        auth_server: AuthServer, database_url: str, tmp_path: Path) -> None:
    script = await asyncio.to_thread(example_built)
    url, passwords = auth_server.handle.url, auth_server.passwords
    topology = Topology(NAMESPACE)
    settings = Settings(database_url=database_url, nats_url=url, nats_user="registry",
                        nats_password=passwords["registry"], namespace=NAMESPACE, max_deliver=3,
                        nats_inbox_prefix="")
    admin = await nats.connect(url, user=natsauth.ADMIN, password=passwords[natsauth.ADMIN],
                               inbox_prefix=natsauth.inbox_prefix(natsauth.ADMIN))
    await bus.ensure_streams(admin, topology)  # the operator's step
    await asyncio.to_thread(run_migrations, settings)
    db = await asyncpg.connect(database_url)
    try:
        async with running(create_app, settings):
            await publish_divisions(admin, topology)

            async def divisions_loaded() -> bool:
                return bool(await db.fetchval("SELECT count(*) FROM registry.community"))

            await eventually(divisions_loaded, timeout=30)

            facts = [filing(GOOD[0]), filing(GOOD[1]), filing(UNKNOWN_COMMUNITY), filing(GOOD[2])]
            lost = facts[1]["event_id"]  # --lose 2: its first publish never leaves the example
            events = tmp_path / "facts.jsonl"
            events.write_text("".join(json.dumps(f, ensure_ascii=False) + "\n" for f in facts), encoding="utf-8")
            env = {**os.environ, "NATS_PASSWORD": passwords[PUBLISHER]}
            result = await asyncio.to_thread(subprocess.run, [
                "node", str(script), "--nats", url, "--user", PUBLISHER, "--prefix", NAMESPACE,
                "--events", str(events), "--lose", "2", "--wait", "15", "--rounds", "5", "--json"],
                capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path)
            output = result.stdout + result.stderr
            print(output)
            assert result.returncode == 0, output
            summary = json.loads(result.stdout.splitlines()[-1])

            good = {f["event_id"] for f in facts if f["region"] != UNKNOWN_COMMUNITY}
            assert set(summary["accepted"]) == good, output
            assert lost in summary["resent"], output
            assert summary["without"] == [] and summary["waiting"] == [], output
            [refused] = summary["refused"]
            assert refused["event_id"] == facts[2]["event_id"], output
            assert refused["field"] == "payload.community_code" and refused["code"] == "unknown_division", output
            assert f"unknown community {UNKNOWN_COMMUNITY}" in refused["reason"], output
            assert f"sent again {lost}" in result.stdout, output
            # Registry's receipts were heard on the publisher's own subject: the three sent at first
            # (the lost one waits a whole round, --wait 15 s, before the query), and the query was
            # asked at least about the lost one.
            assert summary["heard"] >= 3 and summary["asked"] >= 1, output

            # In registry's database once each, the lost one included, under the publisher's name.
            rows = await db.fetch("SELECT community_code, updated_by FROM registry.organization")
            assert sorted(r["community_code"] for r in rows) == sorted(GOOD)
            assert {r["updated_by"] for r in rows} == {PUBLISHER}
            assert await db.fetchval("SELECT count(*) FROM registry.audit WHERE event_id = $1",
                                     uuid.UUID(lost)) == 1
    finally:
        await db.close()
        await admin.close()
    # The example stayed inside its user's permissions (receipts, query, inbox, its intake subjects).
    assert auth_server.violations() == []


def test_readme_shows_the_typescript_example_verbatim() -> None:
    readme = (EXAMPLE.parents[1] / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```typescript\n(.*?)```", readme, re.S)
    assert block and block.group(1) == (EXAMPLE / "publish.ts").read_text(encoding="utf-8")
