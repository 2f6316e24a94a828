"""The service image for real: built from infra/Dockerfile by a container engine (podman, or a Docker
engine), then compose's migrations one-shot and the four services run from the images against real
PostgreSQL and NATS. Each runs as its non-root user, passes its own HEALTHCHECK (which fails when
nothing listens), stops cleanly on SIGTERM, and an organization filed through the containerised
registry is counted by the containerised targets, with the divisions imported by `cso` from the
image itself.

Opt-in, because a build takes minutes: `CSO_IMAGE_TEST=1`. Where Docker Hub is out of reach,
`CSO_PYTHON_IMAGE` names the base image to build on, and `CSO_BUILD_CA` a CA bundle for pip
(podman only; infra/README.md, "Building the images without Docker Hub")."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml

from cso.tokens import claims, mint
from cso_local import servers
from tests.support import http_json

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SERVICES = ("registry", "targets", "training", "notify")
COMMUNITY = "510681001014"  # 西城社区居民委员会, 雒城街道, 广汉市 (in the demo divisions)
MAX_IMAGE_MB = 500
# The images run as deployed: HTTP tokens on (the default), checked with this key.
JWT_SECRET = "image-test-secret-of-at-least-32-bytes"


def engine() -> str | None:
    for name in ("podman", "docker"):
        if shutil.which(name) and subprocess.run([name, "info"], capture_output=True, timeout=60).returncode == 0:
            return name
    return None


ENGINE = engine() if os.environ.get("CSO_IMAGE_TEST") == "1" else None
if os.environ.get("CSO_IMAGE_TEST") != "1":
    pytestmark = [pytestmark, pytest.mark.skip(reason="builds images: set CSO_IMAGE_TEST=1")]
elif ENGINE is None:
    pytestmark = [pytestmark, pytest.mark.skip(reason="no container engine answers (podman info, docker info)")]


def run(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    assert ENGINE
    done = subprocess.run([ENGINE, *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"{ENGINE} {' '.join(args)} → {done.returncode}\n{done.stdout}\n{done.stderr}")
    return done


def build(service: str) -> str:
    tag = f"localhost/cso-{service}:test"
    args = ["build", "--network", "host", "-f", str(REPO / "infra" / "Dockerfile"),
            "--build-arg", f"SERVICE={service}", "-t", tag]
    if ENGINE == "podman":
        # HEALTHCHECK exists only in the Docker image format; buildah does not look for
        # <Dockerfile>.dockerignore by itself.
        args += ["--format", "docker", "--ignorefile", str(REPO / "infra" / "Dockerfile.dockerignore")]
        if ca := os.environ.get("CSO_BUILD_CA"):
            args += ["-v", f"{ca}:/run/ca.crt:ro", "--build-arg", "PIP_CERT=/run/ca.crt"]
    if base := os.environ.get("CSO_PYTHON_IMAGE"):
        args += ["--build-arg", f"PYTHON_IMAGE={base}"]
    run(*args, str(REPO), timeout=1800)
    return tag


def inspect(image: str) -> dict[str, Any]:
    return dict(json.loads(run("image", "inspect", image).stdout)[0])


def healthcheck(image: str) -> list[str]:
    """The image's HEALTHCHECK command (Docker keeps it in Config, podman beside it)."""
    info = inspect(image)
    test = (info["Config"].get("Healthcheck") or info.get("Healthcheck") or {}).get("Test", [])
    assert test[:1] == ["CMD"], f"{image}: HEALTHCHECK {test!r}"
    return list(test[1:])


@pytest.fixture(scope="module")
def images() -> dict[str, str]:
    # The operator's image (SERVICE=operator): the CLI and every service's migrations, for the
    # migration one-shot and `cso divisions import`; each service's image holds that service only.
    return {service: build(service) for service in (*SERVICES, "operator")}




def eventually(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while (result := check()) in (None, False):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f}s")
        time.sleep(0.3)
    return result


def role_url(admin_url: str, role: str) -> str:
    # `cso db roles` sets each role's password from its URL; the test servers trust local logins.
    rest = admin_url.split("://", 1)[1].split("@", 1)[1]
    return f"postgresql://{role}:{role}-pw@{rest}"


def migrate_script() -> str:
    """compose.yaml's migrate command, as the shell will see it (compose unescapes `$$`)."""
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    command = compose["services"]["migrate"]["command"]
    assert command[:2] == ["sh", "-ec"], command
    return str(command[2]).replace("$$", "$")


@pytest.fixture
def containers() -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for name in names:
        run("rm", "-f", name, check=False)


def test_images_build_small_and_non_root(images: dict[str, str]) -> None:
    for service, image in images.items():
        info = inspect(image)
        if service != "operator":   # a service's image holds no other service and no local stack
            held = run("run", "--rm", image, "python", "-c",
                       "import importlib.util as u; print(*(m for m in ('cso_local', 'services.registry', "
                       "'services.targets', 'services.training', 'services.notify') if u.find_spec(m)))").stdout
            assert held.split() == [f"services.{service}"], (image, held)
        config = info["Config"]
        assert config["User"] == "10001:10001", (service, config["User"])
        assert f"SERVICE={service}" in config["Env"]
        assert "/healthz" in " ".join(healthcheck(image))
        size_mb = info["Size"] / 1e6
        print(f"{image}: {size_mb:.0f} MB")
        assert size_mb < MAX_IMAGE_MB, (image, size_mb)
    # Nothing but the package reaches the image: not the tests, not a local virtualenv.
    listing = run("run", "--rm", images["registry"], "sh", "-c",
                  "ls /app; ls /opt/venv/lib/python3*/site-packages | grep -c '^tests$' || true").stdout.split()
    assert listing == ["0"], listing


