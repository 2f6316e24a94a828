"""The target catalogue: what plans promise, where, by when, and its expansion into instances.

A *spec* is one row of a plan (e.g. "every county of 乐山市 averages ≥ 12 organizations per
urban community by 2023-12-31"); an *instance* is that promise for one region (and, for a yearly
figure, one calendar year): the unit whose status is evaluated and published.

Specs come from a YAML or JSON file with a top-level ``{"targets": [...]}``. Loading validates the
whole file and either returns every spec or raises one `CatalogueError` naming the file, the
target (its index and id) and the field of every problem found; nothing is ever half-loaded.

Pure code: the only I/O is reading the catalogue file in `load_catalogue`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StringConstraints,
    ValidationError,
)
from pydantic_core import PydanticCustomError

from contracts.codes import TIER_LENGTH, TIERS, tier_of
from contracts.events import EARLIEST, LATEST

from .metrics import FIGURES, NEW_EVENTS, NEW_FIGURES, ORG_TIERS, TIER_FIGURES

DEFAULT_CATALOGUE = Path(__file__).parents[1] / "catalogue.yaml"

Comparison = Literal[">=", "<="]
NewEvent = Literal["filed", "registered"]
OrgTier = Literal["registered", "filed", "guided"]
ScopeTier = Literal["city", "county", "township"]
# Tiers a target can be set on (coverage is computed for these; communities carry no figures).
TARGET_TIERS = ("province", "city", "county", "township")
# Informational kind labels, and the figure-name word each must agree with.
KINDS: dict[str, tuple[str, ...]] = {
    "urban": ("urban",),
    "rural": ("rural",),
    "street": ("street", "streets"),
    "town": ("town", "towns"),
    "township": ("township", "townships"),
    "functional": ("functional",),
    "interest": ("interest",),
}
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
YEARLY_FIGURES = tuple(name for name, spec in FIGURES.items() if spec.yearly)


class CatalogueError(ValueError):
    """A catalogue that cannot be loaded. `problems` holds one line per problem found, each
    ``<file>: targets[<i>] (id '<id>'): <field>: <message>``; the message joins them."""

    def __init__(self, origin: str, problems: Sequence[str]) -> None:
        self.origin = origin
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True, kw_only=True)
class TargetSpec:
    """One target of a plan.

    - `scope_tier` set: the target applies to every region of that tier under `scope_region`;
    - `regions` set (exclusive with `scope_tier`): to those regions, each under `scope_region`;
    - neither: to `scope_region` itself.

    Shares are fractions (100% = 1.0). A yearly figure (see `metrics.Figure.yearly`) is evaluated
    per calendar year from `yearly_from` to `yearly_until`.
    """

    id: str
    title: str
    figure: str
    scope_region: str
    scope_tier: ScopeTier | None = None
    regions: tuple[str, ...] | None = None
    threshold: float
    comparison: Comparison = ">="
    start: date
    deadline: date
    yearly_from: int | None = None
    yearly_until: int | None = None
    source: str
    kind: str | None = None
    retired: bool = False
    # Which events make an organization new, for a new-organizations figure (None: filings only).
    new: tuple[NewEvent, ...] | None = None
    # Which organizations a density counts, by management tier (None: every tier).
    counts: tuple[OrgTier, ...] | None = None
    # The plan's own sentence this target implements, word for word.
    quote: str | None = None

    @property
    def yearly(self) -> bool:
        return FIGURES[self.figure].yearly if self.figure in FIGURES else False


@dataclass(frozen=True, kw_only=True)
class TargetInstance:
    """A target for one region (and one year for a yearly figure): what status is kept for."""

    instance_id: str
    spec_id: str
    region: str
    figure: str
    threshold: float
    comparison: Comparison
    start: date
    deadline: date
    year: int | None
    source: str
    title: str
    new: tuple[str, ...] | None = None
    counts: tuple[str, ...] | None = None


# --- validation -------------------------------------------------------------------------------


def _known_figure(name: str) -> str:
    if name not in FIGURES:
        raise PydanticCustomError(
            "unknown_figure", f"unknown figure {name!r}; known figures: {', '.join(FIGURES)}"
        )
    return name


def _code_is_string(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        raise PydanticCustomError(
            "code_type",
            f"a division code must be a quoted string such as '{value}', got the number {value}",
        )
    return value


def _target_region(code: str) -> str:
    try:
        tier = tier_of(code)
    except ValueError as exc:
        raise PydanticCustomError("division_code", str(exc)) from None
    if tier not in TARGET_TIERS:
        raise PydanticCustomError(
            "division_tier",
            f"{code!r} is a {tier} code; targets are set on provinces, cities, counties "
            "and townships",
        )
    return code


def _as_date(value: Any) -> Any:
    if isinstance(value, datetime):
        raise PydanticCustomError(
            "date_type", f"expected a date such as 2025-12-31, got a date and time {value}"
        )
    if isinstance(value, date):
        return value
    if isinstance(value, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", value.strip()):
        try:
            return date.fromisoformat(value.strip())
        except ValueError as exc:
            raise PydanticCustomError(
                "date_value", f"{value!r} is not a valid date: {exc}"
            ) from None
    raise PydanticCustomError("date_type", f"expected a date such as 2025-12-31, got {value!r}")


def _plausible_date(value: date) -> date:
    # A target's deadline travels in TargetStatusChanged, whose dates are bounded the same way.
    if not EARLIEST <= value <= LATEST:
        raise PydanticCustomError(
            "date_range", f"{value} is outside {EARLIEST.isoformat()} to {LATEST.isoformat()}"
        )
    return value


RegionField = Annotated[
    str, BeforeValidator(_code_is_string), Field(strict=True), AfterValidator(_target_region)
]
DateField = Annotated[date, BeforeValidator(_as_date), AfterValidator(_plausible_date)]
Text = Annotated[str, StringConstraints(strict=True, strip_whitespace=True, min_length=1, max_length=1000)]
Year = Annotated[StrictInt, Field(ge=1949, le=2200)]


class _TargetModel(BaseModel):
    """Field-by-field validation of one catalogue entry (cross-field rules: `_cross_checks`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Annotated[
        str, StringConstraints(strict=True, min_length=1, max_length=120, pattern=ID_PATTERN)
    ]
    title: Text
    figure: Annotated[str, Field(strict=True), AfterValidator(_known_figure)]
    scope_region: RegionField
    scope_tier: ScopeTier | None = None
    regions: Annotated[tuple[RegionField, ...], Field(min_length=1)] | None = None
    threshold: Annotated[float, Field(strict=True, ge=0, allow_inf_nan=False)]
    comparison: Comparison = ">="
    start: DateField
    deadline: DateField
    yearly_from: Year | None = None
    yearly_until: Year | None = None
    source: Text
    kind: Annotated[str, Field(strict=True, max_length=100)] | None = None
    retired: StrictBool = False
    new: Annotated[tuple[NewEvent, ...], Field(min_length=1)] | None = None
    counts: Annotated[tuple[OrgTier, ...], Field(min_length=1)] | None = None
    quote: Text | None = None


def _cross_checks(m: _TargetModel) -> list[tuple[str, str]]:
    """Rules spanning several fields, as (field, message)."""
    problems: list[tuple[str, str]] = []
    fig = FIGURES[m.figure]
    scope_tier = tier_of(m.scope_region)
    if m.scope_tier is not None and m.regions is not None:
        problems.append(("regions", "regions and scope_tier are mutually exclusive: give one"))
    if m.scope_tier is not None and TIERS.index(m.scope_tier) <= TIERS.index(scope_tier):
        problems.append((
            "scope_tier",
            f"{m.scope_tier!r} is not below scope_region {m.scope_region!r} (a {scope_tier})",
        ))
    if m.regions is not None:
        seen: set[str] = set()
        for i, code in enumerate(m.regions):
            if len(code) <= len(m.scope_region) or not code.startswith(m.scope_region):
                problems.append((
                    f"regions[{i}]", f"{code!r} is not under scope_region {m.scope_region!r}"
                ))
            if code in seen:
                problems.append((f"regions[{i}]", f"{code!r} is listed twice"))
            seen.add(code)
    if m.deadline < m.start:
        problems.append(("deadline", f"deadline {m.deadline} is before start {m.start}"))
    if fig.kind == "share" and m.threshold > 1:
        problems.append((
            "threshold",
            f"{m.figure!r} is a share, a fraction from 0 to 1 (100% = 1.0, 80% = 0.8); "
            f"got {m.threshold}",
        ))
    if fig.yearly:
        for name in ("yearly_from", "yearly_until"):
            if getattr(m, name) is None:
                problems.append((
                    name,
                    f"figure {m.figure!r} is yearly: give yearly_from and yearly_until "
                    "(the calendar years it is counted for)",
                ))
    else:
        for name in ("yearly_from", "yearly_until"):
            if getattr(m, name) is not None:
                problems.append((
                    name,
                    f"figure {m.figure!r} is not yearly; only {', '.join(YEARLY_FIGURES)} take "
                    "yearly_from/yearly_until",
                ))
    if m.yearly_from is not None and m.yearly_until is not None:
        if m.yearly_until < m.yearly_from:
            problems.append((
                "yearly_until", f"yearly_until {m.yearly_until} is before yearly_from "
                f"{m.yearly_from}",
            ))
    if fig.yearly and m.yearly_from is not None and m.yearly_from < m.start.year:
        problems.append((
            "yearly_from", f"yearly_from {m.yearly_from} is before the start year {m.start.year}"
        ))
    if fig.yearly and m.yearly_until is not None and m.yearly_until > m.deadline.year:
        problems.append((
            "yearly_until",
            f"yearly_until {m.yearly_until} is after the deadline year {m.deadline.year}",
        ))
    if m.new is not None:
        if m.figure not in NEW_FIGURES:
            problems.append((
                "new", f"figure {m.figure!r} does not count new organizations; only "
                f"{', '.join(NEW_FIGURES)} take new",
            ))
        if len(set(m.new)) != len(m.new):
            problems.append(("new", f"an event is listed twice in {list(m.new)}; give each of "
                                    f"{', '.join(NEW_EVENTS)} at most once"))
    if m.counts is not None:
        if m.figure not in TIER_FIGURES:
            problems.append((
                "counts", f"figure {m.figure!r} does not count organizations by tier; only "
                f"{', '.join(TIER_FIGURES)} take counts",
            ))
        if len(set(m.counts)) != len(m.counts):
            problems.append(("counts", f"a tier is listed twice in {list(m.counts)}"))
    if m.kind is not None:
        words = m.figure.split("_")
        if m.kind not in KINDS:
            problems.append((
                "kind", f"unknown kind {m.kind!r}; known kinds: {', '.join(KINDS)}"
            ))
        elif not any(w in words for w in KINDS[m.kind]):
            problems.append((
                "kind", f"kind {m.kind!r} does not agree with figure {m.figure!r}"
            ))
    return problems


def field_path(loc: tuple[int | str, ...]) -> str:
    """A pydantic error's location as a file's field path: ``regions[0]``, ``counts[1]``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


def _loc(loc: tuple[int | str, ...]) -> str:
    return field_path(loc) or "(target)"


def _label(index: int, item: object) -> str:
    label = f"targets[{index}]"
    if isinstance(item, dict):
        ident = item.get("id")
        if isinstance(ident, str | int | float) and not isinstance(ident, bool):
            label += f" (id {ident!r})"
    return label


def _spec(m: _TargetModel) -> TargetSpec:
    return TargetSpec(
        id=m.id, title=m.title, figure=m.figure, scope_region=m.scope_region,
        scope_tier=m.scope_tier, regions=m.regions, threshold=float(m.threshold),
        comparison=m.comparison, start=m.start, deadline=m.deadline,
        yearly_from=m.yearly_from, yearly_until=m.yearly_until, source=m.source, kind=m.kind,
        retired=m.retired, new=m.new, counts=m.counts, quote=m.quote,
    )


def parse_catalogue(data: object, origin: str) -> list[TargetSpec]:
    """Validate already-parsed catalogue data (``{"targets": [...]}``) and return its specs.

    `origin` (usually the file name) starts every problem line. Raises `CatalogueError` listing
    every problem found; returns all specs or none.
    """
    if not isinstance(data, dict):
        raise CatalogueError(origin, [
            f"{origin}: expected a mapping with a 'targets' list at the top level, "
            f"got {type(data).__name__}"
        ])
    problems: list[str] = []
    extra = sorted(str(k) for k in data if k != "targets")
    if extra:
        problems.append(f"{origin}: unknown top-level keys {extra}; expected only 'targets'")
    items = data.get("targets")
    if not isinstance(items, list):
        got = "nothing" if items is None else type(items).__name__
        problems.append(f"{origin}: targets: expected a list of targets, got {got}")
        raise CatalogueError(origin, problems)

    specs: list[TargetSpec] = []
    first_index: dict[str, int] = {}
    for index, item in enumerate(items):
        label = f"{origin}: {_label(index, item)}"
        if not isinstance(item, dict):
            problems.append(
                f"{label}: expected a mapping of target fields, got {type(item).__name__}"
            )
            continue
        ident = item.get("id")
        if isinstance(ident, str):
            if ident in first_index:
                problems.append(
                    f"{label}: id: duplicate id {ident!r} (first at targets[{first_index[ident]}])"
                )
            else:
                first_index[ident] = index
        try:
            model = _TargetModel.model_validate(item)
        except ValidationError as exc:
            problems.extend(f"{label}: {_loc(e['loc'])}: {e['msg']}" for e in exc.errors())
            continue
        cross = _cross_checks(model)
        problems.extend(f"{label}: {field}: {message}" for field, message in cross)
        if not cross:
            specs.append(_spec(model))
    if problems:
        raise CatalogueError(origin, problems)
    return specs


def load_catalogue(path: Path = DEFAULT_CATALOGUE) -> list[TargetSpec]:
    """Read and validate a catalogue file: YAML (``.yaml``/``.yml``) or JSON (``.json``).

    Raises `CatalogueError` for an unknown suffix, unparsable text or invalid targets;
    `OSError` if the file cannot be read.
    """
    origin = str(path)
    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml", ".json"):
        raise CatalogueError(origin, [
            f"{origin}: unknown catalogue format {suffix or '(no suffix)'!r}; "
            "expected .yaml, .yml or .json"
        ])
    text = path.read_text(encoding="utf-8")
    data: object
    try:
        data = json.loads(text) if suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        kind = "JSON" if suffix == ".json" else "YAML"
        raise CatalogueError(origin, [f"{origin}: not valid {kind}: {exc}"]) from exc
    return parse_catalogue(data, origin)


# --- expansion --------------------------------------------------------------------------------


def at_current_codes(spec: TargetSpec, current: Callable[[str], str]) -> TargetSpec:
    """The spec with the regions it names (`scope_region`, `regions`) at the codes standing for
    them now (`current`: domain/lineage.py): a county recoded to a district (县改区) keeps the
    promises made for it, under its new code, as a region named by a plan keeps its place."""
    scope = current(spec.scope_region)
    regions = tuple(dict.fromkeys(current(r) for r in spec.regions)) if spec.regions is not None else None
    if scope == spec.scope_region and regions == spec.regions:
        return spec
    return replace(spec, scope_region=scope, regions=regions)


def expand(spec: TargetSpec, regions_of_tier: Callable[[str, str], Sequence[str]]
           ) -> list[TargetInstance]:
    """The instances of a spec: one per region it applies to (and per year for a yearly figure).

    `regions_of_tier(scope_region, tier)` gives the codes of `tier` under `scope_region` (from
    the caller's division table); it is called only for a spec with `scope_tier`. A yearly
    target's instance for year Y runs from Y-01-01 to Y-12-31, or to the spec's deadline if that
    is earlier. A retired spec expands to nothing. Raises ValueError if `regions_of_tier` returns
    a code that is not of the asked tier under the scope region.
    """
    if spec.retired:
        return []
    if spec.regions is not None:
        regions: list[str] = list(dict.fromkeys(spec.regions))
    elif spec.scope_tier is not None:
        regions = list(dict.fromkeys(regions_of_tier(spec.scope_region, spec.scope_tier)))
        length = TIER_LENGTH[spec.scope_tier]
        for code in regions:
            if len(code) != length or not code.isdigit() or not code.startswith(spec.scope_region):
                raise ValueError(
                    f"regions_of_tier({spec.scope_region!r}, {spec.scope_tier!r}) returned "
                    f"{code!r}, not a {spec.scope_tier} under {spec.scope_region!r}"
                )
    else:
        regions = [spec.scope_region]

    periods: list[tuple[int | None, date, date]]
    if spec.yearly or spec.yearly_from is not None or spec.yearly_until is not None:
        first = spec.yearly_from if spec.yearly_from is not None else spec.start.year
        last = spec.yearly_until if spec.yearly_until is not None else spec.deadline.year
        periods = [
            (year, date(year, 1, 1), min(date(year, 12, 31), spec.deadline))
            for year in range(first, last + 1)
            if date(year, 1, 1) <= spec.deadline
        ]
    else:
        periods = [(None, spec.start, spec.deadline)]

    return [
        TargetInstance(
            instance_id=f"{spec.id}@{region}" + (f"/{year}" if year is not None else ""),
            spec_id=spec.id,
            region=region,
            figure=spec.figure,
            threshold=spec.threshold,
            comparison=spec.comparison,
            start=start,
            deadline=deadline,
            year=year,
            source=spec.source,
            title=spec.title,
            new=spec.new,
            counts=spec.counts,
        )
        for region in regions
        for year, start, deadline in periods
    ]


Promise = tuple[Any, ...]


def promise(spec: TargetSpec) -> Promise:
    """What a target promises, as a key: two specs with equal keys are one promise, counted once.

    The same figure over the same regions (scope region and its tier, or its list of regions),
    by the same deadline (and, for a yearly figure, over the same years), against the same
    threshold and comparison, counting the same organizations: the management tiers a density
    counts (`counts`; none given: every tier) and the events that make one new (`new`; none
    given: filings). Names, quotes, sources, kinds and the start are not part of it: a plan that
    counts from its issue date and a catalogue that counts from the plan's implementation phase
    state one promise (the start only shapes the at-risk trajectory, never the figure)."""
    counts = (frozenset(spec.counts if spec.counts is not None else ORG_TIERS)
              if spec.figure in TIER_FIGURES else None)
    new = (frozenset(spec.new if spec.new is not None else ("filed",))
           if spec.figure in NEW_FIGURES else None)
    years = (spec.yearly_from, spec.yearly_until) if spec.yearly else None
    regions = tuple(sorted(set(spec.regions))) if spec.regions is not None else None
    return (spec.figure, spec.scope_region, spec.scope_tier, regions, float(spec.threshold),
            spec.comparison, spec.deadline, years, counts, new)


def satisfies(value: float, threshold: float, comparison: Comparison) -> bool:
    """Whether a value meets a threshold under a comparison."""
    if math.isnan(value):
        return False
    return value >= threshold if comparison == ">=" else value <= threshold


__all__ = [
    "DEFAULT_CATALOGUE",
    "KINDS",
    "CatalogueError",
    "Comparison",
    "ScopeTier",
    "TargetInstance",
    "TargetSpec",
    "expand",
    "load_catalogue",
    "parse_catalogue",
    "promise",
    "satisfies",
]
