"""cso's Grafana dashboards as code (grafana-foundation-sdk).

    python infra/grafana/generate.py           # (re)write infra/grafana/dashboards/*.json
    python infra/grafana/generate.py --check   # exit 1 if a committed file differs from the code

Grafana provisions the JSON files (infra/grafana/provisioning/dashboards/dashboards.yml); edit
this file, not the JSON, then run it and commit both. tests/infra/test_infra_grafana.py checks that
the committed JSON is exactly this generator's output.

Datasources are referenced by fixed uids, provisioned by
infra/grafana/provisioning/datasources/datasources.yml: `prometheus` and `postgres` (a read-only
role on the `targets` schema). SQL panels read targets' tables; Prometheus panels read the
services' metrics (cso_coverage only has province, city and county series: townships are SQL).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import barchart, bargauge, stat, table, timeseries
from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus as prom
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm

from services.notify.domain import METRIC_LABELS, STATUS_LABELS

OUT = Path(__file__).resolve().parent / "dashboards"

PROMETHEUS = dm.DataSourceRef(type_val="prometheus", uid="prometheus")
POSTGRES = dm.DataSourceRef(type_val="grafana-postgresql-datasource", uid="postgres")

COVERAGE_UID = "cso-coverage"
AT_RISK_UID = "cso-targets-at-risk"
PIPELINE_UID = "cso-pipeline"
SERVICES = ("registry", "targets", "training", "notify")
STATUSES = ("met", "on_track", "at_risk", "missed")
STATUS_COLORS = {"met": "green", "on_track": "blue", "at_risk": "orange", "missed": "red"}

# Figures as targets computes them (services/targets/domain/metrics.py): numerator counters,
# denominator counters (none: a count), Grafana unit.
FIGURES: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] = {
    "orgs": (("orgs",), (), "short"),
    "avg_orgs_per_urban_community": (("orgs_urban",), ("communities_urban",), "short"),
    "avg_orgs_per_rural_community": (("orgs_rural",), ("communities_rural",), "short"),
    "streets_with_hub_share": (("streets_with_hub",), ("streets",), "percentunit"),
    "towns_with_hub_share": (("towns_with_hub",), ("towns",), "percentunit"),
    "streets_with_base_share": (("streets_with_base",), ("streets",), "percentunit"),
    "towns_with_base_share": (("towns_with_base",), ("towns",), "percentunit"),
    "party_covered_share": (("orgs_party_covered",), ("orgs",), "percentunit"),
    "training_person_times": (("training_person_times",), (), "short"),
}
SHARES = tuple(f for f, (_, _, unit) in FIGURES.items() if unit == "percentunit")
AVERAGES = ("avg_orgs_per_urban_community", "avg_orgs_per_rural_community")
HUBS_AND_BASES = ("streets_with_hub_share", "towns_with_hub_share", "streets_with_base_share",
                  "towns_with_base_share")


# --- queries --------------------------------------------------------------------------------

class SqlQuery(cogvariants.Dataquery):
    """A raw-SQL query of Grafana's PostgreSQL datasource (the SDK has no builder for it)."""

    def __init__(self, sql: str, fmt: str = "table", ref_id: str = "A") -> None:
        self.sql, self.fmt, self.ref_id = sql, fmt, ref_id

    def to_json(self) -> dict[str, object]:
        return {"datasource": POSTGRES.to_json(), "editorMode": "code", "format": self.fmt,
                "rawQuery": True, "rawSql": self.sql, "refId": self.ref_id}


class Sql(cogbuilder.Builder[cogvariants.Dataquery]):
    def __init__(self, sql: str, fmt: str = "table", ref_id: str = "A") -> None:
        self._query = SqlQuery(" ".join(sql.split()), fmt, ref_id)

    def build(self) -> cogvariants.Dataquery:
        return self._query


def promql(expr: str, legend: str = "", ref_id: str = "A", instant: bool = False) -> prom.Dataquery:
    q = prom.Dataquery().expr(" ".join(expr.split())).ref_id(ref_id).datasource(PROMETHEUS)
    if legend:
        q = q.legend_format(legend)
    return q.instant() if instant else q.range()


REGION = "${region:sqlstring}"
SCOPE = "${scope:sqlstring}"

# The coverage and at-risk dashboards speak Chinese (zh-CN), as officials read them; the labels are
# notify's (the same words in messages, the console and here). The pipeline dashboard stays
# English: its readers are operators, whose alerts (infra/prometheus/rules.yml), metric names and
# runbook (infra/README.md) are English.
FIGURE_ZH = {f: METRIC_LABELS[f][0] for f in FIGURES}
STATUS_ZH = {s: STATUS_LABELS[s][0] for s in STATUSES}
TIER_ZH = {"province": "省", "city": "市", "county": "县（市、区）", "township": "乡镇（街道）",
           "community": "社区（村）"}
