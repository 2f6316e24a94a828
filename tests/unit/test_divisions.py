"""Reading NBS division files, classifying divisions, and the per-county import events."""

from __future__ import annotations

import asyncio
import gzip
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.js.api import PubAck

from contracts.envelope import encode, make_event, parse_event
from contracts.events import CommunityKind, DivisionsImported, TownshipKind
from contracts.subjects import Topology
from cso.divisions import DEMO_DIVISIONS, NbsFormatError, county_payloads, editions, event_id
from cso.divisions import importer as importer_module
from cso.divisions.classify import (
    community_kind,
    core_name,
    township_kind,
    township_kind_from_code,
    township_kind_from_name,
)
from cso.divisions.importer import publish_divisions
from cso.divisions.nbs import LEVELS, check_prefixes, selector, wanted
from cso.divisions.subset import main as subset_main
from cso.divisions.subset import write_subset

NATIONAL = editions.edition("2023")   # package data, in every checkout and install
STEMS = [level.stem for level in LEVELS]
# Counted in the national edition: `zcat areas.csv.gz | grep -c '^5111'` gives 11 counties of
# 乐山市; the demo adds 广汉市 (510681) alone.
LESHAN_COUNTIES = 11
DEMO_COUNTIES = [
    "510681", "511102", "511111", "511112", "511113", "511123", "511124", "511126", "511129",
    "511132", "511133", "511181",
]


def _copy_demo(target: Path) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for stem in STEMS:
        shutil.copy(DEMO_DIVISIONS / f"{stem}.csv", target / f"{stem}.csv")
    return target


def _edit(directory: Path, stem: str, edit: Callable[[list[str]], None]) -> None:
    """Rewrite one plain CSV of `directory` as a list of lines (line 1 is the header)."""
    path = directory / f"{stem}.csv"
    lines = path.read_text(encoding="utf-8").splitlines()
    edit(lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture
def demo(tmp_path: Path) -> Path:
    return _copy_demo(tmp_path / "demo")


@pytest.fixture(scope="module")
def demo_payloads() -> list[DivisionsImported]:
    return list(county_payloads(DEMO_DIVISIONS))


# --- classification ---------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "kind"), [
    ("西城社区居民委员会", CommunityKind.URBAN),
    ("多福巷社区居委会", CommunityKind.URBAN),
    ("松滨社区", CommunityKind.URBAN),
    ("中国民航飞行学院社区", CommunityKind.URBAN),
    ("蒋家岗居委会（社区）", CommunityKind.URBAN),
    ("戴溪社区居委会（含戴溪村村委）", CommunityKind.URBAN),
    ("虎山院社区居委会（筹备组））", CommunityKind.URBAN),
    ("大桥村村民委员会", CommunityKind.RURAL),
    ("胡楼村委会", CommunityKind.RURAL),
    ("杨家岗村", CommunityKind.RURAL),
    ("沙布格嘎查委员会", CommunityKind.RURAL),
    ("先锋社区村民委员会", CommunityKind.RURAL),
    ("老彭村民委员会（农村社区）", CommunityKind.RURAL),
    ("乐荣村（十村)委会", CommunityKind.RURAL),
    ("五分场生活区", CommunityKind.OTHER),
    ("东风林场社区生活区", CommunityKind.OTHER),
    ("八五三农场五管理区", CommunityKind.OTHER),
    ("第三生产队", CommunityKind.OTHER),
])
def test_community_kind_of_real_names(name: str, kind: CommunityKind) -> None:
    assert community_kind(name) is kind


