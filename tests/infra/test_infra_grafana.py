"""Grafana dashboards as code: the committed JSON is exactly infra/grafana/generate.py's output, every
panel has a datasource and a query, the provisioning matches, every PromQL query parses (promtool),
and (integration) every SQL query of every dashboard runs against a migrated `targets` schema and
gives the figures targets computes."""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import asyncpg
import pytest
import yaml

from tests.support import missing
from tests.support.grafana import CHAIN, SEED, dashboards, panel, panels, substitute

REPO = Path(__file__).resolve().parents[2]
GRAFANA = REPO / "infra" / "grafana"
DASHBOARDS = GRAFANA / "dashboards"
DATASOURCES = {"prometheus": "prometheus", "postgres": "grafana-postgresql-datasource"}


def generator() -> ModuleType:
    pytest.importorskip("grafana_foundation_sdk", reason="grafana-foundation-sdk is not installed "
                        "(pip install 'grafana-foundation-sdk==1769699379!11.6.0')")
    spec = importlib.util.spec_from_file_location("cso_grafana_generate", GRAFANA / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- generated, committed, consistent ---------------------------------------------------------

def test_committed_json_is_the_generator_output() -> None:
    rendered = generator().render()
    committed = {p.name: p.read_text(encoding="utf-8") for p in DASHBOARDS.glob("*.json")}
    assert set(committed) == set(rendered), "dashboards/ holds exactly the generated files"
    for name, text in rendered.items():
        assert committed[name] == text, f"{name} is stale: run python infra/grafana/generate.py"


def test_check_mode_reports_stale_files(tmp_path: Path) -> None:
    module = generator()
    assert module.main(["--out", str(tmp_path)]) == 0
    assert module.main(["--check", "--out", str(tmp_path)]) == 0
    first = sorted(tmp_path.glob("*.json"))[0]
    first.write_text(first.read_text().replace("cso", "xyz", 1))
    assert module.main(["--check", "--out", str(tmp_path)]) == 1


def test_three_dashboards_with_unique_uids() -> None:
    uids = {d["uid"]: name for name, d in dashboards().items()}
    assert set(uids) == {"cso-coverage", "cso-targets-at-risk", "cso-pipeline"}


@pytest.mark.parametrize("name", sorted(dashboards()))
def test_every_panel_has_a_datasource_and_a_query(name: str) -> None:
    dashboard = dashboards()[name]
    titles = [p["title"] for p in panels(dashboard)]
    assert len(titles) == len(set(titles)), "panel titles are unique within a dashboard"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) and i > 0 for i in ids)
    for p in panels(dashboard):
        ds = p.get("datasource")
        assert ds and DATASOURCES.get(ds.get("uid")) == ds.get("type"), p["title"]
        assert p["targets"], f"{p['title']}: no query"
        ref_ids = [t["refId"] for t in p["targets"]]
        assert all(ref_ids) and len(set(ref_ids)) == len(ref_ids), p["title"]
        for target in p["targets"]:
            assert target.get("datasource", ds) == ds, p["title"]
            query = target.get("rawSql") if ds["uid"] == "postgres" else target.get("expr")
            assert query and query.strip(), f"{p['title']}: empty query"
            if ds["uid"] == "postgres":
                assert target["rawQuery"] is True and target["format"] in {"table", "time_series"}
                # Only targets' schema: the Grafana role can read nothing else.
                tables = re.findall(r"\b(?:FROM|JOIN)\s+([a-z_]+\.[a-z_]+)", query)
                assert tables and all(t.startswith("targets.") for t in tables), query


def test_variables_query_the_divisions() -> None:
    for name, dashboard in dashboards().items():
        for var in dashboard["templating"]["list"]:
            if var["type"] == "query":
                assert var["datasource"]["uid"] in DATASOURCES, name
                assert "targets.division" in var["query"], name
            if var.get("includeAll") and var.get("datasource", {}).get("uid") == "postgres":
                # Grafana inserts a custom "All" value unformatted, even into ${var:sqlstring}.
                assert var["allValue"] == "''", name