async def test_migrate_job_then_services_serve_from_their_images(
        images: dict[str, str], containers: list[str], database_url: str, nats_url: str) -> None:
    namespace = f"img{uuid.uuid4().hex[:8]}"
    urls = {service: role_url(database_url, f"cso_{service}") for service in SERVICES}
    prefix = f"cso-test-{uuid.uuid4().hex[:6]}"

    # A service never migrates: started on an empty database it creates nothing.
    early = f"{prefix}-early"
    containers.append(early)
    run("run", "-d", "--name", early, "--network", "host", "-e", f"PORT={servers.free_port()}",
        "-e", f"CSO_DATABASE_URL={database_url}", "-e", f"CSO_NATS_URL={nats_url}",
        "-e", f"CSO_NAMESPACE={namespace}", "-e", f"CSO_JWT_SECRET={JWT_SECRET}", images["registry"])
    await asyncio.sleep(5)  # long enough for its start-up to have touched the database
    run("rm", "-f", early)
    db = await asyncpg.connect(database_url)
    try:
        assert await db.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname = 'registry'") == 0
    finally:
        await db.close()

    # compose's migrate one-shot, verbatim: roles, then each schema as its owner, then the streams.
    env = {"CSO_ADMIN_DATABASE_URL": database_url, "CSO_NATS_URL": nats_url, "CSO_NAMESPACE": namespace,
           "CSO_DASHBOARD_DATABASE_URL": role_url(database_url, "cso_dashboard"),
           **{f"CSO_{s.upper()}_DATABASE_URL": url for s, url in urls.items()}}
    done = run("run", "--rm", "--network", "host", *(a for k, v in env.items() for a in ("-e", f"{k}={v}")),
               images["operator"], "sh", "-ec", migrate_script(), timeout=300)
    assert all(f"migrating {s} as cso_{s}" in done.stdout for s in SERVICES), done.stdout
    assert f"stream {namespace.upper()}_CSO_INTAKE: created" in done.stdout, done.stdout
    db = await asyncpg.connect(database_url)
    try:
        owners = dict(await db.fetch("SELECT nspname, pg_get_userbyid(nspowner) FROM pg_namespace "
                                     "WHERE nspname = ANY($1::text[])", list(SERVICES)))
    finally:
        await db.close()
    assert owners == {s: f"cso_{s}" for s in SERVICES}

    ports = {service: servers.free_port() for service in SERVICES}
    for service in SERVICES:
        name = f"{prefix}-{service}"
        containers.append(name)
        run("run", "-d", "--name", name, "--network", "host", "-e", f"PORT={ports[service]}",
            "-e", f"CSO_DATABASE_URL={urls[service]}", "-e", f"CSO_NATS_URL={nats_url}",
            "-e", f"CSO_NAMESPACE={namespace}", "-e", f"CSO_JWT_SECRET={JWT_SECRET}", images[service])
    for service in SERVICES:
        url = f"http://127.0.0.1:{ports[service]}"
        eventually(lambda url=url: http_json(f"{url}/readyz")[0] == 200, 90, f"{service} ready")

    for service in SERVICES:
        name = f"{prefix}-{service}"
        assert run("exec", name, "id", "-u").stdout.strip() == "10001"
        health = healthcheck(images[service])
        assert run("exec", name, *health, check=False).returncode == 0, service
        # The same check fails where nothing listens: it can tell a dead service from a live one.
        assert run("exec", "-e", "PORT=1", name, *health, check=False).returncode != 0, service

    # Divisions from the operator image's CLI (the demo edition ships in the package), then a filing.
    done = run("run", "--rm", "--network", "host", "-e", f"CSO_NATS_URL={nats_url}",
               "-e", f"CSO_NAMESPACE={namespace}", images["operator"],
               "cso", "divisions", "import", "--only", "510681")
    assert "published 1 county" in done.stdout, done.stdout
    registry, targets = (f"http://127.0.0.1:{ports[s]}" for s in ("registry", "targets"))
    status, body = http_json(f"{registry}/commands/file", {
        "name": "西城社区书画协会", "community_code": COMMUNITY, "category": "culture_sports",
        "filed_on": "2024-03-01"}, headers={"authorization": "Bearer " + mint(JWT_SECRET, claims(
            ["registrar"], "510681", "image-test", 600, environ={}))})
    assert status == 200, body

    def counted() -> int | None:
        status, body = http_json(f"{targets}/coverage/510681")
        return 1 if status == 200 and body["counters"].get("orgs") == 1 else None

    eventually(counted, 60, "the filing counted by targets")

    # SIGTERM reaches uvicorn as PID 1: each service drains and exits 0, well within the grace period.
    for service in SERVICES:
        name = f"{prefix}-{service}"
        started = time.monotonic()
        run("stop", "-t", "30", name, timeout=60)
        assert time.monotonic() - started < 25, f"{service} ignored SIGTERM"
        state = json.loads(run("inspect", name).stdout)[0]["State"]
        assert state["ExitCode"] == 0, (service, state)