@pytest.mark.parametrize(("code", "name", "kind"), [
    ("510681001", "雒城街道", TownshipKind.STREET),
    ("110101001", "东华门街道", TownshipKind.STREET),
    ("510681101", "三水镇", TownshipKind.TOWN),
    ("511132105", "黑竹沟镇", TownshipKind.TOWN),
    ("110112117", "永乐店镇", TownshipKind.TOWN),
    ("511133223", "高卓营乡", TownshipKind.TOWNSHIP),
    ("150421203", "赛罕塔拉苏木", TownshipKind.TOWNSHIP),
    # No suffix: the code decides.
    ("110105036", "金盏地区", TownshipKind.STREET),
    ("222424400", "汪清林业局", TownshipKind.SPECIAL),
    ("120113500", "红旗农场", TownshipKind.SPECIAL),
    ("350527000", "金门县", TownshipKind.SPECIAL),
    # A bracketed remark is not the suffix.
    ("320505400", "浒墅关经开区（镇）", TownshipKind.SPECIAL),
    ("320614416", "三星镇（叠石桥家纺产业园区）", TownshipKind.TOWN),
    ("420106490", "东湖风景区街道（武昌）", TownshipKind.STREET),
    # Special codes whose names say otherwise.
    ("150404407", "兴安街道", TownshipKind.STREET),
    ("130633400", "恋乡太行水镇", TownshipKind.TOWN),
    ("350122400", "马祖乡", TownshipKind.TOWNSHIP),
])
def test_township_kind_of_real_names(code: str, name: str, kind: TownshipKind) -> None:
    assert township_kind(code, name) is kind


def test_where_code_and_name_disagree_the_name_wins() -> None:
    # 兴安街道 keeps a development-zone code (4xx) but is a street by name.
    assert township_kind_from_code("150404407") is TownshipKind.SPECIAL
    assert township_kind("150404407", "兴安街道") is TownshipKind.STREET
    assert township_kind_from_code("350122400") is TownshipKind.SPECIAL
    assert township_kind("350122400", "马祖乡") is TownshipKind.TOWNSHIP


def test_a_demo_town_has_a_town_code_and_kind(demo_payloads: list[DivisionsImported]) -> None:
    guanghan = next(p for p in demo_payloads if p.county.code == "510681")
    sanshui = next(t for t in guanghan.townships if t.name == "三水镇")
    assert int(sanshui.code[6:]) >= 100
    assert sanshui.kind is TownshipKind.TOWN
    xicheng = next(c for c in guanghan.communities if c.name == "西城社区居民委员会")
    assert xicheng.kind is CommunityKind.URBAN


@pytest.mark.parametrize("code", ["51068100", "5106810011", "51068100a", "５１０６８１００１"])
def test_township_kind_refuses_what_is_not_a_township_code(code: str) -> None:
    with pytest.raises(ValueError, match="township code"):
        township_kind(code, "雒城街道")


# Characters that form none of the suffixes or words the rules look for.
PLAIN = st.text(alphabet="东西南北中新华兴安平山河湖桥园林石金城", min_size=1, max_size=8)
SERIAL = st.integers(min_value=0, max_value=999)
COUNTY = st.from_regex(r"\A[1-6][0-9]{5}\Z")


def _range_kind(serial: int) -> TownshipKind:
    if 1 <= serial <= 99:
        return TownshipKind.STREET
    if 100 <= serial <= 199:
        return TownshipKind.TOWN
    if 200 <= serial <= 399:
        return TownshipKind.TOWNSHIP
    return TownshipKind.SPECIAL


@given(county=COUNTY, serial=SERIAL, base=PLAIN)
def test_a_name_without_suffix_leaves_the_code_to_decide(county: str, serial: int,
                                                         base: str) -> None:
    code = f"{county}{serial:03d}"
    assert township_kind_from_name(base) is None
    assert township_kind(code, base) is _range_kind(serial)


@given(county=COUNTY, serial=SERIAL, base=PLAIN,
       suffix=st.sampled_from([("街道", TownshipKind.STREET), ("镇", TownshipKind.TOWN),
                               ("乡", TownshipKind.TOWNSHIP), ("苏木", TownshipKind.TOWNSHIP)]),
       remark=st.sampled_from(["", "（省级）", "(开发区)"]))
def test_a_suffix_decides_whatever_the_code(county: str, serial: int, base: str,
                                            suffix: tuple[str, TownshipKind], remark: str) -> None:
    assert township_kind(f"{county}{serial:03d}", base + suffix[0] + remark) is suffix[1]


