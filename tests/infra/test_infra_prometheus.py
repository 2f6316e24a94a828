"""infra/prometheus: promtool checks the config and rules and runs the rules' unit tests
(rules.test.yml); without promtool (Debian: apt-get install -y --no-install-recommends prometheus)
those are skipped (a failure where CSO_REQUIRE_TOOLS names promtool, as in CI) and only the structural
checks here run."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.support import missing

REPO = Path(__file__).resolve().parents[2]
PROM = REPO / "infra" / "prometheus"
SERVICES = ("registry", "targets", "training", "notify")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        missing("promtool", "promtool is not installed (apt-get install -y --no-install-recommends prometheus)")
    return subprocess.run([binary, *args], cwd=PROM, capture_output=True, text=True, timeout=120)


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((PROM / "rules.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", "rules.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules() -> None:
    result = promtool("test", "rules", "rules.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_config() -> None:
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_alerts_the_operators_need() -> None:
    by_name = {r["alert"]: r for r in rules() if "alert" in r}
    wanted = {
        "CsoConsumerLagGrowing": "cso_consumer_lag",
        "CsoDeadLetters": "cso_deadletter_total",
        "CsoOutboxBacklog": "cso_outbox_backlog",
        "CsoTargetDown": "up == 0",
        "CsoNotificationsFailing": "cso_notify_failed_total",
        "CsoServiceAbsent": 'absent(up{job="nats"})',
        "CsoNatsDown": "gnatsd_healthz_status",
        "CsoJetStreamPendingGrowing": "jetstream_consumer_num_pending",
    }
    for alert, needle in wanted.items():
        assert needle in by_name[alert]["expr"], alert
    assert "deriv(" in by_name["CsoConsumerLagGrowing"]["expr"]
    # cso_consumer_lag is per durable: a partitioned service has one per partition (rules.yml's head).
    for alert in ("CsoConsumerLagGrowing", "CsoConsumerLagHigh"):
        assert "by (service, stream, durable)" in by_name[alert]["expr"], alert
    assert "increase(" in by_name["CsoNotificationsFailing"]["expr"]
    for name, rule in by_name.items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name


def test_every_alert_has_a_unit_test() -> None:
    tests = yaml.safe_load((PROM / "rules.test.yml").read_text())
    assert tests["rule_files"] == ["rules.yml"]
    tested = {case["alertname"] for test in tests["tests"] for case in test["alert_rule_test"]}
    firing = {case["alertname"] for test in tests["tests"] for case in test["alert_rule_test"]
              if case.get("exp_alerts")}
    alerts = {r["alert"] for r in rules() if "alert" in r}
    assert alerts == tested
    assert alerts == firing, "every alert is shown to fire at least once"


def test_scrape_config_covers_every_service() -> None:
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    assert config["rule_files"] == ["rules.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for service in SERVICES:
        job = jobs[service]
        assert job["metrics_path"] == "/metrics/"
        (sd,) = job["dns_sd_configs"]
        assert sd["names"] == [service] and sd["port"] == 8000
    # One exporter per NATS server, as compose runs them (the single node, the cluster's three).
    (sd,) = jobs["nats"]["dns_sd_configs"]
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())["services"]
    exporters = {name for name, service in compose.items()
                 if "prometheus-nats-exporter" in service.get("image", "")}
    assert sorted(sd["names"]) == sorted(exporters) == ["nats-exporter", *(f"nats-exporter-{i}" for i in (1, 2, 3))]
    assert sd["port"] == 7777 and all("-port=7777" in compose[e]["command"] for e in exporters)


def metric_names(text: str) -> set[str]:
    names = set(re.findall(r"\bcso_[a-z_]+[a-z]", text))
    return {re.sub(r"_(bucket|count|sum)$", "", n) for n in names}


def test_metrics_used_are_defined_by_the_services() -> None:
    used = metric_names((PROM / "rules.yml").read_text())
    for dashboard in (REPO / "infra" / "grafana" / "dashboards").glob("*.json"):
        used |= metric_names(dashboard.read_text())
    assert {"cso_consumer_lag", "cso_coverage", "cso_batch_seconds"} <= used
    sources = "\n".join(p.read_text() for root in ("cso", "services", "contracts")
                        for p in (REPO / root).rglob("*.py"))
    for name in sorted(used):
        base = name.removesuffix("_total")
        assert re.search(rf'"{base}(_total)?"', sources), f"{name} is used but no service defines it"


def test_compose_runs_the_prometheus_the_rules_are_tested_with() -> None:
    """Rule semantics change between major versions (3.x cuts range windows differently), so the
    Prometheus that compose runs has promtool's major version."""
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    match = re.search(r"PROMETHEUS_VERSION:-v(\d+)\.", compose["services"]["prometheus"]["image"])
    assert match, compose["services"]["prometheus"]["image"]
    version = promtool("--version").stdout
    tested = re.search(r"version (\d+)\.", version)
    assert tested and tested[1] == match[1], version
