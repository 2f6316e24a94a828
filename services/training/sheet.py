"""Attendance sheets as organizers keep them: an .xlsx workbook (Excel, WPS), or a CSV saved from
one, with the columns 姓名, 身份证号, 手机号, 签到 (in any order, other columns ignored, a title row
above the header allowed). A CSV may be UTF-8 with or without a BOM, GBK / GB18030, or Excel's
UTF-16 "Unicode text" (cso.spreadsheet reads both kinds); of a workbook, the first sheet with a
姓名 header in its first 10 rows is read.

Row numbers are the sheet's own (the header's row counts, so do blank rows), so a report can say
"row 7" and the organizer finds row 7 in the sheet they uploaded.
"""

from __future__ import annotations

import unicodedata

from cso import spreadsheet
from cso.spreadsheet import SheetError

from .domain import SheetRow

__all__ = ["COLUMNS", "MAX_ROWS", "MAX_SHEET_BYTES", "SheetError", "decode", "parse"]

MAX_SHEET_BYTES = 2 * 1024 * 1024
MAX_ROWS = 20_000

# Column names organizers use, normalized (NFKC, no spaces); the first of each is the canonical one.
COLUMNS: dict[str, tuple[str, ...]] = {
    "姓名": ("姓名", "名字", "学员姓名", "参训人员", "name"),
    "身份证号": ("身份证号", "身份证号码", "身份证", "公民身份号码", "证件号码", "idnumber", "id_number"),
    "手机号": ("手机号", "手机号码", "手机", "联系电话", "电话", "联系方式", "phone"),
    "签到": ("签到", "是否签到", "签到情况", "出勤", "是否出席", "attended", "signin"),
}


def decode(data: bytes) -> str:
    if len(data) > MAX_SHEET_BYTES:
        raise SheetError("sheet", f"{len(data)} bytes exceeds {MAX_SHEET_BYTES}")
    return spreadsheet.decode(data)


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
    if len(data) > MAX_SHEET_BYTES:
        raise SheetError("sheet", f"{len(data)} bytes exceeds {MAX_SHEET_BYTES}")
    if spreadsheet.is_xlsx(data):
        candidates = spreadsheet.read_xlsx(data, MAX_ROWS)
    else:
        candidates = [spreadsheet.read_csv(data, MAX_ROWS)]
    for ws in candidates:
        header: dict[str, int] | None = None
        rows: list[SheetRow] = []
        for number, cells in ws.rows:
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
        if header is None:
            continue
        if "签到" not in header:
            raise SheetError("签到", "the sheet has no 签到 column")
        if "身份证号" not in header and "手机号" not in header:
            raise SheetError("身份证号", "the sheet has neither a 身份证号 nor a 手机号 column")
        return rows
    raise SheetError("sheet", "no header row with 姓名 in the first 10 rows "
                              "(expected columns 姓名,身份证号,手机号,签到)")
