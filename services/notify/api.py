"""notify's HTTP API: subscriptions, the in-app inbox and deliveries.

The routes are on `router`, which app.py includes; what a route needs comes in by injection: the
service's Runtime (`RuntimeDep`) and the caller (`Manager`, `Caller`: cso/auth.py, cso/deps.py).
The events notify consumes are in handlers.py; the send loop in sender.py, reminders and digests in
routing.py."""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID, uuid4

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response

from contracts import FieldError
from cso.auth import PERSONAL, WRITE, AuthError, Principal
from cso.commands import parse_body
from cso.deps import Caller, RuntimeDep, with_role
from cso.service import errors_body

from . import handlers, store
from .domain import SubscriptionIn

SERVICE = "notify"
CONSUMED = handlers.CONSUMED


def _json(body: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(json.loads(json.dumps(body, default=str, ensure_ascii=False)), status_code=status)


def _not_found(field: str, message: str) -> JSONResponse:
    return JSONResponse(errors_body([FieldError(field=field, message=message)]), status_code=404)


def _mask(secret: str | None) -> str | None:
    return None if secret is None else "…" + secret[-4:]


_EMAIL = re.compile(r"([^\s@<>\"']{1,64})@([^\s@<>\"']+)")
_URL = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://[^/\s\"'<>]+)[^\s\"'<>]*")


def mask_email(address: str | None) -> str | None:
    """z***@example.cn: which mailbox, to one who knows it; not an address to write to."""
    return None if address is None else _EMAIL.sub(lambda m: m.group(1)[0] + "***@" + m.group(2), address)


def mask_text(value: str | None) -> str | None:
    """Free text (a delivery's last error) without an e-mail address or a URL's path and query."""
    return None if value is None else mask_email(_URL.sub(lambda m: m.group(1) + "/…", value))


def subscription_view(row: dict[str, Any], show_secret: bool = False, masked: bool = False) -> dict[str, Any]:
    """A stored subscription as the API shows it; the webhook secret only when it was just set.
    `masked` (an unauthenticated caller, CSO_AUTH=off): the contacts masked, no part of the secret."""
    webhook = None
    if row["webhook_url"]:
        secret = row["webhook_secret"]
        webhook = {"url": mask_text(row["webhook_url"]) if masked else row["webhook_url"],
                   "secret": None if masked else secret if show_secret else _mask(secret)}
    digest_time = row["digest_time"]
    return {
        "id": row["id"], "recipient": row["recipient"], "language": row["language"],
        "channels": {"email": mask_email(row["email"]) if masked else row["email"], "webhook": webhook,
                     "inbox": row["inbox"]},
        "events": list(row["events"]), "statuses": list(row["statuses"]) if row["statuses"] is not None else None,
        "region": row["region"], "include_subregions": row["include_subregions"],
        "frequency": row["frequency"], "digest_time": digest_time.strftime("%H:%M") if digest_time else None,
        "timezone": row["timezone"], "reminder_days": list(row["reminder_days"]),
        "created_at": row["created_at"], "updated_at": row["updated_at"],
    }


def _values(sub: SubscriptionIn, sub_id: UUID, secret: str | None) -> dict[str, Any]:
    return {"id": sub_id, "recipient": sub.recipient, "language": sub.language,
            "email": sub.channels.email,
            "webhook_url": sub.channels.webhook.url if sub.channels.webhook else None,
            "webhook_secret": secret, "inbox": sub.channels.inbox, "events": list(sub.events),
            "statuses": [s.value for s in sub.statuses] if sub.statuses is not None else None,
            "region": sub.region, "include_subregions": sub.include_subregions, "frequency": sub.frequency,
            "digest_time": sub.effective_digest_time, "timezone": sub.timezone,
            "reminder_days": list(sub.reminder_days)}


async def _parse(request: Request) -> SubscriptionIn:
    return parse_body(SubscriptionIn, await request.body(), 64 * 1024, "a subscription")


def _may_manage(who: Principal, recipient: str, region: str) -> None:
    """A subscriber manages their own subscriptions (recipient = the token's subject), a notify
    admin anyone's; either only within the token's region."""
    who.require_self_or(recipient, "notify_admin")
    who.require_region(region)


NOTIFY_ADMIN = "notify_admin"


def _contacts_admin(who: Principal) -> bool:
    """Whether the caller may read others' subscriptions and deliveries (in their region): the
    notify_admin role itself; `admin` may change subscriptions but, as with other personal data,
    not read someone's contacts."""
    return who.authenticated and NOTIFY_ADMIN in who.roles


def _may_read(who: Principal, recipient: str, region: str) -> None:
    """A subscription (its e-mail, webhook, secret's end): its recipient's, or a notify_admin's
    of its region, to read."""
    if not who.authenticated:
        return                      # CSO_AUTH=off: shown masked
    if recipient == who.sub:
        return
    if not _contacts_admin(who):
        raise AuthError(403, "recipient", f"{recipient!r} is not you ({who.sub!r}); reading others' "
                        f"subscriptions needs {NOTIFY_ADMIN}")
    who.require_region(region)


def _visible(who: Principal, recipient: str | None, region: str | None) -> tuple[str | None, str | None]:
    """The (recipient, region prefix) a listing is limited to: a notify_admin sees their region,
    anyone else only what is theirs (asking for another recipient is refused)."""
    if not who.authenticated:
        return recipient, None
    if _contacts_admin(who):
        if region is not None:
            who.require_region(region)
        return recipient, who.region or None
    if recipient is not None and recipient != who.sub:
        raise AuthError(403, "recipient", f"{recipient!r} is not you ({who.sub!r}); listing others' "
                        f"needs {NOTIFY_ADMIN}")
    return who.sub, None


Manager = Annotated[Principal, Depends(with_role("subscriber", NOTIFY_ADMIN))]
# Personal data (cso/auth.py): an inbox, a subscription, deliveries are their recipient's (the
# token's subject) or a notify admin's to read; with CSO_AUTH=off they are shown masked.
router = APIRouter()


@router.post("/subscriptions", status_code=201, **WRITE)
async def create_subscription(runtime: RuntimeDep, request: Request, who: Manager) -> JSONResponse:
    """Subscribe a recipient; the response shows the webhook secret, once."""
    sub = await _parse(request)
    _may_manage(who, sub.recipient, sub.region)
    secret = None
    if sub.channels.webhook is not None:
        secret = sub.channels.webhook.secret or secrets.token_urlsafe(32)
    async with runtime.engine.begin() as conn:
        row = await store.insert_subscription(conn, _values(sub, uuid4(), secret))
    return _json(subscription_view(row, show_secret=True), 201)

@router.get("/subscriptions", **PERSONAL)
async def list_subscriptions(runtime: RuntimeDep, who: Caller, recipient: str | None = None,
                             region: str | None = None, limit: int = Query(100, ge=1, le=1000),
                             after: UUID | None = None) -> JSONResponse:
    """Subscriptions: a recipient's own (the token's `sub`), or a notify_admin's region's."""
    recipient, under = _visible(who, recipient, region)
    async with runtime.engine.connect() as conn:
        rows = await store.list_subscriptions(conn, recipient, region, limit, after, under)
    masked = not who.authenticated
    return _json({"items": [subscription_view(r, masked=masked) for r in rows],
                  "next_after": rows[-1]["id"] if len(rows) == limit else None})

@router.get("/subscriptions/{sub_id}", **PERSONAL)
async def get_subscription(runtime: RuntimeDep, sub_id: UUID, who: Caller) -> JSONResponse:
    """One subscription: for its recipient, or a notify_admin of its region."""
    async with runtime.engine.connect() as conn:
        row = await store.load_subscription(conn, sub_id)
    if row is None:
        return _not_found("id", f"no subscription {sub_id}")
    _may_read(who, row["recipient"], row["region"])
    return _json(subscription_view(row, masked=not who.authenticated))

@router.put("/subscriptions/{sub_id}", **WRITE)
async def replace_subscription(runtime: RuntimeDep, sub_id: UUID, request: Request, who: Manager) -> JSONResponse:
    """Replace a subscription; a webhook keeps its secret unless a new one is given."""
    sub = await _parse(request)
    _may_manage(who, sub.recipient, sub.region)
    async with runtime.engine.begin() as conn:
        old = await store.load_subscription(conn, sub_id, lock=True)
        if old is None:
            return _not_found("id", f"no subscription {sub_id}")
        _may_manage(who, old["recipient"], old["region"])
        secret, fresh = None, False
        if sub.channels.webhook is not None:
            secret = sub.channels.webhook.secret or old["webhook_secret"]
            if secret is None:
                secret = secrets.token_urlsafe(32)
            fresh = secret != old["webhook_secret"]
        row = await store.update_subscription(conn, _values(sub, sub_id, secret))
    assert row is not None
    return _json(subscription_view(row, show_secret=fresh))

@router.delete("/subscriptions/{sub_id}", **WRITE)
async def delete_subscription(runtime: RuntimeDep, sub_id: UUID, who: Manager) -> Response:
    async with runtime.engine.begin() as conn:
        old = await store.load_subscription(conn, sub_id, lock=True)
        if old is not None:
            _may_manage(who, old["recipient"], old["region"])
        cancelled = await store.delete_subscription(conn, sub_id)
    if cancelled is None:
        return _not_found("id", f"no subscription {sub_id}")
    return _json({"ok": True, "id": sub_id, "cancelled_deliveries": cancelled})

def inbox_cursor(at: datetime, message_id: UUID) -> str:
    """A page's `next`: where the following page starts (the last message's created_at and id).
    Opaque to clients, who hand it back as `before`."""
    return base64.urlsafe_b64encode(f"{at.isoformat()}|{message_id}".encode()).decode().rstrip("=")


def read_inbox_cursor(value: str) -> tuple[datetime, UUID]:
    """`before` back into (created_at, id); ValueError when it is no cursor this API gave."""
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()
        at, _, message_id = raw.partition("|")
        moment = datetime.fromisoformat(at)
        if moment.tzinfo is None:
            raise ValueError("no time zone")
        return moment, UUID(message_id)
    except (ValueError, UnicodeDecodeError, binascii.Error) as e:
        raise ValueError(f"not a cursor of this inbox ({e})") from None


@router.get("/inbox/{recipient}", **PERSONAL)
async def inbox(runtime: RuntimeDep, recipient: str, who: Caller, unread: bool = False,
                limit: int = Query(50, ge=1, le=500),
                before: str | None = Query(None, max_length=200)) -> JSONResponse:
    """A recipient's in-app messages, newest first (only the unread ones with unread=true), a page
    of `limit` at a time: `next` is the cursor of the following page (give it as `before`, with the
    same `unread`), null on the last one."""
    who.require_self_or(recipient, "notify_admin")
    try:
        cursor = read_inbox_cursor(before) if before is not None else None
    except ValueError as e:
        return JSONResponse(errors_body([FieldError(field="before", message=str(e))]), status_code=422)
    async with runtime.engine.connect() as conn:
        page = await store.inbox(conn, recipient, unread, limit, cursor)
    page["next"] = inbox_cursor(*page["next"]) if page["next"] is not None else None
    return _json(page)

@router.post("/inbox/{recipient}/{message_id}/read", **WRITE)
async def read(runtime: RuntimeDep, recipient: str, message_id: UUID, who: Caller) -> JSONResponse:
    who.require_self_or(recipient, "notify_admin")
    async with runtime.engine.begin() as conn:
        row = await store.mark_read(conn, recipient, message_id)
    if row is None:
        return _not_found("id", f"no message {message_id} in the inbox of {recipient}")
    return _json({"ok": True, "id": row.id, "read_at": row.read_at})

@router.get("/deliveries", **PERSONAL)
async def deliveries(runtime: RuntimeDep, who: Caller, subscription_id: UUID | None = None,
                     event_id: UUID | None = None,
                     status: str | None = Query(None, pattern="^(pending|sent|failed|cancelled)$"),
                     limit: int = Query(100, ge=1, le=1000)) -> JSONResponse:
    """Deliveries (the send queue and its history), oldest first: a recipient's own, or those
    of a notify_admin's region's subscriptions."""
    recipient, under = _visible(who, None, None)
    async with runtime.engine.connect() as conn:
        items = await store.deliveries(conn, subscription_id, event_id, status, limit, recipient, under)
    if not who.authenticated:
        items = [i | {"last_error": mask_text(i["last_error"])} for i in items]
    return _json({"items": items})
