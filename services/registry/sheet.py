"""The organizations sheet: the template a county without a system of its own fills in (备案
filings, 登记 registrations, 枢纽型组织 hubs, 孵化基地 bases), its Chinese headers and words
mapped to the commands' fields and values, and each row read into the body of a registry command.

No I/O here: `imports` runs the rows through registry's command path.

A workbook holds one sheet per kind, named by the kind (the template's sheets); any sheet (and a
CSV, which has one) may instead carry a 类型 column naming each row's kind. A header is found in
the first 10 rows of a sheet; other columns are reported as ignored, never silently dropped.

Each row's identity is derived, not typed: the event id from the county and the row's key (a
registration's credit code; a filing's community and name; a hub's region and organization; a
base's region and name), so the same sheet uploaded again is recognised row by row. An
organization's id comes from its community and name, so a filing and the registration that
upgrades it (in one sheet, or in two uploads) are one organization.
"""

from __future__ import annotations

import io
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID, uuid5

from contracts import events as ev

# uuid5 namespace of imported rows and the records they create (fixed forever: ids derive from it).
NAMESPACE = UUID("6c0b8f5e-2d1a-5e4b-9a61-0c5d1f3e7a20")
MAX_ROWS = 50_000
MAX_SHEET_BYTES = 16 * 1024 * 1024
KIND_COLUMN = "类型"
GUIDE = "说明"   # the template's sheet of explanations

CATEGORY = {
    "为民服务": ev.Category.RESIDENT_SERVICES, "生活服务": ev.Category.RESIDENT_SERVICES,
    "为民服务类": ev.Category.RESIDENT_SERVICES, "生活服务类": ev.Category.RESIDENT_SERVICES,
    "公益慈善": ev.Category.CHARITY, "公益慈善类": ev.Category.CHARITY,
    "文体活动": ev.Category.CULTURE_SPORTS, "文体活动类": ev.Category.CULTURE_SPORTS,
    "专业调处": ev.Category.MEDIATION, "专业调处类": ev.Category.MEDIATION,
    "邻里互助": ev.Category.NEIGHBOURLY_HELP, "邻里互助类": ev.Category.NEIGHBOURLY_HELP,
    "乡村振兴": ev.Category.RURAL_REVITALIZATION, "乡村振兴类": ev.Category.RURAL_REVITALIZATION,
}
LEGAL_FORM = {
    "社会团体": ev.LegalForm.SOCIAL_GROUP,
    "社会服务机构": ev.LegalForm.SOCIAL_SERVICE_AGENCY, "民办非企业单位": ev.LegalForm.SOCIAL_SERVICE_AGENCY,
    "基金会": ev.LegalForm.FOUNDATION,
}
TIER = {"备案": ev.ManagementTier.FILED, "引导": ev.ManagementTier.GUIDED, "引导类": ev.ManagementTier.GUIDED}
FACILITY_KIND = {
    "创新发展基地": ev.FacilityKind.INNOVATION_BASE, "社区社会组织创新发展基地": ev.FacilityKind.INNOVATION_BASE,
    "创新示范园": ev.FacilityKind.DEMONSTRATION_PARK, "社会组织创新示范园": ev.FacilityKind.DEMONSTRATION_PARK,
    "社工站": ev.FacilityKind.SOCIAL_WORK_STATION, "社会工作服务站": ev.FacilityKind.SOCIAL_WORK_STATION,
    "社工室": ev.FacilityKind.SOCIAL_WORK_ROOM, "社会工作室": ev.FacilityKind.SOCIAL_WORK_ROOM,
}
# The value words the template shows (the first Chinese word of each value).
WORDS: dict[str, dict[str, Any]] = {"category": CATEGORY, "legal_form": LEGAL_FORM, "tier": TIER,
                                    "kind": FACILITY_KIND}


@dataclass(frozen=True)
class Column:
    header: str
    field: str          # the command's field, or a lookup of the organization a hub relies on
    required: bool
    note: str
    example: str