KIND_ZH = {"street": "街道", "town": "乡镇", "urban": "城市社区", "rural": "农村社区"}
COLUMN_ZH = {"code": "区划代码", "name": "名称", "tier": "层级", "kind": "类型", "target": "目标",
             "figure": "指标", "threshold": "目标值", "value": "当前值", "deadline": "截止日期",
             "status": "状态", "evaluated_at": "评估时间", "progress": "完成进度", "days_left": "剩余天数",
             "since": "进入此状态", "changed_at": "变化时间", "on_day": "所属日期",
             "previous_status": "原状态"}
# The region chain, top down: variable name, tier, code length. Each step lists the children of
# the step above; "All" (全部) at a step stops the chain there.
CHAIN = (("province", "province", 2), ("city", "city", 4), ("county", "county", 6),
         ("township", "township", 9), ("community", "community", 12))
DRILL = tuple(f"to_{name}" for name, _, _ in CHAIN)


def drill_columns(code: str) -> str:
    """The chain's values that open the coverage dashboard at the region `code` (hidden columns
    the data links read): its ancestors' codes and its own, All below it."""
    columns = []
    for name, _, length in CHAIN:
        columns.append(f"left({code}, 2) AS to_{name}" if length == 2 else
                       f"CASE WHEN length({code}) >= {length} THEN left({code}, {length}) "
                       f"ELSE 'All' END AS to_{name}")
    return ", ".join(columns)


def counters_pivot(where: str) -> str:
    """One row per region with one column per counter the figures need."""
    counters = sorted({c for num, den, _ in FIGURES.values() for c in (*num, *den)})
    columns = ", ".join(f"COALESCE(SUM(value) FILTER (WHERE counter = '{c}'), 0) AS {c}"
                        for c in counters)
    return f"SELECT region, {columns} FROM targets.coverage_now WHERE {where} GROUP BY region"


def figure_columns(alias: str, names: Iterable[str] = FIGURES) -> str:
    def side(counters: Sequence[str]) -> str:
        return " + ".join(f"{alias}.{c}" for c in counters)

    out = []
    for name in names:
        num, den, _ = FIGURES[name]
        expr = (f"({side(num)})" if not den else
                f"({side(num)})::float8 / NULLIF({side(den)}, 0)")
        out.append(f"{expr} AS {name}")
    return ", ".join(out)


CHILDREN = f"""SELECT code, name FROM targets.division
                WHERE parent_code = {REGION} AND tier IN ('city', 'county', 'township', 'community')"""


def children_against_targets(figures: Sequence[str]) -> Sql:
    """One row per child of the region: each figure, and beside it (`<figure>_target`) the
    threshold of the child's target for it, the one whose deadline comes next (else the one that
    passed last): for a bar chart of where each child stands against what it must reach."""
    names = ", ".join(f"'{f}'" for f in figures)
    thresholds = ", ".join(f"max(threshold) FILTER (WHERE figure = '{f}') AS {f}_target" for f in figures)
    columns = ", ".join(f"{f}, g.{f}_target" for f in figures)
    return Sql(f"""
        WITH kids AS ({CHILDREN}),
        goal AS (
          SELECT DISTINCT ON (region, figure) region, figure, threshold
          FROM targets.target_instance
          WHERE region IN (SELECT code FROM kids) AND figure IN ({names})
          ORDER BY region, figure, deadline < current_date, abs(deadline - current_date))
        SELECT k.name, {columns}
        FROM kids k
        LEFT JOIN (SELECT c.region, {figure_columns('c', figures)}
                   FROM ({counters_pivot('region IN (SELECT code FROM kids)')}) c) f ON f.region = k.code
        LEFT JOIN (SELECT region, {thresholds} FROM goal GROUP BY region) g ON g.region = k.code
        ORDER BY k.code""")


def against_targets(title: str, figures: Sequence[str], unit: str) -> barchart.Panel:
    panel = (barchart.Panel().title(title).datasource(POSTGRES)
             .description("每个下级的指标值，及其旁边（…目标值）该下级截止日期最近的目标的目标值"
                          "（没有则取最近已过期的目标）。无柱：没有此类目标，或分母为零。")
             .with_target(children_against_targets(figures)).span(12).height(9).unit(unit)
             .x_field("name").x_tick_label_rotation(-45).show_value(cm.VisibilityMode.AUTO))
    for f in figures:
        panel = panel.override_by_name(f"{f}_target", [dm.DynamicConfigValue(
            id_val="displayName", value=f"{FIGURE_ZH[f]}（目标值）")])
    return zh_names(panel, figures)


