"""Pydantic models of a plan file's parts, field by field, as the target catalogue validates its
entries (`targets.domain.catalogue._TargetModel`). Pure code.

A model checks what one part says on its own: types, known values, text that is not empty, a
month that exists. What needs the rest of the file or the divisions (a deadline within the plan,
a region that exists, the task numbering) is checked by `plan_file.parse_plan` after parsing.
Each error is a `PydanticCustomError` whose message is the one a user reads; `problems` turns a
`ValidationError` into (field path, message) pairs, the path as ``targets[0].counts[1]``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import date, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

from contracts.codes import tier_of

from ...domain.catalogue import field_path

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
TASK_NO_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]*$")
MONTH_PATTERN = re.compile(r"^(\d{4})-(\d{2})$")
DAY_PATTERN = re.compile(r"^\d{4}-\d{2}-\d{2}$")

Comparison = Literal[">=", "<="]
ExpandTier = Literal["city", "county", "township"]

# What a missing required field's message adds after "required".
REQUIRED_HINTS = {"threshold": "a target needs a threshold", "no": "the task's number",
                  "scope": "the region the plan covers (a quoted division code)"}


def normalize_unit(unit: str) -> str:
    """A unit's name as compared and stored: trimmed, full-width brackets and commas as ASCII."""
    return (unit.strip().replace("（", "(").replace("）", ")").replace("，", ",")
            .replace(" ", "").replace("\u3000", ""))


def month_end(year: int, month: int) -> date:
    first_next = date(year + (month == 12), month % 12 + 1, 1)
    return first_next - timedelta(days=1)


def _fail(kind: str, message: str) -> PydanticCustomError:
    """An error whose message is read as it is (without a context, pydantic does not format it:
    a value's repr may hold braces)."""
    return PydanticCustomError(kind, message)


def _text(value: Any) -> Any:
    """Non-empty text, trimmed. None reaches here only for a required field (an optional one
    takes None before its validator), so None is "required"."""
    if value is None:
        raise _fail("missing", "required")
    if not isinstance(value, str) or not value.strip():
        raise _fail("text", f"expected non-empty text, got {value!r}")
    return value.strip()


def _month(value: Any) -> Any:
    """A month (``YYYY-MM``) as the pair (month, its last day: the deadline)."""
    if isinstance(value, str):
        m = MONTH_PATTERN.fullmatch(value.strip())
        if m and 1 <= int(m.group(2)) <= 12:
            return value.strip(), month_end(int(m.group(1)), int(m.group(2)))
    raise _fail("month", f"expected a month such as 2024-05 (a month, the deadline is its last day), "
                         f"got {value!r}")


def _threshold(value: Any) -> Any:
    if value is None:
        raise _fail("missing", f"required: {REQUIRED_HINTS['threshold']}")
    if (isinstance(value, bool) or not isinstance(value, int | float)
            or not math.isfinite(float(value)) or value < 0):
        raise _fail("threshold", f"expected a number ≥ 0, got {value!r}")
    return float(value)


def _comparison(value: Any) -> Any:
    if value not in (">=", "<="):
        raise _fail("comparison", f"expected '>=' or '<=', got {value!r}")
    return value


def _boolean(value: Any) -> Any:
    if not isinstance(value, bool):
        raise _fail("boolean", f"expected true or false, got {value!r}")
    return value


def _each(value: Any) -> Any:
    if value not in ("city", "county", "township"):
        raise _fail("each", f"expected city, county or township (every division of that tier under the "
                            f"task's scope), got {value!r}")
    return value


def _link(value: Any) -> Any:
    text = _text(value)
    if not ID_PATTERN.fullmatch(text):
        raise _fail("target_id", f"{text!r} is not a catalogue target id (letters, digits, . _ -)")
    return text


def _listed(*allowed: str) -> Callable[[Any], Any]:
    """A non-empty list of names, each checked by `_one_of` at its index."""
    def check(value: Any) -> Any:
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise _fail("listed", f"expected a non-empty list of {', '.join(allowed)}, got {value!r}")
        return value
    return check


def _one_of(*allowed: str) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if value not in allowed:
            raise _fail("one_of", f"expected one of {', '.join(allowed)}, got {value!r}")
        return value
    return check


