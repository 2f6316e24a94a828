"""One promise, one instance (issue 21), on real NATS and PostgreSQL: the default catalogue and the
bundled plans both state Guanghan's brand organizations and projects (≥ 3 by 2024-11-30) and the
city plan's street and town hub coverage and pool training. Each is one target instance, one
status and one alert, shown on the plan task's line; importing a plan again, retiring the
catalogue target and putting it back, in any order, never doubles it. A plan file can name the
catalogue target it states (`target:`), and a link that states another promise is refused."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest

from cso.divisions import DEMO_DIVISIONS, publish_divisions
from cso.settings import Settings
from services.targets import app as targets
from services.targets.evaluation import Clock
from services.targets.plans import api as plans_api
from tests.support import eventually, ok, recording, running

pytestmark = pytest.mark.integration

GUANGHAN = "guanghan-2024-chuangtese"
CITY = "city-2021-2023-special-action"
DATA = Path(plans_api.__file__).parent / "data"
# The promises both carry: (region, figure, deadline) -> the catalogue target that holds it.
SHARED = {
    ("510681", "brand_organizations", "2024-11-30"): "guanghan-brand-orgs",
    ("510681", "brand_projects", "2024-11-30"): "guanghan-brand-projects",
    ("5111", "streets_with_hub_share", "2021-12-31"): "city-2021-2023-streets-hub",
    ("5111", "towns_with_hub_share", "2022-12-31"): "city-2021-2023-towns-hub",
    ("511102", "pool_trained_share", "2023-12-31"): "city-2021-2023-pool-trained-per-county",
}
SHARED_FIGURES = {figure for _, figure, _ in SHARED}


async def promises(api: httpx.AsyncClient) -> Counter[tuple[str, str, str]]:
    """How many instances each shared promise has, from the regions' targets (what `cso coverage`
    lists)."""
    found: Counter[tuple[str, str, str]] = Counter()
    for region in sorted({r for r, _, _ in SHARED}):
        for t in await ok(await api.get(f"/regions/{region}/targets")):
            key = (region, t["figure"], str(t["deadline"]))
            if key in SHARED:
                found[key] += 1
    return found


async def task_target(api: httpx.AsyncClient, plan: str, no: str, metric: str) -> dict[str, Any]:
    task = await ok(await api.get(f"/plans/{plan}/tasks/{no}"))
    target: dict[str, Any] = next(x for x in task["targets"] if x["metric"] == metric)
    return target


async def test_a_promise_in_the_catalogue_and_a_plan_is_one_instance(settings: Settings, nc: nats.NATS) -> None:
    await asyncio.to_thread(targets.run_migrations, settings)
    clock = Clock(fixed=date(2024, 5, 20))
    t = settings.topology
    async with running(lambda s: targets.create_app(s, clock), settings) as (app, api), \
            recording(nc, t.context_subjects("targets"), t.stream("CSO_TARGETS")) as bus:
        coalescer = app.state.coalescer
        await publish_divisions(nc.jetstream(), t, DEMO_DIVISIONS)

        async def loaded() -> bool:
            return {p["id"] for p in (await api.get("/plans")).json()} == {GUANGHAN, CITY}

        await eventually(loaded, timeout=30, interval=0.2)

        async def once_each() -> Counter[tuple[str, str, str]] | None:
            found = await promises(api)
            return found if set(found) == set(SHARED) else None

        assert await eventually(once_each, timeout=30, interval=0.2) == Counter(dict.fromkeys(SHARED, 1))

        # The task lines show the catalogue's instance, its status and figure.
        brand = await task_target(api, GUANGHAN, "1.5", "brand_organizations")
        assert (brand["target_id"], brand["linked"]) == ("guanghan-brand-orgs", True)
        assert brand["instance_id"] == "guanghan-brand-orgs@510681" and brand["status"] != "pending"
        pool = await task_target(api, CITY, "14", "pool_trained_share")
        assert (pool["target_id"], pool["linked"], pool["instances"]) == (
            "city-2021-2023-pool-trained-per-county", True, 11)   # 乐山市's eleven counties
        hubs = await task_target(api, CITY, "7", "streets_with_hub_share")
        assert (hubs["target_id"], hubs["linked"]) == ("city-2021-2023-streets-hub", True)
        catalogue = {x["id"]: x for x in await ok(await api.get("/targets"))}
        # A plan's own target (`<plan>-<task>-<metric>`) only for a promise the catalogue does not
        # state (the facilities of the city plan's 18 and Guanghan's 1.6 have one), never a shared one.
        own = [i for i, x in catalogue.items() if i.startswith((GUANGHAN, CITY)) and not x["retired"]]
        assert not [i for i in own if i.rsplit("-", 1)[1] in SHARED_FIGURES], own

        # One alert: every TargetStatusChanged of a shared promise is the catalogue's instance.
        async def alerted() -> bool:
            return any(e["payload"]["target_id"] == "guanghan-brand-orgs@510681"
                       for e in bus.events("TargetStatusChanged"))

        await eventually(alerted, timeout=30, interval=0.2)
        assert not [e for e in bus.events("TargetStatusChanged")
                    if e["payload"]["target_id"].startswith((GUANGHAN, CITY))
                    and e["payload"]["target_id"].split("@")[0].rsplit("-", 1)[1] in SHARED_FIGURES]

        # Importing the plan again (a changed title) keeps one instance.
        source = (DATA / f"{GUANGHAN}.yaml").read_text(encoding="utf-8")
        changed = source.replace("title: 开展社区治理宣传,", "title: 开展社区治理宣传和培训,")
        assert (await ok(await api.put(f"/plans/{GUANGHAN}", content=changed.encode())))["changed"] is True

        async def settled(day: date) -> None:
            clock.fixed = day

            async def done() -> bool:
                return bool(coalescer.evaluated_on == day and not coalescer.resync.is_set())
            await eventually(done, timeout=30, interval=0.1)

        await settled(date(2024, 5, 21))
        assert await promises(api) == Counter(dict.fromkeys(SHARED, 1))

        # The catalogue target retired: the task states the promise on its own, still once ...
        assert (await api.delete("/targets/guanghan-brand-orgs")).status_code == 200
        await settled(date(2024, 5, 22))
        own = await task_target(api, GUANGHAN, "1.5", "brand_organizations")
        assert (own["target_id"], own["linked"]) == (f"{GUANGHAN}-1.5-brand_organizations", False)
        assert (await promises(api))[("510681", "brand_organizations", "2024-11-30")] == 1
        # ... and put back (a catalogue after the plan), the task shows it again: still once.
        spec = dict(catalogue["guanghan-brand-orgs"]["spec"])
        spec.pop("retired", None)
        assert (await api.put("/targets/guanghan-brand-orgs", json=spec)).status_code == 200
        await settled(date(2024, 5, 23))
        again = await task_target(api, GUANGHAN, "1.5", "brand_organizations")
        assert (again["target_id"], again["linked"]) == ("guanghan-brand-orgs", True)
        assert await promises(api) == Counter(dict.fromkeys(SHARED, 1))


async def test_a_plan_names_the_catalogue_target_it_states(settings: Settings, nc: nats.NATS) -> None:
    await asyncio.to_thread(targets.run_migrations, settings)
    clock = Clock(fixed=date(2024, 5, 20))
    t = settings.topology
    async with running(lambda s: targets.create_app(s, clock), settings) as (_, api):
        await publish_divisions(nc.jetstream(), t, DEMO_DIVISIONS)

        async def seeded() -> bool:   # the catalogue seeded, and the divisions known (a plan loaded)
            return any(p["id"] == GUANGHAN for p in (await api.get("/plans")).json())

        await eventually(seeded, timeout=30, interval=0.2)

        def plan(plan_id: str = "test-link", /, **target: Any) -> bytes:
            targets = [{"metric": "brand_projects", "threshold": 3} | target] if target.get("threshold") != 0 else []
            return json.dumps({
                "plan": {"id": plan_id, "title": "测试", "scope": "510681", "issued": "2024-03-01"},
                "tasks": [{"no": "1", "title": "品牌项目", "lead": "市民政局", "due": "2024-11",
                           "targets": targets}]},
                ensure_ascii=False).encode()

        bad = await api.post("/plans", params={"file": "link.yaml"},
                             content=plan(target="guanghan-brand-projects", threshold=4))
        assert bad.status_code == 422
        [error] = bad.json()["errors"]
        assert error["field"] == "tasks[0].targets[0].threshold", error
        assert "link.yaml" in error["message"] and "guanghan-brand-projects" in error["message"]
        unknown = await api.post("/plans", params={"file": "link.yaml"}, content=plan(target="no-such-target"))
        assert [e["field"] for e in unknown.json()["errors"]] == ["tasks[0].targets[0].target"]

        # Linked by id (the promise it states is the catalogue's, its start aside).
        await ok(await api.post("/plans", params={"file": "link.yaml"},
                                content=plan(target="guanghan-brand-projects")))
        linked = await task_target(api, "test-link", "1", "brand_projects")
        assert (linked["target_id"], linked["linked"]) == ("guanghan-brand-projects", True)
        assert "test-link-1-brand_projects" not in {x["id"] for x in (await api.get("/targets")).json()}

        # Two plans stating a promise the catalogue does not hold (≥ 5 brand projects): the first
        # plan's task holds it, the second's links there; dropped by the first, the second owns it.
        await ok(await api.post("/plans", params={"file": "a.yaml"}, content=plan("test-link-a", threshold=5)))
        await ok(await api.post("/plans", params={"file": "b.yaml"}, content=plan("test-link-b", threshold=5)))
        b = await task_target(api, "test-link-b", "1", "brand_projects")
        assert (b["target_id"], b["linked"]) == ("test-link-a-1-brand_projects", True)
        live = {x["id"] for x in (await api.get("/targets")).json() if not x["retired"]}
        assert "test-link-a-1-brand_projects" in live and "test-link-b-1-brand_projects" not in live
        dropped = plan("test-link-a", threshold=0)
        await ok(await api.put("/plans/test-link-a", params={"file": "a.yaml"}, content=dropped))
        b = await task_target(api, "test-link-b", "1", "brand_projects")
        assert (b["target_id"], b["linked"]) == ("test-link-b-1-brand_projects", False)
        live = {x["id"] for x in (await api.get("/targets")).json() if not x["retired"]}
        assert "test-link-a-1-brand_projects" not in live and "test-link-b-1-brand_projects" in live
