"""The spreadsheet upload page's one step: the file a clerk picked, sent to registry's `POST /imports`.

The browser posts an ordinary multipart form (no script of ours); the console reads the file and
forwards its bytes as the body registry takes, with the clerk's own token, so registry decides who
may import where (the registrar role, rows inside the token's region) exactly as for `cso import`.
"""

from __future__ import annotations

from typing import Any

from fastapi import UploadFile

from .session import Session
from .upstream import Refused, Upstream, reason

# registry's own cap on a sheet (services/registry/sheet.py MAX_SHEET_BYTES); the console stops
# reading there rather than hold more in memory and have registry refuse it anyway.
MAX_UPLOAD_BYTES = 16 * 1024 * 1024
# A sheet of many thousand rows takes registry a while to decide and apply.
APPLY_TIMEOUT = 600.0
STATUS_WORDS = {"ok": "可导入", "applied": "已导入", "already_applied": "此前已导入",
                "held": "未导入（表中有错误行）", "refused": "拒绝"}


class Unreadable(Exception):
    """The form itself is wrong (no file, an empty one, too large): the field and why, in Chinese."""

    def __init__(self, field: str, message: str) -> None:
        self.field, self.message = field, message
        super().__init__(f"{field}: {message}")


async def read(file: UploadFile | None) -> bytes:
    if file is None or not file.filename:
        raise Unreadable("file", "请选择要上传的表格（.xlsx 或 .csv）")
    data = await file.read(MAX_UPLOAD_BYTES + 1)
    if len(data) > MAX_UPLOAD_BYTES:
        raise Unreadable("file", f"文件超过 {MAX_UPLOAD_BYTES // (1024 * 1024)} MB，请拆分后分批上传")
    if not data:
        raise Unreadable("file", f"文件 {file.filename} 是空的")
    return data


async def send(upstream: Upstream, session: Session, data: bytes, apply: bool, partial: bool) -> dict[str, Any]:
    """registry's result (counts, a verdict per row). A dry run answers 200; an apply 200, 207 (in
    part) or 422 (refused rows, nothing applied), all with the verdicts. Anything else (no role, an
    unreadable file) is a refusal with its reason."""
    params = {"dry_run": str(not apply).lower(), "partial": str(partial).lower()}
    response = await upstream.call(session, "registry", "POST", "/imports", params,
                                   content=data, content_type="application/octet-stream", accept=(422,),
                                   patience=APPLY_TIMEOUT)
    body = response.json() if response.headers.get("content-type", "").startswith("application/json") else None
    if not isinstance(body, dict) or "verdicts" not in body:
        raise Refused(response.status_code, reason(response), "registry")
    return body