CJK = re.compile(r"[\u4e00-\u9fff]")


def test_officials_dashboards_speak_chinese() -> None:
    """Coverage and at-risk: titles, descriptions, rows, variable labels and the columns' and
    series' display names in Chinese (the pipeline dashboard is the operators', in English)."""
    for name in ("cso-coverage.json", "cso-targets-at-risk.json"):
        d = dashboards()[name]
        assert CJK.search(d["title"]) and CJK.search(d["description"]), name
        for p in d["panels"]:
            assert CJK.search(p["title"]), (name, p["title"])
            assert not p.get("description") or CJK.search(p["description"]), (name, p["title"])
        for var in d["templating"]["list"]:
            assert CJK.search(var["label"]), (name, var["name"])
        for p in panels(d):
            for o in p.get("fieldConfig", {}).get("overrides", []):
                for prop in o["properties"]:
                    if prop["id"] == "displayName":
                        assert CJK.search(prop["value"]), (name, p["title"], prop)
                    if prop["id"] == "mappings":
                        texts = [r["text"] for m in prop["value"] for r in m["options"].values()]
                        assert texts and all(CJK.search(t) for t in texts), (name, p["title"], texts)
    coverage = dashboards()["cso-coverage.json"]
    names = {prop["value"] for p in panels(coverage) for o in p.get("fieldConfig", {}).get("overrides", [])
             for prop in o["properties"] if prop["id"] == "displayName"}
    assert {"城市社区平均拥有社区社会组织数", "有风险", "区划代码"} <= names
    assert not CJK.search(json.dumps(dashboards()["cso-pipeline.json"]["title"], ensure_ascii=False))


def test_the_region_chain_reaches_the_community() -> None:
    """province → city → county → township → community, each step the children of the one
    above; `region` (hidden) the deepest step chosen; every drill-down link sets the whole chain."""
    d = dashboards()["cso-coverage.json"]
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert list(variables)[:6] == [*CHAIN, "region"]
    assert "tier = 'province'" in variables["province"]["query"] and not variables["province"]["includeAll"]
    for parent, child in itertools.pairwise(CHAIN):
        v = variables[child]
        assert f"tier = '{child}' AND parent_code = ${{{parent}:sqlstring}}" in v["query"], child
        assert v["includeAll"] and v["allValue"] == "''" and v["current"]["value"] == "$__all", child
    assert variables["region"]["hide"] == 2
    assert all(f"${{{step}:sqlstring}}" in variables["region"]["query"] for step in CHAIN)
    linked = 0
    for name, dashboard in dashboards().items():
        for p in panels(dashboard):
            for o in p.get("fieldConfig", {}).get("overrides", []):
                for prop in o["properties"]:
                    if prop["id"] == "links":
                        linked += 1
                        url = prop["value"][0]["url"]
                        assert url.startswith("/d/cso-coverage/"), url
                        assert all(f"var-{step}=${{__data.fields.to_{step}}}" in url for step in CHAIN), url
                        sql = p["targets"][0]["rawSql"]
                        assert all(f"AS to_{step}" in sql for step in CHAIN), (name, p["title"])
                        hidden = {o["matcher"]["options"] for o in p.get("fieldConfig", {}).get("overrides", [])
                                  if {"id": "custom.hidden", "value": True} in o["properties"]}
                        assert hidden == {f"to_{step}" for step in CHAIN}, (name, p["title"])
    assert linked >= 6


def test_coverage_dashboard_covers_tiers_and_drills_down() -> None:
    d = dashboards()["cso-coverage.json"]
    children = panel(d, "${region} 的下级：点击下钻")
    assert "parent_code = ${region:sqlstring}" in children["targets"][0]["rawSql"]
    prom = [t["expr"] for p in panels(d) for t in p["targets"] if "expr" in t]
    assert any("cso_coverage" in e for e in prom) and any("cso_target_status" in e for e in prom)
    sql = [t["rawSql"] for p in panels(d) for t in p["targets"] if "rawSql" in t]
    bars = [p for p in panels(d) if p["type"] == "barchart"]
    assert len(bars) == 2 and all(p["options"]["xField"] == "name" for p in bars)
    assert any("targets.target_instance" in s for s in sql)
    assert any("targets.coverage_now" in s for s in sql)