def _task_no(value: Any) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise _fail("task_no", f"a task number must be a quoted string such as '{value}' (unquoted, 1.10 "
                               f"would read as 1.1), got the number {value}")
    if value is None:
        raise _fail("missing", f"required: {REQUIRED_HINTS['no']}")
    if not isinstance(value, str) or not TASK_NO_PATTERN.fullmatch(value.strip()):
        raise _fail("task_no", f"expected a task number such as '1.4', got {value!r}")
    return value.strip()


def _code(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        raise _fail("code", f"a division code must be a quoted string such as '{value}', got the number {value}")
    if not isinstance(value, str):
        raise _fail("code", f"expected a division code, got {value!r}")
    try:
        tier_of(value)
    except ValueError as exc:
        raise _fail("code", str(exc)) from None
    return value


def _unit(value: Any) -> Any:
    if not isinstance(value, str) or not value.strip():
        raise _fail("unit", f"expected a unit's name, got {value!r}")
    return normalize_unit(value)


def _units(value: Any) -> Any:
    """One unit or a list of them."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise _fail("units", f"expected a list of units, got {type(value).__name__}")
    return value


def _leads(value: Any) -> Any:
    """Joint leads (「市委组织部、市民政局」牵头): every one of them leads, none is a co-unit."""
    if value == []:
        raise _fail("leads", "expected one lead unit or a list of them, got []")
    return value if isinstance(value, list) else [_text(value)]


def _list_of_targets(value: Any) -> Any:
    if not isinstance(value, list):
        raise _fail("targets", f"expected a list of targets, got {type(value).__name__}")
    return value


def _day(value: Any) -> Any:
    if isinstance(value, datetime):
        raise _fail("date", f"expected a date such as 2024-02-21, got a date and time {value}")
    if isinstance(value, date):
        return value
    if isinstance(value, str) and DAY_PATTERN.fullmatch(value.strip()):
        try:
            return date.fromisoformat(value.strip())
        except ValueError as exc:
            raise _fail("date", f"{value!r} is not a valid date: {exc}") from None
    raise _fail("date", f"expected a date such as 2024-02-21, got {value!r}")


def _plan_id(value: Any) -> Any:
    text = _text(value)
    if not ID_PATTERN.fullmatch(text):
        raise _fail("plan_id", f"{text!r}: letters, digits, '.', '_' and '-' only")
    return text


def _list_of(what: str) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if not isinstance(value, list):
            raise _fail("list", f"expected a list of {what}, got {type(value).__name__}")
        return value
    return check


def _work_plan_no(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).strip():
        raise _fail("work_plan_no", f"expected a work plan number, got {value!r}")
    return str(value)


Text = Annotated[str, BeforeValidator(_text)]
Month = Annotated[tuple[str, date], BeforeValidator(_month)]
OrgTier = Annotated[str, BeforeValidator(_one_of("registered", "filed", "guided"))]
NewEvent = Annotated[str, BeforeValidator(_one_of("filed", "registered"))]
Unit = Annotated[str, BeforeValidator(_unit)]
Units = Annotated[tuple[Unit, ...], BeforeValidator(_units)]
DivisionCode = Annotated[str, BeforeValidator(_code)]
Day = Annotated[date, BeforeValidator(_day)]


class PeriodModel(BaseModel):
    """``period: {from, until}``: the plan's own dates."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start: Day | None = Field(default=None, alias="from")
    until: Day | None = None


class PhaseModel(BaseModel):
    """``phases[i]: {name, from?, until?}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Text
    start: Day | None = Field(default=None, alias="from")
    until: Day | None = None


class HeaderModel(BaseModel):
    """The plan's header (``plan:``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Annotated[str, BeforeValidator(_plan_id)]
    title: Text
    scope: DivisionCode
    issued: Day | None = None
    issuers: Units | None = None
    issuer: Annotated[str, BeforeValidator(_unit)] | None = None
    period: PeriodModel | None = None
    phases: Annotated[list[PhaseModel], BeforeValidator(_list_of("phases"))] | None = None
    implementing: Annotated[str, BeforeValidator(_unit)] | None = None
    acceptance: Text | None = None

    def cross_checks(self) -> list[tuple[str, str]]:
        """Dates that contradict each other, or none to start from, as (field, message)."""
        problems: list[tuple[str, str]] = []
        period = self.period or PeriodModel()
        if period.start and period.until and period.until < period.start:
            problems.append(("period.until", f"{period.until} is before period.from {period.start}"))
        for i, phase in enumerate(self.phases or []):
            if phase.start and phase.until and phase.until < phase.start:
                problems.append((f"phases[{i}].until", f"{phase.until} is before its from {phase.start}"))
        if self.issued is None and period.start is None:
            problems.append(("issued", "required: the issue date (or give period.from)"))
        return problems


class WorkPlanModel(BaseModel):
    """``work_plans[i]: {no, title, tasks}``: tasks grouped under a work plan (工作方案). Whether
    its tasks exist, and belong to no other work plan, is checked by `parse_plan`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    no: Annotated[str, BeforeValidator(_work_plan_no)]
    title: Text
    tasks: Annotated[list[Any], BeforeValidator(_list_of("task numbers"))]


class TargetModel(BaseModel):
    """One target of a task (``targets[i]``). Whether its metric is known depends on the file
    (strict or not) and is checked by `parse_plan`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: Text
    threshold: Annotated[float, BeforeValidator(_threshold)]
    comparison: Annotated[Comparison, BeforeValidator(_comparison)] = ">="
    due: Month | None = None
    untracked: Annotated[bool, BeforeValidator(_boolean)] = False
    each: Annotated[ExpandTier, BeforeValidator(_each)] | None = None
    counts: Annotated[tuple[OrgTier, ...], BeforeValidator(_listed("registered", "filed", "guided"))] | None = None
    new: Annotated[tuple[NewEvent, ...], BeforeValidator(_listed("filed", "registered"))] | None = None
    quote: Text | None = None
    target: Annotated[str, BeforeValidator(_link)] | None = None

    @property
    def says_what_it_counts(self) -> bool:
        """A catalogue target it is, or what it counts: what an untracked target cannot say."""
        return any(v is not None for v in (self.target, self.each, self.counts, self.new))


class TaskModel(BaseModel):
    """One task (``tasks[i]``). Its targets are validated one by one (`TargetModel`), so a task
    with a wrong field still has its targets checked; its deadline, community and units are
    checked against the plan by `parse_plan`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    no: Annotated[str, BeforeValidator(_task_no)]
    title: Text
    lead: Annotated[tuple[Unit, ...], BeforeValidator(_leads)] | None = None
    co: Units | None = None
    due: Month | None = None
    community: DivisionCode | None = None
    targets: Annotated[list[Any], BeforeValidator(_list_of_targets)] | None = None

    def cross_checks(self) -> list[tuple[str, str]]:
        """Units listed twice, as (field, message)."""
        problems: list[tuple[str, str]] = []
        leads, co = self.lead or (), self.co or ()
        for name, units in (("lead", leads), ("co", co)):
            for i, unit in enumerate(units):
                if unit in units[:i]:
                    problems.append((f"{name}[{i}]", f"{unit!r} is listed twice"))
        for unit in dict.fromkeys(leads):
            if unit in co:
                which = "the lead unit" if len(leads) == 1 else "a lead unit"
                problems.append(("co", f"{unit!r} is {which}; list it once"))
        return problems


def problems(exc: ValidationError, model: type[BaseModel]) -> list[tuple[str, str]]:
    """A model's validation errors as (field path, message), in pydantic's order (the fields')."""
    out: list[tuple[str, str]] = []
    for error in exc.errors():
        path = field_path(error["loc"])
        if error["type"] == "extra_forbidden":
            message = f"unknown field; expected one of {', '.join(_fields_at(model, error['loc'][:-1]))}"
        elif error["type"] in ("model_type", "model_attributes_type", "dict_type"):
            message = (f"expected a mapping of {', '.join(_fields_at(model, error['loc']))}, "
                       f"got {error['input']!r}")
        elif error["type"] == "missing":
            hint = REQUIRED_HINTS.get(str(error["loc"][-1]))
            message = f"required: {hint}" if hint else "required"
        else:
            message = error["msg"]
        out.append((path, message))
    return out


def _fields_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """The field names (as the file spells them) of the model found at `loc` under `model`."""
    for part in loc:
        if isinstance(part, int):
            continue
        info = next((f for name, f in model.model_fields.items() if (f.alias or name) == part), None)
        inner = _model_in(info.annotation) if info is not None else None
        if inner is None:
            break
        model = inner
    return sorted(f.alias or name for name, f in model.model_fields.items())


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model an annotation holds (``PhaseModel | None``, ``list[PhaseModel]``), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None
