"""Guangdong end to end on real NATS and PostgreSQL, from a clone with nothing outside it:
`cso divisions import --edition 2023 --scope 44` (the national edition shipped as package data)
makes 广东省 known to registry and targets, coverage of 44 answers, and the plan's sentence
"80%以上的街道(乡镇)至少有1个枢纽型社区社会组织" is a target whose figure is the share of
streets, towns and townships with an active hub, equal to a recount, and whose status follows it.
Ratings (等级评估) are a figure at every tier: the share of registered organizations rated 3A or
above."""

from __future__ import annotations

import asyncio
import csv
import gzip
from contextlib import AsyncExitStack
from datetime import date
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import nats
import pytest
import yaml
from typer.testing import CliRunner

from contracts import events as ev
from contracts import make_event
from contracts.codes import uscc_check_character
from cso.divisions import editions
from cso.settings import Settings
from cso_local.cli import app as cli
from services.registry.app import create_app as registry_app
from services.registry.app import run_migrations as registry_migrations
from services.targets import app as targets
from tests.support import eventually, running

pytestmark = pytest.mark.integration

SENTENCE = "80%以上的街道(乡镇)至少有1个枢纽型社区社会组织"
COMMUNITIES_44 = 26842


def guangdong_townships() -> list[tuple[str, str]]:
    """(code, name) of every street, town and township (乡) of 44: what the sentence's 街道(乡镇) counts."""
    from cso.divisions.classify import township_kind

    with gzip.open(editions.edition("2023") / "streets.csv.gz", "rt", encoding="utf-8") as f:
        rows = [(r["code"], r["name"]) for r in csv.DictReader(f) if r["code"].startswith("44")]
    return [(c, n) for c, n in rows if township_kind(c, n).value in ("street", "town", "township")]


async def ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


def credit_code(county: str, serial: int) -> str:
    first17 = f"51{county}MJ{serial:07d}"
    return first17 + uscc_check_character(first17)


