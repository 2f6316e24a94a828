"""The contracts README's example, run as an outside system would: a separate process with nothing
but nats-py, against a live registry. Its filing is persisted and its receipt (on the publisher's
own cso.receipts.<source>.accepted) observed."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import asyncpg
import nats
import pytest

from cso.settings import Settings
from services.registry.app import create_app, run_migrations
from tests.support import eventually, publish_divisions, running

pytestmark = pytest.mark.integration
EXAMPLE = Path(__file__).parents[2] / "contracts" / "examples" / "publish_filing.py"


def test_readme_shows_the_example_verbatim() -> None:
    readme = (EXAMPLE.parents[1] / "README.md").read_text(encoding="utf-8")
    # The README has other Python blocks (a command's request, say): one of them is the example.
    example = EXAMPLE.read_text(encoding="utf-8")
    assert example in re.findall(r"```python\n(.*?)```", readme, re.S)
    assert "import cso" not in example and "from cso" not in example
    assert "from contracts" not in example


async def test_outside_publisher_is_persisted_with_a_receipt(settings: Settings, nc: nats.NATS) -> None:
    await asyncio.to_thread(run_migrations, settings)
    async with running(create_app, settings):
        await publish_divisions(nc, settings.topology)
        db = await asyncpg.connect(settings.database_url)
        try:
            async def divisions_loaded() -> bool:
                return bool(await db.fetchval("SELECT count(*) FROM registry.community"))

            await eventually(divisions_loaded)
            env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
            result = await asyncio.to_thread(subprocess.run, [
                sys.executable, str(EXAMPLE), "--nats", settings.nats_url, "--prefix", settings.namespace],
                capture_output=True, text=True, timeout=60, env=env, cwd="/")
            assert result.returncode == 0, result.stderr
            published, receipt = (json.loads(line) for line in result.stdout.splitlines())
            assert receipt["event_id"] == published["published"]
            assert receipt["receipt"] == f"{settings.namespace}.cso.receipts.example-city-register.accepted"
            assert receipt["verdict"] == "accepted" and receipt["id"]
            row = await db.fetchrow("SELECT name, updated_by FROM registry.organization")
            assert row["updated_by"] == "example-city-register"

            # A community 广汉市 does not have: the refused receipt names the field, and the example
            # exits 1 (a publisher's script must not take a refusal for success).
            result = await asyncio.to_thread(subprocess.run, [
                sys.executable, str(EXAMPLE), "--nats", settings.nats_url, "--prefix", settings.namespace,
                "--community", "510681001999"], capture_output=True, text=True, timeout=60, env=env, cwd="/")
            assert result.returncode == 1, result.stdout + result.stderr
            published, receipt = (json.loads(line) for line in result.stdout.splitlines())
            assert receipt["event_id"] == published["published"]
            assert receipt["receipt"] == f"{settings.namespace}.cso.receipts.example-city-register.refused"
            assert (receipt["verdict"], receipt["field"], receipt["code"]) == \
                ("refused", "payload.community_code", "unknown_division"), receipt
            assert await db.fetchval("SELECT count(*) FROM registry.organization") == 1
        finally:
            await db.close()
