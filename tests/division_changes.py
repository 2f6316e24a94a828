"""A documented, realistic synthetic change set for one province: 广东省 深圳市 盐田区 (440308) as
a "2024" edition, next to its real 2023 rows (the edition shipped with cso). NBS publishes no
list of changes; these are of the kinds each edition brings, effective 30 June 2024:

1. 梅沙街道 (440308001) is merged into 盐田街道 (440308002): its four residents' committees move
   there under new codes, 440308001002 → 440308002011, …005 → …012, …006 → …013, …007 → …014;
2. 海山街道 (440308004) is renamed 海山湾街道 (same code);
3. 沙头角街道 (440308003) is split: a new 中英街街道 (440308005) takes 桥东居委会 (440308003003 →
   440308005001) and 中英街居委会 (440308003004 → 440308005002); the rest stays;
4. 海涛居委会 (440308004007) is renamed 海涛社区居委会 (same code).

Everything else of 盐田区 is as in 2023. `write_2024(target)` writes the edition's five files.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

from cso.divisions import editions
from cso.divisions.subset import write_subset

COUNTY = "440308"
EFFECTIVE = date(2024, 6, 30)
MERGED, INTO = "440308001", "440308002"
SPLIT, NEW_TOWNSHIP = "440308003", "440308005"
RENAMED_TOWNSHIP = ("440308004", "海山街道", "海山湾街道")
RENAMED_COMMUNITY = ("440308004007", "海涛居委会", "海涛社区居委会")
RECODED = {"440308001002": "440308002011", "440308001005": "440308002012",
           "440308001006": "440308002013", "440308001007": "440308002014",
           "440308003003": "440308005001", "440308003004": "440308005002"}


def write_2023(target: Path) -> Path:
    """The real 2023 rows of 盐田区 and its ancestors, as plain CSV."""
    write_subset(editions.edition("2023"), target, [COUNTY])
    return target


def write_2024(target: Path) -> Path:
    write_2023(target)
    streets = (target / "streets.csv").read_text(encoding="utf-8").splitlines()
    streets = [line for line in streets if not line.startswith(MERGED)]
    streets = [line.replace(f'"{RENAMED_TOWNSHIP[1]}"', f'"{RENAMED_TOWNSHIP[2]}"') for line in streets]
    streets.insert(-1, f'{NEW_TOWNSHIP},"中英街街道",{COUNTY},44,4403')   # before the 4xx special unit
    (target / "streets.csv").write_text("\n".join(streets) + "\n", encoding="utf-8")
    villages = []
    for line in (target / "villages.csv").read_text(encoding="utf-8").splitlines():
        code = line.split(",", 1)[0]
        if code in RECODED:
            new = RECODED[code]
            line = f"{new}," + line.split(",", 1)[1].replace(f",{code[:9]},", f",{new[:9]},")
        villages.append(line.replace(f'"{RENAMED_COMMUNITY[1]}"', f'"{RENAMED_COMMUNITY[2]}"'))
    header, rows = villages[0], sorted(villages[1:])
    (target / "villages.csv").write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return target


def resolve(community: str, day: date) -> str:
    """Where a 2023 community of 盐田区 counts on `day`."""
    return RECODED.get(community, community) if day >= EFFECTIVE else community


# --- across counties: 乐山市 (5111) ---------------------------------------------------------------
"""A second synthetic "2024" edition, of 四川省 乐山市 (5111), next to its real 2023 rows, with the
changes that cross county lines, effective 30 June 2024 (the kinds NBS editions bring when a
county becomes a district or a district is re-drawn):

5. 县改区: 犍为县 (511123) becomes 犍为区 (511114). Every township is re-coded under the new code
   with its number kept (511123101 孝姑镇 → 511114101 孝姑镇, …), and every community with it
   (511123101001 → 511114101001, …), names unchanged; except
6. 镇改街道 with it: 玉津镇 (511123100), the county seat, becomes 玉津街道 (511114001), a street
   code and another name; its communities keep their names under it (511123100001 → 511114001001, …);
7. 井研县's 集益镇 (511124110) is transferred to 五通桥区 (511112) as 511112111 集益镇, its communities
   re-coded under it (511124110001 → 511112111001, …), names unchanged.

Everything else of 乐山市 is as in 2023. No code of this set is named by the first one.
"""

CITY = "5111"
COUNTY_RECODED = ("511123", "511114", "犍为县", "犍为区")
SEAT = ("511123100", "511114001", "玉津街道")
MOVED = ("511124110", "511112111")                     # 集益镇: 井研县 → 五通桥区


def _cross_county(code: str) -> str:
    """Where a 2023 code of 乐山市 stands in the 2024 edition (itself where unchanged)."""
    old_county, new_county = COUNTY_RECODED[:2]
    if code.startswith(SEAT[0]):
        return SEAT[1] + code[len(SEAT[0]):]
    if code.startswith(MOVED[0]):
        return MOVED[1] + code[len(MOVED[0]):]
    if code.startswith(old_county):
        return new_county + code[len(old_county):]
    return code


def write_leshan_2023(target: Path) -> Path:
    """The real 2023 rows of 乐山市 and its ancestors, as plain CSV."""
    write_subset(editions.edition("2023"), target, [CITY])
    return target


def _rewrite(path: Path, columns: tuple[int, ...], names: dict[str, str]) -> None:
    """Re-code every row, its parents' columns from its new code (a moved township's county is
    its new county's), rename by new code, and sort by code."""
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = []
    for line in lines[1:]:
        cells = line.split(",")
        code = _cross_county(cells[0])
        for i in columns:
            cells[i] = code[:len(cells[i])]
        if cells[0] in names:
            cells[1] = f'"{names[cells[0]]}"'
        rows.append(",".join(cells))
    path.write_text("\n".join([lines[0], *sorted(rows)]) + "\n", encoding="utf-8")


def write_leshan_2024(target: Path) -> Path:
    write_leshan_2023(target)
    names = {COUNTY_RECODED[1]: COUNTY_RECODED[3], SEAT[1]: SEAT[2]}
    _rewrite(target / "areas.csv", (0,), names)                 # code,name,cityCode,provinceCode
    _rewrite(target / "streets.csv", (0, 2), names)             # code,name,areaCode,…
    _rewrite(target / "villages.csv", (0, 2, 5), names)         # code,name,streetCode,…,areaCode
    return target


def resolve_leshan(code: str, day: date) -> str:
    """Where a 2023 code of 乐山市 counts on `day`."""
    return _cross_county(code) if day >= EFFECTIVE else code