def coverage_link() -> list[dict[str, object]]:
    """A data link to the coverage dashboard at the row's region (its DRILL columns)."""
    chain = "".join(f"&var-{name}=${{__data.fields.to_{name}}}" for name, _, _ in CHAIN)
    return [{"title": "下钻：${__data.fields.name} 的覆盖情况",
             "url": f"/d/{COVERAGE_UID}/coverage-vs-targets?${{__url_time_range}}{chain}"}]


def links_on(panel: Any, fields: Iterable[str]) -> Any:
    """Data links on these fields; the DRILL columns they read are hidden from the table."""
    for name in fields:
        panel = panel.override_by_name(name, [dm.DynamicConfigValue(id_val="links", value=coverage_link())])
    for name in DRILL:
        panel = panel.override_by_name(name, [dm.DynamicConfigValue(id_val="custom.hidden", value=True)])
    return panel


def zh_names(panel: Any, fields: Iterable[str]) -> Any:
    """Chinese display names of fields (SQL columns, or Prometheus series named by their legend)."""
    names = FIGURE_ZH | STATUS_ZH | COLUMN_ZH
    for name in fields:
        panel = panel.override_by_name(name, [dm.DynamicConfigValue(id_val="displayName", value=names[name])])
    return panel


def status_mappings() -> list[dm.ValueMapping]:
    return [dm.ValueMap(options={s: dm.ValueMappingResult(text=STATUS_ZH[s], color=c, index=i)
                                 for i, (s, c) in enumerate(STATUS_COLORS.items())})]


def word_mappings(words: dict[str, str]) -> list[dm.ValueMapping]:
    return [dm.ValueMap(options={k: dm.ValueMappingResult(text=v, index=i)
                                 for i, (k, v) in enumerate(words.items())})]


def units(panel: Any, fields: Iterable[str]) -> Any:
    for name in fields:
        panel = panel.override_by_name(name, [dm.DynamicConfigValue(id_val="unit",
                                                                    value=FIGURES[name][2])])
    return panel


ALL = dm.VariableOption(selected=True, text="All", value="$__all")


def chain_variables() -> list[db.QueryVariable]:
    """province → city → county → township → community, each listing the children of the step
    above, then `region` (hidden): the deepest step chosen, what the panels read."""
    out = []
    for i, (name, tier, _) in enumerate(CHAIN):
        parent = "" if i == 0 else f" AND parent_code = ${{{CHAIN[i - 1][0]}:sqlstring}}"
        v = (db.QueryVariable(name).label(TIER_ZH[tier]).datasource(POSTGRES)
             .query(f"SELECT name AS __text, code AS __value FROM targets.division "
                    f"WHERE tier = '{tier}'{parent} ORDER BY code")
             .refresh(dm.VariableRefresh.ON_DASHBOARD_LOAD).sort(dm.VariableSort.DISABLED))
        if i > 0:
            # Grafana does not format a custom "All" value: ${city:sqlstring} becomes this text as
            # it stands, so it must already be the SQL literal (the empty code: no step chosen).
            v = v.include_all(True).all_value("''").current(ALL)
        out.append(v)
    deepest = ", ".join(f"nullif(${{{name}:sqlstring}}, '')" for name, _, _ in reversed(CHAIN))
    out.append(db.QueryVariable("region").label("地区").datasource(POSTGRES).hide(dm.VariableHide.HIDE_VARIABLE)
               .query(f"SELECT name || ' (' || code || ')' AS __text, code AS __value "
                      f"FROM targets.division WHERE code = coalesce({deepest})")
               .refresh(dm.VariableRefresh.ON_DASHBOARD_LOAD).sort(dm.VariableSort.DISABLED))
    return out


def scope_variable() -> db.QueryVariable:
    # Grafana does not format a custom "All" value (see chain_variables): the empty prefix
    # matches every region the datasource's role may read.
    return (db.QueryVariable("scope").label("范围（本级及下级）").datasource(POSTGRES)
            .query("SELECT name || ' (' || code || ')' AS __text, code AS __value "
                   "FROM targets.division WHERE tier IN ('province', 'city', 'county', 'township') "
                   "ORDER BY code")
            .refresh(dm.VariableRefresh.ON_DASHBOARD_LOAD).sort(dm.VariableSort.DISABLED)
            .allow_custom_value(True).include_all(True).all_value("''"))


# --- (a) coverage vs targets ----------------------------------------------------------------

