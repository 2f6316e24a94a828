"""Spreadsheets as officials keep them: an .xlsx workbook saved by Excel or WPS, or a CSV saved from
one (UTF-8 with or without a BOM, GBK / GB18030, or Excel's UTF-16 "Unicode text"), read into
rows of text cells with the sheet's own row numbers, so that a report can say "sheet 备案, row 7"
and the clerk finds row 7 where they typed it.

Cells come back as text whatever the workbook stored: a date as YYYY-MM-DD, a whole number
without ".0" (a community code typed as a number stays its 12 digits), nothing as "".
"""

from __future__ import annotations

import codecs
import csv
import io
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, time
from typing import Any

XLSX_MAGIC = b"PK\x03\x04"
# An xlsx is a zip of XML: a small upload can inflate a thousandfold. 64 MB of XML holds well over
# the largest sheet cso takes; more is refused before any of it is parsed.
MAX_XLSX_INFLATED = 64 * 1024 * 1024


class SheetError(ValueError):
    """The sheet as a whole cannot be read (encoding, format, size); `field` names what is wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


@dataclass(frozen=True)
class Sheet:
    """One worksheet (a CSV is one sheet, named by the caller): (row number, cells) in order,
    every row the file has, blank ones included (the reader of a sheet decides what a blank means)."""

    name: str
    rows: list[tuple[int, list[str]]]


def is_xlsx(data: bytes) -> bool:
    return data.startswith(XLSX_MAGIC)


def decode(data: bytes) -> str:
    """The text of a CSV file: by its byte-order mark, else UTF-8, else GB18030 (a superset of GBK)."""
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
    raise SheetError("sheet", "neither an .xlsx workbook nor UTF-8 or GBK text; save it as .xlsx or CSV")


def read(data: bytes, max_rows: int, csv_name: str = "CSV") -> list[Sheet]:
    """Every worksheet of an .xlsx, or the one sheet of a CSV; SheetError if it cannot be read or
    has more than `max_rows` rows in all."""
    return read_xlsx(data, max_rows) if is_xlsx(data) else [read_csv(data, max_rows, csv_name)]


def read_csv(data: bytes, max_rows: int, name: str = "CSV") -> Sheet:
    text = decode(data)
    first_line = text.split("\n", 1)[0]
    delimiter = "\t" if first_line.count("\t") > first_line.count(",") else ","
    rows: list[tuple[int, list[str]]] = []
    try:
        for number, cells in enumerate(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter), start=1):
            rows.append((number, [c.strip() for c in cells]))
            if number > max_rows + 10:   # a title row and a header may sit above the rows
                raise SheetError("sheet", f"more than {max_rows} rows")
    except csv.Error as e:
        raise SheetError("sheet", f"not a readable CSV: {e}") from None
    return Sheet(name, rows)


def read_xlsx(data: bytes, max_rows: int) -> list[Sheet]:
    import openpyxl  # only an upload of a workbook pays for importing it

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            inflated = sum(i.file_size for i in archive.infolist())
        if inflated > MAX_XLSX_INFLATED:
            raise SheetError("sheet", f"the workbook inflates to {inflated} bytes, more than {MAX_XLSX_INFLATED}")
        book = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except SheetError:
        raise
    except Exception as e:  # a damaged zip, or a zip that is no workbook: openpyxl raises many kinds
        raise SheetError("sheet", f"not a readable .xlsx workbook: {type(e).__name__}: {e}") from None
    sheets: list[Sheet] = []
    total = 0
    try:
        for ws in book.worksheets:
            rows: list[tuple[int, list[str]]] = []
            for number, values in _numbered(ws.iter_rows()):
                total += 1
                if total > max_rows + 10 * len(book.worksheets):
                    raise SheetError("sheet", f"more than {max_rows} rows")
                rows.append((number, [cell_text(v) for v in values]))
            sheets.append(Sheet(ws.title, rows))
    finally:
        book.close()
    return sheets


def _numbered(rows: Iterable[tuple[Any, ...]]) -> Iterable[tuple[int, list[Any]]]:
    """(the row's own number, its values): a read-only worksheet skips rows that hold nothing, so
    the number is the cells', not a count."""
    for cells in rows:
        number = next((c.row for c in cells if getattr(c, "row", None) is not None), None)
        if number is not None:
            yield number, [getattr(c, "value", None) for c in cells]


def cell_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.date().isoformat() if value.time() == time() else value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bool):
        return "是" if value else "否"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()