@given(base=PLAIN,
       ending=st.sampled_from([
           ("社区居民委员会", CommunityKind.URBAN), ("社区居委会", CommunityKind.URBAN),
           ("居民委员会", CommunityKind.URBAN), ("社区", CommunityKind.URBAN),
           ("村民委员会", CommunityKind.RURAL), ("村村民委员会", CommunityKind.RURAL),
           ("村委会", CommunityKind.RURAL), ("村", CommunityKind.RURAL),
           ("嘎查", CommunityKind.RURAL), ("社区村民委员会", CommunityKind.RURAL),
           ("生活区", CommunityKind.OTHER), ("管理区", CommunityKind.OTHER),
           ("农场", CommunityKind.OTHER), ("", CommunityKind.OTHER)]),
       remark=st.sampled_from(["", "（筹备组）", "(社区)", "（含某村村委）", "（白河）（省级）"]))
def test_community_kind_follows_the_ending_not_the_remark(
    base: str, ending: tuple[str, CommunityKind], remark: str,
) -> None:
    assert community_kind(base + ending[0] + remark) is ending[1]


@given(st.text(max_size=20))
def test_core_name_is_idempotent_and_never_empty_for_a_name(name: str) -> None:
    core = core_name(name)
    assert core_name(core) == core
    if name.strip():
        assert core


# --- reading and its errors -------------------------------------------------------------------


def test_demo_yields_leshan_and_guanghan(demo_payloads: list[DivisionsImported]) -> None:
    codes = [p.county.code for p in demo_payloads]
    assert codes == DEMO_COUNTIES
    assert sum(c.startswith("5111") for c in codes) == LESHAN_COUNTIES
    assert [c for c in codes if c.startswith("5106")] == ["510681"]
    assert sum(len(p.townships) for p in demo_payloads) == 144
    assert sum(len(p.communities) for p in demo_payloads) == 1494
    guanghan = demo_payloads[0]
    assert (guanghan.province.name, guanghan.city.name, guanghan.county.name) == (
        "四川省", "德阳市", "广汉市")


def test_demo_is_what_subset_makes_of_the_national_files(tmp_path: Path) -> None:
    counts = write_subset(NATIONAL, tmp_path, ["5111", "510681"])
    assert counts["areas"] == len(DEMO_COUNTIES)
    for stem in STEMS:
        made, shipped = tmp_path / f"{stem}.csv", DEMO_DIVISIONS / f"{stem}.csv"
        assert made.read_bytes() == shipped.read_bytes()


def test_payloads_validate_and_travel_in_an_envelope(
    demo_payloads: list[DivisionsImported],
) -> None:
    for payload in demo_payloads:
        assert DivisionsImported.model_validate(payload.model_dump(mode="json")) == payload
        event = make_event(payload, source="test", event_id=event_id(payload))
        envelope = parse_event(encode(event))
        assert envelope.payload == payload
        assert envelope.region == payload.county.code
        assert [t.code for t in payload.townships] == sorted(t.code for t in payload.townships)


def test_a_county_without_townships_still_yields(demo: Path) -> None:
    _edit(demo, "streets", lambda lines: _drop(lines, "51068"))
    _edit(demo, "villages", lambda lines: _drop(lines, "51068"))
    guanghan = next(p for p in county_payloads(demo) if p.county.code == "510681")
    assert guanghan.townships == [] and guanghan.communities == []


def _drop(lines: list[str], prefix: str) -> None:
    lines[:] = [line for line in lines if not line.startswith(prefix)]


def _replace_line(stem: str, number: int, text: str) -> Callable[[Path], None]:
    def edit(directory: Path) -> None:
        def change(lines: list[str]) -> None:
            lines[number - 1] = text
        _edit(directory, stem, change)
    return edit


