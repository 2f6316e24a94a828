"""`cso behind`'s tables: per target, the townships and communities under its threshold, worst
first, from targets' `GET /behind/{region}` (see services/targets/api.py for the answer's shape)."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.cells import cell_len
from rich.markup import escape
from rich.table import Table

COMPARISON = {">=": "≥", "<=": "≤"}
# What `short` counts, by the figure's unit: organizations per community, or covered townships.
SHORT_OF = {"community": "orgs short", "township": "short"}
TIER_LABEL = {"township": "townships", "community": "communities"}


def _value(value: float, kind: str) -> str:
    if kind == "share":
        return f"{value * 100:.0f}%"
    if kind == "average":
        return f"{value:.2f}"
    return f"{value:,.0f}"


def behind_tables(body: dict[str, Any]) -> list[Table | str]:
    """One table per target and tier with behind units; a line for a tier with none behind."""
    out: list[Table | str] = []
    for t in body["targets"]:
        threshold = f"{COMPARISON.get(t['comparison'], t['comparison'])} {_value(t['threshold'], t['kind'])}"
        head = f"{t['target_id']} {escape(t.get('title') or '')} ({t['figure']} {threshold}, by {t['deadline']})"
        for tier in t["tiers"]:
            label = TIER_LABEL.get(tier["tier"], tier["tier"])
            if not tier["list"]:
                out.append(f"{head}: no {label} behind (of {tier['units']})")
                continue
            shown = len(tier["list"])
            more = f", first {shown}" if shown < tier["behind"] else ""
            table = Table(title=f"{head}: {tier['behind']} of {tier['units']} {label} behind{more}",
                          title_justify="left", box=box.SIMPLE_HEAD, collapse_padding=True, pad_edge=False)
            table.add_column("code", no_wrap=True)
            table.add_column("name", no_wrap=True, min_width=max(cell_len(u["name"]) for u in tier["list"]))
            table.add_column("value", justify="right")
            table.add_column(SHORT_OF.get(t["unit"], "short"), justify="right")
            table.add_column("of", justify="right")
            for u in tier["list"]:
                table.add_row(u["code"], escape(u["name"]), _value(u["value"], t["kind"]), str(u["short"]),
                              f"{u['numerator']}/{u['denominator']}")
            out.append(table)
    if not body["targets"]:
        out.append(f"no per-community or per-township target applies to {body['code']} {escape(body['name'])}")
    return out
