"""The officials' web console, in Chinese (zh-CN): `GET /` answers a page, not a 404.

A service of its own beside the four (`cso up` starts it on :8000), not a part of targets: it owns
no database and no NATS user, and reads only what the services already answer over their documented
HTTP APIs, with the signed-in official's own token. So it sees exactly what that token may see
(the services check again), it can be restarted, scaled or left out without touching the figures,
and targets keeps no templates, cookies or sessions of people.

Pages (server-rendered Jinja2 templates; htmx opens a tree's branch in place; both, and the CSS,
ship inside this package: no CDN):

| page | what | from |
| --- | --- | --- |
| /regions/{code} | a region, its targets (status, trend), its children | targets /coverage/{code}(/series) |
| /behind/{code} | communities, townships under each target's threshold | targets /behind/{code} |
| /plans(/{id}(/tasks/{no})) | plans, ledgers, lines, history, evidence | targets /plans… |
| /units/{unit} | a unit's to-do list across plans | targets /units/{unit}/todo |
| /training/{code} | core-talent training person-times, per child, per month | targets' coverage |
| /inbox | the signed-in official's messages | notify /inbox/{sub} |
| /upload | 上传表格: the organizations sheet, dry run then apply | registry /imports |

Sign-in, cookies and access classes: services/console/session.py. Where the services are:
services/console/upstream.py. Launched like the others: `python -m cso.http_server
services.console.app:create_app`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from fastapi import Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

from cso.auth import HEALTH, PERSONAL, PUBLIC, SCOPED, WRITE, AuthError, unclassified
from cso.settings import Settings

from . import labels, upload
from .session import COOKIE, CrossSite, Gate, Session, SignIn, cookie_options
from .upstream import Refused, Upstream, Urls, part

SERVICE = "console"
HERE = Path(__file__).resolve().parent
STATIC = {"htmx.min.js": "text/javascript", "console.css": "text/css", "favicon.svg": "image/svg+xml"}
# No script or style from anywhere but here, no framing: what "no CDN" means in the browser too.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
TIER_LENGTHS = (2, 4, 6, 9, 12)
NO_FILE = File(None)   # the upload form's file field, optional so that its absence is named
log = logging.getLogger(__name__)


def ancestors(code: str, scope: str) -> list[str]:
    """The codes above `code` that a token of `scope` may open, province first (the breadcrumb)."""
    return [code[:n] for n in TIER_LENGTHS if n < len(code) and code[:n].startswith(scope)]


def create_app(settings: Settings | None = None, urls: Urls | None = None,
               transport: httpx.AsyncBaseTransport | None = None) -> FastAPI:
    settings = settings or Settings()
    from cso.auth import Auth

    gate = Gate(Auth.from_settings(settings))
    if not gate.auth.enabled:
        log.warning("console: CSO_AUTH=off: nobody signs in; every page shows every region")
    upstream = Upstream(urls or Urls(), transport)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals.update(labels=labels, q=part)
    templates.env.filters["number"] = labels.number

    @asynccontextmanager
    async def lifespan(started: FastAPI) -> AsyncIterator[None]:
        if missing := unclassified(started):
            raise RuntimeError(f"{SERVICE}: routes without an access class (cso/auth.py): " + ", ".join(missing))
        try:
            yield
        finally:
            await upstream.close()

    app = FastAPI(title="cso console", lifespan=lifespan, dependencies=[Depends(gate.guard)],
                  docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    def page(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        session = getattr(request.state, "session", None)
        return templates.TemplateResponse(request, name, {"session": session, "auth": gate.auth.enabled,
                                                          **context}, status_code=status)

    def error_page(request: Request, status: int, title: str, message: str) -> HTMLResponse:
        return page(request, "error.html", status, title=title, message=message)

    @app.exception_handler(SignIn)
    async def sign_in(request: Request, e: SignIn) -> Response:
        if request.headers.get("hx-request"):
            # htmx follows a redirect in place; the whole page must go to sign in.
            return Response(status_code=401, headers={"HX-Redirect": "/login"})
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        response = RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
        if request.cookies.get(COOKIE):
            response.delete_cookie(COOKIE, path="/")
        return response

    @app.exception_handler(AuthError)
    async def refused(request: Request, e: AuthError) -> Response:
        return error_page(request, e.status, "无权访问", f"{e.field}：{e.message}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> Response:
        title = {404: "未找到", 405: "不支持的请求方法"}.get(e.status_code, "请求有误")
        return error_page(request, e.status_code, title, f"{request.method} {request.url.path}")

    @app.exception_handler(CrossSite)
    async def cross_site(request: Request, _: CrossSite) -> Response:
        return error_page(request, 403, "请求被拒绝", "来自其他网站的提交不被接受（origin）")

    @app.exception_handler(Refused)
    async def service_refused(request: Request, e: Refused) -> Response:
        if e.status == 401:
            return await sign_in(request, SignIn(e.message))
        title = {403: "无权访问", 404: "未找到", 422: "请求有误"}.get(e.status, "服务暂不可用")
        return error_page(request, e.status if e.status in (403, 404, 422) else 502, title,
                          f"{e.service}：{e.message}")

    who = Depends(gate.session)

    # ------------------------------------------------------------------ health and assets

    @app.get("/healthz", **HEALTH)
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": SERVICE}

    @app.get("/readyz", **HEALTH)
    async def readyz() -> Response:
        # Ready when it can serve its pages: targets answers (the other services' pages say
        # themselves when one of them does not).
        try:
            answer = await upstream.client.get(upstream.urls.targets + "/healthz")
            targets = "ok" if answer.status_code == 200 else f"targets: {answer.status_code}"
        except httpx.HTTPError as e:
            targets = f"targets: {type(e).__name__}"
        ok = targets == "ok"
        from fastapi.responses import JSONResponse

        return JSONResponse({"status": "ok" if ok else "unavailable", "targets": targets,
                             "auth": gate.auth.mode}, status_code=200 if ok else 503)

    @app.get("/static/{name}", **PUBLIC)
    async def static(name: str) -> Response:
        if name not in STATIC:
            return Response(status_code=404)
        content = (HERE / "static" / name).read_bytes()
        return Response(content, media_type=STATIC[name],
                        headers={"Cache-Control": "public, max-age=3600"})

    # ------------------------------------------------------------------ sign-in

    @app.get("/login", response_class=HTMLResponse, **PUBLIC)
    async def login_form(request: Request, next: str = "/") -> HTMLResponse:
        return page(request, "login.html", next=_local(next), error=None)

    @app.post("/login", **PUBLIC)
    async def login(request: Request, token: str = Form(""), next: str = Form("/")) -> Response:
        token = token.strip()
        try:
            if not token:
                raise AuthError(401, "token", "请粘贴令牌（cso token --role … --region … 签发）")
            gate.verify(token)
        except AuthError as e:
            return page(request, "login.html", 401, next=_local(next), error=f"{e.field}：{e.message}")
        response = RedirectResponse(_local(next), status_code=303)
        if gate.auth.enabled:
            response.set_cookie(**cookie_options(request, token))
        return response

    @app.post("/logout", **PUBLIC)
    async def logout() -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    # ------------------------------------------------------------------ the region tree

    @app.get("/", **SCOPED)
    async def home(request: Request, session: Session = who) -> Response:
        if session.who.region:
            return RedirectResponse(f"/regions/{session.who.region}", status_code=303)
        # A national official: the provinces the catalogue has targets in.
        catalogue = await upstream.get(session, "targets", "/targets")
        provinces = sorted({str(t["spec"].get("scope_region") or "")[:2] for t in catalogue} - {""})
        regions = await asyncio.gather(*(upstream.get(session, "targets", f"/coverage/{p}") for p in provinces))
        return page(request, "home.html", regions=regions)

    async def trends(session: Session, code: str, targets: list[dict[str, Any]]) -> dict[str, str]:
        figures = sorted({t["figure"] for t in targets if t.get("figure")})
        series = await asyncio.gather(*(upstream.get(session, "targets", f"/coverage/{part(code)}/series",
                                                     figure=f) for f in figures), return_exceptions=True)
        return {f: labels.trend(s) if isinstance(s, list) else "—" for f, s in zip(figures, series, strict=True)}

    @app.get("/regions/{code}", response_class=HTMLResponse, **SCOPED)
    async def region(request: Request, code: str, as_of: str | None = None, session: Session = who) -> HTMLResponse:
        body = await upstream.get(session, "targets", f"/coverage/{part(code)}", as_of=as_of or None)
        return page(request, "region.html", region=body, trend=await trends(session, code, body.get("targets") or []),
                    crumbs=await _names(session, ancestors(body["code"], session.who.region)), as_of=as_of)

    @app.get("/regions/{code}/children", response_class=HTMLResponse, **SCOPED)
    async def branch(request: Request, code: str, depth: int = 1, as_of: str | None = None,
                     session: Session = who) -> HTMLResponse:
        """The rows of a region's children, for htmx to open a branch of the tree in place."""
        body = await upstream.get(session, "targets", f"/coverage/{part(code)}", as_of=as_of or None)
        return page(request, "rows.html", children=body.get("children") or [], depth=min(depth, 5),
                    day=as_of or None)

    async def _names(session: Session, codes: list[str]) -> list[tuple[str, str]]:
        bodies = await asyncio.gather(*(upstream.get(session, "targets", f"/coverage/{c}") for c in codes),
                                      return_exceptions=True)
        return [(c, b["name"] if isinstance(b, dict) else c) for c, b in zip(codes, bodies, strict=True)]

    @app.get("/behind/{code}", response_class=HTMLResponse, **SCOPED)
    async def behind(request: Request, code: str, limit: int = Query(20, ge=1, le=1000),
                     target: str | None = None, session: Session = who) -> HTMLResponse:
        body = await upstream.get(session, "targets", f"/behind/{part(code)}", limit=limit, target=target or None)
        return page(request, "behind.html", body=body, code=code, target=target,
                    crumbs=await _names(session, ancestors(code, session.who.region)))

    @app.get("/training/{code}", response_class=HTMLResponse, **SCOPED)
    async def training(request: Request, code: str, session: Session = who) -> HTMLResponse:
        body, series = await asyncio.gather(
            upstream.get(session, "targets", f"/coverage/{part(code)}"),
            upstream.get(session, "targets", f"/coverage/{part(code)}/series", figure="training_person_times"))
        return page(request, "training.html", region=body, series=series,
                    crumbs=await _names(session, ancestors(code, session.who.region)))

    # ------------------------------------------------------------------ plans

    def _covers(session: Session, scope: Any) -> bool:
        return session.who.covers(str(scope)) if scope is not None else not session.who.region

    @app.get("/plans", response_class=HTMLResponse, **SCOPED)
    async def plans(request: Request, session: Session = who) -> HTMLResponse:
        listed = await upstream.get(session, "targets", "/plans")
        # A plan of a region above the official's is not theirs to read (targets says the same
        # with CSO_READ_AUTH=scoped); their work in it is on their units' to-do lists.
        return page(request, "plans.html", plans=[p for p in listed if _covers(session, p.get("scope"))])

    async def ledger_of(session: Session, plan_id: str) -> dict[str, Any]:
        body: dict[str, Any] = await upstream.get(session, "targets", f"/plans/{part(plan_id)}")
        scope = body.get("plan", {}).get("scope")
        if not _covers(session, scope):
            raise AuthError(403, "plan_id", f"计划 {plan_id} 的范围 {scope} 不在您的辖区 "
                                            f"{session.who.region or '全国'} 内")
        return body

    @app.get("/plans/{plan_id}", response_class=HTMLResponse, **SCOPED)
    async def plan(request: Request, plan_id: str, session: Session = who) -> HTMLResponse:
        return page(request, "plan.html", ledger=await ledger_of(session, plan_id))

    @app.get("/plans/{plan_id}/tasks/{task_no}", response_class=HTMLResponse, **SCOPED)
    async def task(request: Request, plan_id: str, task_no: str, session: Session = who) -> HTMLResponse:
        ledger = await ledger_of(session, plan_id)
        body = await upstream.get(session, "targets", f"/plans/{part(plan_id)}/tasks/{part(task_no)}")
        return page(request, "task.html", plan=ledger["plan"], task=body)

    @app.get("/plans/{plan_id}/evidence/{evidence_id}", **SCOPED)
    async def evidence(plan_id: str, evidence_id: str, session: Session = who) -> Response:
        await ledger_of(session, plan_id)
        answer = await upstream.call(session, "targets", "GET",
                                     f"/plans/{part(plan_id)}/evidence/{part(evidence_id)}")
        keep = ("content-type", "content-disposition", "x-checksum-sha256")
        return Response(answer.content, headers={k: v for k, v in answer.headers.items() if k.lower() in keep})

    @app.get("/units/{unit}", response_class=HTMLResponse, **SCOPED)
    async def unit(request: Request, unit: str, session: Session = who) -> HTMLResponse:
        body = await upstream.get(session, "targets", f"/units/{part(unit)}/todo")
        items = [i for i in body.get("items") or [] if _covers(session, i.get("region"))]
        return page(request, "unit.html", unit=unit, todo=body, items=items)

    # ------------------------------------------------------------------ the inbox

    @app.get("/inbox", response_class=HTMLResponse, **PERSONAL)
    async def inbox(request: Request, unread: bool = False, session: Session = who) -> HTMLResponse:
        if not session.who.authenticated:
            return error_page(request, 200, "消息", "未启用身份验证（CSO_AUTH=off）：没有登录用户，也就没有收件箱")
        body = await upstream.get(session, "notify", f"/inbox/{part(session.who.sub)}", unread=unread or None)
        return page(request, "inbox.html", inbox=body, unread=unread)

    @app.post("/inbox/{message_id}/read", **WRITE)
    async def mark_read(request: Request, message_id: str, session: Session = who) -> Response:
        await upstream.post(session, "notify", f"/inbox/{part(session.who.sub)}/{part(message_id)}/read")
        return RedirectResponse("/inbox", status_code=303)

    # ------------------------------------------------------------------ the spreadsheet upload

    @app.get("/upload", response_class=HTMLResponse, **SCOPED)
    async def upload_form(request: Request, session: Session = who) -> HTMLResponse:
        return page(request, "upload.html", result=None, error=None, words=upload.STATUS_WORDS)

    @app.get("/upload/template.xlsx", **SCOPED)
    async def upload_template(session: Session = who) -> Response:
        answer = await upstream.call(session, "registry", "GET", "/imports/template.xlsx")
        keep = ("content-type", "content-disposition")
        return Response(answer.content, headers={k: v for k, v in answer.headers.items() if k.lower() in keep})

    @app.post("/upload", response_class=HTMLResponse, **WRITE)
    async def upload_sheet(request: Request, file: UploadFile | None = NO_FILE, action: str = Form("dry_run"),
                           partial: bool = Form(False), session: Session = who) -> HTMLResponse:
        """A dry run (the default) or an apply of the picked file; the verdicts either way."""
        if action not in ("dry_run", "apply"):
            return page(request, "upload.html", 422, result=None, words=upload.STATUS_WORDS,
                        error=f"action：只能是 dry_run 或 apply，不是 {action!r}")
        try:
            data = await upload.read(file)
        except upload.Unreadable as e:
            return page(request, "upload.html", 422, result=None, words=upload.STATUS_WORDS,
                        error=f"{e.field}：{e.message}")
        result = await upload.send(upstream, session, data, apply=action == "apply", partial=partial)
        return page(request, "upload.html", result=result, error=None, words=upload.STATUS_WORDS,
                    filename=file.filename if file else "", partial=partial)

    return app


def _local(target: str) -> str:
    """Where to go after signing in: a path of this console only (never another site)."""
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/"
