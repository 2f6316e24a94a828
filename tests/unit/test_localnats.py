"""The local stack's NATS users (cso_local/localnats.py): passwords made once and kept 0600, an outside
publisher's only as a hash, a config nats-server accepts that holds no password; and `--nats-auth off`
is loud, at start and in `cso status`. The stack itself: tests/integration/test_stack_nats_users.py."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

import bcrypt
import pytest
from typer.testing import CliRunner

from contracts import Topology
from cso import natsauth
from cso.natsauth import Publisher
from cso_local import localnats
from cso_local.cli import app
from cso_local.servers import nats_server_binary
from cso_local.stack import Stack


@pytest.fixture(autouse=True)
def cheap_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(natsauth, "BCRYPT_ROUNDS", 4)


def test_own_users_are_made_once_and_kept_private(tmp_path: Path) -> None:
    users, shown = localnats.ensure(tmp_path)
    assert shown == {}
    assert set(users.accounts) == {*natsauth.SERVICES, natsauth.DIVISIONS, natsauth.ADMIN}
    assert stat.S_IMODE(users.path.stat().st_mode) == 0o600
    passwords = {u: users.password(u) for u in users.accounts}
    assert len(set(passwords.values())) == len(passwords)
    for user, account in users.accounts.items():
        assert bcrypt.checkpw(passwords[user].encode(), account.hash.encode())
    again, _ = localnats.ensure(tmp_path)
    assert {u: again.password(u) for u in again.accounts} == passwords
    assert localnats.credentials(tmp_path, "admin") == ("admin", passwords["admin"])
    assert localnats.credentials(tmp_path / "elsewhere", "admin") is None


def test_a_publisher_password_is_shown_once_and_kept_as_a_hash(tmp_path: Path) -> None:
    users, shown = localnats.ensure(tmp_path, [Publisher("leshan-register", "5111")])
    password = shown["leshan-register"]
    assert password not in users.path.read_text()
    kept = json.loads(users.path.read_text())["users"]["leshan-register"]
    assert set(kept) == {"hash", "region"} and bcrypt.checkpw(password.encode(), kept["hash"].encode())
    assert users.publishers == (Publisher("leshan-register", "5111"),)
    assert localnats.credentials(tmp_path, "leshan-register") is None
    # Asked again (a second `cso up --publisher ...`): kept, not shown, not changed.
    again, shown = localnats.ensure(tmp_path, [Publisher("leshan-register", "5111")])
    assert shown == {} and again.accounts["leshan-register"].hash == kept["hash"]
    with pytest.raises(ValueError, match="already a NATS user of this stack for region 5111, not 5101"):
        localnats.ensure(tmp_path, [Publisher("leshan-register", "5101")])
    with pytest.raises(ValueError, match="already a NATS user"):
        localnats.add_publisher(tmp_path, Publisher("leshan-register", "5111"))
    with pytest.raises(ValueError, match="taken by cso's own users"):
        localnats.ensure(tmp_path, [Publisher("admin", "5111")])


def test_the_config_holds_hashes_only_and_nats_server_accepts_it(tmp_path: Path) -> None:
    users, shown = localnats.ensure(tmp_path, [Publisher("guanghan-register", "510681")])
    conf = localnats.write_config(tmp_path, users, Topology())
    text = conf.read_text()
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    assert not any(users.password(u) in text for u in localnats.OWN_USERS)
    assert shown["guanghan-register"] not in text
    assert all(a.hash in text for a in users.accounts.values())
    assert '"cso.intake.guanghan-register.*.51.5106.510681"' in text  # cso.natsauth's publisher permissions
    result = subprocess.run([str(nats_server_binary()), "-t", "-c", str(conf)], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


def test_nats_auth_off_is_loud(tmp_path: Path) -> None:
    logged: list[str] = []
    stack = Stack(tmp_path, nats_auth=False, log=logged.append)
    assert stack._nats_config() is None
    assert any("WARNING: NATS without authentication" in m for m in logged)
    assert localnats.load(tmp_path) is None

    # `cso status` of a stack started so says it, whatever else it shows.
    (tmp_path / "stack.json").write_text(json.dumps({
        "data_dir": str(tmp_path), "owner_pid": None, "started_at": "2026-01-01T00:00:00+0000",
        "stopped_at": None, "namespace": "",
        "nats": {"url": "nats://127.0.0.1:1", "monitor_url": None, "pid": None, "managed": True,
                 "auth": "off", "users_file": None},
        "postgres": {"url": None, "managed": True}, "services": {}}))
    result = CliRunner().invoke(app, ["status", "--data-dir", str(tmp_path)], env={"COLUMNS": "200"})
    assert "WARNING: NATS runs without authentication" in result.output, result.output
    assert "NO AUTHENTICATION" in result.output
    # And no publisher can be added to it: there are no users to add one to.
    result = CliRunner().invoke(app, ["publisher", "add", "x=51", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and "no users" in result.output, result.output