def coverage_dashboard() -> db.Dashboard:
    here = Sql(f"""
        SELECT {figure_columns('c')}
        FROM ({counters_pivot(f'region = {REGION}')}) c""")
    path = Sql(f"""
        SELECT code, name, tier, {drill_columns('code')} FROM targets.division
        WHERE code IN (left({REGION}, 2), left({REGION}, 4), left({REGION}, 6), left({REGION}, 9),
                       left({REGION}, 12))
        ORDER BY length(code)""")
    children = Sql(f"""
        WITH kids AS (
          SELECT code, name, tier, kind FROM targets.division
          WHERE parent_code = {REGION} AND tier IN ('city', 'county', 'township', 'community'))
        SELECT k.code, k.name, k.tier, k.kind, {figure_columns('c')}, {drill_columns('k.code')}
        FROM kids k LEFT JOIN ({counters_pivot('region IN (SELECT code FROM kids)')}) c
          ON c.region = k.code
        ORDER BY k.code""")
    by_status = Sql(f"""
        SELECT {', '.join(f"count(*) FILTER (WHERE status = '{s}') AS {s}" for s in STATUSES)}
        FROM targets.target_instance WHERE region LIKE {REGION} || '%'""")
    region_targets = Sql(f"""
        SELECT target_id AS target, figure, threshold, value, deadline, status, evaluated_at
        FROM targets.target_instance WHERE region = {REGION}
        ORDER BY deadline, target_id""")

    status_stat = (stat.Panel().title("${region} 及下级的目标状态")
                   .description("本地区及其所有下级地区的目标实例（targets.target_instance）按状态计数。")
                   .datasource(POSTGRES).with_target(by_status).span(8).height(6)
                   .color_mode(cm.BigValueColorMode.BACKGROUND).graph_mode(cm.BigValueGraphMode.NONE)
                   .reduce_options(cb.ReduceDataOptions().values(False).calcs(["lastNotNull"])
                                   .fields("/.*/")))
    for s, color in STATUS_COLORS.items():
        status_stat = status_stat.override_by_name(s, [dm.DynamicConfigValue(
            id_val="color", value={"mode": "fixed", "fixedColor": color})])
    status_stat = zh_names(status_stat, STATUSES)
    codes = [dm.DynamicConfigValue(id_val="mappings", value=word_mappings(TIER_ZH | KIND_ZH))]

    dashboard = (
        db.Dashboard("覆盖情况与目标").uid(COVERAGE_UID).tags(["cso", "coverage", "targets"])
        .description("一个地区及其下级（省、市、县、乡镇、社区）的社区社会组织覆盖情况与目标。"
                     "逐级选择地区，或点击下级（路径中的上级）下钻；乡镇和社区只有 PostgreSQL 数据。")
        .time("now-90d", "now").refresh("1m").timezone("browser").editable()
    )
    for variable in chain_variables():
        dashboard = dashboard.with_variable(variable)
    return (
        dashboard
        .with_variable(db.CustomVariable("figure").label("指标（下级随时间变化）")
                       .values(",".join(f"{FIGURE_ZH[f]} : {f}" for f in FIGURES))
                       .current(dm.VariableOption(selected=True, text=FIGURE_ZH["orgs"], value="orgs")))
        .with_row(db.Row("${region}：当前覆盖情况（PostgreSQL）"))
        .with_panel(zh_names(links_on(table.Panel().title("路径").datasource(POSTGRES).with_target(path)
                                      .description("本地区的各级上级：点击返回上级。")
                                      .override_by_name("tier", codes)
                                      .span(4).height(6), ["code", "name"]), ["code", "name", "tier"]))
        .with_panel(zh_names(units(stat.Panel().title("${region} 覆盖情况").datasource(POSTGRES)
                                   .description("取自 targets.coverage_now，算法与目标服务相同"
                                                "（分母为零的比例为空）。")
                                   .with_target(here).span(12).height(6)
                                   .graph_mode(cm.BigValueGraphMode.NONE)
                                   .reduce_options(cb.ReduceDataOptions().values(False)
                                                   .calcs(["lastNotNull"]).fields("/.*/")), FIGURES),
                             FIGURES))
        .with_panel(status_stat)
        .with_panel(zh_names(units(links_on(
            table.Panel().title("${region} 的下级：点击下钻")
            .description("省的市、市的县（市、区）、县的乡镇（街道）、乡镇的社区（村）。点击代码或名称下钻。")
            .datasource(POSTGRES).with_target(children).span(24).height(12).filterable(True)
            .override_by_name("tier", codes).override_by_name("kind", codes), ["code", "name"]),
            FIGURES), [*FIGURES, "code", "name", "tier", "kind"]))
        .with_panel(against_targets("下级的城市 / 农村社区平均社会组织数与目标", AVERAGES, "short"))
        .with_panel(against_targets("下级的枢纽型组织与培育基地覆盖率与目标", HUBS_AND_BASES,
                                    "percentunit"))
        .with_panel(zh_names(table.Panel().title("${region} 的目标").datasource(POSTGRES)
                             .with_target(region_targets).span(24).height(8)
                             .override_by_name("status", [
                                 dm.DynamicConfigValue(id_val="mappings", value=status_mappings()),
                                 dm.DynamicConfigValue(id_val="custom.cellOptions",
                                                       value={"type": "color-background"})])
                             .override_by_name("figure", [dm.DynamicConfigValue(
                                 id_val="mappings", value=word_mappings(FIGURE_ZH))]),
                             ["target", "figure", "threshold", "value", "deadline", "status", "evaluated_at"]))
        .with_row(db.Row("${region} 随时间变化（Prometheus：省、市、县三级）"))
        .with_panel(zh_names(timeseries.Panel().title("覆盖率").datasource(PROMETHEUS).unit("percentunit")
                             .min(0).max(1).span(8).height(8)
                             .with_target(promql(
                                 f'max by (figure) (cso_coverage{{region="$region", '
                                 f'figure=~"{"|".join(SHARES)}"}})', "{{figure}}")), SHARES))
        .with_panel(zh_names(timeseries.Panel().title("社区平均社会组织数").datasource(PROMETHEUS)
                             .span(8).height(8)
                             .with_target(promql(
                                 f'max by (figure) (cso_coverage{{region="$region", '
                                 f'figure=~"{"|".join(AVERAGES)}"}})', "{{figure}}")), AVERAGES))
        .with_panel(zh_names(timeseries.Panel().title("社会组织数与培训人次")
                             .datasource(PROMETHEUS).span(8).height(8)
                             .with_target(promql(
                                 'max by (figure) (cso_coverage{region="$region", '
                                 'figure=~"orgs|training_person_times"})', "{{figure}}")),
                             ["orgs", "training_person_times"]))
        .with_panel(timeseries.Panel().title("${region} 的下级：${figure}")
                    .description("省的市、市的县（乡镇和社区没有时间序列：见上方表格）。")
                    .datasource(PROMETHEUS).span(12).height(9)
                    .with_target(promql(
                        'max by (region) (cso_coverage{region=~"${region}[0-9]{2}", '
                        'figure="$figure"})', "{{region}}")))
        .with_panel(zh_names(timeseries.Panel().title("${region} 及下级的目标状态变化")
                             .datasource(PROMETHEUS).span(12).height(9)
                             .with_target(promql(
                                 'count by (status) (max by (target, region, status) '
                                 '(cso_target_status{region=~"${region}.*"}) == 1)', "{{status}}")),
                             STATUSES))
    )