@dataclass(frozen=True)
class Kind:
    name: str           # the sheet's name and the 类型 column's word
    command: str
    event: type[ev.Payload]
    columns: tuple[Column, ...]
    # Which header a refusal about a field names, for fields that are not a column of their own.
    also: dict[str, str] = field(default_factory=dict)

    def header_of(self, name: str) -> str:
        for c in self.columns:
            if c.field == name:
                return c.header
        return self.also.get(name, "")


_NAME = Column("组织名称", "name", True, "社会组织全称", "西城社区舞蹈队")
_COMMUNITY = Column("社区代码", "community_code", True, "所在社区（村）12位统计用区划代码", "510681001014")
_CATEGORY = Column("类别", "category", True, "为民服务、公益慈善、文体活动、专业调处、邻里互助、乡村振兴", "文体活动")

KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("备案", "file", ev.OrganizationFiled, (
        _NAME, _COMMUNITY,
        Column("管理类型", "tier", False, "备案 或 引导（默认 备案）", "备案"),
        _CATEGORY,
        Column("备案编号", "filing_number", False, "乡镇（街道）备案编号", "GH-2023-001"),
        Column("备案日期", "filed_on", True, "YYYY-MM-DD", "2023-03-01"),
    ), also={"organization_id": "组织名称", "region": "社区代码"}),
    Kind("登记", "register", ev.OrganizationRegistered, (
        _NAME, _COMMUNITY,
        Column("统一社会信用代码", "social_credit_code", True, "18位，以5开头（民政部门登记）", "52510681MJ0000001X"),
        Column("组织形式", "legal_form", True, "社会团体、社会服务机构（民办非企业单位）、基金会", "社会服务机构"),
        _CATEGORY,
        Column("登记日期", "registered_on", True, "YYYY-MM-DD", "2023-06-01"),
    ), also={"organization_id": "组织名称", "region": "社区代码"}),
    Kind("枢纽型组织", "establish_hub", ev.HubEstablished, (
        Column("枢纽名称", "name", False, "如 某街道社区社会组织联合会", "西城街道社区社会组织联合会"),
        Column("依托组织统一社会信用代码", "organization.credit_code", False,
               "依托的已登记组织；或填写下面两列", "52510681MJ0000001X"),
        Column("依托组织名称", "organization.name", False, "依托组织的名称（无信用代码时）", ""),
        Column("依托组织社区代码", "organization.community_code", False,
               "依托组织所在社区12位代码（无信用代码时）", ""),
        Column("服务区域代码", "region_code", True, "服务的乡镇（街道）9位或县（市、区）6位代码", "510681001"),
        Column("成立日期", "established_on", True, "YYYY-MM-DD", "2023-08-01"),
    ), also={"organization_id": "依托组织统一社会信用代码", "hub_id": "服务区域代码", "region": "服务区域代码"}),
    Kind("孵化基地", "open_base", ev.IncubationBaseOpened, (
        Column("基地名称", "name", True, "孵化基地（培育基地）名称", "广汉市社会组织孵化基地"),
        Column("所在区域代码", "region_code", True, "开办所在的乡镇9位、县6位或市4位代码", "510681"),
        Column("覆盖乡镇（街道）代码", "covered_townships", True, "9位代码，多个用顿号或逗号分隔",
               "510681001、510681002"),
        Column("开办日期", "opened_on", True, "YYYY-MM-DD", "2022-05-01"),
    ), also={"base_id": "基地名称", "region": "所在区域代码"}),
    # Facilities (FacilityOpened): the city plan's 创新发展基地 and 示范园, the 社工站 and 社工室.
    Kind("社工站点与基地", "open_facility", ev.FacilityOpened, (
        Column("站点名称", "name", True, "创新发展基地、示范园、社工站或社工室的名称", "雒城街道社会工作服务站"),
        Column("站点类型", "kind", True, "创新发展基地、创新示范园、社工站（乡镇、县、市）、社工室（村、社区）",
               "社工站"),
        Column("所在区域代码", "region_code", True, "开办所在的社区12位、乡镇9位、县6位或市4位代码", "510681001"),
        Column("开办日期", "opened_on", True, "YYYY-MM-DD", "2023-02-01"),
    ), also={"facility_id": "站点名称", "region": "所在区域代码"}),
)}


