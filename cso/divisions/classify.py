"""The kind of a township and of a community, from its NBS code and name.

Pure functions: no I/O, so the rules can be checked against the whole national dataset and
property-tested on their own.
"""

from __future__ import annotations

import re

from contracts.events import CommunityKind, TownshipKind

# NBS numbers the last three digits of a township code by its kind (统计用区划代码编制规则).
_CODE_RANGES: tuple[tuple[int, int, TownshipKind], ...] = (
    (1, 99, TownshipKind.STREET),
    (100, 199, TownshipKind.TOWN),
    (200, 399, TownshipKind.TOWNSHIP),
    (400, 599, TownshipKind.SPECIAL),
)

# A town re-designated as a street keeps its old code for years, so the name is the fresher
# signal; order matters only in that no suffix here is a suffix of another.
_TOWNSHIP_SUFFIXES: tuple[tuple[str, TownshipKind], ...] = (
    ("街道", TownshipKind.STREET),
    ("镇", TownshipKind.TOWN),
    ("乡", TownshipKind.TOWNSHIP),
    ("苏木", TownshipKind.TOWNSHIP),
)

# Rural markers that can follow an urban word: "先锋社区村民委员会" is a villagers' committee
# that calls its area a community, so these are tested before the urban suffixes.
_RURAL_COMMITTEES: tuple[str, ...] = ("村民委员会", "村委会")
_URBAN_SUFFIXES: tuple[str, ...] = ("居民委员会", "居委会", "社区")
_RURAL_SUFFIXES: tuple[str, ...] = ("村",)
# A gacha (嘎查) is Inner Mongolia's village; its names end in 嘎查, 嘎查村, 嘎查委员会 and more.
_RURAL_WORDS: tuple[str, ...] = ("嘎查",)

_BRACKETED = re.compile(r"[（(][^（()）]*[）)]")
_STRAY_BRACKETS = re.compile(r"[（()）]")


def core_name(name: str) -> str:
    """The name without bracketed remarks, which NBS appends to many names.

    "蒋家岗居委会（社区）", "戴溪社区居委会（含戴溪村村委）" and "三星镇（叠石桥家纺产业园区）" are
    classified by what precedes the remark; a few names have unbalanced brackets, whose stray
    halves are dropped too. A name that is nothing but a remark is kept whole.
    """
    core = name.strip()
    while True:
        shorter = _BRACKETED.sub("", core)
        if shorter == core:
            break
        core = shorter
    core = _STRAY_BRACKETS.sub("", core).strip()
    return core or name.strip()


def township_kind_from_code(code: str) -> TownshipKind:
    """The kind the code's last three digits stand for; anything outside 001-599 is special."""
    if len(code) != 9 or not (code.isascii() and code.isdigit()):
        raise ValueError(f"{code!r} is not a township code: expected 9 digits")
    serial = int(code[6:])
    for low, high, kind in _CODE_RANGES:
        if low <= serial <= high:
            return kind
    return TownshipKind.SPECIAL


def township_kind_from_name(name: str) -> TownshipKind | None:
    """The kind the name's suffix states, or None when the name states none (开发区, 农场, …)."""
    core = core_name(name)
    for suffix, kind in _TOWNSHIP_SUFFIXES:
        if core.endswith(suffix):
            return kind
    return None


def township_kind(code: str, name: str) -> TownshipKind:
    """The name's suffix where it has one, else the code's range."""
    by_code = township_kind_from_code(code)
    return township_kind_from_name(name) or by_code


def community_kind(name: str) -> CommunityKind:
    """Urban for residents' committees and 社区, rural for villagers' committees, 村 and 嘎查.

    Everything else is other: farm and forestry living quarters (生活区), management areas
    (管理区), production teams and companies (生产队, 连队), and names so garbled (村民委会,
    社区居委会会) that guessing would be worse than saying so.
    """
    core = core_name(name)
    if any(word in core for word in _RURAL_COMMITTEES):
        return CommunityKind.RURAL
    if core.endswith(_URBAN_SUFFIXES):
        return CommunityKind.URBAN
    if core.endswith(_RURAL_SUFFIXES) or any(word in core for word in _RURAL_WORDS):
        return CommunityKind.RURAL
    return CommunityKind.OTHER
