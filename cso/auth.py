"""Who is calling over HTTP, and what they may do: bearer tokens (JWT) with a region and roles.

A token's claims: `sub` (the official or system), `region` (the division code prefix it covers:
"" or "00" national, "51" a province, "5111" a city, "511102" a county, …) and `roles`:

| role | may |
| --- | --- |
| registrar | run registry commands |
| trainer | run training commands, upload attendance sheets |
| planner | change the targets catalogue; import plans, move their tasks, attach evidence |
| subscriber | manage their own notify subscriptions (recipient = their `sub`) |
| notify_admin | manage anyone's subscriptions and inboxes in their region |
| pii_reader | read a person's data unmasked, export it, erase it (in their region) |
| admin | anything a role above allows, except reading personal data (it may erase it) |

`CSO_AUTH=jwt` is the default: a service without a key (CSO_JWT_SECRET or CSO_JWT_PUBLIC_KEY)
refuses to start. `CSO_AUTH=off` must be asked for, and trusts everyone: every caller is an
anonymous principal that may write anywhere and name any `X-Cso-Source`, but is never given personal
data unmasked; the service says so in a warning at start and in `/readyz` (`"auth": "off"`). The
NATS request-reply path is not covered here: NATS users and subject permissions guard it.

Every HTTP route declares one access class where it is declared (`@app.get(path, **PUBLIC)`); the
app-wide `Auth.guard` enforces the class, and a service does not start with a route that has none
(`unclassified`):

- health (/healthz /readyz /metrics /docs /openapi.json): never a token.
- public aggregate (figures and targets: nothing about one organization or person) and scoped read
  (records of organizations, sessions, plans): no token; with CSO_READ_AUTH=scoped a token, and a
  region in the path (`region`, `code`) or query (`under`, `region`) within the token's; a record
  named by id (an organization, a plan) is checked against its own region (`Auth.reader`).
- personal data (a person, a pool, a roster, a subscriber's contacts, an inbox, deliveries): with
  CSO_AUTH=jwt always a token (401 without), whatever CSO_READ_AUTH says, and the route asks the
  role and region: the person's county (any role sees masked, pii_reader unmasked), a
  subscription's or inbox's recipient or a notify_admin of its region. With CSO_AUTH=off only
  masked: unmasking, export and erasure are refused (403), e-mail addresses and webhook URLs masked.
- write: a token with the route's role, and what it writes within the token's region.

An event's `source` is the caller's when it is authenticated: the token's `source` claim, else its
`sub` (`Principal.source`); an `X-Cso-Source` header that differs is refused (403 naming
`x-cso-source`), so a registrar cannot speak for another system (`source_of`).

Refusals: no, malformed, expired, wrongly signed or wrongly issued token -> 401; a good token
without the role or outside its region -> 403; either with the APIs' error body naming the field.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Collection, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import fastapi.routing
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from fastapi import FastAPI, Request
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute, Mount, Route

from .settings import Settings

ROLES = ("registrar", "trainer", "planner", "subscriber", "notify_admin", "pii_reader", "admin")
PII_READER = "pii_reader"
ADMIN = "admin"
NATIONAL = ""
LEEWAY_SECONDS = 30
_PEM = re.compile(rb"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", re.DOTALL)
_REGION_LENGTHS = (2, 4, 6, 9, 12)
# What an event's `source` may be (the envelope's own rule, contracts/envelope.py).
SOURCE = re.compile(r"^[A-Za-z0-9_.:/-]{1,100}$")
DEFAULT_SOURCE = "http-api"


class Access(StrEnum):
    """What kind of data a route serves, and so who may call it (the table above)."""

    HEALTH = "health"
    PUBLIC = "public aggregate"
    SCOPED = "scoped read"
    PERSONAL = "personal data"
    WRITE = "write"


ACCESS_KEY = "x-cso-access"


def _declare(access: Access) -> dict[str, Any]:
    # In the route's OpenAPI operation (so /docs shows it) and as its tag (/docs groups by class).
    return {"openapi_extra": {ACCESS_KEY: access.value}, "tags": [access.value]}


# Keyword arguments of a route decorator: `@app.get("/coverage/{region}", **PUBLIC)`.
HEALTH, PUBLIC, SCOPED, PERSONAL, WRITE = (_declare(a) for a in Access)
# What FastAPI and Runtime.http serve besides the routes: documentation and the Prometheus app.
_BUILT_IN = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc", "/metrics"}


def access_of(route: Any) -> Access | None:
    """The class a route declared (None: none, or not one of ours)."""
    if isinstance(route, APIRoute):
        value = (route.openapi_extra or {}).get(ACCESS_KEY)
        return Access(value) if value in {a.value for a in Access} else None
    if isinstance(route, (Route, Mount)) and route.path in _BUILT_IN:
        return Access.HEALTH
    return None


def _path(route: BaseRoute) -> str:
    return str(getattr(route, "path", route))


def _served(app: FastAPI) -> Iterator[tuple[BaseRoute, str, Collection[str] | None]]:
    """Every route the app serves, with its path and methods, those of included routers too: since
    FastAPI 0.16x `include_router` adds the router itself to `app.routes`, not copies of its routes."""
    contexts = getattr(fastapi.routing, "iter_route_contexts", None)
    if contexts is None:
        for route in app.routes:
            yield route, _path(route), getattr(route, "methods", None)
        return
    for context in contexts(app.routes):
        yield context.original_route, context.path, context.methods


def routes(app: FastAPI) -> dict[tuple[str, str], Access | None]:
    """Every (method, path) the app serves and its class; a mount (/metrics) as ("*", path)."""
    found: dict[tuple[str, str], Access | None] = {}
    for route, path, served in _served(app):
        methods = sorted(served or {"*"}) if not isinstance(route, Mount) else ["*"]
        for method in methods:
            if method != "HEAD":
                found[(method, path)] = access_of(route)
    return found


def unclassified(app: FastAPI) -> list[str]:
    """Routes without an access class: a service refuses to start with any (Runtime.http)."""
    return [f"{method} {path}" for (method, path), access in routes(app).items() if access is None]


class AuthError(Exception):
    """A refusal: 401 (who are you?) or 403 (not you, not here); `field` names what is wrong."""

    def __init__(self, status: int, field: str, message: str) -> None:
        self.status, self.field, self.message = status, field, message
        super().__init__(f"{field}: {message}")


def outside(region: str, scope: str) -> str:
    return f"{region} is outside your region {scope or 'national'}"


@dataclass(frozen=True)
class Principal:
    """The caller. `authenticated` is False only with CSO_AUTH=off (an anonymous caller)."""

    sub: str
    region: str = NATIONAL
    roles: frozenset[str] = frozenset()
    authenticated: bool = True
    # The system the caller speaks for: the token's `source` claim, else its `sub` (source_of).
    source_claim: str | None = None

    @property
    def source(self) -> str:
        return self.source_claim or self.sub

    @property
    def scope(self) -> str | None:
        """The region prefix this caller may write under; None: no limit (CSO_AUTH=off)."""
        return self.region if self.authenticated else None

    def allows(self, role: str) -> bool:
        if role == PII_READER:
            return self.authenticated and PII_READER in self.roles
        if not self.authenticated:
            return True
        return role in self.roles or ADMIN in self.roles

    def require(self, *roles: str, personal: bool = False) -> None:
        """Refuse (403) unless the caller has one of `roles` (admin stands for any but pii_reader).
        `personal`: personal data is released only to an authenticated caller."""
        if personal and not self.authenticated:
            raise AuthError(403, "authorization", "personal data is released only to an authenticated "
                            "caller with a token (CSO_AUTH=jwt)")
        if not any(self.allows(r) for r in roles):
            have = ", ".join(sorted(self.roles)) or "no roles"
            raise AuthError(403, "roles", f"needs {' or '.join(roles)}; the token has {have}")

    def covers(self, region: str | None) -> bool:
        """Whether `region` lies within the caller's region (an unknown region: only a national
        caller, or anyone with CSO_AUTH=off)."""
        scope = self.scope
        if scope is None or scope == NATIONAL:
            return True
        return region is not None and region.startswith(scope)

    def require_region(self, region: str | None, what: str = "region") -> None:
        if not self.covers(region):
            raise AuthError(403, what, outside(region or "an unknown region", self.region))

    def require_self_or(self, subject: str, *roles: str) -> None:
        """Refuse (403) unless the caller is `subject` (their own inbox, subscription…) or has a role."""
        if self.authenticated and subject != self.sub and not any(self.allows(r) for r in roles):
            raise AuthError(403, "recipient", f"{subject!r} is not you ({self.sub!r}); "
                            f"acting for others needs {' or '.join(roles)}")


ANONYMOUS = Principal(sub="anonymous", authenticated=False)


def source_of(who: Principal, request: Request, default: str = DEFAULT_SOURCE) -> str:
    """The `source` of what this request publishes or records: the authenticated caller's own
    (`Principal.source`); a differing X-Cso-Source header is refused, not quietly replaced. With
    CSO_AUTH=off the header is believed (off trusts everyone); without it, `default`."""
    header = request.headers.get("x-cso-source")
    if not who.authenticated:
        return header if header is not None else default
    own = who.source
    if not SOURCE.fullmatch(own):
        raise AuthError(403, "token.source" if who.source_claim else "token.sub",
                        f"{own[:60]!r} cannot be an event's source (1-100 of A-Z a-z 0-9 _ . : / -); "
                        "give the token a `source` claim")
    if header is not None and header != own:
        raise AuthError(403, "x-cso-source", f"{header[:100]!r} is not your source {own!r}: the source is "
                        "the token's (its `source` claim, else `sub`); leave the header out or make it equal")
    return own


@dataclass(frozen=True)
class Key:
    algorithm: str
    key: Any
    name: str


def _public_keys(value: str) -> list[Key]:
    """PEM text, or paths (comma-separated) of PEM files; each may hold several keys (rotation)."""
    if "-----BEGIN" in value:
        sources = [("CSO_JWT_PUBLIC_KEY", value.encode())]
    else:
        sources = []
        for path in (p.strip() for p in value.split(",") if p.strip()):
            try:
                sources.append((path, Path(path).read_bytes()))
            except OSError as e:
                # A placeholder left in a manifest lands here: say which setting, fail closed.
                raise ValueError(f"CSO_JWT_PUBLIC_KEY: {path[:60]!r} is neither PEM text nor a readable "
                                 f"file ({e.strerror})") from None
    keys: list[Key] = []
    for origin, data in sources:
        blocks = _PEM.findall(data)
        if not blocks:
            raise ValueError(f"CSO_JWT_PUBLIC_KEY: {origin} holds no PEM public key "
                             "(-----BEGIN PUBLIC KEY-----)")
        for i, block in enumerate(blocks):
            key = load_pem_public_key(block)
            if isinstance(key, rsa.RSAPublicKey):
                if key.key_size < 2048:
                    raise ValueError(f"CSO_JWT_PUBLIC_KEY: {origin} key {i + 1}: RSA keys have ≥ 2048 bits")
                keys.append(Key("RS256", key, f"{origin}#{i + 1}"))
            elif isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
                keys.append(Key("ES256", key, f"{origin}#{i + 1}"))
            else:
                raise ValueError(f"CSO_JWT_PUBLIC_KEY: {origin} key {i + 1}: only RSA (RS256) and "
                                 "P-256 (ES256) public keys are accepted")
    return keys


def _secret(name: str, value: str) -> Key:
    if len(value.encode()) < 32:
        raise ValueError(f"{name}: an HS256 secret has at least 32 bytes")
    return Key("HS256", value.encode(), name)


def _region(value: Any) -> str:
    if not isinstance(value, str):
        raise AuthError(401, "token.region", "the region claim is a division code string (\"\" national)")
    if value in ("", "00"):
        return NATIONAL
    if not value.isascii() or not value.isdigit() or len(value) not in _REGION_LENGTHS:
        raise AuthError(401, "token.region", f"{value!r} is not a division code (2, 4, 6, 9 or 12 digits)")
    return value


def _roles(value: Any) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(r, str) for r in value):
        raise AuthError(401, "token.roles", "the roles claim is a list of role names")
    return frozenset(value)


def _when(timestamp: Any) -> str:
    try:
        return datetime.fromtimestamp(float(timestamp), UTC).isoformat(timespec="seconds")
    except (TypeError, ValueError, OverflowError):
        return repr(timestamp)


@dataclass
class Auth:
    """The service's token checker, made from Settings; dependencies for FastAPI routes."""

    mode: str = "off"
    read: str = "open"
    keys: list[Key] = field(default_factory=list)
    issuer: str | None = None
    audience: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Auth:
        mode, read = settings.auth.strip().lower(), settings.read_auth.strip().lower()
        if mode not in ("off", "jwt"):
            raise ValueError(f"CSO_AUTH: {settings.auth!r} is neither off nor jwt")
        if read not in ("open", "scoped"):
            raise ValueError(f"CSO_READ_AUTH: {settings.read_auth!r} is neither open nor scoped")
        keys: list[Key] = []
        if settings.jwt_secret:
            keys.append(_secret("CSO_JWT_SECRET", settings.jwt_secret))
        if settings.jwt_previous_secret:
            keys.append(_secret("CSO_JWT_PREVIOUS_SECRET", settings.jwt_previous_secret))
        if settings.jwt_public_key:
            keys += _public_keys(settings.jwt_public_key)
        if mode == "jwt" and not keys:
            raise ValueError(
                f"CSO_AUTH={settings.auth or 'jwt'} (the default) needs a key to check tokens with: set "
                "CSO_JWT_SECRET (an HS256 secret of at least 32 bytes) or CSO_JWT_PUBLIC_KEY (the token "
                "issuer's public key); `cso up` makes one for the local stack (`cso token` signs with it). "
                "To run without tokens, where everyone may write, set CSO_AUTH=off")
        return cls(mode=mode, read=read, keys=keys, issuer=settings.jwt_issuer or None,
                   audience=settings.jwt_audience or None)

    @property
    def enabled(self) -> bool:
        return self.mode == "jwt"

    def verify(self, token: str) -> Principal:
        """The principal a token names, or AuthError(401) saying what is wrong with it."""
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as e:
            raise AuthError(401, "token", f"not a JWT: {e}") from None
        algorithm = header.get("alg")
        candidates = [k for k in self.keys if k.algorithm == algorithm]
        if not candidates:
            accepted = ", ".join(sorted({k.algorithm for k in self.keys}))
            raise AuthError(401, "token.alg", f"{algorithm!r} is not accepted here (accepted: {accepted})")
        required = ["exp", "sub"] + (["iss"] if self.issuer else []) + (["aud"] if self.audience else [])
        for key in candidates:
            try:
                claims = jwt.decode(
                    token, key.key, algorithms=[key.algorithm], issuer=self.issuer, audience=self.audience,
                    leeway=LEEWAY_SECONDS,
                    options={"require": required, "verify_aud": self.audience is not None})
            except jwt.InvalidSignatureError:
                continue
            except jwt.ExpiredSignatureError:
                raise AuthError(401, "token.exp", f"the token expired at {_when(unverified.get('exp'))}") from None
            except jwt.ImmatureSignatureError:
                raise AuthError(401, "token.nbf", "the token is not valid yet") from None
            except jwt.InvalidIssuerError:
                raise AuthError(401, "token.iss", f"issuer {unverified.get('iss')!r} is not "
                                f"{self.issuer!r}") from None
            except jwt.InvalidAudienceError:
                raise AuthError(401, "token.aud", f"audience {unverified.get('aud')!r} does not "
                                f"include {self.audience!r}") from None
            except jwt.MissingRequiredClaimError as e:
                raise AuthError(401, f"token.{e.claim}", "missing claim") from None
            except jwt.PyJWTError as e:
                raise AuthError(401, "token", str(e)) from None
            return self._principal(claims)
        raise AuthError(401, "token", "the signature does not verify with any key this service trusts")

    def _principal(self, claims: dict[str, Any]) -> Principal:
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub.strip() or len(sub) > 200:
            raise AuthError(401, "token.sub", "the subject is 1 to 200 characters")
        for claim in ("region", "roles"):
            if claim not in claims:
                raise AuthError(401, f"token.{claim}", "missing claim")
        source = claims.get("source")
        if source is not None and (not isinstance(source, str) or not SOURCE.fullmatch(source)):
            raise AuthError(401, "token.source", "the source claim is 1-100 of A-Z a-z 0-9 _ . : / -")
        return Principal(sub=sub, region=_region(claims["region"]), roles=_roles(claims["roles"]),
                         source_claim=source)

    def principal(self, request: Request) -> Principal:
        """The caller of this request (verified once per request); ANONYMOUS with CSO_AUTH=off."""
        if not self.enabled:
            return ANONYMOUS
        cached = getattr(request.state, "principal", None)
        if isinstance(cached, Principal):
            return cached
        header = request.headers.get("authorization")
        if not header:
            raise AuthError(401, "authorization", "a bearer token is required (Authorization: Bearer <JWT>)")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError(401, "authorization", "expected 'Bearer <JWT>'")
        who = self.verify(token.strip())
        request.state.principal = who
        return who

    # --- FastAPI dependencies -------------------------------------------------------------------

    def caller(self) -> Callable[[Request], Awaitable[Principal]]:
        """Any caller with a valid token (anyone with CSO_AUTH=off)."""
        async def dependency(request: Request) -> Principal:
            return self.principal(request)
        return dependency

    def reader(self) -> Callable[[Request], Awaitable[Principal]]:
        """The caller of a read whose record lies in a region the route looks up (an organization,
        a plan, by id): with CSO_READ_AUTH=scoped the token's principal, whose region the route
        checks against the record's; otherwise ANONYMOUS, whom every region covers."""
        async def dependency(request: Request) -> Principal:
            return self.principal(request) if self.read == "scoped" else ANONYMOUS
        return dependency

    def role(self, *roles: str) -> Callable[[Request], Awaitable[Principal]]:
        """A caller with a valid token and one of `roles`; regions are the endpoint's to check."""
        async def dependency(request: Request) -> Principal:
            who = self.principal(request)
            who.require(*roles)
            return who
        return dependency

    async def guard(self, request: Request) -> None:
        """Every route's class, enforced before the route runs (an app-wide dependency): health
        needs nothing; personal data and writes a valid token (the route then asks its role and
        region); with CSO_READ_AUTH=scoped, reads a token and a region in their path (`region`,
        `code`) or query (`under`, `region`) within the token's. A route without a class is refused."""
        access = access_of(request.scope.get("route"))
        if access is None:
            raise AuthError(403, "route", f"{request.method} {request.url.path} declares no access class; refused")
        if not self.enabled or access is Access.HEALTH:
            return
        if access in (Access.PERSONAL, Access.WRITE):
            self.principal(request)
            return
        if self.read != "scoped":
            return
        who = self.principal(request)
        for name in ("region", "code"):
            if isinstance(value := request.path_params.get(name), str):
                who.require_region(value, name)
        for name in ("under", "region"):
            if value := request.query_params.get(name):
                who.require_region(value, name)
