"""py-spy on the service processes during a run, and a summary of where their time goes."""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any

PROJECT = ("/cso/", "/services/", "/contracts/")


def py_spy() -> str | None:
    candidate = Path(sys.executable).parent / "py-spy"
    return str(candidate) if candidate.exists() else shutil.which("py-spy")


async def record(pid: int, seconds: float, out: Path, rate: int = 100) -> Path | None:
    """py-spy record in raw (collapsed stacks) format; None if py-spy is missing or fails."""
    binary = py_spy()
    if binary is None:
        return None
    proc = await asyncio.create_subprocess_exec(
        binary, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", str(rate),
        "--nonblocking", "--format", "raw", "--output", str(out),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    await proc.wait()
    return out if proc.returncode == 0 else None


_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]+)(?::\d+)?\)$")


def _frame(raw: str) -> str:
    m = _FRAME.match(raw.strip())
    if not m:
        return raw.strip()
    path = m.group("file")
    for marker in ("site-packages/", "/work/main/", "python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{m.group('func')} ({path})"


def summarize(path: Path, top: int = 15) -> dict[str, Any]:
    """Inclusive and self sample shares per function (file, not line), from collapsed stacks."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_frame(f) for f in stack.split(";") if f.strip()]
        if not frames:
            continue
        total += n
        for f in set(frames):
            inclusive[f] += n
        own[frames[-1]] += n

    def share(counter: Counter[str], only_project: bool) -> list[tuple[str, float]]:
        items = [(f, c) for f, c in counter.most_common()
                 if not only_project or any(p.strip("/") + "/" in f for p in PROJECT)]
        return [(f, round(100.0 * c / total, 1)) for f, c in items[:top]] if total else []

    return {"samples": total, "inclusive_project": share(inclusive, True), "self": share(own, False)}