def test_pipeline_dashboard_metrics() -> None:
    exprs = " ".join(t["expr"] for p in panels(dashboards()["cso-pipeline.json"]) for t in p["targets"])
    for needle in ("cso_events_applied_total", "cso_consumer_lag", "cso_batch_seconds_bucket",
                   "histogram_quantile(0.95", "cso_deadletter_total", "cso_outbox_backlog",
                   "cso_notify_failed_total", "cso_notify_deliveries_total", "cso_notify_retries_total",
                   "cso_waiting_facts", "cso_waiting_oldest_seconds"):
        assert needle in exprs


def test_provisioning_matches_the_dashboards_and_compose() -> None:
    sources = yaml.safe_load((GRAFANA / "provisioning/datasources/datasources.yml").read_text())
    assert {s["uid"]: s["type"] for s in sources["datasources"]} == DATASOURCES
    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/dashboards.yml").read_text())
    (provider,) = providers["providers"]
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./infra/grafana/dashboards:{provider['options']['path']}:ro" in mounts
    env = compose["services"]["grafana"]["environment"]
    for variable in re.findall(r"\$\{(\w+)\}", json.dumps(sources)):
        assert variable in env, f"{variable} is not set for Grafana in compose.yaml"


# --- the SQL runs (integration) -----------------------------------------------------------------


@pytest.fixture
async def targets_db(database_url: str) -> Any:
    from cso.settings import Settings
    from services.targets.app import run_migrations

    await asyncio.to_thread(run_migrations, Settings(database_url=database_url))
    conn = await asyncpg.connect(database_url)
    await conn.execute(SEED)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.mark.integration
async def test_every_dashboard_sql_runs(targets_db: asyncpg.Connection) -> None:
    for name, dashboard in dashboards().items():
        queries = [t["rawSql"] for p in panels(dashboard) for t in p["targets"] if "rawSql" in t]
        queries += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
        for region in ("51", "5111", "511102", "511102001"):
            for sql in queries:
                try:
                    await targets_db.fetch(substitute(sql, region=region, scope=region[:2]))
                    await targets_db.fetch(substitute(sql, region=region, scope=""))
                except asyncpg.PostgresError as e:
                    pytest.fail(f"{name}: {e}\n{sql}")


@pytest.mark.integration
async def test_coverage_sql_matches_targets_figures(targets_db: asyncpg.Connection) -> None:
    from services.targets.domain.metrics import figure

    d = dashboards()["cso-coverage.json"]

    async def run(title: str, region: str) -> list[asyncpg.Record]:
        sql = panel(d, title)["targets"][0]["rawSql"]
        return list(await targets_db.fetch(substitute(sql, region=region)))

    (row,) = await run("${region} 覆盖情况", "5111")
    counters = {r["counter"]: r["value"] for r in await targets_db.fetch(
        "SELECT counter, value FROM targets.coverage_now WHERE region = '5111'")}
    for name in ("orgs", "avg_orgs_per_urban_community", "avg_orgs_per_rural_community",
                 "streets_with_hub_share", "towns_with_hub_share", "party_covered_share",
                 "training_person_times", "streets_with_base_share"):
        expected = figure(name, counters)
        if expected is None:
            assert row[name] is None, name
        else:
            assert row[name] == pytest.approx(expected), name
    assert row["avg_orgs_per_urban_community"] == 12 and row["towns_with_hub_share"] == 0

    children = "${region} 的下级：点击下钻"
    assert [r["code"] for r in await run(children, "5111")] == ["511102", "511111"]
    townships = await run(children, "511102")
    assert [(r["code"], r["tier"], r["orgs"]) for r in townships] == [
        ("511102001", "township", 24), ("511102100", "township", None)]
    (community,) = await run(children, "511102001")
    assert (community["code"], community["tier"]) == ("511102001001", "community")
    assert [community[f"to_{step}"] for step in CHAIN] == ["51", "5111", "511102", "511102001", "511102001001"]
    assert [r["to_county"] for r in await run(children, "5111")] == ["511102", "511111"]
    assert {r["to_township"] for r in await run(children, "5111")} == {"All"}
    assert [r["code"] for r in await run("路径", "511102001001")] == [
        "51", "5111", "511102", "511102001", "511102001001"]
    (status,) = await run("${region} 及下级的目标状态", "51")
    assert dict(status) == {"met": 1, "on_track": 0, "at_risk": 1, "missed": 1}