@pytest.mark.parametrize(("stem", "line", "text", "message"), [
    ("villages", 5, '510681001005,"某社区",510681001,51,5106', "5 columns, expected 6"),
    ("villages", 7, '51068100100X,"某社区",510681001,51,5106,510681', "not all digits"),
    ("streets", 3, '51068100,"某街道",510681,51,5106', "has 8 digits"),
    ("areas", 2, '5106811,"广汉市",5106,51', "has 7 digits"),
    ("villages", 9, '510681002009,"某社区",510681001,51,5106,510681',
     "does not start with its streetCode 510681001"),
    ("streets", 4, '511102003,"某街道",510681,51,5106', "does not start with its areaCode"),
    ("cities", 2, '5106,"德阳市",52', "does not start with its provinceCode 52"),
    ("villages", 1, "code,name,streetCode,provinceCode,cityCode", "header"),
    ("streets", 6, '510681005,"",510681,51,5106', "has no name"),
])
def test_a_malformed_row_names_its_file_and_line(demo: Path, stem: str, line: int, text: str,
                                                 message: str) -> None:
    _replace_line(stem, line, text)(demo)
    with pytest.raises(NbsFormatError) as caught:
        list(county_payloads(demo))
    error = caught.value
    assert error.path == demo / f"{stem}.csv"
    assert error.line == line
    assert f"{stem}.csv, line {line}:" in str(error)
    assert message in str(error)


def test_a_malformed_row_in_a_gzip_file_names_it(demo: Path) -> None:
    _replace_line("villages", 11, '510681001011,"某社区"')(demo)
    _gzip(demo, "villages")
    with pytest.raises(NbsFormatError, match=r"villages\.csv\.gz, line 11: 2 columns"):
        list(county_payloads(demo))


def test_a_community_of_a_missing_township_is_refused(demo: Path) -> None:
    _edit(demo, "streets", lambda lines: _drop(lines, "510681002"))
    with pytest.raises(NbsFormatError, match=r"villages\.csv, line \d+: township 510681002"):
        list(county_payloads(demo))


def test_a_township_of_a_missing_county_is_refused(demo: Path) -> None:
    _edit(demo, "areas", lambda lines: _drop(lines, "511111"))
    with pytest.raises(NbsFormatError, match=r"streets\.csv, line \d+: county 511111"):
        list(county_payloads(demo))


def test_villages_out_of_county_order_are_refused(demo: Path) -> None:
    def move_first_guanghan_row_to_the_end(lines: list[str]) -> None:
        lines.append(lines.pop(1))
    _edit(demo, "villages", move_first_guanghan_row_to_the_end)
    with pytest.raises(NbsFormatError, match="sorted by code"):
        list(county_payloads(demo))


def test_a_repeated_code_is_refused(demo: Path) -> None:
    _edit(demo, "streets", lambda lines: lines.insert(2, lines[1]))
    with pytest.raises(NbsFormatError, match=r"streets\.csv, line 3: code 510681001 repeats"):
        list(county_payloads(demo))


def test_a_missing_or_doubled_file_is_named(demo: Path) -> None:
    (demo / "cities.csv").unlink()
    with pytest.raises(NbsFormatError, match=r"neither cities\.csv\.gz nor cities\.csv"):
        list(county_payloads(demo))
    shutil.copy(DEMO_DIVISIONS / "cities.csv", demo / "cities.csv")
    _gzip(demo, "cities", keep_plain=True)
    with pytest.raises(NbsFormatError, match=r"both cities\.csv\.gz and cities\.csv"):
        list(county_payloads(demo))


