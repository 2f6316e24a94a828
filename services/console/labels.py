"""What the console calls things, in Chinese (zh-CN), and how it writes numbers: pure code.

The services answer with English keys (figures, statuses, tiers); an official reads the words of
the plans they answer for. A key without a label is shown as it is, never dropped.
"""

from __future__ import annotations

from typing import Any

TIERS = {"province": "省", "city": "市（州）", "county": "县（市、区）", "township": "乡镇（街道）",
         "community": "社区（村）"}
KINDS = {"street": "街道", "town": "镇", "township": "乡", "urban": "城市社区", "rural": "农村社区"}

# The figures of services/targets/domain/metrics.py FIGURES, in the plans' own words.
FIGURES = {
    "orgs": "社区社会组织（个）",
    "avg_orgs_per_urban_community": "城市社区平均组织数",
    "avg_orgs_per_rural_community": "农村社区平均组织数",
    "streets_with_hub_share": "街道枢纽型组织覆盖率",
    "towns_with_hub_share": "乡镇枢纽型组织覆盖率",
    "townships_with_hub_share": "乡镇（街道）枢纽型组织覆盖率",
    "streets_with_base_share": "街道孵化基地覆盖率",
    "towns_with_base_share": "乡镇孵化基地覆盖率",
    "party_covered_share": "党的组织覆盖率",
    "brand_organizations": "品牌社区社会组织（个）",
    "brand_projects": "品牌活动项目（个）",
    "hub_demonstration_orgs": "枢纽型示范组织（个）",
    "rated_orgs": "参加等级评估的组织（个）",
    "rated_3a_plus_orgs": "3A以上等级组织（个）",
    "rated_3a_plus_share": "3A以上等级组织占比",
    "new_filings_functional": "新备案功能型组织（个）",
    "new_filings_interest": "新备案兴趣型组织（个）",
    "training_person_times": "骨干人才培训（人次）",
    "training_person_times_in_year": "本年度培训（人次）",
    "pool_training_person_times": "人才库成员培训（人次）",
    "pool_training_person_times_in_year": "本年度人才库成员培训（人次）",
    "pool_trained_share": "人才库培训覆盖率",
    "exam_passes": "考试通过（人）",
    "outstanding_orgs_in_year": "当年优秀社区社会组织（个）",
    "bases": "孵化基地（个）",
    "bases_city": "市级孵化基地（个）",
    "bases_county": "县级孵化基地（个）",
    "bases_township": "镇（街道）级孵化基地（个）",
    "bases_community": "村（社区）孵化点（个）",
    "communities_with_base_share": "设有孵化点的村（社区）比例",
    "community_bases_per_township": "每个乡镇（街道）的村（社区）孵化点（个）",
    "funding_yuan": "资助金额（元）",
    "funding_yuan_in_year": "当年资助金额（元）",
    "funded_projects": "资助项目（个）",
    "funded_projects_in_year": "当年资助项目（个）",
    "funded_projects_active": "在实施资助项目（个）",
    "orgs_supported": "获资助组织（个）",
    "new_orgs_supported_first_year_share": "新成立组织当年获资助比例",
    "innovation_bases_counties": "打造创新发展基地的县区（个）",
    "innovation_bases_townships": "打造创新发展基地的街道（乡镇）（个）",
    "innovation_bases_communities": "打造创新发展基地的社区（村）（个）",
}
# Facilities (FacilityOpened): each kind, at the tiers it opens at, and the divisions with one.
_FACILITIES = {"innovation_base": ("社区社会组织创新发展基地", ("city", "county", "township", "community")),
               "demonstration_park": ("社会组织创新示范园", ("city", "county", "township", "community")),
               "social_work_station": ("社工站", ("city", "county", "township")),
               "social_work_room": ("社工室", ("community",))}
_TIER_WORDS = {"city": ("市级", "cities", "市（州）"), "county": ("县级", "counties", "县（市、区）"),
               "township": ("镇（街道）级", "townships", "乡镇（街道）"),
               "community": ("村（社区）", "communities", "村（社区）")}
for _kind, (_name, _tiers) in _FACILITIES.items():
    FIGURES[f"{_kind}s"] = f"运行中的{_name}（个）"
    for _tier in _tiers:
        _level, _plural, _division = _TIER_WORDS[_tier]
        FIGURES[f"{_kind}s_{_tier}"] = f"{_level}{_name}（个）"
        FIGURES[f"{_plural}_with_{_kind}"] = f"设有{_name}的{_division}（个）"
        FIGURES[f"{_plural}_with_{_kind}_share"] = f"设有{_name}的{_division}比例"
# The columns of the region tree: what an official asks first.
KEY_FIGURES = ("orgs", "avg_orgs_per_urban_community", "avg_orgs_per_rural_community",
               "townships_with_hub_share", "streets_with_base_share", "towns_with_base_share",
               "training_person_times")
COUNTERS = {"communities_urban": "城市社区", "communities_rural": "农村社区", "streets": "街道",
            "towns": "乡镇"}

STATUSES = {"met": "已达成", "on_track": "进展正常", "at_risk": "有风险", "missed": "未达成",
            "pending": "待评估", None: "待评估"}
TASK_STATES = {"not_started": "未开始", "in_progress": "进行中", "submitted": "已提交",
               "accepted": "已验收", "overdue": "已逾期"}
ROLES = {"lead": "牵头", "co": "配合"}
ACTIONS = {"start": "开始办理", "submit": "提交", "accept": "验收通过", "return": "退回"}
COMPARISONS = {">=": "≥", "<=": "≤"}


def label(table: dict[Any, str], key: Any) -> str:
    """The Chinese word for `key`, or the key itself (a new figure still shows)."""
    return table.get(key, str(key) if key is not None else "—")


def kind_of(figure: str) -> str:
    """How a figure is written: shares as percentages, averages with two decimals, else counts."""
    if figure == "share" or figure.endswith("_share"):
        return "share"
    if figure.startswith("avg_"):
        return "average"
    return "count"


def number(value: Any, figure: str = "") -> str:
    """A figure as an official reads it: 62.5%, 3.25, 1,204; "—" where there is nothing to count
    (a share of zero streets)."""
    if value is None:
        return "—"
    try:
        x = float(value)
    except (TypeError, ValueError):
        return str(value)
    kind = kind_of(figure)
    if kind == "share":
        percent = round(x * 100, 1)
        return f"{percent:.0f}%" if percent == int(percent) else f"{percent:.1f}%"
    if kind == "average":
        return f"{x:.2f}"
    return f"{x:,.0f}"


def trend(points: list[dict[str, Any]]) -> str:
    """The direction of a figure's monthly series over its last two months: ↑ ↓ →, or "—"."""
    values = [float(p["value"]) for p in points if p.get("value") is not None]
    if len(values) < 2:
        return "—"
    last, before = values[-1], values[-2]
    return "↑" if last > before else "↓" if last < before else "→"
