"""Attendance sheets as organizers keep them: encodings, headers, 签到 values, row numbers, and the
row-by-row report (unknown person, bad ID checksum, not enrolled, duplicate row), all or nothing."""

from __future__ import annotations

import codecs
from datetime import date
from uuid import UUID, uuid4

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.training import domain, sheet
from services.training.domain import Rejected

TODAY = date(2024, 6, 1)
KEY = b"test-key"


def number(serial: int) -> str:
    first17 = f"51068119850312{serial:03d}"
    return first17 + domain.id_check_character(first17)


ROWS = [
    f"张丽华,{number(1)},13808380001,是",
    "李强,,139 0000 1111,√",
    f"王芳,{number(3)},,否",
    f"赵敏,{number(4)},,",
]
TEXT = "姓名,身份证号,手机号,签到\r\n" + "\r\n".join(ROWS) + "\r\n"


@pytest.mark.parametrize("data", [
    TEXT.encode("utf-8"),
    codecs.BOM_UTF8 + TEXT.encode("utf-8"),
    TEXT.encode("gbk"),
    TEXT.encode("gb18030"),
    codecs.BOM_UTF16_LE + TEXT.replace(",", "\t").encode("utf-16-le"),
], ids=["utf8", "utf8-bom", "gbk", "gb18030", "utf16-tab"])
def test_encodings(data: bytes) -> None:
    rows = sheet.parse(data)
    assert [(r.row, r.name, r.id_number, r.phone, r.sign_in) for r in rows] == [
        (2, "张丽华", number(1), "13808380001", "是"),
        (3, "李强", "", "139 0000 1111", "√"),
        (4, "王芳", number(3), "", "否"),
        (5, "赵敏", number(4), "", ""),
    ]


def test_title_rows_other_columns_and_blank_rows_keep_sheet_row_numbers() -> None:
    text = ("雒城街道2024年社区社会组织骨干培训签到表,,,,\n"
            ",,,,\n"
            "序号, 签到 ,手机号码,姓 名,身份证号码\n"
            f"1,√,13808380001,张丽华,{number(1)}\n"
            ",,,,\n"
            f'2,否,,"王芳",{number(3)}\n')
    rows = sheet.parse(text.encode("gbk"))
    assert [(r.row, r.name, r.sign_in) for r in rows] == [(4, "张丽华", "√"), (6, "王芳", "否")]
    assert rows[0].phone == "13808380001" and rows[1].id_number == number(3)


@pytest.mark.parametrize(("text", "field", "message"), [
    ("名单\n张三\n", "sheet", "no header row"),
    ("姓名,身份证号\n张三,1\n", "签到", "no 签到 column"),
    ("姓名,签到\n张三,是\n", "身份证号", "neither"),
])
def test_unreadable_sheets_name_what_is_missing(text: str, field: str, message: str) -> None:
    with pytest.raises(sheet.SheetError, match=message) as e:
        sheet.parse(text.encode())
    assert e.value.field == field


def test_bytes_that_are_no_text_are_refused() -> None:
    with pytest.raises(sheet.SheetError, match="UTF-8 or GBK"):
        sheet.parse("姓名,签到\n".encode() + b"a\xff\xffb\n")
    with pytest.raises(sheet.SheetError, match="exceeds"):
        sheet.parse(b"a" * (sheet.MAX_SHEET_BYTES + 1))


@pytest.mark.parametrize(("value", "attended"), [
    ("是", True), ("√", True), ("✓", True), ("1", True), ("Y", True), ("已签到", True), ("１", True),
    ("否", False), ("", False), ("  ", False), ("空", False), ("×", False), ("0", False), ("未签到", False),
    ("迟到", None), ("maybe", None),
])
def test_sign_in_values(value: str, attended: bool | None) -> None:
    assert domain.sign_in_value(value) is attended


@given(st.lists(st.sampled_from(sorted(domain.PRESENT | domain.ABSENT)), min_size=1, max_size=20))
def test_every_known_sign_in_value_survives_gbk_and_utf8(values: list[str]) -> None:
    text = "姓名,手机号,签到\n" + "".join(f"人{i},1380838{i:04d},{v}\n" for i, v in enumerate(values))
    for encoding in ("utf-8-sig", "gbk"):
        try:
            data = text.encode(encoding)
        except UnicodeEncodeError:
            continue    # a mark GBK has no code for (☑) cannot be in a GBK sheet
        rows = sheet.parse(data)
        assert [domain.sign_in_value(r.sign_in) for r in rows] == [v in domain.PRESENT for v in values]
        assert [r.row for r in rows] == list(range(2, len(values) + 2))


def _report(text: str, people: dict[str, UUID], contacts: dict[tuple[str, str], list[UUID]],
            enrolled: set[UUID]) -> domain.SheetReport:
    keys = domain.row_keys(sheet.parse(text.encode("gbk")), KEY, TODAY)
    by_hash = {domain.id_hash(KEY, n): p for n, p in people.items()}
    enrolments = {p: domain.Enrolment(session_id=uuid4(), person_id=p) for p in enrolled}
    return domain.resolve_sheet(keys, by_hash, contacts, enrolments)


