"""What a service's HTTP routes receive by injection (FastAPI `Depends`), so that routes live on
an `APIRouter` at module level instead of closures inside a build function: the service's
`Runtime` (put on `app.state.runtime` by the service's create_app) and the caller (cso/auth.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, cast

from fastapi import Depends, Request

from .auth import Principal
from .service import Runtime


def runtime_of(request: Request) -> Runtime:
    """The service's Runtime, put on the app by its create_app."""
    return cast(Runtime, request.app.state.runtime)


RuntimeDep = Annotated[Runtime, Depends(runtime_of)]


def with_role(*roles: str) -> Callable[[Request, Runtime], Awaitable[Principal]]:
    """A dependency: a caller holding one of `roles` (its region is checked by the route)."""
    async def holder(request: Request, runtime: RuntimeDep) -> Principal:
        return await runtime.auth.role(*roles)(request)
    return holder


async def caller(request: Request, runtime: RuntimeDep) -> Principal:
    """Any caller with a valid token (anyone with CSO_AUTH=off)."""
    return await runtime.auth.caller()(request)


Caller = Annotated[Principal, Depends(caller)]
