"""The generator of cso's NATS users and permissions (cso/natsauth.py, `cso nats-config`), and the
connection settings that carry credentials. The permissions themselves are enforced by a real
nats-server in tests/integration/test_nats_permissions.py."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from contracts import Topology
from cso import natsauth
from cso.natsauth import Publisher, Users, allowed, matches
from cso.settings import Settings, nats_options
from cso_local.cli import app
from cso_local.servers import nats_server_binary

REPO = Path(__file__).parents[2]
EXAMPLE_PUBLISHERS = ("sichuan-register=51", "leshan-register=5111", "guanghan-register=510681")


def perms(topology: Topology, users: Users | None = None) -> dict[str, natsauth.Permissions]:
    return {p.user: p for p in natsauth.permissions(topology, users or Users())}


def test_subject_matching_follows_nats_wildcards() -> None:
    assert matches("cso.intake.*.51.5111.>", "cso.intake.organization_filed.51.5111.511102")
    assert matches("cso.intake.*.51.5111.>", "cso.intake.organization_filed.51.5111._")
    assert not matches("cso.intake.*.51.5111.>", "cso.intake.organization_filed.51.5101.510104")
    assert not matches("cso.intake.*.51.5111.>", "cso.intake.organization_filed.51.5111")
    assert matches("cso.deadletter.registry", "cso.deadletter.registry")
    assert not matches("cso.deadletter.registry", "cso.deadletter.registry.x")
    assert not matches("cso.intake.*.51.5111.511102", "cso.intake.a.b.51.5111.511102")


@pytest.mark.parametrize(("region", "pattern"), [
    ("51", "51.>"), ("5111", "51.5111.>"), ("511102", "51.5111.511102")])
def test_region_pattern_per_tier(region: str, pattern: str) -> None:
    assert natsauth.region_pattern(region) == pattern


@pytest.mark.parametrize("region", ["511102004", "511102004001", "5", "51x1", ""])
def test_publisher_region_is_a_province_city_or_county(region: str) -> None:
    with pytest.raises(ValueError, match=r"region|division code"):
        Publisher("somebody", region)


@pytest.mark.parametrize("spec", ["registry=51", "admin=5111", "divisions=51", "Upper=51", "a.b=51", "noregion"])
def test_publisher_names_are_checked(spec: str) -> None:
    with pytest.raises(ValueError):
        Publisher.parse(spec)


def test_publisher_names_are_unique() -> None:
    with pytest.raises(ValueError, match="unique: leshan"):
        Users(publishers=(Publisher("leshan", "5111"), Publisher("leshan", "5101")))


def test_city_publisher_may_publish_intake_facts_of_its_region_only() -> None:
    t = Topology()
    p = perms(t, Users(publishers=(Publisher("leshan-register", "5111"),)))["leshan-register"]
    assert p.publish == ("cso.intake.leshan-register.*.51.5111.*", "cso.query.registry.receipts.leshan-register")
    assert allowed(p, "publish", t.intake_subject("leshan-register", "OrganizationFiled", "511102004001"))
    assert allowed(p, "publish", t.intake_subject("leshan-register", "HubEstablished", "511102004"))
    assert allowed(p, "publish", t.intake_subject("leshan-register", "HubEstablished", "5111"))
    assert not allowed(p, "publish", t.intake_subject("leshan-register", "OrganizationFiled",
                                                      "510104001001"))  # Chengdu
    # Only under its own name: not another publisher's, not the operators' version 1 subjects.
    assert not allowed(p, "publish", t.intake_subject("sichuan-register", "OrganizationFiled", "511102004001"))
    assert not allowed(p, "publish", t.operator_intake_subject("OrganizationFiled", "511102004001"))
    assert not allowed(p, "publish", t.intake_subject("leshan-register", "OrganizationFiled", "511102004001")
                       + ".extra")
    assert not allowed(p, "publish", t.event_subject("OrganizationFiled", "511102004001"))   # cso.registry
    assert not allowed(p, "publish", t.command_subject("registry", "file"))
    assert not any(s.startswith("$JS.") for s in p.publish)                # no stream or consumer API
    # Its JetStream acks come to its own inbox; receipts of its region only.
    assert allowed(p, "subscribe", "_INBOX_leshan-register.abc.def")
    assert not allowed(p, "subscribe", "_INBOX.abc")
    assert not allowed(p, "subscribe", "_INBOX_registry.abc")
    assert allowed(p, "subscribe", t.event_subject("OrganizationFiled", "511102004001"))
    assert not allowed(p, "subscribe", t.event_subject("OrganizationFiled", "510681001014"))
    assert not p.allow_responses


def test_a_publisher_asks_for_and_hears_of_its_own_receipts_only() -> None:
    t = Topology()
    p = perms(t, Users(publishers=(Publisher("leshan-register", "5111"), Publisher("guanghan", "510681"))))
    leshan, registry = p["leshan-register"], p["registry"]
    assert allowed(leshan, "publish", t.receipts_query_subject("leshan-register"))
    assert not allowed(leshan, "publish", t.receipts_query_subject("guanghan"))
    assert not allowed(leshan, "publish", t.query_subject("registry", "receipts"))
    assert allowed(leshan, "subscribe", t.receipts_subject("leshan-register", "lost"))
    assert not allowed(leshan, "subscribe", t.receipts_subject("guanghan", "lost"))
    assert not allowed(leshan, "subscribe", "cso.receipts.>")
    assert not allowed(leshan, "publish", t.receipts_subject("leshan-register", "lost"))
    # registry answers the query and tells each publisher; no other service does either.
    assert allowed(registry, "subscribe", t.receipts_query_subject("guanghan"))
    assert allowed(registry, "publish", t.receipts_subject("guanghan", "lost"))
    assert registry.allow_responses
    for service in ("targets", "training", "notify"):
        assert not allowed(p[service], "publish", t.receipts_subject("guanghan", "lost"))
        assert not allowed(p[service], "subscribe", t.receipts_query_subject("guanghan"))


def test_county_publisher_is_held_to_its_county() -> None:
    t = Topology()
    p = perms(t, Users(publishers=(Publisher("guanghan", "510681"),)))["guanghan"]
    assert p.publish[0] == "cso.intake.guanghan.*.51.5106.510681"
    assert allowed(p, "publish", t.intake_subject("guanghan", "OrganizationFiled", "510681001014"))
    assert not allowed(p, "publish", t.intake_subject("guanghan", "OrganizationFiled", "510682001001"))
    assert not allowed(p, "publish", t.intake_subject("guanghan", "OrganizationFiled", "5106"))  # its city's tier


def test_province_publisher_publishes_seven_token_subjects_only() -> None:
    """`*` below its tier, never `>`: a subject it may publish always reads as version 2."""
    t = Topology("ns")
    p = perms(t, Users(publishers=(Publisher("sichuan", "51"),)))["sichuan"]
    assert p.publish == ("ns.cso.intake.sichuan.*.51.*.*", "ns.cso.query.registry.receipts.sichuan")
    assert allowed(p, "publish", t.intake_subject("sichuan", "HubEstablished", "51"))
    assert allowed(p, "publish", t.intake_subject("sichuan", "OrganizationFiled", "510681001014"))
    assert not allowed(p, "publish", "ns.cso.intake.sichuan.x.51.5106")         # six tokens: version 1's shape
    assert not allowed(p, "publish", t.intake_subject("sichuan", "OrganizationFiled", "520102001001"))


def test_a_service_publishes_its_own_events_and_no_one_elses() -> None:
    t = Topology()
    p = perms(t)
    assert allowed(p["targets"], "publish", t.event_subject("CoverageChanged", "5111"))
    assert allowed(p["targets"], "publish", t.deadletter_subject("targets"))
    assert allowed(p["targets"], "publish", t.event_subject("BusGapDetected", "00"))
    assert not allowed(p["targets"], "publish", t.event_subject("OrganizationFiled", "511102004001"))
    assert not allowed(p["targets"], "publish", t.deadletter_subject("registry"))
    assert not allowed(p["targets"], "publish", t.intake_subject("targets", "OrganizationFiled", "511102004001"))
    assert not allowed(p["targets"], "publish", t.operator_intake_subject("OrganizationFiled", "511102004001"))
    assert not allowed(p["registry"], "publish", t.event_subject("CoverageChanged", "5111"))
    assert allowed(p["registry"], "publish", t.event_subject("OrganizationFiled", "511102004001"))
    for service in natsauth.SERVICES:
        pub = p[service].publish
        assert not [s for s in pub if re.search(r"\.(DELETE|PURGE)\.", s) and "CONSUMER.DELETE" not in s]
        # Its own durable consumers only: the consumer API names a stream and a durable of its own.
        durables = {d for _, d, _ in natsauth.SERVICE_CONSUMERS[service]}
        consumer_api = [s for s in pub if s.startswith(("$JS.API.CONSUMER.", "$JS.ACK."))]
        assert consumer_api and all(any(f".{d}" in s for d in durables) for s in consumer_api)
        assert not allowed(p[service], "subscribe", "_INBOX.x")
    assert allowed(p["registry"], "subscribe", t.command_subject("registry", "file"))
    assert not allowed(p["targets"], "subscribe", t.command_subject("registry", "file"))
    assert allowed(p["targets"], "subscribe", t.query_subject("targets", "plan.ledger"))
    assert p["registry"].allow_responses and not p["notify"].allow_responses
    assert p["admin"].unrestricted


def test_the_namespace_prefixes_every_subject_and_stream() -> None:
    t = Topology("tenant7")
    everything = perms(t, Users(publishers=(Publisher("leshan", "5111"),)))
    for p in everything.values():
        for s in (*p.publish, *p.subscribe):
            assert s.startswith(("tenant7.cso.", "_INBOX_")) or "TENANT7_CSO_" in s, (p.user, s)
    assert "$JS.API.CONSUMER.CREATE.TENANT7_CSO_REGISTRY.targets-registry.tenant7.cso.registry.>" \
        in everything["targets"].publish


def test_the_consumer_table_is_what_the_services_really_subscribe_to(monkeypatch: pytest.MonkeyPatch) -> None:
    """Build every service (no servers needed) and record the consumers and request subjects it asks
    for: the permissions must name exactly those."""
    from cso.service import Runtime
    from services.notify.app import create_app as notify
    from services.registry.app import create_app as registry
    from services.targets.app import create_app as targets
    from services.training.app import create_app as training

    consumed: dict[str, set[tuple[str, str, str]]] = {}
    requests: dict[str, set[str]] = {}
    runtimes: dict[str, Runtime] = {}
    consume, on_request = Runtime.consume, Runtime.on_request

    def record_consume(self: Runtime, sub: Any, handler: Any, verdicts: Any = None) -> None:
        consumed.setdefault(self.name, set()).add((sub.stream, sub.durable, sub.subject))
        runtimes[self.name] = self
        consume(self, sub, handler, verdicts)

    def record_request(self: Runtime, subject: str, handler: Any) -> None:
        requests.setdefault(self.name, set()).add(subject)
        on_request(self, subject, handler)

    monkeypatch.setattr(Runtime, "consume", record_consume)
    monkeypatch.setattr(Runtime, "on_request", record_request)
    t = Topology("drift")
    settings = Settings(database_url="postgresql://nobody@127.0.0.1:1/none", nats_url="nats://127.0.0.1:1",
                        namespace="drift")
    for create in (registry, targets, training, notify):
        create(settings)
    assert set(consumed) | set(requests) <= set(natsauth.SERVICES)
    for service in natsauth.SERVICES:
        expected = {(s, d, t.context_subjects(c)) for s, d, c in natsauth.SERVICE_CONSUMERS[service]}
        assert consumed.get(service, set()) == expected, service
        perm = natsauth.service_permissions(t, service)
        for subject in requests.get(service, set()):
            assert allowed(perm, "subscribe", subject), (service, subject)
        kinds = {subject.split(".")[2] for subject in requests.get(service, set())}
        assert kinds == set(natsauth.SERVICE_REQUESTS[service]), service
        # The streams it waits for (readiness, BusWatch) are the ones it may ask INFO about: those it
        # consumes from among them; and no other stream verb anywhere.
        needed = runtimes[service].needed_streams
        assert {t.stream(s) for s, _, _ in expected} <= set(needed), service
        for stream in needed:
            assert allowed(perm, "publish", f"$JS.API.STREAM.INFO.{stream}"), (service, stream)
        for spec in t.streams:
            for verb in ("CREATE", "UPDATE", "DELETE", "PURGE", "MSG.DELETE"):
                assert not allowed(perm, "publish", f"$JS.API.STREAM.{verb}.{spec.name}"), (service, verb)


def test_render_env_references_and_nats_server_accepts_it(tmp_path: Path) -> None:
    users = Users(publishers=(Publisher("leshan-register", "5111"),))
    text = natsauth.render(Topology(), users)
    assert "password: $CSO_NATS_REGISTRY_PASSWORD" in text
    assert "password: $CSO_NATS_LESHAN_REGISTER_PASSWORD" in text
    conf = tmp_path / "auth.conf"
    conf.write_text(text)
    names = [*natsauth.SERVICES, "divisions", "admin", "leshan-register"]
    env = {natsauth.password_env(n): f"secret-{n}" for n in names}
    ok = subprocess.run([str(nats_server_binary()), "-t", "-c", str(conf)], env=env,
                        capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    missing = subprocess.run([str(nats_server_binary()), "-t", "-c", str(conf)], env={},
                             capture_output=True, text=True, check=False)
    assert missing.returncode != 0 and "CSO_NATS_REGISTRY_PASSWORD" in missing.stderr + missing.stdout


@pytest.fixture
def fast_bcrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(natsauth, "BCRYPT_ROUNDS", 4)


@pytest.mark.usefixtures("fast_bcrypt")
def test_render_bcrypt_keeps_no_password_in_the_file(tmp_path: Path) -> None:
    import bcrypt

    names = [*natsauth.SERVICES, "divisions", "admin"]
    env = {natsauth.password_env(n): f"secret-{n}" for n in names}
    text = natsauth.render(Topology(), Users(), passwords="bcrypt", env=env)
    assert "secret-" not in text
    hashes = dict(re.findall(r'user: "([^"]+)"\n\s+password: "(\$2[^"]+)"', text))
    assert set(hashes) == set(names)
    assert bcrypt.checkpw(b"secret-targets", hashes["targets"].encode())
    conf = tmp_path / "auth.conf"
    conf.write_text(text)
    ok = subprocess.run([str(nats_server_binary()), "-t", "-c", str(conf)], capture_output=True, text=True,
                        check=False)
    assert ok.returncode == 0, ok.stderr
    with pytest.raises(ValueError, match="CSO_NATS_ADMIN_PASSWORD is not set"):
        natsauth.render(Topology(), Users(), passwords="bcrypt", env={k: v for k, v in env.items()
                                                                       if "ADMIN" not in k})


def test_the_checked_in_example_is_what_the_command_generates() -> None:
    args = [a for p in EXAMPLE_PUBLISHERS for a in ("--publisher", p)]
    result = CliRunner().invoke(app, ["nats-config", *args, "--namespace", ""])
    assert result.exit_code == 0, result.output
    assert result.stdout == (REPO / "infra/nats/auth.conf").read_text(encoding="utf-8")
    assert "cso nats-config --publisher sichuan-register=51" in result.stdout


def test_the_example_server_config_is_valid_with_the_passwords_in_the_environment() -> None:
    names = [*natsauth.SERVICES, "divisions", "admin", *(p.split("=")[0] for p in EXAMPLE_PUBLISHERS)]
    env = {natsauth.password_env(n): "x" for n in names}
    result = subprocess.run([str(nats_server_binary()), "-t", "-c", str(REPO / "infra/nats/nats-auth.conf")],
                            env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.usefixtures("fast_bcrypt")
def test_cli_refuses_a_bad_publisher_and_explains_the_rest(tmp_path: Path) -> None:
    bad = CliRunner().invoke(app, ["nats-config", "--publisher", "chengdu=510104001"])
    assert bad.exit_code == 2 and "must be a province" in bad.output
    explained = CliRunner().invoke(app, ["nats-config", "--publisher", "leshan=5111", "--explain"])
    assert explained.exit_code == 0
    assert "leshan (outside publisher for region 5111)" in explained.stdout
    assert "cso.intake.leshan.*.51.5111.*" in explained.stdout
    out = tmp_path / "auth.conf"
    env = {natsauth.password_env(n): "pw" for n in [*natsauth.SERVICES, "divisions", "admin"]}
    written = CliRunner().invoke(app, ["nats-config", "--passwords", "bcrypt", "--output", str(out)], env=env)
    assert written.exit_code == 0, written.output
    assert out.stat().st_mode & 0o777 == 0o600 and '"$2' in out.read_text()


def test_no_credentials_leave_the_connection_as_it_was() -> None:
    assert Settings(nats_url="nats://127.0.0.1:4222", nats_user="", nats_password="",
                    nats_inbox_prefix="").nats_options() == {}


def test_credentials_from_the_url_or_the_environment() -> None:
    assert nats_options("nats://targets:pw@127.0.0.1:4222") == {"inbox_prefix": "_INBOX_targets"}
    assert nats_options("nats://127.0.0.1:4222", "registry", "s3cret") == {
        "user": "registry", "password": "s3cret", "inbox_prefix": "_INBOX_registry"}
    assert nats_options("nats://127.0.0.1:4222", "registry", "pw", "_INBOX_x")["inbox_prefix"] == "_INBOX_x"
    with pytest.raises(ValueError, match="given twice"):
        nats_options("nats://targets:pw@127.0.0.1:4222", "registry", "pw")
    with pytest.raises(ValueError, match="CSO_NATS_PASSWORD is not set"):
        nats_options("nats://127.0.0.1:4222", "registry", "")


def test_settings_never_show_a_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CSO_NATS_USER", "registry")
    monkeypatch.setenv("CSO_NATS_PASSWORD", "env-secret")
    shown = repr(Settings(nats_url="nats://admin:url-secret@127.0.0.1:4222",
                          database_url="postgresql://cso:db-secret@127.0.0.1/cso"))
    assert "secret" not in shown and "***" in shown and "registry" in shown


def test_only_admin_sends_commands_or_uses_the_operators_intake_subjects() -> None:
    """Where a message's source is taken on its word (the `Cso-Source` header of a command, the
    envelope on a version 1 intake subject), nobody but the operators' admin user may publish."""
    t = Topology()
    users = Users(publishers=tuple(Publisher.parse(p) for p in EXAMPLE_PUBLISHERS))
    for p in natsauth.permissions(t, users):
        operators = p.user == natsauth.ADMIN
        for subject in (t.command_subject("registry", "file"), t.command_subject("training", "record_session"),
                        t.operator_intake_subject("OrganizationFiled", "510681001014"),
                        t.operator_intake_subject("HubEstablished", "51")):
            assert allowed(p, "publish", subject) is operators, (p.user, subject)