def _norm(cell: str) -> str:
    """A header as typed: full-width folded, no spaces, no required-marks, no note in brackets."""
    text = unicodedata.normalize("NFKC", cell).lstrip("\ufeff")
    text = "".join(text.split()).replace("*", "")
    return re.sub(r"\([^()]*\)$", "", text)


_HEADERS = {_norm(c.header): c.header for k in KINDS.values() for c in k.columns} | {KIND_COLUMN: KIND_COLUMN}


@dataclass(frozen=True)
class Header:
    row: int
    columns: dict[str, int]      # template header -> column index
    ignored: list[str]           # headers that are no template column


def find_header(rows: list[tuple[int, list[str]]]) -> Header | None:
    """The first of the first 10 rows with at least two template headers (a title row may sit above)."""
    for number, cells in rows[:10]:
        columns: dict[str, int] = {}
        ignored: list[str] = []
        for i, cell in enumerate(cells):
            header = _HEADERS.get(_norm(cell))
            if header is not None and header not in columns:
                columns[header] = i
            elif cell.strip():
                ignored.append(cell.strip())
        if len(columns) >= 2:
            return Header(number, columns, ignored)
    return None


@dataclass(frozen=True)
class RowError(Exception):
    """A row that cannot become a command: the field (template header and command field) and why."""

    header: str
    field: str
    reason: str


_DATE = re.compile(r"^(\d{4})\s*[-/.年]\s*(\d{1,2})\s*[-/.月]\s*(\d{1,2})\s*日?$")
_LIST = re.compile(r"[,，、;；\s]+")


def _value(column: Column, text: str) -> Any:
    if column.field in WORDS:
        words = WORDS[column.field]
        word = unicodedata.normalize("NFKC", text).strip()
        if word in words:
            return words[word].value
        values = {v.value for v in words.values()}
        if word in values:    # the English value of the enum is taken as well
            return word
        raise RowError(column.header, column.field,
                       f"{text!r} is not one of {'、'.join(dict.fromkeys(k.rstrip('类') for k in words))}")
    if column.field.endswith("_on") and (m := _DATE.match(text.strip())):
        return f"{int(m[1]):04d}-{int(m[2]):02d}-{int(m[3]):02d}"
    if column.field == "covered_townships":
        return [t for t in _LIST.split(unicodedata.normalize("NFKC", text)) if t]
    if column.field.endswith("code"):
        return unicodedata.normalize("NFKC", text).strip().upper()
    return text.strip()


@dataclass
class Row:
    """A row read into a command body, with its derived identity."""

    sheet: str
    row: int
    kind: Kind
    body: dict[str, Any]
    county: str
    key: str
    lookup: dict[str, str] = field(default_factory=dict)   # how a hub names its organization

    @property
    def event_id(self) -> UUID:
        return uuid5(NAMESPACE, f"{self.county}|{self.kind.command}|{self.key}")


def organization_id(community_code: str, name: str) -> UUID:
    """An imported organization's id: its community and name (a filing and its registration agree)."""
    return uuid5(NAMESPACE, f"{community_code[:6]}|organization|{community_code}|{name}")


def kind_of(sheet_name: str, cells: list[str], header: Header) -> Kind | None:
    if KIND_COLUMN in header.columns:
        i = header.columns[KIND_COLUMN]
        word = unicodedata.normalize("NFKC", cells[i]).strip() if i < len(cells) else ""
        if word not in KINDS:
            raise RowError(KIND_COLUMN, "kind", f"{word!r} is not one of {'、'.join(KINDS)}")
        return KINDS[word]
    return KINDS.get(unicodedata.normalize("NFKC", sheet_name).strip())


