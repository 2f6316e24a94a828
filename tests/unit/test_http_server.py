"""The HTTP limits of cso/http_server.py from the environment: defaults, the variable named when one
cannot work, and the body's deadline (what tests/integration/test_http_limits.py runs for real)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cso.http_server import BoundedH11Protocol, Limits, ServerConfig
from cso.settings import Settings


def test_defaults_bound_every_wait() -> None:
    limits = Limits.from_settings(Settings())
    assert limits == Limits(header_timeout=10, body_timeout=30, body_min_bytes_per_second=16384,
                            keepalive=5, max_connections=1000)


def test_settings_reach_uvicorns_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CSO_HTTP_KEEPALIVE_SECONDS", "2")
    monkeypatch.setenv("CSO_HTTP_MAX_CONNECTIONS", "7")
    limits = Limits.from_settings(Settings())
    config = ServerConfig("services.registry.app:create_app", limits, port=8000)
    assert config.timeout_keep_alive == 2 and config.limits.max_connections == 7
    # uvicorn's own limit would refuse /healthz too: the protocol applies max_connections instead.
    assert config.limit_concurrency is None
    assert config.http is BoundedH11Protocol and config.factory


@pytest.mark.parametrize(("variable", "value"), [
    ("CSO_HTTP_HEADER_TIMEOUT_SECONDS", "0"), ("CSO_HTTP_BODY_TIMEOUT_SECONDS", "-1"),
    ("CSO_HTTP_KEEPALIVE_SECONDS", "0"), ("CSO_HTTP_MAX_CONNECTIONS", "0"),
    ("CSO_HTTP_BODY_MIN_BYTES_PER_SECOND", "-5")])
def test_a_limit_that_cannot_work_is_named(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValueError, match=variable):
        Limits.from_settings(Settings())


def test_the_launcher_refuses_to_start_without_a_working_limit() -> None:
    env = {"CSO_HTTP_HEADER_TIMEOUT_SECONDS": "0", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "cso.http_server", "services.registry.app:create_app"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "CSO_HTTP_HEADER_TIMEOUT_SECONDS must be more than 0" in done.stderr


def test_a_body_gets_a_second_more_per_minimum_rate_received() -> None:
    limits = Limits(body_timeout=30, body_min_bytes_per_second=16384)
    assert limits.body_deadline(100.0, 0) == 130.0
    # A 16 MiB upload at 16 KiB/s is never cut; a byte a second gains nothing worth having.
    assert limits.body_deadline(100.0, 16 * 1024 * 1024) == 100 + 30 + 1024
    assert limits.body_deadline(100.0, 30) < 130.01
    assert Limits(body_timeout=30, body_min_bytes_per_second=0).body_deadline(0.0, 10**9) == 30.0
