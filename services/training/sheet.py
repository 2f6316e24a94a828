"""Attendance sheets as organizers keep them: a CSV saved from Excel or WPS with the columns
姓名, 身份证号, 手机号, 签到 (in any order, other columns ignored, a title row above the header
allowed), in UTF-8 with or without a BOM, GBK / GB18030, or Excel's UTF-16 "Unicode text".

Row numbers are the sheet's own (the header's row counts, so do blank rows), so a report can say
"row 7" and the organizer finds row 7 in the sheet they uploaded.
"""

from __future__ import annotations

import codecs
import csv
import io
import unicodedata

from .domain import SheetRow

MAX_SHEET_BYTES = 2 * 1024 * 1024
MAX_ROWS = 20_000

# Column names organizers use, normalized (NFKC, no spaces); the first of each is the canonical one.
COLUMNS: dict[str, tuple[str, ...]] = {
    "姓名": ("姓名", "名字", "学员姓名", "参训人员", "name"),
    "身份证号": ("身份证号", "身份证号码", "身份证", "公民身份号码", "证件号码", "idnumber", "id_number"),
    "手机号": ("手机号", "手机号码", "手机", "联系电话", "电话", "联系方式", "phone"),
    "签到": ("签到", "是否签到", "签到情况", "出勤", "是否出席", "attended", "signin"),
}


class SheetError(ValueError):
    """The sheet as a whole cannot be read (encoding, header); `field` names what is wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


def decode(data: bytes) -> str:
    if len(data) > MAX_SHEET_BYTES:
        raise SheetError("sheet", f"{len(data)} bytes exceeds {MAX_SHEET_BYTES}")
    for bom, encoding in ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"),
                          (codecs.BOM_UTF16_BE, "utf-16-be")):
        if data.startswith(bom):
            try:
                return data[len(bom):].decode(encoding)
            except UnicodeDecodeError:
                raise SheetError("sheet", f"starts with a {encoding} byte-order mark but is not "
                                          f"{encoding} text") from None
    for encoding in ("utf-8", "gb18030"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise SheetError("sheet", "not UTF-8 or GBK text; save the sheet as CSV (UTF-8 or GBK)")


def _norm(cell: str) -> str:
    return "".join(unicodedata.normalize("NFKC", cell).split()).lower().lstrip("\ufeff")


def _header_map(cells: list[str]) -> dict[str, int] | None:
    """Column index of each canonical column found in a candidate header row."""
    found: dict[str, int] = {}
    names = [_norm(c) for c in cells]
    for canonical, aliases in COLUMNS.items():
        for i, name in enumerate(names):
            if name in aliases and canonical not in found:
                found[canonical] = i
                break
    return found if "姓名" in found else None


def _cell(cells: list[str], header: dict[str, int], column: str) -> str:
    i = header.get(column)
    return cells[i].strip() if i is not None and i < len(cells) else ""


def parse(data: bytes) -> list[SheetRow]:
    """The data rows of a sheet (blank rows skipped); SheetError if it cannot be read at all."""
    text = decode(data)
    first_line = text.split("\n", 1)[0]
    delimiter = "\t" if first_line.count("\t") > first_line.count(",") else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header: dict[str, int] | None = None
    rows: list[SheetRow] = []
    try:
        for number, cells in enumerate(reader, start=1):
            if header is None:
                header = _header_map(cells)
                if header is None and number >= 10:
                    break
                continue
            if not any(c.strip() for c in cells):
                continue
            rows.append(SheetRow(row=number, name=_cell(cells, header, "姓名"),
                                 id_number=_cell(cells, header, "身份证号"),
                                 phone=_cell(cells, header, "手机号"), sign_in=_cell(cells, header, "签到")))
            if len(rows) > MAX_ROWS:
                raise SheetError("sheet", f"more than {MAX_ROWS} rows")
    except csv.Error as e:
        raise SheetError("sheet", f"not a readable CSV: {e}") from None
    if header is None:
        raise SheetError("sheet", "no header row with 姓名 in the first 10 rows "
                                  "(expected columns 姓名,身份证号,手机号,签到)")
    if "签到" not in header:
        raise SheetError("签到", "the sheet has no 签到 column")
    if "身份证号" not in header and "手机号" not in header:
        raise SheetError("身份证号", "the sheet has neither a 身份证号 nor a 手机号 column")
    return rows
