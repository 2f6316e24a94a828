"""infra/k8s: core kinds validated against Kubernetes' OpenAPI schemas (kubernetes-validate ships
them), the kustomizations resolved (by a small resolver here, and by `kubectl kustomize` where
kubectl is installed), and the KEDA ScaledObjects (a CRD, so no schema) checked field by field,
their consumers against the durable consumers the services really create."""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import missing

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "infra" / "k8s"
SERVICES = ("registry", "targets", "training", "notify")
PARTITIONED = ("registry", "targets")   # whose hot consumers split by province (cso/partitions.py)
# overlays/partitions-<N>: registry and targets in N partitions, a Deployment each.
PARTITION_OVERLAYS = sorted({K8S / "overlays" / "partitions-2", *(K8S / "overlays").glob("partitions-*")})
KUBERNETES_VERSION = "1.30.0"  # the oldest release the manifests are meant for

Doc = dict[str, Any]


def load(path: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def resources(root: Path) -> Iterator[tuple[Path, Doc]]:
    """Every object a kustomization directory pulls in, recursively (what `kustomize build`
    would emit, before its transformations)."""
    kustomization = yaml.safe_load((root / "kustomization.yaml").read_text())
    for entry in kustomization.get("resources", []):
        target = (root / entry).resolve()
        assert target.exists(), f"{root}: resource {entry} does not exist"
        if target.is_dir():
            assert (target / "kustomization.yaml").exists(), f"{target}: no kustomization.yaml"
            yield from resources(target)
        else:
            # kustomize's default load restrictor: files must be inside the kustomization root.
            assert root.resolve() in target.parents, f"{root}: {entry} is outside the root"
            for doc in load(target):
                yield target, doc


def objects(root: Path) -> dict[tuple[str, str], Doc]:
    """The objects `kustomize build root` emits, by (kind, name): each resource's, then the
    kustomization's deletions (`patches` of `$patch: delete`), level by level. Other patches are
    not resolved here: the test fails on one (kubectl kustomize, where installed, builds them)."""
    kustomization = yaml.safe_load((root / "kustomization.yaml").read_text())
    out: dict[tuple[str, str], Doc] = {}
    for entry in kustomization.get("resources", []):
        target = (root / entry).resolve()
        assert target.exists(), f"{root}: resource {entry} does not exist"
        if target.is_dir():
            found = list(objects(target).items())
        else:
            assert root.resolve() in target.parents, f"{root}: {entry} is outside the root"
            found = [((doc["kind"], doc["metadata"]["name"]), doc) for doc in load(target)]
        for key, doc in found:
            assert key not in out, f"{root}/{entry}: {key} twice"
            out[key] = doc
    for entry in kustomization.get("patches", []):
        patch = yaml.safe_load(entry["patch"]) if "patch" in entry else load(root / entry["path"])[0]
        assert patch.get("$patch") == "delete", f"{root}: only deletions are resolved here, not {entry}"
        selector = entry.get("target") or {"kind": patch["kind"], "name": patch["metadata"]["name"]}
        assert set(selector) <= {"kind", "name"}, f"{root}: a target by {set(selector)}"
        out = {(kind, name): doc for (kind, name), doc in out.items()
               if not (kind == selector["kind"] and re.fullmatch(selector["name"], name))}
    return out


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


@pytest.fixture(scope="module")
def default() -> dict[tuple[str, str], Doc]:
    return objects(K8S)


@pytest.fixture(scope="module")
def hpa_variant() -> dict[tuple[str, str], Doc]:
    return objects(K8S / "overlays" / "hpa")


@pytest.fixture(scope="module")
def migrate() -> dict[tuple[str, str], Doc]:
    return objects(K8S / "migrate")


# --- schemas ----------------------------------------------------------------------------------

@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_core_kinds_match_the_kubernetes_schema(path: Path) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate is not installed (pip install kubernetes-validate)")
    for doc in load(path):
        if doc["apiVersion"].startswith("keda.sh/"):
            continue  # a CRD: see test_scaled_object_structure
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_every_manifest_belongs_to_a_kustomization() -> None:
    listed = {path for root in (K8S, K8S / "overlays" / "hpa", K8S / "migrate", *PARTITION_OVERLAYS)
              for path, _ in resources(root)}
    assert set(manifest_files()) == listed


@pytest.mark.parametrize("variant", [".", "overlays/hpa", "migrate",
                                     *(str(p.relative_to(K8S)) for p in PARTITION_OVERLAYS)])
def test_kubectl_kustomize_builds_and_validates(variant: str) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        missing("kubectl", "kubectl is not installed: the kustomizations are resolved by this test module only")
    result = subprocess.run([kubectl, "kustomize", str(K8S / variant)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert all(d["metadata"].get("namespace") == "cso" for d in docs if d["kind"] != "Namespace")
    images = {c["image"] for d in docs if d["kind"] in ("Deployment", "Job")
              for c in d["spec"]["template"]["spec"].get("initContainers", [])
              + d["spec"]["template"]["spec"]["containers"]}
    # One image a service (the runtime and that service only); the migration Job runs the operator's.
    names = {"cso-operator"} if variant == "migrate" else {f"cso-{s}" for s in SERVICES}
    assert {i.rsplit("/", 1)[-1].split(":")[0] for i in images} == names, images
    assert all(i.endswith(":0.1.0") for i in images), images
    # What the resolver here makes of it: the same objects (kustomize's deletions included).
    assert {(d["kind"], d["metadata"]["name"]) for d in docs} == set(objects(K8S / variant))
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for doc in docs:
        if not doc["apiVersion"].startswith("keda.sh/"):
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


# --- the variants -----------------------------------------------------------------------------

def test_default_is_keda_and_the_overlay_is_hpa_never_both(
        default: dict[tuple[str, str], Doc], hpa_variant: dict[tuple[str, str], Doc]) -> None:
    kinds = {kind for kind, _ in default}
    assert "ScaledObject" in kinds and "HorizontalPodAutoscaler" not in kinds
    kinds = {kind for kind, _ in hpa_variant}
    assert "HorizontalPodAutoscaler" in kinds and "ScaledObject" not in kinds
    for service in SERVICES:
        assert ("ScaledObject", service) in default
        assert ("HorizontalPodAutoscaler", service) in hpa_variant


def test_external_servers_are_services(default: dict[tuple[str, str], Doc]) -> None:
    for name, ports in (("nats", {4222, 8222}), ("postgres", {5432})):
        svc = default[("Service", name)]
        assert svc["spec"]["type"] == "ExternalName"
        assert {p["port"] for p in svc["spec"]["ports"]} == ports


# --- per service ------------------------------------------------------------------------------

@pytest.mark.parametrize("service", SERVICES)
def test_deployment(default: dict[tuple[str, str], Doc], service: str) -> None:
    deployment = default[("Deployment", service)]
    assert "replicas" not in deployment["spec"], "the autoscaler owns the replica count"
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    assert container["image"] == f"cso-{service}"   # its own image: the runtime and this service only
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    resources_ = container["resources"]
    assert {"cpu", "memory"} <= set(resources_["requests"]) and "memory" in resources_["limits"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    sources = [(k, v["name"]) for ref in container["envFrom"] for k, v in ref.items()]
    assert sources == [("configMapRef", "cso-common"), ("configMapRef", f"cso-{service}"),
                       ("secretRef", f"cso-{service}")]
    for kind, name in sources:
        assert ({"configMapRef": "ConfigMap", "secretRef": "Secret"}[kind], name) in default
    assert default[("ConfigMap", f"cso-{service}")]["data"]["SERVICE"] == service
    assert "CSO_AUTH" not in default[("ConfigMap", f"cso-{service}")]["data"]   # tokens for every service:
    assert default[("ConfigMap", "cso-common")]["data"]["CSO_AUTH"] == "jwt"     # one setting, in common
    secret = default[("Secret", f"cso-{service}")]["stringData"]
    assert secret["CSO_DATABASE_URL"].startswith(f"postgresql://cso_{service}:")
    assert secret["CSO_NATS_URL"] == "nats://nats:4222"  # credentials apart, as compose gives them
    assert secret["CSO_NATS_USER"] == service and secret["CSO_NATS_PASSWORD"]
    assert all("CHANGE-ME" in value for key, value in secret.items()
               if key not in {"CSO_NATS_URL", "CSO_NATS_USER"}), "placeholders only"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8000}


@pytest.mark.parametrize("service", SERVICES)
def test_service_and_pdb_select_the_pods(default: dict[tuple[str, str], Doc], service: str) -> None:
    labels = default[("Deployment", service)]["spec"]["template"]["metadata"]["labels"]
    svc = default[("Service", service)]["spec"]
    assert svc["selector"].items() <= labels.items()
    assert svc["ports"][0]["targetPort"] == "http"
    pdb = default[("PodDisruptionBudget", service)]["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    assert pdb == {**pdb, "maxUnavailable": 1}


@pytest.mark.parametrize(("root", "expected"), [
    (".", {f"cso-{s}" for s in SERVICES}), ("overlays/hpa", {f"cso-{s}" for s in SERVICES}),
    ("migrate", {"cso-operator"}),
    *((str(p.relative_to(K8S)), {f"cso-{s}" for s in SERVICES}) for p in PARTITION_OVERLAYS)])
def test_each_workload_runs_its_own_image_and_the_kustomization_pins_it(root: str, expected: set[str]) -> None:
    """A service's pods run its own image (infra/Dockerfile with SERVICE=<service>: the runtime and
    that service only); the migration Job runs the operator's (SERVICE=operator). Each image name
    used is pinned by the kustomization's `images` (else a bare name would reach the cluster)."""
    docs = objects(K8S / root)
    used: dict[str, set[str]] = {}
    for (kind, name), doc in docs.items():
        if kind in ("Deployment", "Job"):
            pod = doc["spec"]["template"]["spec"]
            # The service a Deployment runs (a partition's, `registry-p0`, is registry's).
            service = doc["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/name", name)
            for c in pod.get("initContainers", []) + pod["containers"]:
                used.setdefault(c["image"], set()).add(service if kind == "Deployment" else name)
    assert set(used) == expected, used
    if root != "migrate":
        assert {name for image, names in used.items() for name in names if image != f"cso-{name}"} == set()
    pins: set[str] = set()
    todo = [K8S / root]
    while todo:                  # an overlay's pins come from the kustomizations it builds on
        path = todo.pop()
        kustomization = yaml.safe_load((path / "kustomization.yaml").read_text())
        pins |= {i["name"] for i in kustomization.get("images", [])}
        todo += [path / r for r in kustomization.get("resources", []) if (path / r / "kustomization.yaml").exists()]
    assert expected <= pins, (root, pins)


def test_migration_job_runs_each_service_with_its_own_role(migrate: dict[tuple[str, str], Doc]) -> None:
    job = migrate[("Job", "cso-migrate")]
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    roles, *inits = pod["initContainers"]
    # First the roles, as the admin, each password from the URL its service connects with.
    assert roles["name"] == "db-roles" and roles["command"] == ["cso", "db", "roles"]
    assert roles["envFrom"] == [{"secretRef": {"name": "cso-db-admin"}}]
    assert ("Secret", "cso-db-admin") in migrate
    assert {e["name"]: e["valueFrom"]["secretKeyRef"] for e in roles["env"]} == {
        f"CSO_{s.upper()}_DATABASE_URL": {"name": f"cso-{s}", "key": "CSO_DATABASE_URL"} for s in SERVICES}
    *inits, streams = inits
    assert [c["name"] for c in inits] == [f"migrate-{s}" for s in SERVICES]
    for service, container in zip(SERVICES, inits, strict=True):
        assert container["command"] == [
            "python", "-c", f"from services.{service}.app import run_migrations; run_migrations()"]
        assert {"secretRef": {"name": f"cso-{service}"}} in container["envFrom"]
        assert ("Secret", f"cso-{service}") in migrate
    # Last the streams, as NATS's admin user: the only one allowed to create or change them.
    assert streams["name"] == "streams" and streams["command"][:2] == ["cso", "streams"]
    assert streams["envFrom"] == [{"secretRef": {"name": "cso-nats-admin"}}]
    admin = migrate[("Secret", "cso-nats-admin")]["stringData"]
    assert admin["CSO_NATS_USER"] == "admin" and "CHANGE-ME" in admin["CSO_NATS_PASSWORD"]
    assert admin["CSO_NATS_URL"] == "nats://nats:4222"


def test_kubernetes_runs_the_intake_stream_with_three_replicas(migrate: dict[tuple[str, str], Doc]) -> None:
    """The NATS release is a three-node cluster: three copies of CSO_INTAKE (which no outbox backs),
    and of the others; the values are what cso.streams reads."""
    from cso.streams import Replicas

    pod = migrate[("Job", "cso-migrate")]["spec"]["template"]["spec"]
    streams = next(c for c in pod["initContainers"] if c["name"] == "streams")
    env = {e["name"]: e["value"] for e in streams["env"]}
    replicas = Replicas.from_env(env)
    assert replicas.of("CSO_INTAKE", clustered=True) == 3
    assert {replicas.of(s, clustered=True) for s in ("CSO_REGISTRY", "CSO_DIVISIONS", "CSO_DEADLETTER")} == {3}


def test_only_the_migration_job_holds_the_nats_admin(default: dict[tuple[str, str], Doc],
                                                     migrate: dict[tuple[str, str], Doc]) -> None:
    text = yaml.safe_dump([doc for (kind, _), doc in {**default, **migrate}.items() if kind != "Secret"])
    users = {doc["stringData"].get("CSO_NATS_USER") for (kind, name), doc in default.items()
             if kind == "Secret" and name != "cso-nats-admin"}
    assert "admin" not in users
    for (kind, name), doc in default.items():
        if kind == "Deployment":
            assert "cso-nats-admin" not in yaml.safe_dump(doc), name
    assert "cso-nats-admin" in text  # the Job, and nothing else, names it


# --- partitions -------------------------------------------------------------------------------

def partition_of(deployment: Doc) -> Any:
    """The cso Partition its pods take (CSO_PARTITIONS, CSO_PARTITION in the container's env), or None."""
    from cso.partitions import partition_from_settings

    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container.get("env", [])}
    return partition_from_settings(env.get("CSO_PARTITIONS", ""), env.get("CSO_PARTITION", ""))


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


@pytest.mark.parametrize("overlay", PARTITION_OVERLAYS, ids=lambda p: p.name)
def test_partition_overlay_runs_each_partition_once(overlay: Path) -> None:
    """Registry and targets run only as partitions: a Deployment each, CSO_PARTITIONS=N and each
    CSO_PARTITION of 0 … N−1 exactly once, one replica and no autoscaler (a second replica of a
    partition shares its durable: safe, but contended again); the unpartitioned Deployments and
    their autoscalers are gone (two layouts at once split the provinces two ways). The service's
    Service and PodDisruptionBudget take every partition's pods; each Deployment only its own."""
    count = int(overlay.name.removeprefix("partitions-"))
    docs = objects(overlay)
    deployments = {name: d for (kind, name), d in docs.items() if kind == "Deployment"}
    scaled = {d["spec"]["scaleTargetRef"]["name"] for (kind, _), d in docs.items()
              if kind in ("ScaledObject", "HorizontalPodAutoscaler")}
    for service in PARTITIONED:
        assert service not in deployments, f"the unpartitioned {service} still runs"
        family = {name: d for name, d in deployments.items()
                  if d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"] == service}
        indices = []
        for name, deployment in family.items():
            partition = partition_of(deployment)
            assert partition is not None and partition.count == count, name
            indices.append(partition.index)
            assert name == f"{service}-p{partition.index}"
            assert deployment["spec"]["replicas"] == 1, name
            assert name not in scaled, f"{name}: an autoscaler would add pullers to one partition"
            selector = deployment["spec"]["selector"]["matchLabels"]
            for other, pod in family.items():
                assert selects(selector, pod["spec"]["template"]["metadata"]["labels"]) == (other == name)
            labels = deployment["spec"]["template"]["metadata"]["labels"]
            assert selects(docs[("Service", service)]["spec"]["selector"], labels), name
            assert selects(docs[("PodDisruptionBudget", service)]["spec"]["selector"]["matchLabels"], labels)
        assert sorted(indices) == list(range(count)), (service, indices)
    for service in ("training", "notify"):      # not partitioned: as in the default variant
        assert partition_of(deployments[service]) is None
        assert service in scaled
    assert scaled <= set(deployments), "an autoscaler of a Deployment that is not there"


@pytest.mark.parametrize("overlay", PARTITION_OVERLAYS, ids=lambda p: p.name)
def test_partition_deployments_are_their_services_but_for_the_partition(
        overlay: Path, default: dict[tuple[str, str], Doc]) -> None:
    """Each partition's Deployment is base/<service>/deployment.yaml with only its name, an
    instance label, one replica and the partition's env added: nothing drifts. Its image is pinned
    as the base pins its service's (the base's `images` reach the base's own resources only)."""
    docs = objects(overlay)
    for (kind, name), deployment in docs.items():
        service = deployment["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"] \
            if kind == "Deployment" else None
        if service not in PARTITIONED:
            continue
        same = yaml.safe_load(yaml.safe_dump(deployment))
        same["metadata"]["name"] = service
        for labels in (same["metadata"]["labels"], same["spec"]["selector"]["matchLabels"],
                       same["spec"]["template"]["metadata"]["labels"]):
            assert labels.pop("app.kubernetes.io/instance") == name
        del same["spec"]["replicas"]
        env = same["spec"]["template"]["spec"]["containers"][0].pop("env")
        assert [e["name"] for e in env] == ["CSO_PARTITIONS", "CSO_PARTITION"], name
        assert same == default[("Deployment", service)], name
    pins = {i["name"]: i for i in yaml.safe_load((overlay / "kustomization.yaml").read_text())["images"]}
    base_pins = {i["name"]: i for i in yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())["images"]}
    assert {f"cso-{s}" for s in PARTITIONED} <= set(pins)
    assert all(pins[name] == base_pins[name] for name in pins), (pins, base_pins)


@pytest.mark.parametrize("overlay", PARTITION_OVERLAYS, ids=lambda p: p.name)
def test_partition_users_may_use_their_durables(overlay: Path) -> None:
    """The NATS user of each partition's pods (its service's Secret) may create, pull from, ack and
    delete that partition's durables in auth.conf, which the NATS release loads (cso-nats-auth)."""
    from tests.support.partitions import refused

    docs = objects(overlay)
    for (kind, name), deployment in docs.items():
        partition = partition_of(deployment) if kind == "Deployment" else None
        if partition is None:
            continue
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        service = container["name"]
        (secret,) = [ref["secretRef"]["name"] for ref in container["envFrom"] if "secretRef" in ref]
        user = docs[("Secret", secret)]["stringData"]["CSO_NATS_USER"]
        assert refused(user, service, partition) == [], name


# --- KEDA -------------------------------------------------------------------------------------

SCALED_OBJECT_SPEC = {"scaleTargetRef", "triggers", "minReplicaCount", "maxReplicaCount",
                      "pollingInterval", "cooldownPeriod", "idleReplicaCount", "initialCooldownPeriod",
                      "advanced", "fallback"}
JETSTREAM_METADATA = {"natsServerMonitoringEndpoint", "account", "stream", "consumer",
                      "lagThreshold", "activationLagThreshold", "useHttps"}


def durable_consumers(service: str) -> set[tuple[str, str]] | None:
    """(stream, durable) of every consumer the service starts, or None if it has no app yet: what
    its create_app asks its Runtime to consume (wherever the service wires its handlers)."""
    try:
        app = importlib.import_module(f"services.{service}.app")
    except ModuleNotFoundError:
        return None
    from unittest import mock

    from cso.service import Runtime
    from cso.settings import Settings

    consumed: set[tuple[str, str]] = set()
    consume = Runtime.consume

    def noting(runtime: Runtime, subscription: Any, *args: Any, **kwargs: Any) -> None:
        consumed.add((subscription.stream, subscription.durable))
        consume(runtime, subscription, *args, **kwargs)

    with mock.patch.object(Runtime, "consume", noting):
        app.create_app(Settings(auth="off"))
    return consumed


@pytest.mark.parametrize("service", SERVICES)
def test_scaled_object_structure(default: dict[tuple[str, str], Doc], service: str) -> None:
    from contracts.subjects import STREAMS

    so = default[("ScaledObject", service)]
    assert so["apiVersion"] == "keda.sh/v1alpha1"
    external = {name: doc["spec"]["externalName"] for (kind, name), doc in default.items()
                if kind == "Service" and doc["spec"].get("type") == "ExternalName"}
    spec = so["spec"]
    assert set(spec) <= SCALED_OBJECT_SPEC
    ref = spec["scaleTargetRef"]
    assert (ref.get("kind", "Deployment"), ref["name"]) == ("Deployment", service)
    assert ("Deployment", ref["name"]) in default
    assert isinstance(spec["minReplicaCount"], int) and isinstance(spec["maxReplicaCount"], int)
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]

    jetstream = []
    for trigger in spec["triggers"]:
        assert set(trigger) <= {"type", "metadata", "metricType", "name", "authenticationRef",
                                "useCachedMetrics"}
        metadata = trigger["metadata"]
        assert all(isinstance(v, str) for v in metadata.values()), "KEDA metadata values are strings"
        if trigger["type"] == "nats-jetstream":
            assert set(metadata) <= JETSTREAM_METADATA
            assert {"natsServerMonitoringEndpoint", "account", "stream", "consumer",
                    "lagThreshold"} <= set(metadata)
            host, _, port = metadata["natsServerMonitoringEndpoint"].partition(":")
            # The release's own Service, which the ExternalName alias points at (not the alias).
            assert host == external["nats"] and port == "8222"
            assert int(metadata["lagThreshold"]) > 0
            assert metadata["useHttps"] in {"true", "false"}
            jetstream.append((metadata["stream"], metadata["consumer"]))
        else:
            assert trigger["type"] == "cpu" and trigger["metricType"] == "Utilization"
            assert 0 < int(metadata["value"]) <= 100
    assert jetstream, "at least one consumer-lag trigger"
    assert {stream for stream, _ in jetstream} <= {s.name for s in STREAMS}

    real = durable_consumers(service)
    if real is None:
        pytest.skip(f"services.{service}.api does not exist yet: its durables are not checked")
    assert set(jetstream) == real


@pytest.mark.parametrize("service", SERVICES)
def test_hpa_fallback(hpa_variant: dict[tuple[str, str], Doc], service: str) -> None:
    hpa = hpa_variant[("HorizontalPodAutoscaler", service)]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": service}
    (metric,) = hpa["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert 1 <= hpa["minReplicas"] <= hpa["maxReplicas"]


# --- the NATS release they expect ---------------------------------------------------------------

def test_the_nats_release_runs_with_csos_users(tmp_path: Path, default: dict[tuple[str, str], Doc]) -> None:
    """infra/nats/helm-values.yaml, the NATS the manifests point at: its configuration includes
    auth.conf from the directory where it mounts the Secret that holds it, and nats-server accepts
    such an include (the chart renders `include <path>;` relative to /etc/nats-config)."""
    from contracts import Topology
    from cso import natsauth
    from cso_local.servers import nats_server_binary

    values = yaml.safe_load((REPO / "infra/nats/helm-values.yaml").read_text())
    assert values["config"]["jetstream"]["enabled"]
    (include,) = [v for k, v in values["config"]["merge"].items() if k.endswith("$include")]
    mounts = [p["value"] for p in values["container"]["patch"] if p["path"] == "/volumeMounts/-"]
    volumes = {p["value"]["name"]: p["value"] for p in values["podTemplate"]["patch"] if p["path"] == "/spec/volumes/-"}
    (mount,) = [m for m in mounts if (Path("/etc/nats-config") / include).parent == Path(m["mountPath"])]
    assert volumes[mount["name"]]["secret"]["secretName"] == "cso-nats-auth"
    assert Path(include).name == "auth.conf"
    # The manifests' alias names that release (`nats` in namespace `nats`).
    alias = default[("Service", "nats")]["spec"]["externalName"]
    assert alias == "nats.nats.svc.cluster.local"

    conf_dir = tmp_path / "nats-config"
    (conf_dir / Path(include).parent).mkdir(parents=True)
    env = {natsauth.password_env(u): f"p{u}" for u in (*natsauth.SERVICES, natsauth.DIVISIONS, natsauth.ADMIN)}
    (conf_dir / include).write_text(natsauth.render(Topology(), natsauth.Users(), passwords="plain", env=env))
    (conf_dir / "nats.conf").write_text(f'port: 4222\njetstream {{ store_dir: "{tmp_path}/js" }}\ninclude {include};\n')
    result = subprocess.run([str(nats_server_binary()), "-t", "-c", str(conf_dir / "nats.conf")],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
