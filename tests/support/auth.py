"""HTTP bearer tokens and the four services' apps for tests on the real servers: a token signed
with the tests' key, settings that require it, the error list of a refusal, and `Writes`, which
checks that a refused request wrote nothing (the service's tables and outbox hashed before and
after)."""

from __future__ import annotations

import dataclasses
import time
from datetime import datetime, timezone
from typing import Any

import asyncpg
import httpx
import jwt
from fastapi import FastAPI

from cso.settings import Settings
from services.notify import app as notify_app
from services.registry import app as registry_app
from services.targets import app as targets_app
from services.training import app as training_app
from tests.support import db_fetch, eventually

SECRET = "integration-test-secret-of-32-bytes-or-more"
COUNTY, TOWNSHIP, COMMUNITY = "510681", "510681001", "510681001014"   # 广汉市, 雒城街道, 西城社区
OTHER = "5101"                                                          # 成都市: another city
# A plan a planner of COUNTY may import, and a morning when every catalogue deadline is past.
PLAN = {"plan": {"id": "auth-plan", "title": "授权测试计划", "scope": COUNTY, "issued": "2024-03-01"},
        "tasks": [{"no": "1", "title": "制定清单", "lead": "市民政局", "due": "2024-12"},
                  {"no": "2", "title": "各镇落实", "lead": "市民政局", "co": ["各镇(街道)"], "due": "2024-12"}]}
MORNING = datetime(2026, 3, 2, 1, 0, tzinfo=timezone.utc)   # every catalogue deadline past: no reminders


def claims(region: str, roles: tuple[str, ...], sub: str, exp_in: int, source: str | None = None) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": sub, "region": region, "roles": list(roles), "iat": now, "exp": now + exp_in} | (
        {"source": source} if source else {})


def auth(region: str = COUNTY, *roles: str, sub: str = "official.gh", exp_in: int = 600,
         key: str = SECRET, source: str | None = None) -> dict[str, str]:
    return {"Authorization": "Bearer " + jwt.encode(claims(region, roles, sub, exp_in, source), key,
                                                    algorithm="HS256")}


def secured(settings: Settings, **over: Any) -> Settings:
    return dataclasses.replace(settings, auth="jwt", jwt_secret=SECRET, **over)


def errors(response: httpx.Response) -> list[tuple[str, str]]:
    body = response.json()
    assert body["ok"] is False, body
    return [(e["field"], e["message"]) for e in body["errors"]]


# --- the service's tables, hashed: "nothing written" ---------------------------------------------

# The relay moves outbox_relay and outbox_stream by itself, request or not.
INFRA = ("inbox", "consumer_position", "bus_stream", "outbox", "outbox_relay", "outbox_stream")


async def snapshot(settings: Settings, schema: str, tables: tuple[str, ...] | None = None,
                   events: tuple[str, ...] | None = None) -> dict[str, str]:
    """A hash of every row of the schema's tables (or the given ones) and of the outbox's event ids
    (of the given event types: targets stages coverage and status events on its own)."""
    db = await asyncpg.connect(settings.database_url)
    try:
        if tables is None:
            names = await db.fetch("SELECT table_name FROM information_schema.tables WHERE table_schema = $1",
                                   schema)
            tables = tuple(r["table_name"] for r in names if r["table_name"] not in INFRA)
        out = {t: await db.fetchval(
            f"SELECT md5(coalesce(string_agg(x::text, '|' ORDER BY x::text), '')) FROM \"{schema}\".\"{t}\" x")
            for t in sorted(tables)}
        out["outbox"] = await db.fetchval(
            f"SELECT md5(coalesce(string_agg(event_id::text, '|' ORDER BY seq), '')) FROM \"{schema}\".outbox "
            "WHERE $1::text[] IS NULL OR type = ANY($1::text[])", list(events) if events else None)
        return out
    finally:
        await db.close()


class Writes:
    """Requests to one service, with the check that a refused one wrote nothing."""

    def __init__(self, client: httpx.AsyncClient, settings: Settings, schema: str,
                 tables: tuple[str, ...] | None = None, events: tuple[str, ...] | None = None) -> None:
        self.client, self.settings, self.schema, self.tables = client, settings, schema, tables
        self.events = events

    async def snapshot(self) -> dict[str, str]:
        return await snapshot(self.settings, self.schema, self.tables, self.events)

    async def refused(self, status: int, field: str, method: str, url: str, headers: dict[str, str],
                      **kw: Any) -> str:
        before = await self.snapshot()
        response = await self.client.request(method, url, headers=headers, **kw)
        assert response.status_code == status, (method, url, response.text)
        [(got, message)] = errors(response)
        assert got == field, (method, url, response.text)
        assert await self.snapshot() == before, (method, url, "wrote")
        return message

    async def done(self, method: str, url: str, headers: dict[str, str], status: int = 200, **kw: Any) -> Any:
        before = await self.snapshot()
        response = await self.client.request(method, url, headers=headers, **kw)
        assert response.status_code == status, (method, url, response.text)
        assert await self.snapshot() != before, (method, url, "wrote nothing")
        return response.json()


def apps(settings: Settings) -> dict[str, FastAPI]:
    return {"registry": registry_app.create_app(settings), "training": training_app.create_app(settings),
            "targets": targets_app.create_app(settings), "notify": notify_app.create_app(settings)}


def filing(**over: Any) -> dict[str, Any]:
    return {"name": "西城社区舞蹈队", "community_code": COMMUNITY, "category": "culture_sports",
            "filed_on": "2023-03-01", "filing_number": "GH-2023-001"} | over


async def until(settings: Settings, sql: str, expected: Any) -> None:
    async def check() -> bool:
        return bool((await db_fetch(settings, sql))[0][0] == expected)

    await eventually(check, timeout=20)
