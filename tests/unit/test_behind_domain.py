"""Which units are behind a target (services/targets/domain/behind.py): pure checks."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.targets.domain.behind import behind, short_of, tiers
from services.targets.domain.catalogue import satisfies
from services.targets.domain.metrics import FIGURES


def test_a_community_with_three_urban_organizations_is_nine_short_of_twelve() -> None:
    units = {"510681001014": ("A社区", {"orgs_urban": 3, "communities_urban": 1}),
             "510681001011": ("B社区", {"orgs_urban": 12, "communities_urban": 1}),
             "510681001012": ("C社区", {"communities_urban": 1}),
             "510681101201": ("D村", {"orgs_rural": 1, "communities_rural": 1})}
    counted, late = behind("avg_orgs_per_urban_community", 12, ">=", units)
    assert counted == 3  # the rural one is not an urban community
    assert [(u.code, u.short, u.value) for u in late] == [("510681001012", 12, 0.0), ("510681001014", 9, 3.0)]
    assert late[1].name == "A社区" and (late[1].numerator, late[1].denominator) == (3, 1)


def test_a_township_behind_on_hubs_is_one_without_one() -> None:
    units = {"510681001": ("街道一", {"streets": 1, "streets_with_hub": 1}),
             "510681002": ("街道二", {"streets": 1}),
             "510681101": ("镇", {"towns": 1})}
    assert [(u.code, u.short) for u in behind("streets_with_hub_share", 1.0, ">=", units)[1]] == [("510681002", 1)]
    assert behind("streets_with_hub_share", 1.0, ">=", units)[0] == 2
    assert [(u.code, u.short) for u in behind("townships_with_hub_share", 0.8, ">=", units)[1]] == [
        ("510681002", 1), ("510681101", 1)]


def test_a_township_under_a_per_community_average_lacks_the_sum() -> None:
    # 3 urban communities with 20 organizations: 36 are needed for an average of 12.
    units = {"510681001": ("街道", {"orgs_urban": 20, "communities_urban": 3})}
    assert behind("avg_orgs_per_urban_community", 12, ">=", units)[1][0].short == 16


def test_only_figures_per_division_have_units() -> None:
    assert tiers("avg_orgs_per_urban_community") == ("township", "community")
    assert tiers("towns_with_base_share") == ("township",)
    assert tiers("orgs") == () and tiers("party_covered_share") == ()
    assert {n for n, f in FIGURES.items() if f.unit} >= {"avg_orgs_per_rural_community", "streets_with_hub_share"}


@given(st.floats(0, 50, allow_nan=False), st.sampled_from([">=", "<="]), st.integers(0, 500), st.integers(1, 60))
def test_short_is_the_least_change_that_meets_the_threshold(threshold: float, comparison: str,
                                                             numerator: int, denominator: int) -> None:
    k = short_of(threshold, comparison, numerator, denominator)  # type: ignore[arg-type]
    sign = 1 if comparison == ">=" else -1
    assert k >= 0
    assert (k == 0) == satisfies(numerator / denominator, threshold, comparison)  # type: ignore[arg-type]
    assert satisfies((numerator + sign * k) / denominator, threshold, comparison)  # type: ignore[arg-type]
    if k:
        assert not satisfies((numerator + sign * (k - 1)) / denominator, threshold, comparison)  # type: ignore[arg-type]


@given(st.dictionaries(st.from_regex(r"\A510681\d{6}\Z"), st.tuples(st.integers(0, 30), st.integers(0, 2)),
                       max_size=30), st.integers(0, 20))
def test_behind_is_every_unit_under_the_threshold_worst_first(counts: dict[str, tuple[int, int]],
                                                              threshold: int) -> None:
    units = {code: (code, {"orgs_urban": n, "communities_urban": d}) for code, (n, d) in counts.items()}
    counted, late = behind("avg_orgs_per_urban_community", threshold, ">=", units)
    assert counted == sum(1 for _, d in counts.values() if d)
    assert {u.code for u in late} == {c for c, (n, d) in counts.items() if d and n / d < threshold}
    assert [u.short for u in late] == sorted((u.short for u in late), reverse=True)
