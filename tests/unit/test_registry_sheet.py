"""The organizations sheet (services/registry/sheet.py): headers as clerks type them, Chinese words
and dates, the 类型 column of a CSV, derived ids, and the template's own headers."""

from __future__ import annotations

import io

import openpyxl
import pytest

from cso import spreadsheet
from services.registry import sheet


def test_headers_with_marks_notes_and_full_width_brackets_are_found() -> None:
    header = sheet.find_header([(1, ["广汉市社区社会组织备案表"]),
                                (2, ["* 组织名称", "社区代码(12位)", "类别", "备案日期", "备注"])])
    assert header is not None and header.row == 2
    assert header.columns == {"组织名称": 0, "社区代码": 1, "类别": 2, "备案日期": 3}
    assert header.ignored == ["备注"]


def test_a_row_becomes_a_command_body_with_its_words_and_dates() -> None:
    rows = [(1, ["类型", "组织名称", "社区代码", "类别", "备案日期", "覆盖乡镇（街道）代码", "所在区域代码",
                 "基地名称", "开办日期"]),
            (2, ["备案", "西城舞蹈队", "５１０６８１００１０１４", "文体活动类", "2023年3月1日", "", "", "", ""]),
            (3, ["孵化基地", "", "", "", "", "510681001、510681002 ;510681101", "510681", "基地", "2022.5.1"])]
    header = sheet.find_header(rows)
    assert header is not None
    kind = sheet.kind_of("CSV", rows[1][1], header)
    assert kind is sheet.KINDS["备案"]
    filing = sheet.read_row("CSV", 2, kind, rows[1][1], header)
    assert filing.body == {"name": "西城舞蹈队", "community_code": "510681001014", "category": "culture_sports",
                           "filed_on": "2023-03-01"}
    assert filing.county == "510681" and filing.key == "510681001014|西城舞蹈队"
    again = sheet.read_row("another sheet", 9, kind, rows[1][1], header)
    assert again.event_id == filing.event_id   # the county and the key, not where the row stands
    base_kind = sheet.kind_of("CSV", rows[2][1], header)
    assert base_kind is sheet.KINDS["孵化基地"]
    base = sheet.read_row("CSV", 3, base_kind, rows[2][1], header)
    assert base.body["covered_townships"] == ["510681001", "510681002", "510681101"]
    assert base.body["opened_on"] == "2022-05-01"


def test_a_word_that_is_not_the_templates_names_the_column() -> None:
    rows = [(1, ["组织名称", "社区代码", "类别"]), (2, ["队", "510681001014", "其他"])]
    header = sheet.find_header(rows)
    assert header is not None
    with pytest.raises(sheet.RowError) as e:
        sheet.read_row("备案", 2, sheet.KINDS["备案"], rows[1][1], header)
    assert (e.value.header, e.value.field) == ("类别", "category")
    assert "为民服务、生活服务、公益慈善" in e.value.reason
    with pytest.raises(sheet.RowError) as kind:
        sheet.kind_of("CSV", ["社团"], sheet.Header(1, {"类型": 0, "组织名称": 1}, []))
    assert kind.value.header == "类型"


def test_a_hub_names_its_organization() -> None:
    rows = [(1, ["服务区域代码", "成立日期", "依托组织名称"]), (2, ["510681001", "2024-01-01", "联合会"])]
    header = sheet.find_header(rows)
    assert header is not None
    with pytest.raises(sheet.RowError) as e:
        sheet.read_row("枢纽型组织", 2, sheet.KINDS["枢纽型组织"], rows[1][1], header)
    assert e.value.field == "organization_id" and "credit code, or its name and community code" in e.value.reason


def test_the_templates_headers_are_the_kinds_columns() -> None:
    book = openpyxl.load_workbook(io.BytesIO(sheet.template_xlsx()))
    assert book.sheetnames == ["说明", *sheet.KINDS]
    for name, kind in sheet.KINDS.items():
        assert [c.value for c in book[name][1]] == [c.header for c in kind.columns]
    [csv_sheet] = spreadsheet.read(sheet.template_csv(), 10)
    header = sheet.find_header(csv_sheet.rows)
    assert header is not None and header.ignored == [] and "类型" in header.columns


def test_a_facility_row_takes_its_kind_by_its_chinese_word() -> None:
    """社工站点与基地 (FacilityOpened): 社工站, 社工室, 创新发展基地, 创新示范园; another word names the
    column."""
    rows = [(1, ["类型", "站点名称", "站点类型", "所在区域代码", "开办日期"]),
            (2, ["社工站点与基地", "雒城街道社工站", "社工站", "510681001", "2023/2/1"]),
            (3, ["社工站点与基地", "雒城街道社工站", "社工室", "510681001014", "2023-03-01"]),
            (4, ["社工站点与基地", "活动中心", "活动中心", "510681001", "2023-03-01"])]
    header = sheet.find_header(rows)
    assert header is not None
    kind = sheet.kind_of("CSV", rows[1][1], header)
    assert kind is sheet.KINDS["社工站点与基地"] and kind.command == "open_facility"
    station = sheet.read_row("CSV", 2, kind, rows[1][1], header)
    assert station.body == {"name": "雒城街道社工站", "kind": "social_work_station", "region_code": "510681001",
                            "opened_on": "2023-02-01"}
    room = sheet.read_row("CSV", 3, kind, rows[2][1], header)
    assert room.body["kind"] == "social_work_room" and room.event_id != station.event_id
    with pytest.raises(sheet.RowError) as e:
        sheet.read_row("CSV", 4, kind, rows[3][1], header)
    assert (e.value.header, e.value.field) == ("站点类型", "kind") and "社工站" in e.value.reason
