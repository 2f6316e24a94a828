"""notify learns of targets only from targets' events: it imports nothing of services.targets (and so
reads no catalogue file of targets', which missed targets put over HTTP or by a plan import)."""

from __future__ import annotations

import ast
from pathlib import Path

NOTIFY = Path(__file__).resolve().parents[2] / "services" / "notify"


def imported(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
            names += [f"{node.module}.{a.name}" for a in node.names]
    return names


def test_notify_imports_nothing_of_targets() -> None:
    files = sorted(NOTIFY.rglob("*.py"))
    assert files
    offending = [f"{f.relative_to(NOTIFY)}: {name}" for f in files for name in imported(f)
                 if name == "services.targets" or name.startswith("services.targets.")]
    assert offending == []
