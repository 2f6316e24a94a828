"""cso/auth.py without servers: token verification (HS256, RS256, ES256, rotation), every way a
token is refused and the field it names, roles and regions, and the FastAPI dependencies and error
bodies on a Runtime's app (its lifespan not run: nothing connects)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from fastapi import Depends

from cso.auth import ANONYMOUS, PUBLIC, WRITE, Auth, AuthError, Principal
from cso.service import Runtime
from cso.settings import Settings

SECRET = "test-secret-of-at-least-32-bytes-0123456789"
OLD_SECRET = "the-previous-secret-still-accepted-0123456789"
ISSUER, AUDIENCE = "https://idp.example.gov.cn", "cso"


def settings(**over: Any) -> Settings:
    base = Settings(database_url="postgresql://x@127.0.0.1:1/x", nats_url="nats://127.0.0.1:1", auth="jwt",
                    read_auth="open", jwt_secret=SECRET, jwt_previous_secret="", jwt_public_key="",
                    jwt_issuer="", jwt_audience="")
    return dataclasses.replace(base, **over)


def claims(**over: Any) -> dict[str, Any]:
    base = {"sub": "official-1", "region": "5111", "roles": ["registrar"], "exp": int(time.time()) + 600}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def token(key: Any = SECRET, algorithm: str = "HS256", **over: Any) -> str:
    return jwt.encode(claims(**over), key, algorithm=algorithm)


def refused(auth: Auth, tok: str) -> AuthError:
    with pytest.raises(AuthError) as caught:
        auth.verify(tok)
    return caught.value


def pem(public: Any) -> str:
    return str(public.public_bytes(serialization.Encoding.PEM,
                                   serialization.PublicFormat.SubjectPublicKeyInfo).decode())


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


# --- configuration -----------------------------------------------------------------------------

def test_off_by_default_and_config_errors() -> None:
    assert not Auth.from_settings(dataclasses.replace(settings(), auth="off")).enabled
    with pytest.raises(ValueError, match=r"needs a key .* set CSO_JWT_SECRET .* or CSO_JWT_PUBLIC_KEY"):
        Auth.from_settings(settings(jwt_secret=""))
    with pytest.raises(ValueError, match="at least 32 bytes"):
        Auth.from_settings(settings(jwt_secret="short"))
    with pytest.raises(ValueError, match="neither off nor jwt"):
        Auth.from_settings(settings(auth="yes"))
    with pytest.raises(ValueError, match="neither open nor scoped"):
        Auth.from_settings(settings(read_auth="closed"))
    with pytest.raises(ValueError, match="no PEM public key"):
        Auth.from_settings(settings(jwt_secret="", jwt_public_key="-----BEGIN nonsense"))
    # The Kubernetes manifests' placeholder: the service refuses to start, naming the setting.
    with pytest.raises(ValueError, match=r"CSO_JWT_PUBLIC_KEY: .CHANGE-ME.*neither PEM text nor a readable file"):
        Auth.from_settings(settings(jwt_secret="", jwt_public_key="CHANGE-ME: the token issuer's public key"))
    ed = ed25519.Ed25519PrivateKey.generate().public_key()
    with pytest.raises(ValueError, match="only RSA"):
        Auth.from_settings(settings(jwt_public_key=pem(ed)))
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    with pytest.raises(ValueError, match="2048"):
        Auth.from_settings(settings(jwt_public_key=pem(weak)))


def test_secrets_are_not_in_repr() -> None:
    assert SECRET not in repr(settings())


# --- verification ------------------------------------------------------------------------------

def test_a_good_token_names_its_principal() -> None:
    auth = Auth.from_settings(settings())
    who = auth.verify(token(roles=["trainer", "pii_reader"], region="511102"))
    assert who == Principal(sub="official-1", region="511102", roles=frozenset({"trainer", "pii_reader"}))
    assert who.scope == "511102"
    assert auth.verify(token(region="00")).region == "" == auth.verify(token(region="")).region


@pytest.mark.parametrize(("over", "field", "words"), [
    ({"exp": int(time.time()) - 120}, "token.exp", "expired at"),
    ({"exp": None}, "token.exp", "missing claim"),
    ({"sub": None}, "token.sub", "missing claim"),
    ({"region": None}, "token.region", "missing claim"),
    ({"roles": None}, "token.roles", "missing claim"),
    ({"region": "511"}, "token.region", "not a division code"),
    ({"region": 5111}, "token.region", "division code string"),
    ({"roles": "registrar"}, "token.roles", "list of role names"),
    ({"sub": " "}, "token.sub", "1 to 200"),
    ({"nbf": int(time.time()) + 3600}, "token.nbf", "not valid yet"),
])
def test_bad_claims_are_refused_naming_the_claim(over: dict[str, Any], field: str, words: str) -> None:
    e = refused(Auth.from_settings(settings()), token(**over))
    assert (e.status, e.field) == (401, field) and words in e.message, e


def test_signature_issuer_audience_and_algorithm() -> None:
    auth = Auth.from_settings(settings(jwt_issuer=ISSUER, jwt_audience=AUDIENCE))
    good = {"iss": ISSUER, "aud": AUDIENCE}
    assert auth.verify(token(**good)).sub == "official-1"
    e = refused(auth, token(key="another-secret-of-at-least-32-bytes-xxxxx", **good))
    assert (e.status, e.field) == (401, "token") and "signature" in e.message
    e = refused(auth, token(iss="https://evil.example", aud=AUDIENCE))
    assert e.field == "token.iss" and "evil" in e.message
    e = refused(auth, token(iss=ISSUER, aud="someone-else"))
    assert e.field == "token.aud" and "someone-else" in e.message
    assert refused(auth, token(aud=AUDIENCE)).field == "token.iss"
    assert refused(auth, token(iss=ISSUER)).field == "token.aud"
    unsigned = jwt.encode(claims(**good), None, algorithm="none")
    e = refused(auth, unsigned)
    assert e.field == "token.alg" and "'none'" in e.message
    e = refused(auth, "not.a.jwt")
    assert e.field == "token" and "not a JWT" in e.message
    # A token with an audience where none is configured is still fine (nothing to check).
    assert Auth.from_settings(settings()).verify(token(aud="x")).sub == "official-1"


def test_previous_secret_accepted_while_rotating() -> None:
    rotating = Auth.from_settings(settings(jwt_previous_secret=OLD_SECRET))
    assert rotating.verify(token(key=OLD_SECRET)).sub == "official-1"
    assert rotating.verify(token(key=SECRET)).sub == "official-1"
    rotated = Auth.from_settings(settings())
    assert refused(rotated, token(key=OLD_SECRET)).field == "token"


def test_rs256_and_es256_from_pem_text_and_files(tmp_path: Path, rsa_key: rsa.RSAPrivateKey,
                                                 ec_key: ec.EllipticCurvePrivateKey) -> None:
    both = pem(rsa_key.public_key()) + pem(ec_key.public_key())
    path = tmp_path / "keys.pem"
    path.write_text(both)
    for value in (both, str(path)):
        auth = Auth.from_settings(settings(jwt_secret="", jwt_public_key=value))
        assert auth.verify(token(rsa_key, "RS256")).region == "5111"
        assert auth.verify(token(ec_key, "ES256")).region == "5111"
        # HS256 is not accepted when only public keys are configured, whatever the token signs with
        # (the public key's PEM as an HMAC secret is the classic confusion attack).
        assert refused(auth, token("x" * 32, "HS256")).field == "token.alg"
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    auth = Auth.from_settings(settings(jwt_secret="", jwt_public_key=pem(rsa_key.public_key())))
    assert refused(auth, token(other, "RS256")).field == "token"


# --- roles and regions -------------------------------------------------------------------------

def test_roles_admin_and_personal_data() -> None:
    registrar = Principal(sub="a", region="5111", roles=frozenset({"registrar"}))
    registrar.require("registrar")
    with pytest.raises(AuthError) as e:
        registrar.require("trainer")
    assert (e.value.status, e.value.field) == (403, "roles")
    assert "needs trainer" in e.value.message and "registrar" in e.value.message
    admin = Principal(sub="b", roles=frozenset({"admin"}))
    admin.require("planner")
    admin.require("pii_reader", "admin")            # erasure: admin may
    with pytest.raises(AuthError):
        admin.require("pii_reader")                 # reading personal data: admin may not
    reader = Principal(sub="c", region="511102", roles=frozenset({"pii_reader"}))
    reader.require("pii_reader", personal=True)
    ANONYMOUS.require("registrar")                  # CSO_AUTH=off: writes go
    with pytest.raises(AuthError) as e:
        ANONYMOUS.require("pii_reader", "admin", personal=True)
    assert e.value.field == "authorization" and "CSO_AUTH=jwt" in e.value.message


def test_regions() -> None:
    county = Principal(sub="a", region="5111", roles=frozenset())
    assert county.covers("511102") and county.covers("5111") and county.covers("511102001014")
    assert not county.covers("5101") and not county.covers("51") and not county.covers(None)
    with pytest.raises(AuthError) as e:
        county.require_region("5101")
    assert (e.value.status, e.value.field, e.value.message) == (403, "region", "5101 is outside your region 5111")
    national = Principal(sub="n", region="", roles=frozenset())
    assert national.covers("5101") and national.covers(None) and national.scope == ""
    assert ANONYMOUS.covers("5101") and ANONYMOUS.scope is None
    me = Principal(sub="zhang@example.cn", region="5111", roles=frozenset({"subscriber"}))
    me.require_self_or("zhang@example.cn", "notify_admin")
    with pytest.raises(AuthError) as e:
        me.require_self_or("li@example.cn", "notify_admin")
    assert e.value.field == "recipient"


# --- on a service's app ------------------------------------------------------------------------

def app_client(**over: Any) -> httpx.AsyncClient:
    runtime = Runtime("authtest", "authtest", settings(**over))
    app = runtime.http("auth test")

    registrar = Depends(runtime.auth.role("registrar"))

    @app.post("/write/{region}", **WRITE)
    async def write(region: str, who: Principal = registrar) -> dict[str, Any]:
        who.require_region(region)
        return {"ok": True, "sub": who.sub}

    @app.get("/coverage/{region}", **PUBLIC)
    async def read(region: str) -> dict[str, Any]:
        return {"region": region}

    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc")


def bearer(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


async def test_dependencies_and_error_bodies() -> None:
    async with app_client() as client:
        r = await client.post("/write/511102")
        assert r.status_code == 401 and r.headers["www-authenticate"] == 'Bearer realm="cso"'
        assert r.json() == {"ok": False, "errors": [{"field": "authorization", "message":
                            "a bearer token is required (Authorization: Bearer <JWT>)"}]}
        r = await client.post("/write/511102", headers={"Authorization": "Basic dXNlcjpwYXNz"})
        assert r.status_code == 401 and r.json()["errors"][0]["field"] == "authorization"
        r = await client.post("/write/511102", headers=bearer(token(exp=int(time.time()) - 100)))
        assert r.status_code == 401 and r.json()["errors"][0]["field"] == "token.exp"
        assert 'error="invalid_token"' in r.headers["www-authenticate"]
        r = await client.post("/write/511102", headers=bearer(token(roles=["trainer"])))
        assert r.status_code == 403 and r.json()["errors"][0]["field"] == "roles"
        r = await client.post("/write/5101", headers=bearer(token()))
        assert r.status_code == 403
        assert r.json()["errors"] == [{"field": "region", "message": "5101 is outside your region 5111"}]
        assert (await client.post("/write/511102", headers=bearer(token()))).json() == {"ok": True,
                                                                                       "sub": "official-1"}
        # Reads are open by default; health never needs a token.
        assert (await client.get("/coverage/5101")).status_code == 200
        assert (await client.get("/healthz")).status_code == 200


async def test_scoped_reads() -> None:
    async with app_client(read_auth="scoped") as client:
        assert (await client.get("/coverage/511102")).status_code == 401
        assert (await client.get("/coverage/511102", headers=bearer(token(roles=[])))).status_code == 200
        r = await client.get("/coverage/5101", headers=bearer(token(roles=[])))
        assert r.status_code == 403 and r.json()["errors"][0]["field"] == "region"
        assert (await client.get("/healthz")).status_code == 200


async def test_auth_off_lets_writes_through() -> None:
    async with app_client(auth="off") as client:
        assert (await client.post("/write/5101")).json() == {"ok": True, "sub": "anonymous"}