def test_a_corrupt_gzip_file_is_named(demo: Path) -> None:
    (demo / "areas.csv").unlink()
    (demo / "areas.csv.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(NbsFormatError, match=r"areas\.csv\.gz, line 1: unreadable"):
        list(county_payloads(demo))


# --- filtering --------------------------------------------------------------------------------


def test_only_keeps_ancestors_of_a_prefix(demo: Path) -> None:
    payloads = list(county_payloads(demo, only=["510681"]))
    assert [p.county.code for p in payloads] == ["510681"]
    assert payloads[0].city.code == "5106" and payloads[0].province.code == "51"
    assert wanted("51", ("510681",)) and wanted("5106", ("510681",))
    assert not wanted("5111", ("510681",)) and not wanted("510682", ("510681",))


TIER_CODE = st.sampled_from([2, 4, 6, 9, 12]).flatmap(
    lambda n: st.text(alphabet="0123456789", min_size=n, max_size=n))
PREFIX = st.text(alphabet="0123456789", min_size=1, max_size=12)


@st.composite
def related_prefix(draw: st.DrawFn, code: str) -> str:
    """A prefix sharing some leading digits with the code: unrelated random pairs rarely do."""
    shared = draw(st.integers(min_value=0, max_value=len(code)))
    rest = draw(st.text(alphabet="0123456789", max_size=12 - shared))
    return (code[:shared] + rest) or code[:1]


@given(data=st.data(), code=TIER_CODE)
def test_the_fast_selector_agrees_with_wanted(data: st.DataObject, code: str) -> None:
    prefixes = tuple(data.draw(st.lists(st.one_of(PREFIX, related_prefix(code)),
                                        min_size=1, max_size=4)))
    assert selector(prefixes)(code) is wanted(code, prefixes)


@given(data=st.data(), code=TIER_CODE)
def test_every_ancestor_of_a_wanted_code_is_wanted(data: st.DataObject, code: str) -> None:
    prefix = data.draw(st.one_of(PREFIX, related_prefix(code)))
    if wanted(code, (prefix,)):
        for cut in (2, 4, 6, 9):
            if cut < len(code):
                assert wanted(code[:cut], (prefix,))


DEMO_PREFIXES = sorted({c[:n] for c in DEMO_COUNTIES for n in (2, 3, 4, 5, 6)})


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prefixes=st.lists(st.sampled_from(DEMO_PREFIXES), min_size=1, max_size=3))
def test_filtering_selects_whole_counties_unchanged(
    demo_payloads: list[DivisionsImported], prefixes: list[str],
) -> None:
    everything = {p.county.code: p for p in demo_payloads}
    filtered = list(county_payloads(DEMO_DIVISIONS, only=prefixes))
    assert [p.county.code for p in filtered] == sorted(
        c for c in everything if any(c.startswith(p) for p in prefixes))
    for payload in filtered:
        assert payload == everything[payload.county.code]


