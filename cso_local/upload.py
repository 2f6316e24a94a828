"""`cso import FILE`: the organizations sheet sent to registry's `POST /imports`, with a progress
bar while registry reads and decides it (its streamed NDJSON progress lines), then the verdicts of
the refused rows and the counts."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import httpx
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

PHASES = {"read": "读取表格", "decide": "逐行核验"}
STATUS_WORDS = {"ok": "可导入", "applied": "已导入", "already_applied": "此前已导入", "held": "未导入（表中有错误行）",
                "refused": "拒绝"}


def send(url: str, data: bytes, apply: bool, partial: bool, headers: Mapping[str, str],
         on_progress: Callable[[dict[str, Any]], None], timeout: float = 600.0) -> tuple[int, dict[str, Any]]:
    """POST the sheet; (HTTP status of the upload, registry's result). Progress lines go to
    `on_progress` as they arrive. Raises httpx.HTTPError when registry does not answer."""
    params = {"dry_run": str(not apply).lower(), "partial": str(partial).lower(), "progress": "true"}
    with httpx.Client(timeout=timeout) as client, client.stream(
            "POST", url.rstrip("/") + "/imports", params=params, content=data,
            headers={"Content-Type": "application/octet-stream", **headers}) as response:
        if response.status_code != 200:     # refused before it began: a token, a size, a role
            response.read()
            try:
                return response.status_code, response.json()
            except ValueError:
                return response.status_code, {"ok": False, "errors": [{"field": "$", "message": response.text}]}
        for line in response.iter_lines():
            if not line.strip():
                continue
            item = json.loads(line)
            if "progress" in item:
                on_progress(item["progress"])
            else:
                return int(item["status"]), item["result"]
    raise httpx.RemoteProtocolError("registry's answer ended before its result")


def with_progress(console: Console, url: str, data: bytes, apply: bool, partial: bool,
                  headers: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(f"上传 {len(data)} 字节", total=None)

        def show(p: dict[str, Any]) -> None:
            bar.update(task, description=PHASES.get(p["phase"], p["phase"]), completed=p["done"], total=p["total"])

        return send(url, data, apply, partial, headers, show)


def verdicts_table(result: dict[str, Any], limit: int = 50) -> Table:
    refused = result.get("refused") or []
    table = Table(title=f"拒绝的行 (refused rows): {len(refused)}"
                        + (f", the first {limit} shown" if len(refused) > limit else ""),
                  title_justify="left", box=box.SIMPLE_HEAD)
    for header in ("sheet", "row", "field", "reason"):
        table.add_column(header, overflow="fold", no_wrap=header in ("sheet", "row"))
    for v in refused[:limit]:
        where = f"{v.get('header') or ''} ({v.get('field')})" if v.get("header") else str(v.get("field"))
        table.add_row(escape(str(v["sheet"])), str(v["row"]), escape(where), escape(str(v.get("reason"))))
    return table


def counts_line(result: dict[str, Any]) -> str:
    counts = result.get("counts") or {}
    parts = [f"{STATUS_WORDS[k]} {k}: {n}" for k, n in counts.items() if n]
    mode = "dry run (nothing applied)" if result.get("dry_run") else (
        "applied" if result.get("applied") else "nothing applied")
    return f"{result.get('rows', 0)} rows, {mode}: " + ", ".join(parts)