@pytest.mark.integration
async def test_the_region_variable_is_the_deepest_step(targets_db: asyncpg.Connection) -> None:
    """Each step lists the children of the one above; `region` resolves to the deepest chosen."""
    variables = {v["name"]: v["query"] for v in dashboards()["cso-coverage.json"]["templating"]["list"]}

    async def options(name: str, **chosen: str) -> list[str]:
        values = {step: "" for step in CHAIN} | chosen
        return [r["__value"] for r in await targets_db.fetch(substitute(variables[name], **values))]

    assert await options("province") == ["51"]
    assert await options("city", province="51") == ["5111"]
    assert await options("county", province="51", city="5111") == ["511102", "511111"]
    assert await options("township", county="511102") == ["511102001", "511102100"]
    assert await options("community", township="511102001") == ["511102001001"]
    assert await options("county", province="51") == []  # city All: nothing to list below it
    assert await options("region", province="51") == ["51"]
    assert await options("region", province="51", city="5111", county="511102") == ["511102"]
    assert await options("region", province="51", city="5111", county="511102", township="511102001",
                         community="511102001001") == ["511102001001"]
    (text,) = await targets_db.fetch(substitute(variables["region"], province="51", city="5111", county="",
                                                township="", community=""))
    assert text["__text"] == "乐山市 (5111)"


@pytest.mark.integration
async def test_at_risk_sql(targets_db: asyncpg.Connection) -> None:
    d = dashboards()["cso-targets-at-risk.json"]
    sql = panel(d, "有风险或未完成的目标")["targets"][0]["rawSql"]
    rows = await targets_db.fetch(substitute(sql, scope=""))
    assert [(r["status"], r["target"], r["name"]) for r in rows] == [
        ("missed", "hubs", "乐山市"), ("at_risk", "urban-12", "乐山市")]
    assert rows[1]["progress"] == pytest.approx(12 / 15) and rows[1]["days_left"] == 30
    assert rows[1]["since"] is not None
    assert await targets_db.fetch(substitute(sql, scope="44")) == []
    (counts,) = await targets_db.fetch(substitute(
        panel(d, "有风险 / 未完成")["targets"][0]["rawSql"], scope="5111"))
    assert dict(counts) == {"at_risk": 1, "missed": 1}
    series = await targets_db.fetch(substitute(
        panel(d, "每天转为有风险 / 未完成的目标数")["targets"][0]["rawSql"], scope=""))
    assert sorted(r["metric"] for r in series) == ["at_risk", "missed"]


# --- the PromQL parses ----------------------------------------------------------------------------