def read_row(sheet_name: str, number: int, kind: Kind, cells: list[str], header: Header) -> Row:
    """The row as a command body (not yet validated: the command path does that); RowError for
    what only the sheet can say (a value word that is not one of the template's, a missing key)."""
    body: dict[str, Any] = {}
    lookup: dict[str, str] = {}
    for column in kind.columns:
        i = header.columns.get(column.header)
        text = cells[i].strip() if i is not None and i < len(cells) else ""
        if not text:
            continue       # left out: the command says whether it is required
        value = _value(column, text)
        if column.field.startswith("organization."):
            lookup[column.field.split(".", 1)[1]] = value
        else:
            body[column.field] = value
    region = str(body.get("community_code") or body.get("region_code") or "")
    if not re.fullmatch(r"\d{4,12}", region):
        # Leave it to the command path to name the bad code; the county only keys the identity.
        region = "000000"
    county = region[:6]
    if kind.command in ("file", "register"):
        name, community = str(body.get("name", "")), str(body.get("community_code", ""))
        key = (str(body.get("social_credit_code", "")) if kind.command == "register"
               else f"{community}|{name}")
        return Row(sheet_name, number, kind, body, county, key)
    if kind.command == "establish_hub":
        if not lookup.get("credit_code") and not (lookup.get("name") and lookup.get("community_code")):
            raise RowError("依托组织统一社会信用代码", "organization_id",
                           "name the organization: its credit code, or its name and community code")
        ident = lookup.get("credit_code") or f"{lookup['community_code']}|{lookup['name']}"
        return Row(sheet_name, number, kind, body, county, f"{region}|{ident}", lookup)
    if kind.command == "open_facility":   # a station and a room may share a name: the kind keys it too
        return Row(sheet_name, number, kind, body, county, f"{region}|{body.get('kind', '')}|{body.get('name', '')}")
    return Row(sheet_name, number, kind, body, county, f"{region}|{body.get('name', '')}")


def template_xlsx() -> bytes:
    """The workbook to fill in: a sheet per kind with its headers (codes formatted as text, so Excel
    keeps a community code's 12 digits), and a 说明 sheet mapping every header to its field, with an
    example, and every word to its value. No example rows on the kinds' sheets: one left in would
    be imported."""
    from openpyxl import Workbook
    from openpyxl.styles import Font

    book = Workbook()
    guide = book.active
    assert guide is not None
    guide.title = GUIDE
    guide.append(["工作表", "列名", "字段", "必填", "填写说明", "示例"])
    for kind in KINDS.values():
        ws = book.create_sheet(kind.name)
        ws.append([c.header for c in kind.columns])
        for i, column in enumerate(kind.columns):
            letter = chr(ord("A") + i)
            ws[f"{letter}1"].font = Font(bold=True)
            ws.column_dimensions[letter].width = max(14, 2 * len(column.header) + 4)
            ws.column_dimensions[letter].number_format = "@"
            guide.append([kind.name, column.header, column.field, "是" if column.required else "否",
                          column.note, column.example])
    guide.append([])
    guide.append(["取值", "中文", "值"])
    for name, words in WORDS.items():
        for word, value in words.items():
            guide.append([name, word, value.value])
    guide.append([])
    guide.append(["重复上传", "同一张表再次上传不会重复记录：每行的编号由县（市、区）与该行的关键字段生成"
                          "（登记：统一社会信用代码；备案：社区代码+名称；枢纽：服务区域+依托组织；基地：区域+名称；站点：区域+类型+名称）。"])
    for cell in guide[1]:
        cell.font = Font(bold=True)
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def template_csv() -> bytes:
    """One CSV for every kind (a CSV has one sheet): a 类型 column (备案, 登记, 枢纽型组织, 孵化基地),
    then every kind's columns; a row fills those of its kind."""
    import csv

    headers = [KIND_COLUMN, *dict.fromkeys(c.header for k in KINDS.values() for c in k.columns)]
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow(headers)
    # A BOM: Excel opens a UTF-8 CSV without one as the local code page (GBK), garbling Chinese.
    return "\ufeff".encode() + out.getvalue().encode()