@pytest.mark.parametrize(("only", "error", "message"), [
    (["510681001"], ValueError, "below county level"),
    (["51a"], ValueError, "not a division code prefix"),
    ([], ValueError, "at least one"),
    (["52"], ValueError, "no county"),
    ("5111", TypeError, "not a single string"),
])
def test_bad_prefixes_are_refused(only: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        list(county_payloads(DEMO_DIVISIONS, only=only))


def test_check_prefixes_accepts_any_depth_for_reading() -> None:
    assert check_prefixes(["510681001001", "51"]) == ("510681001001", "51")
    assert check_prefixes(None) is None


# --- event ids and file forms -----------------------------------------------------------------


def _ids(directory: Path, edition: str = "2023") -> dict[str, UUID]:
    return {p.county.code: event_id(p) for p in county_payloads(directory, edition=edition)}


def test_event_ids_are_deterministic_and_follow_content(demo: Path) -> None:
    before = _ids(demo)
    assert _ids(demo) == before
    assert len(set(before.values())) == len(before)

    def rename(lines: list[str]) -> None:
        number = next(i for i, line in enumerate(lines) if line.startswith("511102004001,"))
        lines[number] = lines[number].replace('"', '"新', 1)
    _edit(demo, "villages", rename)
    after = _ids(demo)
    assert after["511102"] != before["511102"]
    assert {c: i for c, i in after.items() if c != "511102"} == {
        c: i for c, i in before.items() if c != "511102"}


def test_event_ids_differ_between_editions(demo: Path) -> None:
    first, second = _ids(demo, "2023"), _ids(demo, "2024")
    assert all(first[c] != second[c] for c in first)


def _gzip(directory: Path, stem: str, keep_plain: bool = False) -> None:
    plain = directory / f"{stem}.csv"
    with gzip.open(directory / f"{stem}.csv.gz", "wb") as out:
        out.write(plain.read_bytes())
    if not keep_plain:
        plain.unlink()


@pytest.mark.parametrize("gzipped", [STEMS, ["villages"], ["provinces", "streets"]])
def test_gzip_and_plain_files_give_the_same_payloads(
    tmp_path: Path, demo_payloads: list[DivisionsImported], gzipped: list[str],
) -> None:
    directory = _copy_demo(tmp_path / "mixed")
    for stem in gzipped:
        _gzip(directory, stem)
    assert sorted(p.name for p in directory.iterdir() if p.name.endswith(".gz")) == sorted(
        f"{s}.csv.gz" for s in gzipped)
    payloads = list(county_payloads(directory))
    assert payloads == demo_payloads
    assert [event_id(p) for p in payloads] == [event_id(p) for p in demo_payloads]


def test_a_byte_order_mark_is_ignored(demo: Path, demo_payloads: list[DivisionsImported]) -> None:
    for stem in STEMS:
        path = demo / f"{stem}.csv"
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert list(county_payloads(demo)) == demo_payloads


# --- subset -----------------------------------------------------------------------------------


def test_subset_cli_writes_a_readable_edition(tmp_path: Path,
                                              demo_payloads: list[DivisionsImported]) -> None:
    assert subset_main([str(DEMO_DIVISIONS), str(tmp_path), "511102"]) == 0
    assert (tmp_path / "provinces.csv").read_text(encoding="utf-8") == 'code,name\n51,"四川省"\n'
    assert (tmp_path / "cities.csv").read_text(encoding="utf-8").splitlines()[1:] == [
        '5111,"乐山市",51']
    payloads = list(county_payloads(tmp_path))
    assert payloads == [p for p in demo_payloads if p.county.code == "511102"]


def test_subset_reports_a_bad_source(tmp_path: Path, demo: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    _replace_line("streets", 2, '510681001,"雒城街道",510681,51')(demo)
    assert subset_main([str(demo), str(tmp_path / "out"), "51"]) == 1
    assert "streets.csv, line 2: 4 columns" in capsys.readouterr().err
    assert not (tmp_path / "out" / "streets.csv").exists()


# --- publishing -------------------------------------------------------------------------------


class FakeJetStream:
    """Records publishes; each ack waits a tick so that unawaited publishes overlap."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, str | None, dict[str, Any] | None]] = []
        self.in_flight = 0
        self.most_in_flight = 0

    async def publish(self, subject: str, payload: bytes = b"", *, stream: str | None = None,
                      headers: dict[str, Any] | None = None) -> PubAck:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await asyncio.sleep(0)
        self.published.append((subject, payload, stream, headers))
        self.in_flight -= 1
        return PubAck(stream=stream or "", seq=len(self.published))


async def test_publish_sends_one_envelope_per_county_with_its_id(
    monkeypatch: pytest.MonkeyPatch, demo_payloads: list[DivisionsImported],
) -> None:
    monkeypatch.setattr(importer_module, "PUBLISH_CHUNK", 5)
    js = FakeJetStream()
    topology = Topology("t1")
    count = await publish_divisions(js, topology, DEMO_DIVISIONS)
    assert count == len(DEMO_COUNTIES) == len(js.published)
    assert js.most_in_flight == 5
    by_county = {p.county.code: p for p in demo_payloads}
    for subject, data, stream, headers in js.published:
        envelope = parse_event(data)
        payload = envelope.payload
        assert isinstance(payload, DivisionsImported)
        assert payload == by_county[payload.county.code]
        assert subject == f"t1.cso.divisions.divisions_imported.51.{payload.county.code[:4]}." \
                          f"{payload.county.code}"
        assert stream == "T1_CSO_DIVISIONS"
        assert headers == {"Nats-Msg-Id": str(envelope.event_id)}
        assert envelope.event_id == event_id(payload)


async def test_publishing_twice_repeats_the_ids() -> None:
    first, second = FakeJetStream(), FakeJetStream()
    await publish_divisions(first, Topology(), DEMO_DIVISIONS, only=["5111"])
    await publish_divisions(second, Topology(), DEMO_DIVISIONS, only=["5111"])
    ids = [h["Nats-Msg-Id"] for _, _, _, h in first.published if h]
    assert len(ids) == LESHAN_COUNTIES
    assert ids == [h["Nats-Msg-Id"] for _, _, _, h in second.published if h]
