"""How a notification leaves: e-mail over SMTP and signed webhooks (the inbox is a table, written by
the sender in the transaction that marks the delivery sent).

Each send either returns (delivered) or raises `SendError` saying whether another attempt could
help (`permanent=False`: a timeout, a 5xx, a refused connection) or not (a 4xx, an address the
mail server refuses for good)."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any

import aiosmtplib
import httpx

from .domain import sign
from .settings import NotifySettings


class SendError(Exception):
    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


def webhook_body(d: Any) -> bytes:
    """The JSON a webhook receives: the notification and the event's payload, with ids to dedupe on."""
    data = dict(d.data) | {"delivery_id": str(d.id), "subscription_id": str(d.subscription_id),
                           "recipient": d.recipient}
    return json.dumps(data, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()


def webhook_headers(secret: str, body: bytes, d: Any, now: float | None = None) -> dict[str, str]:
    timestamp = int(now if now is not None else time.time())
    return {"Content-Type": "application/json; charset=utf-8", "User-Agent": "cso-notify/1",
            "X-Cso-Timestamp": str(timestamp), "X-Cso-Signature": sign(secret, timestamp, body),
            "X-Cso-Delivery": str(d.id), "X-Cso-Event": d.kind}


# A receiver answering one of these may accept a later attempt; any other 4xx will not change.
_TRANSIENT_4XX = {408, 409, 425, 429}


class Webhooks:
    def __init__(self, config: NotifySettings) -> None:
        self.config = config
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(config.send_timeout_seconds), follow_redirects=False,
            limits=httpx.Limits(max_connections=config.pool_size * 2,
                                max_keepalive_connections=config.pool_size))

    async def send(self, d: Any) -> None:
        body = webhook_body(d)
        try:
            response = await self.client.post(d.webhook_url, content=body,
                                              headers=webhook_headers(d.webhook_secret, body, d))
        except httpx.TimeoutException:
            raise SendError(f"webhook timed out after {self.config.send_timeout_seconds}s") from None
        except httpx.HTTPError as e:
            raise SendError(f"webhook unreachable: {type(e).__name__}: {e}") from None
        code = response.status_code
        if 200 <= code < 300:
            return
        permanent = 300 <= code < 500 and code not in _TRANSIENT_4XX
        raise SendError(f"webhook answered HTTP {code}: {response.text[:200]}", permanent=permanent)

    async def close(self) -> None:
        await self.client.aclose()


class Mailer:
    def __init__(self, config: NotifySettings) -> None:
        self.config = config

    def message(self, d: Any) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = self.config.smtp_from
        msg["To"] = d.email
        msg["Subject"] = d.subject
        msg["Date"] = format_datetime(datetime.now(timezone.utc))
        # The same delivery keeps its Message-ID across attempts: a mail system can drop a repeat.
        msg["Message-ID"] = f"<{d.id}@cso-notify>"
        msg["X-Cso-Delivery"] = str(d.id)
        msg["X-Cso-Event"] = str(d.event_id)
        msg.set_content(d.body)
        return msg

    async def send(self, d: Any) -> None:
        c = self.config
        try:
            await aiosmtplib.send(self.message(d), hostname=c.smtp_host, port=c.smtp_port,
                                  username=c.smtp_username, password=c.smtp_password,
                                  use_tls=c.smtp_tls, start_tls=c.smtp_starttls,
                                  timeout=c.send_timeout_seconds)
        except aiosmtplib.SMTPRecipientsRefused as e:
            codes = [r.code for r in e.recipients]
            raise SendError(f"SMTP refused {d.email}: {e}", permanent=all(code >= 500 for code in codes)) from None
        except aiosmtplib.SMTPResponseException as e:
            raise SendError(f"SMTP {e.code}: {e.message}", permanent=e.code >= 500) from None
        except (aiosmtplib.SMTPException, OSError) as e:
            raise SendError(f"SMTP unreachable: {type(e).__name__}: {e}") from None
