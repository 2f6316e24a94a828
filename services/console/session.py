"""Who is signed in to the console, and what each route lets them do.

The console signs in with the very tokens of the API (`cso token --role … --region …`): the sign-in
page takes one, checks it with the services' own checker (cso.auth.Auth, same keys, issuer and
audience), and keeps it in a cookie that scripts cannot read (HttpOnly), that no other site's page
sends (SameSite=Strict), only over HTTPS or to a loopback address (Secure) and that dies when the
token does. Every request to a service carries it as `Authorization: Bearer`, so a service refuses
what the token may not see even if the console failed to.

Every route declares an access class (cso/auth.py); `Gate.guard` enforces it for the console:

- health (/healthz, /readyz) and public (the sign-in page, sign-out, the assets): nobody needs to be
  signed in;
- scoped (pages of a region, a plan, a unit) and personal (the inbox): signed in, or a redirect to
  the sign-in page; a region in the path (`code`) within the token's region, else 403;
- write (marking a message read): signed in, and only by POST.

Forms cannot be sent from another site: the cookie is SameSite=Strict, changes are POST only, and a
POST whose Origin or Sec-Fetch-Site says another site is refused (403) before it runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import jwt
from fastapi import Request

from cso.auth import ANONYMOUS, Access, Auth, AuthError, Principal, access_of

COOKIE = "cso_console"
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


class SignIn(Exception):
    """Not signed in (or the token has expired): the page answers with a redirect to sign in."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True)
class Session:
    """The signed-in official: their principal and the token forwarded to the services."""

    who: Principal
    token: str | None  # None: CSO_AUTH=off (nobody is asked who they are)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


def expires(token: str) -> datetime | None:
    """When a (verified) token expires: the cookie dies with it."""
    exp: Any = jwt.decode(token, options={"verify_signature": False}).get("exp")
    try:
        return datetime.fromtimestamp(float(exp), UTC)
    except (TypeError, ValueError, OverflowError):
        return None


def cookie_options(request: Request, token: str) -> dict[str, Any]:
    """Set-Cookie options for a verified token: HttpOnly, SameSite=Strict, Secure unless the
    console is reached on a loopback address over plain HTTP (a local `cso up`)."""
    secure = request.url.scheme == "https" or (request.url.hostname or "") not in LOOPBACK
    until = expires(token)
    max_age = max(0, int((until - datetime.now(UTC)).total_seconds())) if until else None
    return {"key": COOKIE, "value": token, "httponly": True, "samesite": "strict", "secure": secure,
            "path": "/", "max_age": max_age}


class CrossSite(Exception):
    """A POST that another site's page sent: refused before it runs."""


def same_origin(request: Request) -> bool:
    """Whether a POST comes from the console's own pages (browsers send Origin on POST and
    Sec-Fetch-Site on every request; a client that sends neither, curl say, has no cookie to abuse)."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is None:
        return True
    parts = urlsplit(origin)
    return parts.netloc == request.headers.get("host", "") and parts.scheme == request.url.scheme


@dataclass
class Gate:
    """The console's checks, from the services' own Auth."""

    auth: Auth

    def session(self, request: Request) -> Session:
        """The signed-in official, verified on every request (a token may expire meanwhile)."""
        if not self.auth.enabled:
            return Session(ANONYMOUS, None)
        cached = getattr(request.state, "session", None)
        if isinstance(cached, Session):
            return cached
        token = request.cookies.get(COOKIE)
        if not token:
            raise SignIn("请先登录")
        try:
            who = self.auth.verify(token)
        except AuthError as e:
            raise SignIn(f"登录已失效，请重新登录（{e.field}: {e.message}）") from None
        session = Session(who, token)
        request.state.session = session
        return session

    def verify(self, token: str) -> Principal:
        """The sign-in form's check; AuthError names what is wrong with the token."""
        if not self.auth.enabled:
            return ANONYMOUS
        return self.auth.verify(token)

    async def guard(self, request: Request) -> None:
        access = access_of(request.scope.get("route"))
        if access is None:
            raise AuthError(403, "route", f"{request.method} {request.url.path} declares no access class; refused")
        if request.method == "POST" and not same_origin(request):
            raise CrossSite()
        if access in (Access.HEALTH, Access.PUBLIC):
            return
        if access is Access.WRITE and request.method != "POST":
            raise AuthError(405, "method", "修改只能通过 POST 提交")
        session = self.session(request)
        if isinstance(code := request.path_params.get("code"), str) and not session.who.covers(code):
            # The services refuse it too (with CSO_READ_AUTH=scoped); the console never asks.
            raise AuthError(403, "code", f"{code} 不在您的辖区（{session.who.region or '全国'}）内")
