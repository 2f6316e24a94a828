"""Evidence files: which types are taken (by content, not by name), at most how large."""

from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import dataclass

# --- evidence --------------------------------------------------------------------------------

MAX_EVIDENCE_BYTES = 10 * 1024 * 1024
MEDIA_TYPES = {
    "pdf": "application/pdf",
    "jpg": "image/jpeg",
    "png": "image/png",
    "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}
EXTENSIONS = {"pdf": "pdf", "jpg": "jpg", "jpeg": "jpg", "png": "png", "docx": "docx", "xlsx": "xlsx"}


@dataclass(frozen=True)
class EvidenceFile:
    filename: str
    file_type: str
    media_type: str
    size: int
    sha256: str


class EvidenceError(ValueError):
    """A file refused as evidence; `status` is the HTTP answer (413 too large, 415 not an
    accepted type, 422 otherwise)."""

    def __init__(self, field_: str, message: str, status: int = 422) -> None:
        self.field, self.message, self.status = field_, message, status
        super().__init__(f"{field_}: {message}")


def sniff(content: bytes) -> str | None:
    """The evidence type by its magic bytes (Office files: a zip holding their main part)."""
    if content.startswith(b"%PDF-"):
        return "pdf"
    if content.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if content.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if content.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(io.BytesIO(content)) as z:
                names = set(z.namelist())
        except (zipfile.BadZipFile, ValueError, OSError):
            return None
        if "[Content_Types].xml" in names:
            if "word/document.xml" in names:
                return "docx"
            if "xl/workbook.xml" in names:
                return "xlsx"
    return None


def check_evidence(filename: str, content: bytes) -> EvidenceFile:
    """Accept a pdf, jpg, png, docx or xlsx of at most 10 MB whose name's extension agrees with
    its content; raise `EvidenceError` naming what is wrong."""
    name = (filename or "").strip()
    if not name or "/" in name or "\\" in name or len(name) > 255 or any(ord(c) < 32 for c in name):
        raise EvidenceError("filename", f"expected a plain file name such as report.pdf, got {filename!r}")
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    if ext not in EXTENSIONS:
        raise EvidenceError("filename", f"{name!r}: evidence is a .pdf, .jpg, .png, .docx or .xlsx file", 415)
    if not content:
        raise EvidenceError("content", f"{name!r} is empty")
    if len(content) > MAX_EVIDENCE_BYTES:
        raise EvidenceError("content", f"{name!r} is {len(content)} bytes; evidence is at most "
                            f"{MAX_EVIDENCE_BYTES} bytes (10 MB)", 413)
    kind = sniff(content)
    if kind is None:
        raise EvidenceError("content", f"{name!r} is not a pdf, jpg, png, docx or xlsx file by its content", 415)
    if kind != EXTENSIONS[ext]:
        raise EvidenceError("content", f"{name!r} is named .{ext} but its content is a {kind} file", 415)
    return EvidenceFile(filename=name, file_type=kind, media_type=MEDIA_TYPES[kind], size=len(content),
                        sha256=hashlib.sha256(content).hexdigest())


# A number an evidence file carries (活动开展10次: the activities it documents): a whole number,
# at most this (no community holds a million activities: a typo, not a record).
MAX_EVIDENCE_COUNT = 1_000_000


def check_count(value: object, field_: str = "count") -> int | None:
    """The number an evidence file carries, None when it carries none; raise `EvidenceError` (422)
    for anything but a whole number from 0 to MAX_EVIDENCE_COUNT (digits, when it comes as text:
    a query parameter)."""
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_EVIDENCE_COUNT:
        raise EvidenceError(field_, f"expected a whole number from 0 to {MAX_EVIDENCE_COUNT}, got {value!r}")
    return value