# --- (b) targets at risk --------------------------------------------------------------------

def at_risk_dashboard() -> db.Dashboard:
    counts = Sql(f"""
        SELECT count(*) FILTER (WHERE status = 'at_risk') AS at_risk,
               count(*) FILTER (WHERE status = 'missed') AS missed
        FROM targets.target_instance WHERE region LIKE {SCOPE} || '%'""")
    at_risk = Sql(f"""
        SELECT ti.status, ti.region AS code, d.name, d.tier, ti.target_id AS target, ti.figure,
               ti.threshold, ti.value,
               CASE WHEN ti.threshold <> 0 THEN ti.value / ti.threshold END AS progress,
               ti.deadline, ti.deadline - current_date AS days_left,
               (SELECT max(h.changed_at) FROM targets.target_history h
                 WHERE h.instance_id = ti.id AND h.status = ti.status) AS since,
               {drill_columns('ti.region')}
        FROM targets.target_instance ti
        LEFT JOIN targets.division d ON d.code = ti.region
        WHERE ti.status IN ('at_risk', 'missed') AND ti.region LIKE {SCOPE} || '%'
        ORDER BY ti.status = 'missed' DESC, ti.deadline, ti.region, ti.target_id""")
    changes = Sql(f"""
        SELECT date_trunc('day', h.changed_at) AS time, h.status AS metric, count(*) AS value
        FROM targets.target_history h JOIN targets.target_instance ti ON ti.id = h.instance_id
        WHERE $__timeFilter(h.changed_at) AND h.status IN ('at_risk', 'missed')
          AND ti.region LIKE {SCOPE} || '%'
        GROUP BY 1, 2 ORDER BY 1""", fmt="time_series")
    recent = Sql(f"""
        SELECT h.changed_at, h.on_day, ti.region AS code, d.name, ti.target_id AS target,
               h.previous_status, h.status, h.value, {drill_columns('ti.region')}
        FROM targets.target_history h JOIN targets.target_instance ti ON ti.id = h.instance_id
        LEFT JOIN targets.division d ON d.code = ti.region
        WHERE $__timeFilter(h.changed_at) AND ti.region LIKE {SCOPE} || '%'
        ORDER BY h.changed_at DESC LIMIT 200""")
    status_overrides = [dm.DynamicConfigValue(id_val="mappings", value=status_mappings()),
                        dm.DynamicConfigValue(id_val="custom.cellOptions",
                                              value={"type": "color-background"})]

    return (
        db.Dashboard("有风险和未完成的目标").uid(AT_RISK_UID).tags(["cso", "targets"])
        .description("按直线趋势将无法按期完成（有风险），或截止日期已过仍未达标（未完成）的目标实例。")
        .time("now-90d", "now").refresh("5m").timezone("browser").editable()
        .with_variable(scope_variable())
        .with_panel(zh_names(stat.Panel().title("有风险 / 未完成").datasource(POSTGRES).with_target(counts)
                             .span(6).height(6).color_mode(cm.BigValueColorMode.BACKGROUND)
                             .graph_mode(cm.BigValueGraphMode.NONE)
                             .override_by_name("at_risk", [dm.DynamicConfigValue(
                                 id_val="color", value={"mode": "fixed", "fixedColor": "orange"})])
                             .override_by_name("missed", [dm.DynamicConfigValue(
                                 id_val="color", value={"mode": "fixed", "fixedColor": "red"})]),
                             ["at_risk", "missed"]))
        .with_panel(zh_names(timeseries.Panel().title("每天转为有风险 / 未完成的目标数")
                             .datasource(POSTGRES).with_target(changes).span(18).height(6)
                             .draw_style(cm.GraphDrawStyle.BARS).fill_opacity(60), ["at_risk", "missed"]))
        .with_panel(zh_names(links_on(
            table.Panel().title("有风险或未完成的目标").datasource(POSTGRES)
            .with_target(at_risk).span(24).height(14).filterable(True)
            .override_by_name("status", status_overrides)
            .override_by_name("tier", [dm.DynamicConfigValue(id_val="mappings", value=word_mappings(TIER_ZH))])
            .override_by_name("figure", [dm.DynamicConfigValue(id_val="mappings",
                                                               value=word_mappings(FIGURE_ZH))])
            .override_by_name("progress", [dm.DynamicConfigValue(id_val="unit", value="percentunit")])
            .override_by_name("days_left", [dm.DynamicConfigValue(id_val="unit", value="d")]),
            ["code", "name"]),
            ["status", "code", "name", "tier", "target", "figure", "threshold", "value", "progress",
             "deadline", "days_left", "since"]))
        .with_panel(zh_names(links_on(
            table.Panel().title("最近的状态变化").datasource(POSTGRES)
            .with_target(recent).span(24).height(10)
            .override_by_name("status", status_overrides)
            .override_by_name("previous_status", status_overrides), ["code", "name"]),
            ["changed_at", "on_day", "code", "name", "target", "previous_status", "status", "value"]))
    )


