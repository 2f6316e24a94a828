"""The console's reads and writes: the services' documented HTTP APIs, with the official's token.

Where the services are comes from settings (`cso up` passes the stack's own):

| variable | default |
| --- | --- |
| CSO_REGISTRY_URL | http://127.0.0.1:8001 |
| CSO_TARGETS_URL | http://127.0.0.1:8002 |
| CSO_TRAINING_URL | http://127.0.0.1:8003 |
| CSO_NOTIFY_URL | http://127.0.0.1:8004 |
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

from .session import Session

TIMEOUT = httpx.Timeout(15.0, connect=3.0)
DEFAULTS = {"registry": "http://127.0.0.1:8001", "targets": "http://127.0.0.1:8002",
            "training": "http://127.0.0.1:8003", "notify": "http://127.0.0.1:8004"}


def _url(name: str) -> str:
    return (os.environ.get(f"CSO_{name.upper()}_URL") or DEFAULTS[name]).rstrip("/")


@dataclass(frozen=True)
class Urls:
    registry: str = field(default_factory=lambda: _url("registry"))
    targets: str = field(default_factory=lambda: _url("targets"))
    training: str = field(default_factory=lambda: _url("training"))
    notify: str = field(default_factory=lambda: _url("notify"))


class Refused(Exception):
    """A service said no (or did not answer): its status and the reason it gave, for the page."""

    def __init__(self, status: int, message: str, service: str) -> None:
        self.status, self.message, self.service = status, message, service
        super().__init__(f"{service}: {status} {message}")


def part(value: str) -> str:
    """A path segment: a code, a plan id or a unit name (Chinese, with brackets) as the URL needs."""
    return quote(value, safe="")


def reason(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300] or response.reason_phrase
    errors = body.get("errors") if isinstance(body, dict) else None
    if isinstance(errors, list) and errors:
        return "; ".join(f"{e.get('field')}: {e.get('message')}" for e in errors if isinstance(e, dict))
    return str(body)[:300]


class Upstream:
    """One HTTP client for the console's life; every call names the session it acts for."""

    def __init__(self, urls: Urls, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.urls = urls
        # trust_env=False: an http_proxy in the environment must not see the services' traffic.
        self.client = httpx.AsyncClient(timeout=TIMEOUT, trust_env=False, transport=transport)

    async def close(self) -> None:
        await self.client.aclose()

    async def call(self, session: Session, service: str, method: str, path: str,
                   params: dict[str, Any] | None = None, content: bytes | None = None,
                   content_type: str | None = None, accept: tuple[int, ...] = (),
                   patience: float | None = None) -> httpx.Response:
        """The service's answer; Refused for a status >= 400 unless the caller reads it (`accept`)."""
        base = getattr(self.urls, service)
        headers = {**session.headers, **({"Content-Type": content_type} if content_type else {})}
        try:
            response = await self.client.request(method, base + path, params=params, headers=headers,
                                                 content=content, timeout=patience or TIMEOUT)
        except httpx.HTTPError as e:
            raise Refused(502, f"{service} 无应答（{base}）：{type(e).__name__}", service) from None
        if response.status_code >= 400 and response.status_code not in accept:
            raise Refused(response.status_code, reason(response), service)
        return response

    async def get(self, session: Session, service: str, path: str, **params: Any) -> Any:
        query = {k: v for k, v in params.items() if v is not None}
        return (await self.call(session, service, "GET", path, query)).json()

    async def post(self, session: Session, service: str, path: str) -> Any:
        return (await self.call(session, service, "POST", path)).json()