async def test_guangdong_end_to_end(settings: Settings, nc: nats.NATS, tmp_path: Path) -> None:
    await asyncio.to_thread(registry_migrations, settings)
    await asyncio.to_thread(targets.run_migrations, settings)
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(running(registry_app, settings))
        _, api = await stack.enter_async_context(running(targets.create_app, settings))

        env = {"CSO_NATS_URL": settings.nats_url, "CSO_NAMESPACE": settings.namespace}
        result = await asyncio.to_thread(
            CliRunner().invoke, cli, ["divisions", "import", "--edition", "2023", "--scope", "44",
                                      "--data-dir", str(tmp_path)], env=env)
        assert result.exit_code == 0, result.output
        assert "published 124 counties of edition 2023" in result.output
        assert "124/124" in result.output   # the progress bar's last state

        async def known() -> bool:
            # "unknown region 44" (404) until targets has applied the import
            return (await api.get("/coverage/44")).status_code == 200

        await eventually(known, timeout=120, interval=0.5)
        townships = guangdong_townships()
        streets = sum(1 for c, n in townships if int(c[6:]) < 100 or n.endswith("街道"))

        async def all_counted() -> dict[str, Any]:
            body = await ok(await api.get("/coverage/44"))
            c = body["counters"]
            return body if c.get("streets", 0) + c.get("towns", 0) == len(townships) else {}

        body = await eventually(all_counted, timeout=120, interval=0.5)
        assert len(body["children"]) == 21   # 广东's 21 prefecture-level cities
        hub_target = next(t for t in body["targets"] if t["target_id"] == "guangdong-townships-hub")
        assert hub_target["threshold"] == 0.8
        assert streets > 0

        # Hubs in 1,300 of the 1,610 streets, towns and townships (80.7%), established in 2022 and
        # 2023 as registry announces them; 20 of them dissolved before the deadline (79.5%), and
        # 10 more established on the deadline's last day make it 80.1%.
        t = settings.topology
        js = nc.jetstream()
        chosen = townships[:1310]
        hubs = [ev.HubEstablished(organization_id=uuid4(), region_code=code,
                                  established_on=date(2022, 1 + i % 12, 1 + i % 28))
                for i, (code, _) in enumerate(chosen[:1300])]
        ended = [ev.HubDissolved(hub_id=h.hub_id, dissolved_on=date(2023, 6, 30)) for h in hubs[:20]]
        late = [ev.HubEstablished(organization_id=uuid4(), region_code=code, established_on=date(2023, 12, 31))
                for code, _ in chosen[1300:]]
        events = [*hubs, *ended, *late]
        for start in range(0, len(events), 200):
            await asyncio.gather(*(js.publish(t.event_subject(p.TYPE, p.region_of() or hubs[0].region_code),
                                              make_event(p, source="registry", region=_region(p, hubs))
                                              .model_dump_json().encode())
                                   for p in events[start:start + 200]))

        expected = (1300 - 20 + 10) / len(townships)
        assert expected >= 0.8

        async def met() -> dict[str, Any]:
            body = await ok(await api.get("/coverage/44"))
            target = next(x for x in body["targets"] if x["target_id"] == "guangdong-townships-hub")
            return target if target["status"] == "met" and target["value"] == pytest.approx(expected) else {}

        target = await eventually(met, timeout=180, interval=1.0)
        assert target["title"].startswith("全省80%以上街道（乡镇）建立枢纽型社区社会组织")
        catalogue = yaml.safe_load((Path(targets.__file__).parent / "catalogue.yaml").read_text(encoding="utf-8"))
        assert next(x for x in catalogue["targets"] if x["id"] == "guangdong-townships-hub")["quote"] == SENTENCE

        # The recount: townships with a hub active at the end of 2023-12-31, over all of them.
        active = {h.region_code for h in hubs[20:]} | {h.region_code for h in late}
        body = await ok(await api.get("/coverage/44", params={"as_of": "2023-12-31"}))
        c = body["counters"]
        assert c["streets_with_hub"] + c["towns_with_hub"] == len(active)
        assert body["figures"]["townships_with_hub_share"] == pytest.approx(len(active) / len(townships))
        # A day before the late ones it was 79.5%: the sentence was not yet met.
        before = await ok(await api.get("/coverage/44", params={"as_of": "2023-12-30"}))
        assert before["figures"]["townships_with_hub_share"] == pytest.approx(1280 / len(townships))
        assert 1280 / len(townships) < 0.8

        # --- the Guangdong plan loaded once 44 was known: its hub task tracks the same figure ---
        async def ledger() -> dict[str, Any]:
            r = await api.get("/plans/guangdong-2021-2023-special-action")
            return r.json() if r.status_code == 200 else {}

        plan = await eventually(ledger, timeout=60, interval=0.5)
        task4 = next(x for x in plan["tasks"] if x["no"] == "4")
        assert task4["targets"][0]["metric"] == "townships_with_hub_share"
        assert task4["lines"]["total"] == 21 and task4["lines"]["tier"] == "city"

        # --- ratings: registered organizations with a grade, 3A or above, at every tier -------
        communities = [c["code"] for c in (await ok(await api.get("/coverage/440308001")))["children"]]
        grades = ["5A", "3A", "2A", None]
        for i, (community, grade) in enumerate(zip(communities, grades, strict=False)):
            oid = uuid4()
            registered = ev.OrganizationRegistered(
                organization_id=oid, name=f"盐田社会组织{i}", community_code=community,
                social_credit_code=credit_code(community[:6], i + 1), legal_form="social_group",
                category="charity", registered_on=date(2024, 1, 2))
            await js.publish(t.event_subject(registered.TYPE, community),
                             make_event(registered, source="registry").model_dump_json().encode())
            if grade:
                rated = ev.OrganizationUpdated(organization_id=oid, effective_on=date(2024, 5, 1), rating=grade)
                await js.publish(t.event_subject(rated.TYPE, community),
                                 make_event(rated, source="registry", region=community).model_dump_json().encode())

        async def rated() -> dict[str, Any]:
            body = await ok(await api.get("/coverage/44"))
            return body if body["counters"].get("orgs_rated", 0) == 3 else {}

        for region in ("44", "4403", "440308", "440308001"):
            body = await eventually(lambda region=region: _rated(api, region), timeout=60, interval=0.5)
            assert body["counters"]["orgs_registered"] == 4
            assert body["counters"]["orgs_rated_3a_plus"] == 2
            assert body["figures"]["rated_3a_plus_share"] == 0.5
        assert await rated()


async def _rated(api: httpx.AsyncClient, region: str) -> dict[str, Any]:
    body = await ok(await api.get(f"/coverage/{region}"))
    return body if body["counters"].get("orgs_rated", 0) == 3 else {}


def _region(p: ev.Payload, hubs: list[ev.HubEstablished]) -> str:
    if isinstance(p, ev.HubDissolved):
        return next(h.region_code for h in hubs if h.hub_id == p.hub_id)
    return p.region_of() or ""
