"""The committed Grafana dashboards as the tests read them: their panels, their SQL as Grafana
sends it, and a `targets` schema's seed rows that the panels' SQL is checked against."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = REPO / "infra" / "grafana" / "dashboards"
Panel = dict[str, Any]


def dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def panels(dashboard: dict[str, Any]) -> list[Panel]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # panels of a collapsed row
    return [p for p in out if p["type"] != "row"]


def panel(dashboard: dict[str, Any], title: str) -> Panel:
    (found,) = [p for p in panels(dashboard) if p["title"] == title]
    return found


CHAIN = ("province", "city", "county", "township", "community")


def substitute(sql: str, **variables: str) -> str:
    """sql as Grafana sends it: ${name:sqlstring} quoted; the region chain's steps, unless given,
    those of `region` (All, the empty literal, below it)."""
    if "region" in variables:
        region = variables["region"]
        for step, length in zip(CHAIN, (2, 4, 6, 9, 12), strict=True):
            variables.setdefault(step, region[:length] if len(region) >= length else "")
    sql = re.sub(r"\$__timeFilter\(([\w.]+)\)",
                 r"\1 BETWEEN now() - interval '400 days' AND now() + interval '1 day'", sql)
    for name, value in variables.items():
        sql = sql.replace(f"${{{name}:sqlstring}}", "'" + value.replace("'", "''") + "'")
    assert "$" not in sql, sql
    return sql


SEED = """
INSERT INTO targets.division (code, name, tier, kind, parent_code, edition) VALUES
  ('51', '四川省', 'province', NULL, NULL, 't'),
  ('5111', '乐山市', 'city', NULL, '51', 't'),
  ('511102', '市中区', 'county', NULL, '5111', 't'),
  ('511111', '沙湾区', 'county', NULL, '5111', 't'),
  ('511102001', '某街道', 'township', 'street', '511102', 't'),
  ('511102100', '某镇', 'township', 'town', '511102', 't'),
  ('511102001001', '某社区', 'community', 'urban', '511102001', 't');
INSERT INTO targets.coverage_now (region, counter, value)
SELECT r, c, v FROM (VALUES
  ('5111', 'orgs', 30), ('5111', 'orgs_urban', 24), ('5111', 'communities_urban', 2),
  ('5111', 'orgs_rural', 6), ('5111', 'communities_rural', 3), ('5111', 'streets', 1),
  ('5111', 'streets_with_hub', 1), ('5111', 'towns', 2), ('5111', 'towns_with_hub', 0),
  ('5111', 'orgs_party_covered', 15), ('5111', 'training_person_times', 40),
  ('511102', 'orgs', 30), ('511102', 'orgs_urban', 24), ('511102', 'communities_urban', 2),
  ('511102001', 'orgs', 24), ('511102001', 'streets', 1), ('511102001', 'streets_with_hub', 1)
) AS x(r, c, v);
INSERT INTO targets.target_instance
  (id, target_id, region, figure, threshold, deadline, instance, status, value, evaluated_at) VALUES
  ('i1', 'urban-12', '5111', 'avg_orgs_per_urban_community', 15, current_date + 30, '{}', 'at_risk', 12, now()),
  ('i2', 'hubs', '5111', 'towns_with_hub_share', 1, current_date - 10, '{}', 'missed', 0, now()),
  ('i3', 'urban-12', '511102', 'avg_orgs_per_urban_community', 12, current_date + 30, '{}', 'met', 12, now());
INSERT INTO targets.target_history (instance_id, status, previous_status, value, changed_at, on_day) VALUES
  ('i1', 'on_track', NULL, 10, now() - interval '20 days', current_date - 20),
  ('i1', 'at_risk', 'on_track', 12, now() - interval '5 days', current_date - 5),
  ('i2', 'missed', 'at_risk', 0, now() - interval '10 days', current_date - 10),
  ('i3', 'met', NULL, 12, now() - interval '3 days', current_date - 3);
"""
