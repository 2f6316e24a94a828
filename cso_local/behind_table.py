"""`cso behind`'s tables: per target, the townships and communities under its threshold, worst
first, from targets' `GET /behind/{region}` (see services/targets/api.py for the answer's shape)."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.cells import cell_len
from rich.markup import escape
from rich.table import Table
from rich.text import Text

COMPARISON = {">=": "≥", "<=": "≤"}
# What `short` counts, by the figure's unit: organizations per community, or covered townships.
SHORT_OF = {"community": "orgs short", "township": "short"}
TIER_LABEL = {"township": "townships", "community": "communities"}
# A unit's value: how far it is, as the figure reads (a share, an average per community).


def _value(value: float, kind: str) -> str:
    if kind == "share":
        return f"{value * 100:.0f}%"
    if kind == "average":
        return f"{value:.2f}"
    return f"{value:,.0f}"


def behind_tables(body: dict[str, Any]) -> list[Table | Text]:
    """Per target with units here: a heading (the target, its threshold, how many of the units of
    each tier are behind), then a table of those units, townships then communities, worst first.
    Targets whose units are all met are named on one line at the end."""
    out: list[Table | Text] = []
    met: list[str] = []
    for t in body["targets"]:
        tiers = [tier for tier in t["tiers"] if tier["units"]]
        if not any(tier["behind"] for tier in tiers):
            if tiers:
                met.append(t["target_id"])
            continue
        threshold = f"{COMPARISON.get(t['comparison'], t['comparison'])} {_value(t['threshold'], t['kind'])}"
        counts = "; ".join(
            f"{TIER_LABEL.get(tier['tier'], tier['tier'])} {tier['behind']} of {tier['units']} behind"
            + (f" (first {len(tier['list'])})" if len(tier["list"]) < tier["behind"] else "")
            for tier in tiers)
        heading = Text.assemble((t["target_id"], "bold"), f" {t.get('title') or ''}\n",
                                f"{t['figure']} {threshold} by {t['deadline']}: {counts}")
        rows = [u for tier in tiers for u in tier["list"]]
        table = Table(box=box.SIMPLE_HEAD, collapse_padding=True, pad_edge=False)
        table.add_column("code", no_wrap=True)
        table.add_column("name", no_wrap=True, min_width=max(cell_len(u["name"]) for u in rows))
        table.add_column("value", justify="right")
        table.add_column(SHORT_OF.get(t["unit"], "short"), justify="right")
        table.add_column("of", justify="right")
        for tier in tiers:
            for i, u in enumerate(tier["list"]):
                table.add_row(u["code"], escape(u["name"]), _value(u["value"], t["kind"]), str(u["short"]),
                              f"{u['numerator']}/{u['denominator']}",
                              end_section=i == len(tier["list"]) - 1)
        out += [heading, table]
    if met:
        out.append(Text(f"nothing behind: {', '.join(met)}"))
    if not body["targets"]:
        out.append(Text(f"no per-community or per-township target applies to {body['code']} {body['name']}"))
    return out
