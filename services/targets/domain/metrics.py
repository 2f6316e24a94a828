"""What coverage counts, and the figures targets are set on.

Counters are integers kept per region and month (as deltas, so any month's value is a sum and
events can arrive in any order). Figures are what plans name: counts, shares and averages derived
from counters at read time, never stored, so they cannot disagree with the counters.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from contracts.events import (
    CLASS_OF_CATEGORY,
    FACILITY_TIERS,
    Category,
    CommunityKind,
    ManagementTier,
    OrganizationClass,
)

from .funding import FUNDING_COUNTERS

# Facilities (FacilityOpened): each kind running, by the tier it opened at, and the divisions of
# each tier with one running (domain/entities.py: "在2个县区、10个街道(乡镇)、20个社区(村)").
FACILITY_KINDS = tuple(k.value for k in FACILITY_TIERS)
TIERS_OF = {k.value: tiers for k, tiers in FACILITY_TIERS.items()}   # the tiers each kind opens at
TIER_PLURAL = {"city": "cities", "county": "counties", "township": "townships", "community": "communities"}
FACILITY_COUNTERS = (
    *(f"{k}s" for k in FACILITY_KINDS),
    *(f"{k}s_{t}" for k in FACILITY_KINDS for t in TIERS_OF[k]),
    *(f"{TIER_PLURAL[t]}_with_{k}" for k in FACILITY_KINDS for t in TIERS_OF[k]),
)
_FACILITY_WORDS = {"innovation_base": "innovation bases (社区社会组织创新发展基地)",
                   "demonstration_park": "demonstration parks (社会组织创新示范园)",
                   "social_work_station": "social-work stations (社工站)",
                   "social_work_room": "social-work rooms (社工室)"}

CATEGORY_COUNTERS = tuple(f"orgs_cat_{c.value}" for c in Category)
COUNTERS: tuple[str, ...] = (
    "orgs",                                   # active organizations
    *(f"orgs_{t.value}" for t in ManagementTier),   # by management tier
    *CATEGORY_COUNTERS,
    *(f"orgs_{k.value}" for k in OrganizationClass),  # functional / interest & volunteer
    "orgs_urban", "orgs_rural",               # organizations in urban / rural communities
    *(f"orgs_{k}_{t.value}" for k in ("urban", "rural") for t in ManagementTier),  # … by tier
    # … and those in no urban or rural community (another unit, or one the divisions do not know)
    *(f"orgs_other_{t.value}" for t in ManagementTier),
    "communities_urban", "communities_rural",
    "streets", "towns",                       # towns = 镇 + 乡 (plans' 乡镇)
    "streets_with_hub", "towns_with_hub",
    "streets_with_base", "towns_with_base",
    "hubs", "bases",
    *(f"bases_{t}" for t in ("city", "county", "township", "community")),  # by the tier a base opened at
    "communities_with_base", "communities_urban_with_base", "communities_rural_with_base",
    "orgs_party_covered", "brand_orgs", "brand_projects", "hub_demo_orgs",
    "orgs_rated", "orgs_rated_3a_plus",       # registered organizations with a grade (等级评估), 3A+
    "filings_functional", "filings_interest",  # cumulative: a year's new filings is a difference
    "registrations_functional", "registrations_interest",  # the same, for registrations (登记)
    "training_person_times",                  # cumulative completions (人次), every trainee
    "pool_training_person_times",             # the same, by talent-pool members only
    "pool_members", "pool_members_trained",
    "exam_passes",
    "outstanding_orgs",                       # cumulative selections (优秀社区社会组织), per county
    *FUNDING_COUNTERS,                        # funded projects, fen, organizations supported (funding.py)
    *FACILITY_COUNTERS,                       # facilities running, by tier, and divisions with one
)
COMMUNITY_KINDS = {CommunityKind.URBAN.value, CommunityKind.RURAL.value}

# Counters the history (targets.coverage, a delta per region, counter and day) does not keep: each
# is the sum of counters it keeps, for every organization state (domain/entities.py
# `_organization_vector` counts an organization once under each), and every part named is kept
# (none is derived itself). A filing moved 8 counters at 5 tiers on its day, 54% of PostgreSQL's
# time on a backfill (bench/README.md); these are 4 of the 8: an organization's tier is read from
# its community kind's (urban, rural or other) by tier. `coverage_now` keeps them all (dashboards
# read it as it is); a read of the history sums them.
_BY_KIND_AND_TIER = {t.value: tuple(f"orgs_{k}_{t.value}" for k in ("urban", "rural", "other"))
                     for t in ManagementTier}
DERIVED: dict[str, tuple[str, ...]] = {
    "orgs": tuple(p for parts in _BY_KIND_AND_TIER.values() for p in parts),
    **{f"orgs_{t}": parts for t, parts in _BY_KIND_AND_TIER.items()},
    **{f"orgs_{k.value}": tuple(f"orgs_cat_{c.value}" for c in Category if CLASS_OF_CATEGORY[c] is k)
       for k in OrganizationClass},
    **{f"orgs_{k}": tuple(f"orgs_{k}_{t.value}" for t in ManagementTier) for k in ("urban", "rural")},
}
assert not {p for parts in DERIVED.values() for p in parts} & DERIVED.keys(), "a part is derived itself"


def history_counters(counters: Iterable[str]) -> list[str]:
    """The counters the history keeps that `counters` are read from (each derived one by its parts)."""
    return sorted({part for c in counters for part in DERIVED.get(c, (c,))})


def with_derived(values: Mapping[str, int]) -> dict[str, int]:
    """A region's counters as the history keeps them, with the derived ones summed from their parts
    (a derived counter's own value, if any, is not trusted: it is summed again). Zeros are left out,
    as the history leaves them out."""
    out = {c: v for c, v in values.items() if c not in DERIVED}
    for name, parts in DERIVED.items():
        total = sum(out.get(p, 0) for p in parts)
        if total:
            out[name] = total
    return out


@dataclass(frozen=True)
class Figure:
    """A figure plans set targets on: numerator / denominator (or a count when no denominator).

    `yearly` figures are the growth of a cumulative counter within one calendar year.

    `unit` is the division the denominator counts, when it counts divisions: a target on such a
    figure is a promise about each of them ("每个城市社区平均不少于12个": every urban community;
    "街道枢纽全覆盖": every street), so the units below its threshold are behind (see
    `domain.behind`). A unit's own figure is read from its own counters: a community's
    communities_urban is 1 when it is urban, a township's streets 1 when it is a street.
    """

    name: str
    numerator: tuple[str, ...]
    denominator: tuple[str, ...] = ()
    kind: Literal["count", "share", "average"] = "count"
    yearly: bool = False
    description: str = ""
    unit: Literal["community", "township"] | None = None
    per: int = 1    # a count's counters divided by this: fen to yuan (100)


FIGURES: dict[str, Figure] = {f.name: f for f in (
    Figure("orgs", ("orgs",), description="active organizations"),
    Figure("avg_orgs_per_urban_community", ("orgs_urban",), ("communities_urban",), "average",
           description="organizations per urban community", unit="community"),
    Figure("avg_orgs_per_rural_community", ("orgs_rural",), ("communities_rural",), "average",
           description="organizations per rural community", unit="community"),
    Figure("streets_with_hub_share", ("streets_with_hub",), ("streets",), "share",
           description="share of streets with an active hub", unit="township"),
    Figure("towns_with_hub_share", ("towns_with_hub",), ("towns",), "share",
           description="share of towns and townships with an active hub", unit="township"),
    Figure("townships_with_hub_share", ("streets_with_hub", "towns_with_hub"), ("streets", "towns"),
           "share", description="share of streets, towns and townships with an active hub", unit="township"),
    Figure("streets_with_base_share", ("streets_with_base",), ("streets",), "share",
           description="share of streets covered by an incubation base", unit="township"),
    Figure("towns_with_base_share", ("towns_with_base",), ("towns",), "share",
           description="share of towns and townships covered by an incubation base", unit="township"),
    Figure("party_covered_share", ("orgs_party_covered",), ("orgs",), "share",
           description="share of organizations covered by party organizations"),
    Figure("brand_organizations", ("brand_orgs",), description="brand organizations"),
    Figure("brand_projects", ("brand_projects",), description="brand projects"),
    Figure("hub_demonstration_orgs", ("hub_demo_orgs",), description="hub demonstration organizations"),
    Figure("rated_orgs", ("orgs_rated",), description="registered organizations with a grade (等级评估)"),
    Figure("rated_3a_plus_orgs", ("orgs_rated_3a_plus",), description="organizations rated 3A or above"),
    # Of the registered organizations: only they (legal persons) take part in 等级评估.
    Figure("rated_3a_plus_share", ("orgs_rated_3a_plus",), ("orgs_registered",), "share",
           description="share of registered organizations rated 3A or above"),
    Figure("new_filings_functional", ("filings_functional",), yearly=True,
           description="new filings of functional service organizations in the year"),
    Figure("new_filings_interest", ("filings_interest",), yearly=True,
           description="new filings of interest and volunteer organizations in the year"),
    Figure("training_person_times", ("training_person_times",),
           description="training person-times of every trainee, pool member or not, cumulative"),
    Figure("training_person_times_in_year", ("training_person_times",), yearly=True,
           description="training person-times of every trainee within the year"),
    Figure("pool_training_person_times", ("pool_training_person_times",),
           description="training person-times of talent-pool members, cumulative"),
    Figure("pool_training_person_times_in_year", ("pool_training_person_times",), yearly=True,
           description="training person-times of talent-pool members within the year"),
    Figure("pool_trained_share", ("pool_members_trained",), ("pool_members",), "share",
           description="share of talent-pool members trained at least once"),
    Figure("exam_passes", ("exam_passes",), description="social-work qualification exam passes"),
    Figure("outstanding_orgs_in_year", ("outstanding_orgs",), yearly=True,
           description="outstanding organizations selected for the year (优秀社区社会组织)"),
    Figure("bases", ("bases",), description="incubation bases of every tier (孵化基地、孵化点)"),
    *(Figure(f"bases_{t}", (f"bases_{t}",), description=f"incubation bases opened at the {t} tier")
      for t in ("city", "county", "township", "community")),
    Figure("communities_with_base_share", ("communities_with_base",), ("communities_urban", "communities_rural"),
           "share", description="share of urban and rural communities with an incubation point of their own",
           unit="community"),
    Figure("community_bases_per_township", ("bases_community",), ("streets", "towns"), "average",
           description="incubation points at communities per street, town and township"),
    Figure("funding_yuan", ("funding_fen",), per=100,
           description="yuan awarded to funded projects (政府购买服务, 公益创投, 孵化培育资金), cumulative"),
    Figure("funding_yuan_in_year", ("funding_fen",), yearly=True, per=100,
           description="yuan awarded to funded projects within the year"),
    Figure("funded_projects", ("funded_projects",), description="funded projects awarded, cumulative"),
    Figure("funded_projects_in_year", ("funded_projects",), yearly=True,
           description="funded projects awarded within the year"),
    Figure("funded_projects_active", ("funded_projects_active",), description="funded projects running"),
    Figure("orgs_supported", ("orgs_supported",),
           description="organizations a funded project has supported, cumulative"),
    # The city plan's task 18 by the names its ledger gave them: divisions with an innovation base.
    Figure("innovation_bases_counties", ("counties_with_innovation_base",),
           description="counties (县区) with a running innovation base of their own (创新发展基地)"),
    Figure("innovation_bases_townships", ("townships_with_innovation_base",),
           description="streets, towns and townships with a running innovation base of their own"),
    Figure("innovation_bases_communities", ("communities_with_innovation_base",),
           description="urban and rural communities with a running innovation base of their own"),
    *(Figure(f"{k}s", (f"{k}s",), description=f"running {_FACILITY_WORDS[k]}") for k in FACILITY_KINDS),
    *(Figure(f"{k}s_{t}", (f"{k}s_{t}",), description=f"running {_FACILITY_WORDS[k]} opened at the {t} tier")
      for k in FACILITY_KINDS for t in TIERS_OF[k] if len(TIERS_OF[k]) > 1),
    *(Figure(f"{TIER_PLURAL[t]}_with_{k}", (f"{TIER_PLURAL[t]}_with_{k}",),
             description=f"{TIER_PLURAL[t]} with running {_FACILITY_WORDS[k]} of their own")
      for k in FACILITY_KINDS for t in TIERS_OF[k]),
    # "镇两级社工站点全部运行": every street, town and township with a station running (share 1.0).
    *(Figure(f"townships_with_{k}_share", (f"townships_with_{k}",), ("streets", "towns"), "share",
             description=f"share of streets, towns and townships with running {_FACILITY_WORDS[k]}",
             unit="township") for k in FACILITY_KINDS if k != "social_work_room"),
    *(Figure(f"communities_with_{k}_share", (f"communities_with_{k}",), ("communities_urban", "communities_rural"),
             "share", description=f"share of urban and rural communities with running {_FACILITY_WORDS[k]}",
             unit="community") for k in FACILITY_KINDS if k != "social_work_station"),
    Figure("new_orgs_supported_first_year_share", ("orgs_new_supported_first_year",), ("orgs_new",), "share",
           description="share of new organizations funded within their first year"),
)}


# What makes an organization "new" for a new-organizations figure: its filing (备案, tier filed),
# its registration (登记), or either. Each is counted once per organization, the first time.
NEW_EVENTS = ("filed", "registered")
NEW_FIGURES = {"new_filings_functional": "functional", "new_filings_interest": "interest"}
# Which organizations a density counts, by management tier: a plan's definition decides (乐山:
# "依法登记注册或实行在乡镇（街道）备案的社会组织" is registered or filed, not guided).
ORG_TIERS = tuple(t.value for t in ManagementTier)
TIER_FIGURES = {"avg_orgs_per_urban_community": "urban", "avg_orgs_per_rural_community": "rural"}


def numerator(name: str, new: tuple[str, ...] | None = None,
              counts: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """The counters a figure sums on top: its own; for a new-organizations figure the counters of
    the events `new` names (a target's definition; None: filings only, as before); for a density
    the organizations of the tiers `counts` names (None: every tier)."""
    spec = FIGURES[name]
    if counts is not None and name in TIER_FIGURES:
        return tuple(f"orgs_{TIER_FIGURES[name]}_{t}" for t in ORG_TIERS if t in counts)
    if new is None or name not in NEW_FIGURES:
        return spec.numerator
    cls = NEW_FIGURES[name]
    return tuple(f"{'filings' if e == 'filed' else 'registrations'}_{cls}" for e in NEW_EVENTS if e in new)


def figure(name: str, counters: Mapping[str, int], year_start: Mapping[str, int] | None = None,
           new: tuple[str, ...] | None = None, counts: tuple[str, ...] | None = None) -> float | None:
    """A figure's value from counters (as of some date). For a yearly figure, `year_start` holds
    the counters as of the end of the previous year. None when a share has nothing to divide by.
    `new`, `counts`: a target's definition (see `numerator`)."""
    spec = FIGURES[name]
    top_counters = numerator(name, new, counts)
    top = sum(counters.get(c, 0) for c in top_counters)
    if spec.yearly:
        top -= sum((year_start or {}).get(c, 0) for c in top_counters)
    if not spec.denominator:
        return float(top) / spec.per
    bottom = sum(counters.get(c, 0) for c in spec.denominator)
    return top / bottom if bottom else None


def figures(counters: Mapping[str, int]) -> dict[str, float | None]:
    """Every non-yearly figure of one region."""
    return {name: figure(name, counters) for name, spec in FIGURES.items() if not spec.yearly}