# --- (c) pipeline health --------------------------------------------------------------------

def pipeline_dashboard() -> db.Dashboard:
    svc = 'service=~"$service"'
    return (
        db.Dashboard("Pipeline health").uid(PIPELINE_UID).tags(["cso", "pipeline", "nats"])
        .description("Events applied, consumer lag, batch latency, dead letters and outbox "
                     "backlog per service (replicas summed or, for shared state, maxed).")
        .time("now-3h", "now").refresh("30s").timezone("browser").editable()
        .with_variable(db.CustomVariable("service").label("Service").values(",".join(SERVICES))
                       .multi(True).include_all(True).all_value(".*")
                       .current(dm.VariableOption(selected=True, text=["All"], value=["$__all"])))
        .with_row(db.Row("Throughput"))
        .with_panel(stat.Panel().title("Replicas up").datasource(PROMETHEUS).span(6).height(6)
                    .graph_mode(cm.BigValueGraphMode.NONE)
                    .with_target(promql('sum by (job) (up{job=~"$service"})', "{{job}}",
                                        instant=True)))
        .with_panel(timeseries.Panel().title("Events applied /s").unit("ops").datasource(PROMETHEUS)
                    .span(9).height(6)
                    .with_target(promql(f"sum by (service) (rate(cso_events_applied_total{{{svc}}}"
                                        "[$__rate_interval]))", "{{service}}")))
        .with_panel(timeseries.Panel().title("Events applied /s by type").unit("ops")
                    .datasource(PROMETHEUS).span(9).height(6)
                    .with_target(promql(f"sum by (service, type) (rate(cso_events_applied_total"
                                        f"{{{svc}}}[$__rate_interval]))", "{{service}} {{type}}")))
        .with_panel(timeseries.Panel().title("Duplicates skipped /s").unit("ops")
                    .datasource(PROMETHEUS).span(8).height(7)
                    .with_target(promql(f"sum by (service) (rate(cso_events_duplicate_total"
                                        f"{{{svc}}}[$__rate_interval]))", "{{service}}")))
        .with_panel(timeseries.Panel().title("Messages received /s (FastStream)").unit("ops")
                    .datasource(PROMETHEUS).span(8).height(7)
                    .with_target(promql('sum by (app_name) (rate(faststream_received_messages_total'
                                        '{app_name=~"$service"}[$__rate_interval]))',
                                        "{{app_name}}")))
        .with_panel(timeseries.Panel().title("Handler exceptions /s (FastStream)").unit("ops")
                    .datasource(PROMETHEUS).span(8).height(7)
                    .with_target(promql('sum by (app_name) (rate('
                                        'faststream_received_processed_messages_exceptions_total'
                                        '{app_name=~"$service"}[$__rate_interval]))',
                                        "{{app_name}}")))
        .with_row(db.Row("Lag and latency"))
        .with_panel(timeseries.Panel().title("Consumer lag (messages not yet delivered)")
                    .datasource(PROMETHEUS).span(12).height(8)
                    # Max over a durable's replicas, summed over a partitioned service's durables
                    # (infra/prometheus/rules.yml, CsoConsumerLagHigh); per durable: the panel below.
                    .with_target(promql(f"sum by (service, stream) (max by (service, stream, durable) "
                                        f"(cso_consumer_lag{{{svc}}}))", "{{service}} ← {{stream}}")))
        .with_panel(timeseries.Panel().title("JetStream pending per durable consumer (NATS)")
                    .datasource(PROMETHEUS).span(12).height(8)
                    .with_target(promql("max by (stream_name, consumer_name) "
                                        "(jetstream_consumer_num_pending)",
                                        "{{consumer_name}} ← {{stream_name}}", ref_id="A"))
                    .with_target(promql("max by (stream_name, consumer_name) "
                                        "(jetstream_consumer_num_ack_pending)",
                                        "{{consumer_name}} ← {{stream_name}} (ack pending)",
                                        ref_id="B")))
        .with_panel(timeseries.Panel().title("Batch latency (p50 / p95 / p99)").unit("s")
                    .datasource(PROMETHEUS).span(24).height(8)
                    .with_target(promql(
                        f"histogram_quantile(0.5, sum by (service, le) (rate(cso_batch_seconds_bucket"
                        f"{{{svc}}}[$__rate_interval])))", "{{service}} p50", ref_id="A"))
                    .with_target(promql(
                        f"histogram_quantile(0.95, sum by (service, le) (rate(cso_batch_seconds_bucket"
                        f"{{{svc}}}[$__rate_interval])))", "{{service}} p95", ref_id="B"))
                    .with_target(promql(
                        f"histogram_quantile(0.99, sum by (service, le) (rate(cso_batch_seconds_bucket"
                        f"{{{svc}}}[$__rate_interval])))", "{{service}} p99", ref_id="C")))
        .with_row(db.Row("Failures and outbox"))
        .with_panel(bargauge.Panel().title("Dead letters in the time range").datasource(PROMETHEUS)
                    .span(8).height(8)
                    .with_target(promql(f"sum by (service, stream) (increase(cso_deadletter_total"
                                        f"{{{svc}}}[$__range]))", "{{service}} ← {{stream}}",
                                        instant=True))
                    .thresholds(db.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE).steps([
                        dm.Threshold(value=None, color="green"),
                        dm.Threshold(value=1, color="red")])))
        .with_panel(timeseries.Panel().title("Dead letters /s").unit("ops").datasource(PROMETHEUS)
                    .span(8).height(8)
                    .with_target(promql(f"sum by (service, stream) (rate(cso_deadletter_total"
                                        f"{{{svc}}}[$__rate_interval]))", "{{service}} ← {{stream}}")))
        .with_panel(timeseries.Panel().title("Outbox backlog and published /s").datasource(PROMETHEUS)
                    .description("The backlog is counted up to 1001 (cso/outbox.py): 1001 reads "
                                 "\"more than 1000\".")
                    .span(8).height(8)
                    .with_target(promql(f"max by (service) (cso_outbox_backlog{{{svc}}})",
                                        "{{service}} backlog", ref_id="A"))
                    .with_target(promql(f"sum by (service) (rate(cso_outbox_published_total"
                                        f"{{{svc}}}[$__rate_interval]))", "{{service}} published/s",
                                        ref_id="B")))
        .with_panel(bargauge.Panel().title("Bus gaps found in the time range (streams that lost messages)")
                    .description("cso/buswatch.py: a stream recreated, gone backwards or reporting "
                                 "lost messages; the services refill it from their outboxes.")
                    .datasource(PROMETHEUS).span(24).height(5)
                    .with_target(promql(f"sum by (service, stream, side) (increase(cso_bus_gaps_total"
                                        f"{{{svc}}}[$__range]))", "{{service}} {{side}} {{stream}}",
                                        instant=True))
                    .thresholds(db.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE).steps([
                        dm.Threshold(value=None, color="green"),
                        dm.Threshold(value=1, color="red")])))
        .with_panel(timeseries.Panel().title("Intake facts waiting (registry's waiting room)")
                    .description("Facts that wait for their predecessor or their county's divisions "
                                 "(services/registry/waiting.py): how many, and how long the oldest has "
                                 "waited; refused after CSO_WAITING_MAX_DAYS (7 days).")
                    .datasource(PROMETHEUS).span(12).height(7)
                    .with_target(promql("max(cso_waiting_facts)", "waiting", ref_id="A")))
        .with_panel(stat.Panel().title("Oldest waiting intake fact").unit("s").datasource(PROMETHEUS)
                    .description("How long the oldest fact in registry's waiting room has waited.")
                    .span(12).height(7).graph_mode(cm.BigValueGraphMode.AREA)
                    .with_target(promql("max(cso_waiting_oldest_seconds)", "oldest", instant=True))
                    .thresholds(db.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE).steps([
                        dm.Threshold(value=None, color="green"),
                        dm.Threshold(value=86400, color="orange"),
                        dm.Threshold(value=5 * 86400, color="red")])))
        # notify's own metrics (services/notify/sender.py): one series set whatever $service says.
        .with_row(db.Row("Notification deliveries (notify)"))
        .with_panel(bargauge.Panel().title("Delivery failures in the time range")
                    .description("Deliveries given up (after their last attempt, or at once when the "
                                 "receiver refused for good): each also published NotificationFailed.")
                    .datasource(PROMETHEUS).span(6).height(8)
                    .with_target(promql("sum by (channel) (increase(cso_notify_failed_total[$__range]))",
                                        "{{channel}}", instant=True))
                    .thresholds(db.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE).steps([
                        dm.Threshold(value=None, color="green"),
                        dm.Threshold(value=1, color="red")])))
        .with_panel(timeseries.Panel().title("Deliveries finished /s by channel and outcome").unit("ops")
                    .datasource(PROMETHEUS).span(6).height(8)
                    .with_target(promql("sum by (channel, outcome) (rate(cso_notify_deliveries_total"
                                        "[$__rate_interval]))", "{{channel}} {{outcome}}")))
        .with_panel(timeseries.Panel().title("Retries scheduled /s").unit("ops")
                    .description("Failed attempts that will be tried again (timeouts, 5xx, refused "
                                 "connections), with exponential back-off.")
                    .datasource(PROMETHEUS).span(6).height(8)
                    .with_target(promql("sum by (channel) (rate(cso_notify_retries_total"
                                        "[$__rate_interval]))", "{{channel}}")))
        .with_panel(timeseries.Panel().title("Deliveries pending").datasource(PROMETHEUS)
                    .description("Due now or waiting for a retry (shared state: the replicas' max).")
                    .span(6).height(8)
                    .with_target(promql("max(cso_notify_queue_depth)", "pending")))
    )


# --- output ---------------------------------------------------------------------------------

DASHBOARDS = {
    "cso-coverage.json": coverage_dashboard,
    "cso-targets-at-risk.json": at_risk_dashboard,
    "cso-pipeline.json": pipeline_dashboard,
}


def as_json(builder: db.Dashboard) -> dict[str, Any]:
    """The dashboard as plain JSON data, panels numbered 1, 2, ... in layout order."""
    data: dict[str, Any] = json.loads(json.dumps(builder.build(), cls=JSONEncoder))
    for number, panel in enumerate(data.get("panels", []), start=1):
        panel["id"] = number
    return data


def render() -> dict[str, str]:
    """File name -> file text, exactly as committed."""
    return {name: json.dumps(as_json(make()), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
            for name, make in DASHBOARDS.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, write nothing")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    stale = []
    for name, text in render().items():
        path = args.out / name
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if stale:
        print(f"stale: {', '.join(stale)}: run python {Path(__file__).name}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
