"""cso/tokens.py and `cso token` without servers: the local stack's key (made once, mode 0600,
refused when others may read it), what `cso up` gives its services (jwt with that key; off only when
asked, and said), and tokens minted with it that the services' own checker (cso/auth.py) accepts."""

from __future__ import annotations

import dataclasses
import stat
from pathlib import Path

import jwt
import pytest
from typer.testing import CliRunner

from cso.auth import Auth
from cso.settings import Settings
from cso.tokens import (
    SECRET_FILE,
    TokenError,
    bearer,
    claims,
    ensure_secret,
    mint,
    parse_ttl,
    read_secret,
    service_env,
    signing_key,
)
from cso_local.cli import app


def checker(secret: str) -> Auth:
    return Auth.from_settings(Settings(database_url="postgresql://x@127.0.0.1:1/x", nats_url="nats://127.0.0.1:1",
                                       auth="jwt", jwt_secret=secret, jwt_previous_secret="", jwt_public_key="",
                                       jwt_issuer="", jwt_audience=""))


def test_the_key_is_made_once_for_the_owner_only(tmp_path: Path) -> None:
    secret, made = ensure_secret(tmp_path / "data")
    path = tmp_path / "data" / SECRET_FILE
    assert made and len(secret.encode()) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_secret(tmp_path / "data") == (secret, False)        # a later start reuses it
    path.chmod(0o644)
    with pytest.raises(TokenError, match="lets others read the token key; chmod 600"):
        read_secret(path)


def test_what_cso_up_gives_its_services(tmp_path: Path) -> None:
    said: list[str] = []
    env = service_env(tmp_path, environ={}, log=said.append)
    assert env == {"CSO_AUTH": "jwt", "CSO_JWT_SECRET": (tmp_path / SECRET_FILE).read_text().strip()}
    assert "made in" in said[-1]
    # Off only when the environment asks for it, and then said as a warning.
    assert service_env(tmp_path / "off", environ={"CSO_AUTH": "off"}, log=said.append) == {"CSO_AUTH": "off"}
    assert said[-1].startswith("WARNING: CSO_AUTH=off") and not (tmp_path / "off").exists()
    # A key of one's own in the environment: the services inherit it, no file is made.
    assert service_env(tmp_path / "own", environ={"CSO_JWT_SECRET": "x" * 40}) == {"CSO_AUTH": "jwt"}
    assert not (tmp_path / "own").exists()


def test_a_minted_token_is_what_the_services_accept(tmp_path: Path) -> None:
    key, _ = ensure_secret(tmp_path)
    made = claims(["registrar", "registrar", "trainer"], "510681", "gh.registrar", parse_ttl("8h"),
                  source="guanghan-register", environ={})
    assert made["exp"] - made["iat"] == 8 * 3600
    who = checker(key).verify(mint(signing_key(tmp_path, environ={}), made))
    assert (who.sub, who.region, who.roles, who.source) == (
        "gh.registrar", "510681", frozenset({"registrar", "trainer"}), "guanghan-register")
    assert checker(key).verify(mint(key, claims(["planner"], "00", "x", 60, environ={}))).region == ""
    # Signed with another key: refused by the services.
    other = checker("another-secret-of-thirty-two-bytes-at-least")
    with pytest.raises(Exception, match="signature"):
        other.verify(mint(key, made))
    # Issuer and audience as the services are configured.
    with_iss = claims(["admin"], "51", "x", 60, environ={"CSO_JWT_ISSUER": "cso-local", "CSO_JWT_AUDIENCE": "cso"})
    strict = dataclasses.replace(checker(key), issuer="cso-local", audience="cso")
    assert strict.verify(mint(key, with_iss)).sub == "x"


@pytest.mark.parametrize(("call", "named"), [
    (lambda: claims(["registar"], "5106", "x", 60, environ={}), "--role: registar is not a role"),
    (lambda: claims(["registrar"], "510", "x", 60, environ={}), "--region: '510' is not a division code"),
    (lambda: claims(["registrar"], "5106", " ", 60, environ={}), "--sub"),
    (lambda: claims(["registrar"], "5106", "x", 60, source="a b", environ={}), "--source"),
    (lambda: parse_ttl("forever"), "--ttl: 'forever'"),
    (lambda: parse_ttl("40d"), "more than 30 days"),
    (lambda: signing_key(Path("/nonexistent"), environ={}), "CSO_JWT_SECRET is not set"),
    (lambda: signing_key(Path("/nonexistent"), environ={"CSO_JWT_SECRET": "short"}), "at least 32 bytes"),
])
def test_what_cannot_be_minted_names_the_option(call: object, named: str) -> None:
    with pytest.raises(TokenError, match=named.replace("(", r"\(")):
        call()  # type: ignore[operator]


def test_cso_token_prints_a_token(tmp_path: Path) -> None:
    runner = CliRunner()
    env = {"CSO_JWT_SECRET": "", "CSO_JWT_ISSUER": "", "CSO_JWT_AUDIENCE": ""}
    missing = runner.invoke(app, ["token", "--role", "registrar", "--region", "510681", "--data-dir",
                                  str(tmp_path)], env=env)
    assert missing.exit_code == 2 and "cso up --data-dir" in missing.output
    key, _ = ensure_secret(tmp_path)
    result = runner.invoke(app, ["token", "--role", "registrar", "--role", "trainer", "--region", "510681",
                                 "--sub", "dev", "--ttl", "30m", "--data-dir", str(tmp_path)], env=env)
    assert result.exit_code == 0, result.output
    printed = jwt.decode(result.output.strip(), key, algorithms=["HS256"])
    assert printed["roles"] == ["registrar", "trainer"] and printed["region"] == "510681"
    assert printed["sub"] == "dev" and printed["exp"] - printed["iat"] == 1800
    # The CLI's own requests carry a short-lived token when the stack has a key, none otherwise.
    assert checker(key).verify(bearer(tmp_path)["Authorization"].removeprefix("Bearer ")).sub == "cso-cli"
    assert bearer(tmp_path / "none") == {}