def test_every_promql_query_parses(tmp_path: Path) -> None:
    """Each Prometheus query, Grafana's variables filled in, as a recording rule for promtool."""
    import shutil
    import subprocess

    promtool = shutil.which("promtool")
    if promtool is None:
        missing("promtool", "promtool is not installed (apt-get install -y --no-install-recommends prometheus)")
    values = {"__rate_interval": "5m", "__range": "1h", "service": ".*", "region": "5111",
              "figure": "orgs"}
    rules = []
    for name, dashboard in dashboards().items():
        for p in panels(dashboard):
            for target in p["targets"]:
                if "expr" not in target:
                    continue
                expr = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values[m[1] or m[2]], target["expr"])
                rules.append({"record": f"grafana:{len(rules)}", "expr": expr,
                              "labels": {"dashboard": name, "panel": p["title"]}})
    assert rules
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.integration
async def test_children_against_their_targets(targets_db: asyncpg.Connection) -> None:
    """The bar charts' thresholds: each child's target with the next deadline, else the last
    passed; a child without targets or counters still has its row."""
    await targets_db.execute("""
        INSERT INTO targets.target_instance
          (id, target_id, region, figure, threshold, deadline, instance, status, value, evaluated_at) VALUES
          ('i4', 'urban-10', '511102', 'avg_orgs_per_urban_community', 10, current_date - 100, '{}', 'met', 12,
           now()),
          ('i5', 'urban-15', '511102', 'avg_orgs_per_urban_community', 15, current_date + 400, '{}', 'on_track', 12,
           now()),
          ('i6', 'streets-hub', '511102', 'streets_with_hub_share', 1, current_date - 10, '{}', 'missed', 0,
           now()),
          ('i7', 'streets-hub-old', '511102', 'streets_with_hub_share', 0.5, current_date - 400, '{}', 'missed', 0,
           now())""")
    d = dashboards()["cso-coverage.json"]

    async def rows(title: str) -> list[dict[str, Any]]:
        sql = panel(d, title)["targets"][0]["rawSql"]
        return [dict(r) for r in await targets_db.fetch(substitute(sql, region="5111"))]

    averages = await rows("下级的城市 / 农村社区平均社会组织数与目标")
    assert averages == [
        {"name": "市中区", "avg_orgs_per_urban_community": 12, "avg_orgs_per_urban_community_target": 12,
         "avg_orgs_per_rural_community": None, "avg_orgs_per_rural_community_target": None},
        {"name": "沙湾区", "avg_orgs_per_urban_community": None, "avg_orgs_per_urban_community_target": None,
         "avg_orgs_per_rural_community": None, "avg_orgs_per_rural_community_target": None}]
    (shizhong, _) = await rows("下级的枢纽型组织与培育基地覆盖率与目标")
    assert shizhong["streets_with_hub_share_target"] == 1 and shizhong["towns_with_hub_share_target"] is None
    assert list(shizhong) == ["name", "streets_with_hub_share", "streets_with_hub_share_target",
                            "towns_with_hub_share", "towns_with_hub_share_target", "streets_with_base_share",
                            "streets_with_base_share_target", "towns_with_base_share",
                            "towns_with_base_share_target"]


def test_grafana_speaks_chinese_and_a_region_gets_its_own_reader() -> None:
    """compose sets Grafana's UI language; the region example (infra/README.md, per-region
    dashboards) gives an organization the national datasource's uid under the region's scoped role,
    the same dashboards, and no Prometheus (which has no row security)."""
    from cso import roles

    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    assert compose["services"]["grafana"]["environment"]["GF_USERS_DEFAULT_LANGUAGE"] == "zh-Hans"
    national = yaml.safe_load((GRAFANA / "provisioning/datasources/datasources.yml").read_text())
    (postgres,) = [s for s in national["datasources"] if s["uid"] == "postgres"]
    example = yaml.safe_load((GRAFANA / "region-example/datasources.yml").read_text())
    (scoped,) = example["datasources"]
    assert scoped["orgId"] != 1 and scoped["user"] == roles.role_name(roles.scoped("5111"))
    assert {k: v for k, v in scoped.items() if k not in ("name", "orgId", "user", "secureJsonData")} == \
        {k: v for k, v in postgres.items() if k not in ("name", "user", "secureJsonData")}
    (provider,) = yaml.safe_load((GRAFANA / "region-example/dashboards.yml").read_text())["providers"]
    (main,) = yaml.safe_load((GRAFANA / "provisioning/dashboards/dashboards.yml").read_text())["providers"]
    assert provider["orgId"] == scoped["orgId"] and provider["options"] == main["options"]