def test_each_rejected_row_says_why() -> None:
    alice, bob, carol, outsider = uuid4(), uuid4(), uuid4(), uuid4()
    bad = number(9)[:17] + ("0" if number(9)[17] != "0" else "1")
    text = ("姓名,身份证号,手机号,签到\n"
            f"张丽华,{number(1)},,是\n"            # 2 ok
            "李强,,139-0000-1111,√\n"              # 3 ok by phone and name
            f"王芳,{number(3)},,否\n"              # 4 ok, absent
            f"赵敏,{number(4)},,是\n"              # 5 not enrolled
            f"钱多多,{number(5)},,是\n"            # 6 unknown person
            f"孙悟空,{bad},,是\n"                  # 7 bad checksum
            f"张丽华,{number(1)},,否\n"            # 8 duplicate of row 2
            "周一,,,是\n"                           # 9 no ID and no phone
            f"吴二,{number(6)[:15]},,是\n"         # 10 malformed ID
            f"郑三,{number(3)},,也许\n")            # 11 unrecognized 签到
    report = _report(text, {number(1): alice, number(3): carol, number(4): outsider},
                     {("13900001111", "李强"): [bob]}, {alice, bob, carol})
    assert [(a.row, a.person_id, a.attended) for a in report.accepted] == [
        (2, alice, True), (3, bob, True), (4, carol, False)]
    assert [(p.row, p.field, p.reason) for p in report.rejected] == [
        (5, "身份证号", "not_enrolled"), (6, "身份证号", "unknown_person"), (7, "身份证号", "bad_id_checksum"),
        (8, "身份证号", "duplicate_row"), (9, "身份证号", "no_identity"), (10, "身份证号", "bad_id_number"),
        (11, "签到", "bad_sign_in")]
    assert report.rejected[3].message == "same person as row 2"
    assert report.rows == 10 and not report.clean
    # Nothing in the report repeats an ID number.
    assert not any(number(i) in p.message or bad in p.message for p in report.rejected for i in range(10))


def test_phone_and_name_pick_the_enrolled_one_of_two() -> None:
    enrolled, other = uuid4(), uuid4()
    text = "姓名,手机号,签到\n李强,13900001111,是\n"
    report = _report(text, {}, {("13900001111", "李强"): [other, enrolled]}, {enrolled})
    assert [a.person_id for a in report.accepted] == [enrolled]
    both = _report(text, {}, {("13900001111", "李强"): [other, enrolled]}, {enrolled, other})
    assert [p.reason for p in both.rejected] == ["ambiguous_person"]


def test_all_or_nothing() -> None:
    session = domain.Session(id=uuid4(), organizer_region="510681001", topic="t", starts_on=TODAY,
                             ends_on=TODAY, capacity=10)
    alice = uuid4()
    enrolments = {alice: domain.Enrolment(session.id, alice)}
    good = domain.SheetReport(rows=1, accepted=[domain.RowAccepted(2, alice, True)])
    mixed = domain.SheetReport(rows=2, accepted=good.accepted,
                               rejected=[domain.RowProblem(3, "身份证号", "unknown_person", "x")])
    assert domain.apply_sheet(session, session.id, good, enrolments, TODAY, False) == [
        domain.Enrolment(session.id, alice, attended=True)]
    assert domain.apply_sheet(session, session.id, mixed, enrolments, TODAY, False) == []
    assert len(domain.apply_sheet(session, session.id, mixed, enrolments, TODAY, True)) == 1
    cancelled = domain.Session(**{**session.__dict__, "status": "cancelled"})
    with pytest.raises(Rejected) as e:
        domain.apply_sheet(cancelled, session.id, good, enrolments, TODAY, False)
    assert e.value.field == "session_id"


def test_an_xlsx_sheet_reads_as_its_csv() -> None:
    """A workbook: the first sheet with a 姓名 header (an empty sheet before it is passed over), its
    own row numbers under a title row, numbers and booleans as the organizer typed them."""
    import io

    import openpyxl

    book = openpyxl.Workbook()
    cover = book.active
    assert cover is not None
    cover.title = "封面"
    ws = book.create_sheet("签到表")
    ws.append(["2024年第一期培训签到表"])
    ws.append(["序号", "姓名", "身份证号", "手机号", "签到"])
    ws.append([1, "张丽华", number(1), 13808380001, True])
    ws.append([])
    ws.append([2, "王芳", number(3), None, "否"])
    out = io.BytesIO()
    book.save(out)
    rows = sheet.parse(out.getvalue())
    assert [(r.row, r.name, r.id_number, r.phone, r.sign_in) for r in rows] == [
        (3, "张丽华", number(1), "13808380001", "是"), (5, "王芳", number(3), "", "否")]
    assert domain.sign_in_value(rows[0].sign_in) is True


def test_a_damaged_workbook_is_refused_naming_the_sheet() -> None:
    with pytest.raises(sheet.SheetError) as e:
        sheet.parse(b"PK\x03\x04" + b"\0" * 100)
    assert e.value.field == "sheet" and "not a readable .xlsx workbook" in e.value.message
