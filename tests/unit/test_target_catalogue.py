"""The target catalogue: the default file, validation errors, and expansion into instances."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.targets.domain.catalogue import (
    DEFAULT_CATALOGUE,
    CatalogueError,
    TargetInstance,
    TargetSpec,
    expand,
    load_catalogue,
    parse_catalogue,
)
from services.targets.domain.metrics import FIGURES

REPO = Path(__file__).resolve().parents[2]
DEMO_AREAS = REPO / "cso" / "divisions" / "demo" / "areas.csv"

CLASS_A = ("511102", "511111", "511112", "511126", "511181")
CLASS_B = ("511123", "511124", "511129")
CLASS_C = ("511113", "511132", "511133")

# DESIGN §4, one row per target (a "x / y" row is two targets):
# (figure, threshold, start, deadline, scope_region, scope_tier, regions, yearly years)
D = date
DESIGN_ROWS: list[tuple[str, float, date, date, str, str | None, tuple[str, ...] | None,
                        tuple[int, int] | None]] = [
    # city plan 2021–2023, scoped to 乐山市 5111
    ("avg_orgs_per_urban_community", 12, D(2021, 1, 1), D(2023, 12, 31), "5111", "county", None,
     None),
    ("avg_orgs_per_rural_community", 7, D(2021, 1, 1), D(2023, 12, 31), "5111", "county", None,
     None),
    ("streets_with_hub_share", 1.0, D(2021, 1, 1), D(2021, 12, 31), "5111", None, None, None),
    ("towns_with_hub_share", 1.0, D(2021, 1, 1), D(2022, 12, 31), "5111", None, None, None),
    ("streets_with_base_share", 1.0, D(2021, 1, 1), D(2021, 12, 31), "5111", None, None, None),
    ("towns_with_base_share", 0.5, D(2021, 1, 1), D(2022, 12, 31), "5111", None, None, None),
    ("towns_with_base_share", 0.8, D(2021, 1, 1), D(2023, 12, 31), "5111", None, None, None),
    ("pool_trained_share", 1.0, D(2021, 1, 1), D(2023, 12, 31), "5111", "county", None, None),
    # Leshan 14th five-year plan
    ("avg_orgs_per_urban_community", 12, D(2021, 1, 1), D(2025, 12, 31), "5111", None, None,
     None),
    ("avg_orgs_per_rural_community", 5, D(2021, 1, 1), D(2025, 12, 31), "5111", None, None, None),
    ("avg_orgs_per_urban_community", 15, D(2021, 1, 1), D(2025, 12, 31), "5111", None, CLASS_A,
     None),
    ("avg_orgs_per_rural_community", 8, D(2021, 1, 1), D(2025, 12, 31), "5111", None, CLASS_A,
     None),
    ("avg_orgs_per_urban_community", 12, D(2021, 1, 1), D(2025, 12, 31), "5111", None, CLASS_B,
     None),
    ("avg_orgs_per_rural_community", 6, D(2021, 1, 1), D(2025, 12, 31), "5111", None, CLASS_B,
     None),
    ("avg_orgs_per_urban_community", 10, D(2021, 1, 1), D(2025, 12, 31), "5111", None, CLASS_C,
     None),
    ("avg_orgs_per_rural_community", 4, D(2021, 1, 1), D(2025, 12, 31), "5111", None, CLASS_C,
     None),
    ("new_filings_functional", 100, D(2021, 1, 1), D(2025, 12, 31), "5111", None, None,
     (2021, 2025)),
    ("new_filings_interest", 100, D(2021, 1, 1), D(2025, 12, 31), "5111", None, None,
     (2021, 2025)),
    ("streets_with_hub_share", 1.0, D(2021, 1, 1), D(2025, 12, 31), "5111", None, None, None),
    ("towns_with_hub_share", 0.75, D(2021, 1, 1), D(2025, 12, 31), "5111", None, None, None),
    ("training_person_times", 1000, D(2021, 1, 1), D(2025, 12, 31), "5111", None, None, None),
    ("hub_demonstration_orgs", 20, D(2021, 1, 1), D(2025, 12, 31), "5111", None, None, None),
    # Guangdong plan
    ("townships_with_hub_share", 0.8, D(2021, 1, 1), D(2023, 12, 31), "44", None, None, None),
    # Guanghan plan
    ("brand_organizations", 3, D(2024, 3, 1), D(2024, 11, 30), "510681", None, None, None),
    ("brand_projects", 3, D(2024, 3, 1), D(2024, 11, 30), "510681", None, None, None),
]


def _row(spec: TargetSpec) -> tuple[Any, ...]:
    years = (spec.yearly_from, spec.yearly_until) if spec.yearly_from is not None else None
    return (spec.figure, spec.threshold, spec.start, spec.deadline, spec.scope_region,
            spec.scope_tier, spec.regions, years)


# --- the default catalogue ----------------------------------------------------------------------


def test_default_catalogue_path() -> None:
    assert DEFAULT_CATALOGUE == REPO / "services" / "targets" / "catalogue.yaml"
    assert DEFAULT_CATALOGUE.is_file()


def test_default_catalogue_has_exactly_the_design_rows() -> None:
    specs = load_catalogue(DEFAULT_CATALOGUE)
    rows = sorted((_row(s) for s in specs), key=repr)
    assert rows == sorted(DESIGN_ROWS, key=repr)


def test_default_catalogue_ids_unique_titles_and_sources_present() -> None:
    specs = load_catalogue(DEFAULT_CATALOGUE)
    ids = [s.id for s in specs]
    assert len(ids) == len(set(ids)) == len(DESIGN_ROWS)
    assert all(s.title.strip() and s.source.strip() for s in specs)
    assert not any(s.retired for s in specs)
    assert {s.id for s in specs} >= {"leshan-avg-urban-class-a", "guangdong-townships-hub"}


def test_default_catalogue_sources_group_the_plans() -> None:
    by_source: dict[str, set[str]] = {}
    for s in load_catalogue(DEFAULT_CATALOGUE):
        by_source.setdefault(s.source, set()).add(s.scope_region)
    # city plan, Leshan, Guangdong, Guanghan: four documents
    assert len(by_source) == 4
    assert sorted(map(sorted, by_source.values())) == [["44"], ["510681"], ["5111"], ["5111"]]


def test_leshan_classes_partition_the_counties_of_leshan() -> None:
    with DEMO_AREAS.open(encoding="utf-8") as f:
        leshan = {row["code"] for row in csv.DictReader(f) if row["cityCode"] == "5111"}
    classes = [CLASS_A, CLASS_B, CLASS_C]
    assert sum(len(c) for c in classes) == len(leshan) == 11
    assert set().union(*classes) == leshan


def test_default_catalogue_as_json_loads_the_same(tmp_path: Path) -> None:
    data = yaml.safe_load(DEFAULT_CATALOGUE.read_text(encoding="utf-8"))
    path = tmp_path / "catalogue.json"
    path.write_text(json.dumps(data, default=str, ensure_ascii=False), encoding="utf-8")
    assert load_catalogue(path) == load_catalogue(DEFAULT_CATALOGUE)


def test_default_catalogue_expands_over_the_demo_counties() -> None:
    with DEMO_AREAS.open(encoding="utf-8") as f:
        counties = [row["code"] for row in csv.DictReader(f)]

    def regions_of_tier(region: str, tier: str) -> list[str]:
        assert tier == "county"
        return [c for c in counties if c.startswith(region)]

    instances = [i for s in load_catalogue(DEFAULT_CATALOGUE) for i in expand(s, regions_of_tier)]
    ids = [i.instance_id for i in instances]
    assert len(ids) == len(set(ids))
    # 3 every-county specs x 11 + 6 class specs (5+5+3+3+3+3) + 2 yearly x 5 + 14 single ones
    assert len(instances) == 33 + 22 + 10 + 14
    assert "city-2021-2023-pool-trained-per-county@511181" in ids
    assert "leshan-new-filings-interest@5111/2023" in ids
    assert "leshan-avg-rural-class-c@511133" in ids


# --- validation ---------------------------------------------------------------------------------


def _target(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "ok", "title": "测试", "figure": "orgs", "scope_region": "5111", "threshold": 10,
        "start": date(2021, 1, 1), "deadline": date(2021, 12, 31), "source": "test plan",
    }
    base.update(fields)
    return {k: v for k, v in base.items() if v is not ...}


def _write(tmp_path: Path, targets: list[Any], name: str = "targets.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"targets": targets}, allow_unicode=True), encoding="utf-8")
    return path


def _load_error(tmp_path: Path, bad: dict[str, Any]) -> str:
    """Load a file whose targets[2] is `bad` (after two valid ones); return the error text."""
    path = _write(tmp_path, [_target(id="a"), _target(id="b"), bad])
    with pytest.raises(CatalogueError) as exc:
        load_catalogue(path)
    return str(exc.value)


BAD: list[tuple[str, dict[str, Any], str, str]] = [
    # (case, fields of targets[2] (id 'bad'), field named, fragment of the message)
    ("threshold not a number", {"threshold": "abc"}, "threshold",
     "Input should be a valid number"),
    ("threshold a percentage string", {"threshold": "80%"}, "threshold", "valid number"),
    ("unknown figure", {"figure": "avg_orgs_per_park"}, "figure",
     "unknown figure 'avg_orgs_per_park'; known figures: orgs, avg_orgs_per_urban_community"),
    ("region code malformed", {"scope_region": "51111"}, "scope_region", "not a division code"),
    ("region code a number", {"scope_region": 5111}, "scope_region", "quoted string"),
    ("region code a community", {"scope_region": "511102001001"}, "scope_region",
     "is a community code"),
    ("listed region malformed", {"regions": ["511102", "51a"]}, "regions[1]",
     "not a division code"),
    ("scope_tier above scope_region", {"scope_region": "511102", "scope_tier": "city"},
     "scope_tier", "'city' is not below scope_region '511102' (a county)"),
    ("scope_tier equal to scope_region's", {"scope_tier": "city"}, "scope_tier", "not below"),
    ("scope_tier unknown", {"scope_tier": "village"}, "scope_tier",
     "Input should be 'city', 'county' or 'township'"),
    ("region outside scope", {"regions": ["511102", "510681"]}, "regions[1]",
     "'510681' is not under scope_region '5111'"),
    ("region is the scope itself", {"regions": ["5111"]}, "regions[0]", "not under"),
    ("region listed twice", {"regions": ["511102", "511102"]}, "regions[1]", "listed twice"),
    ("regions empty", {"regions": []}, "regions", "at least 1"),
    ("regions and scope_tier", {"regions": ["511102"], "scope_tier": "county"}, "regions",
     "mutually exclusive"),
    ("deadline before start", {"deadline": date(2020, 12, 31)}, "deadline",
     "deadline 2020-12-31 is before start 2021-01-01"),
    ("negative threshold", {"threshold": -1}, "threshold", "greater than or equal to 0"),
    ("share threshold in percent", {"figure": "streets_with_hub_share", "threshold": 80},
     "threshold", "fraction from 0 to 1"),
    ("yearly_from on a non-yearly figure", {"yearly_from": 2021, "yearly_until": 2021},
     "yearly_from", "'orgs' is not yearly"),
    ("yearly_until on a non-yearly figure", {"yearly_until": 2021}, "yearly_until",
     "not yearly"),
    ("yearly figure without years", {"figure": "new_filings_functional"}, "yearly_from",
     "is yearly: give yearly_from and yearly_until"),
    ("yearly figure without yearly_until",
     {"figure": "new_filings_interest", "yearly_from": 2021}, "yearly_until", "is yearly"),
    ("yearly_until before yearly_from",
     {"figure": "new_filings_functional", "yearly_from": 2022, "yearly_until": 2021,
      "deadline": date(2022, 12, 31)},
     "yearly_until", "yearly_until 2021 is before yearly_from 2022"),
    ("years outside the plan",
     {"figure": "new_filings_functional", "yearly_from": 2021, "yearly_until": 2023},
     "yearly_until", "after the deadline year 2021"),
    ("kind contradicts figure",
     {"figure": "towns_with_hub_share", "threshold": 1.0, "kind": "urban"}, "kind",
     "kind 'urban' does not agree with figure 'towns_with_hub_share'"),
    ("kind town for the townships figure", {"figure": "townships_with_hub_share",
                                            "threshold": 0.8, "kind": "town"}, "kind",
     "does not agree"),
    ("kind unknown", {"kind": "suburban"}, "kind", "unknown kind 'suburban'"),
    ("comparison unknown", {"comparison": ">"}, "comparison", "Input should be '>=' or '<='"),
    ("date malformed", {"start": "2021/01/01"}, "start", "expected a date such as"),
    ("date impossible", {"deadline": "2021-02-30"}, "deadline", "not a valid date"),
    ("field misspelt", {"treshold": 5}, "treshold", "Extra inputs are not permitted"),
    ("field missing", {"source": ...}, "source", "Field required"),
    ("title empty", {"title": "  "}, "title", "at least 1 character"),
    ("id with a slash", {"id": "a/b"}, "id", "should match pattern"),
    ("retired not a boolean", {"retired": "yes"}, "retired", "valid boolean"),
]


@pytest.mark.parametrize(("fields", "field", "fragment"), [b[1:] for b in BAD],
                         ids=[b[0] for b in BAD])
def test_validation_error_names_file_target_and_field(
    tmp_path: Path, fields: dict[str, Any], field: str, fragment: str
) -> None:
    ident = fields.get("id", "bad")
    prefix = f"{tmp_path / 'targets.yaml'}: targets[2] (id {ident!r}): "
    lines = _load_error(tmp_path, _target(**{"id": "bad", **fields})).splitlines()
    assert all(line.startswith(prefix) for line in lines)  # the two valid targets pass
    assert any(line.startswith(f"{prefix}{field}: ") and fragment in line for line in lines), lines


def test_unknown_figure_lists_every_known_figure(tmp_path: Path) -> None:
    message = _load_error(tmp_path, _target(id="bad", figure="nope"))
    for name in FIGURES:
        assert name in message


def test_example_message_format() -> None:
    with pytest.raises(CatalogueError) as exc:
        parse_catalogue({"targets": [_target(id="a"), _target(id="b"), _target(id="c"),
                                     _target(id="x", threshold="many")]}, "targets.yaml")
    assert str(exc.value) == (
        "targets.yaml: targets[3] (id 'x'): threshold: Input should be a valid number"
    )
    assert exc.value.origin == "targets.yaml"
    assert exc.value.problems == [str(exc.value)]


def test_duplicate_ids(tmp_path: Path) -> None:
    path = _write(tmp_path, [_target(id="dup"), _target(id="b"), _target(id="dup")])
    with pytest.raises(CatalogueError) as exc:
        load_catalogue(path)
    assert str(exc.value) == (
        f"{path}: targets[2] (id 'dup'): id: duplicate id 'dup' (first at targets[0])"
    )


def test_every_problem_is_reported_and_nothing_is_half_loaded(tmp_path: Path) -> None:
    path = _write(tmp_path, [
        _target(id="a"),
        _target(id="b", threshold=-2),
        "not a target",
        _target(id="c", deadline=date(2020, 1, 1), kind="urban"),
    ])
    with pytest.raises(CatalogueError) as exc:
        load_catalogue(path)
    problems = exc.value.problems
    assert [p.split(": ")[1] for p in problems] == [
        "targets[1] (id 'b')", "targets[2]", "targets[3] (id 'c')", "targets[3] (id 'c')"
    ]
    assert "targets[2]: expected a mapping of target fields, got str" in problems[1]


def test_a_valid_catalogue_loads_every_field(tmp_path: Path) -> None:
    path = _write(tmp_path, [
        _target(id="a", figure="avg_orgs_per_urban_community", kind="urban",
                regions=["511102", "511111"], comparison="<=", threshold=3.5, retired=True),
        _target(id="b", figure="new_filings_interest", scope_tier="county", yearly_from=2021,
                yearly_until=2021, kind="interest"),
        _target(id="c", figure="townships_with_hub_share", scope_region="44", threshold=0.8,
                kind="township"),
    ])
    a, b, c = load_catalogue(path)
    assert a == TargetSpec(
        id="a", title="测试", figure="avg_orgs_per_urban_community", scope_region="5111",
        regions=("511102", "511111"), threshold=3.5, comparison="<=", start=date(2021, 1, 1),
        deadline=date(2021, 12, 31), source="test plan", kind="urban", retired=True,
    )
    assert (b.scope_tier, b.yearly_from, b.yearly_until, b.yearly) == ("county", 2021, 2021, True)
    assert (c.comparison, c.retired, c.regions, c.scope_tier) == (">=", False, None, None)
    assert isinstance(c.threshold, float)


def test_json_dates_are_strings(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"targets": [_target(start="2021-01-01",
                                                    deadline="2022-06-30")]}), encoding="utf-8")
    (spec,) = load_catalogue(path)
    assert (spec.start, spec.deadline) == (date(2021, 1, 1), date(2022, 6, 30))


@pytest.mark.parametrize(("name", "text", "fragment"), [
    ("t.yaml", "targets: [unclosed", "not valid YAML"),
    ("t.json", "{\"targets\": ", "not valid JSON"),
    ("t.toml", "targets = []", "unknown catalogue format '.toml'"),
    ("t.yaml", "- a\n- b\n", "expected a mapping with a 'targets' list at the top level"),
    ("t.yaml", "targets: 3\n", "targets: expected a list of targets, got int"),
    ("t.yaml", "target: []\n", "unknown top-level keys ['target']"),
])
def test_file_level_errors_name_the_file(
    tmp_path: Path, name: str, text: str, fragment: str
) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(CatalogueError) as exc:
        load_catalogue(path)
    assert str(exc.value).startswith(f"{path}: ")
    assert fragment in str(exc.value)


def test_empty_catalogue_is_valid() -> None:
    assert parse_catalogue({"targets": []}, "empty.yaml") == []


def test_catalogue_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match=r"^x\.yaml: "):
        parse_catalogue({"targets": [{"id": "q"}]}, "x.yaml")


# --- expansion ----------------------------------------------------------------------------------


def _spec(**fields: Any) -> TargetSpec:
    base: dict[str, Any] = {
        "id": "t", "title": "标题", "figure": "orgs", "scope_region": "5111", "threshold": 10.0,
        "start": date(2021, 1, 1), "deadline": date(2023, 12, 31), "source": "plan",
    }
    base.update(fields)
    return TargetSpec(**base)


class FakeDivisions:
    """A regions_of_tier that records its calls."""

    def __init__(self, table: dict[tuple[str, str], list[str]]) -> None:
        self.table = table
        self.calls: list[tuple[str, str]] = []

    def __call__(self, region: str, tier: str) -> Sequence[str]:
        self.calls.append((region, tier))
        return self.table.get((region, tier), [])


def test_expand_scope_region_itself() -> None:
    fake = FakeDivisions({})
    (instance,) = expand(_spec(comparison="<="), fake)
    assert instance == TargetInstance(
        instance_id="t@5111", spec_id="t", region="5111", figure="orgs", threshold=10.0,
        comparison="<=", start=date(2021, 1, 1), deadline=date(2023, 12, 31), year=None,
        source="plan", title="标题",
    )
    assert fake.calls == []


def test_expand_every_region_of_a_tier() -> None:
    fake = FakeDivisions({("5111", "county"): ["511102", "511111", "511102"],
                          ("5111", "township"): ["511102001"]})
    instances = expand(_spec(scope_tier="county"), fake)
    assert fake.calls == [("5111", "county")]
    assert [i.instance_id for i in instances] == ["t@511102", "t@511111"]
    assert all(i.year is None and i.deadline == date(2023, 12, 31) for i in instances)


def test_expand_a_tier_with_no_regions_gives_nothing() -> None:
    assert expand(_spec(scope_tier="township"), FakeDivisions({})) == []


@pytest.mark.parametrize("wrong", ["510681", "5111001", "511102001"])
def test_expand_rejects_a_region_table_that_answers_wrongly(wrong: str) -> None:
    fake = FakeDivisions({("5111", "county"): ["511102", wrong]})
    with pytest.raises(ValueError, match=wrong):
        expand(_spec(scope_tier="county"), fake)


def test_expand_explicit_regions() -> None:
    fake = FakeDivisions({("5111", "county"): ["511113"]})
    instances = expand(_spec(regions=CLASS_B), fake)
    assert [i.region for i in instances] == list(CLASS_B)
    assert fake.calls == []


def test_expand_retired_spec_is_empty() -> None:
    fake = FakeDivisions({("5111", "county"): ["511102"]})
    assert expand(_spec(retired=True), fake) == []
    assert expand(_spec(retired=True, scope_tier="county"), fake) == []


def test_expand_yearly_one_instance_per_year() -> None:
    spec = _spec(figure="new_filings_functional", threshold=100.0, yearly_from=2021,
                 yearly_until=2025, deadline=date(2025, 12, 31))
    instances = expand(spec, FakeDivisions({}))
    assert [(i.instance_id, i.year, i.start, i.deadline) for i in instances] == [
        (f"t@5111/{y}", y, date(y, 1, 1), date(y, 12, 31)) for y in range(2021, 2026)
    ]


def test_expand_yearly_stops_at_the_spec_deadline_and_crosses_regions() -> None:
    spec = _spec(figure="new_filings_interest", yearly_from=2022, yearly_until=2023,
                 start=date(2021, 7, 1), deadline=date(2023, 6, 30), scope_tier="county")
    fake = FakeDivisions({("5111", "county"): ["511102", "511111"]})
    instances = expand(spec, fake)
    assert [(i.instance_id, i.start, i.deadline) for i in instances] == [
        ("t@511102/2022", date(2022, 1, 1), date(2022, 12, 31)),
        ("t@511102/2023", date(2023, 1, 1), date(2023, 6, 30)),
        ("t@511111/2022", date(2022, 1, 1), date(2022, 12, 31)),
        ("t@511111/2023", date(2023, 1, 1), date(2023, 6, 30)),
    ]
