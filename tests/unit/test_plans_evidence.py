"""Evidence files: pdf, jpg, png, docx and xlsx by their magic bytes, at most 10 MB, the name's
extension agreeing with the content, kept with a SHA-256 checksum."""

from __future__ import annotations

import hashlib
import io
import zipfile

import pytest

from services.targets.plans import domain as d

PDF = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n"
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"
JPG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"


def office(main: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("[Content_Types].xml", "<Types/>")
        z.writestr(main, "<x/>")
    return buffer.getvalue()


@pytest.mark.parametrize(("name", "content", "kind"), [
    ("报告.pdf", PDF, "pdf"), ("photo.JPG", JPG, "jpg"), ("photo.jpeg", JPG, "jpg"), ("a.png", PNG, "png"),
    ("自评.docx", office("word/document.xml"), "docx"), ("台账.xlsx", office("xl/workbook.xml"), "xlsx"),
])
def test_accepted_types(name: str, content: bytes, kind: str) -> None:
    f = d.check_evidence(name, content)
    assert (f.file_type, f.size, f.sha256) == (kind, len(content), hashlib.sha256(content).hexdigest())
    assert f.media_type == d.MEDIA_TYPES[kind]


@pytest.mark.parametrize(("name", "content", "status", "field", "words"), [
    ("a.pdf", PNG, 415, "content", "named .pdf but its content is a png"),
    ("a.docx", office("xl/workbook.xml"), 415, "content", "content is a xlsx"),
    ("a.docx", b"PK\x03\x04not really a zip", 415, "content", "not a pdf, jpg, png, docx or xlsx"),
    ("a.zip", office("word/document.xml"), 415, "filename", ".pdf, .jpg, .png, .docx or .xlsx"),
    ("a.exe", b"MZ\x90\x00", 415, "filename", "evidence is a"),
    ("noextension", PDF, 415, "filename", "evidence is a"),
    ("a.pdf", b"", 422, "content", "is empty"),
    ("a.pdf", PDF + b"\x00" * d.MAX_EVIDENCE_BYTES, 413, "content", "at most 10485760 bytes"),
    ("../etc/a.pdf", PDF, 422, "filename", "plain file name"),
    ("", PDF, 422, "filename", "plain file name"),
])
def test_refused(name: str, content: bytes, status: int, field: str, words: str) -> None:
    with pytest.raises(d.EvidenceError) as e:
        d.check_evidence(name, content)
    assert (e.value.status, e.value.field) == (status, field) and words in e.value.message


def test_exactly_ten_megabytes_is_accepted() -> None:
    content = PDF + b"\x00" * (d.MAX_EVIDENCE_BYTES - len(PDF))
    assert d.check_evidence("big.pdf", content).size == d.MAX_EVIDENCE_BYTES
