"""The plan file format and its validation. Pure code (no database, no bus, no clock).

A plan file (see README.md in this package) is validated as a whole: `parse_plan` returns a
`Plan` or raises one `PlanError` listing every problem, each naming the file, the task (its index
and number) and the field. Nothing of a rejected file is ever applied. Each part (header,
task, target, work plan) is validated field by field by its pydantic model (`file_models`); what
needs the rest of the file (deadlines within the plan, task numbers, work plans' tasks, targets
as catalogue entries) is checked here after parsing.

Division codes are checked against what the caller knows (`regions`: code -> tier, from
targets.division), so a plan can only name regions that exist.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date
from typing import Any

import yaml
from pydantic import ValidationError

from contracts import jsontext
from contracts.codes import TIERS

from ...domain.catalogue import CatalogueError, parse_catalogue
from ...domain.metrics import FIGURES
from .community import COMMUNITY_METRICS, EVIDENCE_METRIC
from .file_models import (
    Comparison,
    ExpandTier,
    HeaderModel,
    PeriodModel,
    TargetModel,
    TaskModel,
    WorkPlanModel,
    problems,
)

# Re-exported: plans.domain.month_end, plans.domain.normalize_unit.
from .file_models import month_end as month_end
from .file_models import normalize_unit as normalize_unit

MAX_NOTE = 4000  # TaskStatusChanged.note's limit


# Units that stand for "every division of a tier under the plan's scope": a task naming one is
# carried out by each of them, and gets one progress line per division. Compared after
# `normalize_unit` (full-width brackets become ASCII ones).
EXPANSION_MARKERS: dict[str, ExpandTier] = {
    "各镇(街道)": "township",
    "各乡镇(街道)": "township",
    "各街道(镇)": "township",
    "各街道(乡镇)": "township",
    "各乡(镇、街道)": "township",
    "各镇(乡、街道)": "township",
    "各县区": "county",
    "各区县": "county",
    "各县(区)": "county",
    "各县(市、区)": "county",
    "各县(市,区)": "county",
    # A province's plan gives tasks to its prefecture-level cities (广东: 各地级以上市).
    "各地级以上市": "city",
    "各地级以上市民政局": "city",
    "各地市": "city",
}

_TOP_KEYS = {"plan", "work_plans", "tasks"}


def task_key(no: str) -> tuple[tuple[int, int | str], ...]:
    """Natural order of task numbers: 1.2 < 1.10 < 2.1, numbers before letters."""
    parts: list[tuple[int, int | str]] = []
    for part in re.split(r"[.-]", no):
        parts.append((0, int(part)) if part.isdigit() else (1, part))
    return tuple(parts)


# --- the plan ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Phase:
    name: str
    start: date | None
    until: date | None


@dataclass(frozen=True)
class WorkPlan:
    no: str
    title: str
    tasks: tuple[str, ...]


@dataclass(frozen=True)
class PlanTarget:
    """A figure a task promises. Tracked targets join the target catalogue as `target_id`;
    untracked ones (a metric cso does not compute) are recorded with the task only."""

    metric: str
    threshold: float
    comparison: Comparison
    due: str | None
    deadline: date
    untracked: bool
    target_id: str | None
    # What the plan's sentence counts, as the catalogue says it (TargetSpec): the tier of every
    # division under the task's scope the target applies to (各县区: county), which management
    # tiers a density counts, which events make an organization new, and the sentence itself.
    each: str | None = None
    counts: tuple[str, ...] | None = None
    new: tuple[str, ...] | None = None
    quote: str | None = None
    # A catalogue target this one is, by its id (`target:` in the file): the task shows that
    # target's instances instead of its own. Without it, a catalogue target stating the same
    # promise (catalogue.promise) is found by itself.
    link: str | None = None
    # A community task's target (COMMUNITY_METRICS): not a catalogue target (figures are kept for
    # provinces through townships); counted live at the community: "figure" (the metric's counters
    # grown since the plan's start) or "evidence" (the task's confirmed evidence numbers summed).
    counted: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "metric": self.metric, "threshold": self.threshold, "comparison": self.comparison,
            "due": self.due, "deadline": self.deadline.isoformat(), "untracked": self.untracked,
            "target_id": self.target_id}
        # Only what a file states: a plan of before keeps its canonical document (no new revision).
        for key in ("each", "counts", "new", "quote", "link", "counted"):
            value = getattr(self, key)
            if value is not None:
                out[key] = list(value) if isinstance(value, tuple) else value
        return out


@dataclass(frozen=True)
class Task:
    no: str
    title: str
    leads: tuple[str, ...]      # one or several joint lead units (牵头单位), in the plan's order
    co: tuple[str, ...]
    due: str | None
    deadline: date
    community: str | None
    scope_region: str
    expands: ExpandTier | None
    work_plan: str | None
    targets: tuple[PlanTarget, ...]

    @property
    def lead(self) -> str:
        """The first lead unit: the one a single-unit field (TaskOverdue's lead_unit) names."""
        return self.leads[0]

    @property
    def units(self) -> tuple[str, ...]:
        return (*self.leads, *self.co)

    def to_json(self) -> dict[str, Any]:
        return {"no": self.no, "title": self.title, "lead": self.lead, "leads": list(self.leads),
                "co": list(self.co),
                "due": self.due, "deadline": self.deadline.isoformat(), "community": self.community,
                "scope_region": self.scope_region, "expands": self.expands,
                "work_plan": self.work_plan, "targets": [t.to_json() for t in self.targets]}


@dataclass(frozen=True)
class Plan:
    id: str
    title: str
    scope: str
    issued: date | None
    issuers: tuple[str, ...]
    period_from: date | None
    period_until: date | None
    phases: tuple[Phase, ...]
    implementing: str | None
    acceptance: str | None
    starts: date          # when counting starts: period.from, else the issue date
    opens: date           # no deadline may fall before it: the issue date, else period.from
    ends: date | None     # no deadline may fall after it: period.until, else the last phase's until
    work_plans: tuple[WorkPlan, ...]
    tasks: tuple[Task, ...]
    warnings: tuple[str, ...] = field(default=(), compare=False)

    def to_json(self) -> dict[str, Any]:
        """The canonical document: what is stored, compared and diffed between revisions."""

        def day(d: date | None) -> str | None:
            return d.isoformat() if d else None

        return {
            "id": self.id, "title": self.title, "scope": self.scope, "issued": day(self.issued),
            "issuers": list(self.issuers),
            "period": {"from": day(self.period_from), "until": day(self.period_until)},
            "phases": [{"name": p.name, "from": day(p.start), "until": day(p.until)} for p in self.phases],
            "implementing": self.implementing, "acceptance": self.acceptance,
            "starts": day(self.starts), "opens": day(self.opens), "ends": day(self.ends),
            "work_plans": [{"no": w.no, "title": w.title, "tasks": list(w.tasks)} for w in self.work_plans],
            "tasks": [t.to_json() for t in self.tasks],
        }

    def catalogue_items(self) -> list[dict[str, Any]]:
        """Target catalogue entries (services/targets/catalogue.yaml format) of tracked targets."""
        return [catalogue_item(self, task, target) for task in self.tasks for target in task.targets
                if not target.untracked and target.counted is None]


def catalogue_item(plan: Plan, task: Task, target: PlanTarget) -> dict[str, Any]:
    """The catalogue entry a tracked target would be on its own (the promise it states)."""
    item: dict[str, Any] = {
        "id": target.target_id or target_id(plan.id, task.no, target.metric),
        "title": f"{plan.id} {task.no} {task.title}",
        "figure": target.metric,
        "scope_region": task.scope_region,
        "threshold": target.threshold,
        "comparison": target.comparison,
        "start": plan.starts,
        "deadline": target.deadline,
        "source": plan.title,
    }
    if target.metric in FIGURES and FIGURES[target.metric].yearly:
        # A yearly figure is promised for each calendar year from the plan's start to the deadline.
        item.update(yearly_from=plan.starts.year, yearly_until=target.deadline.year)
    for key, name in (("each", "scope_tier"), ("counts", "counts"), ("new", "new"), ("quote", "quote")):
        value = getattr(target, key)
        if value is not None:
            item[name] = list(value) if isinstance(value, tuple) else value
    return item


def target_id(plan_id: str, task_no: str, metric: str) -> str:
    return f"{plan_id}-{task_no}-{metric}"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a plan file: where (e.g. ``tasks[3]`` with label ``no '1.4'``), which
    field, and what."""

    origin: str
    location: str
    label: str
    field: str
    message: str

    @property
    def path(self) -> str:
        if not self.location:
            return self.field or "$"
        return f"{self.location}.{self.field}" if self.field else self.location

    def __str__(self) -> str:
        where = self.location + (f" ({self.label})" if self.label else "")
        parts = [self.origin, where, self.field, self.message]
        return ": ".join(p for p in parts if p)


class PlanError(ValueError):
    """A plan file that cannot be loaded; `problems` lists every problem found."""

    def __init__(self, origin: str, problems: Sequence[Problem]) -> None:
        self.origin = origin
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class _Problems:
    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.items: list[Problem] = []

    def add(self, location: str, label: str, field_: str, message: str) -> None:
        self.items.append(Problem(self.origin, location, label, field_, message))


class _Loader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false. (YAML 1.1 also reads yes/no/on/off as booleans, which
    would turn the reference files' `no:` key, a task's number, into False.) No aliases."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in a plan file",
                                              self.peek_event().start_mark)  # type: ignore[no-untyped-call]
        return super().compose_node(parent, index)


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def read_plan_text(text: str, origin: str) -> object:
    """Parse a plan file's text (YAML 1.2 booleans; JSON is YAML too). Refused: aliases (a few
    lines of them expand to billions of nodes), nesting the parser cannot follow, and text that
    cannot be stored (NUL from a "\\0" escape, other control characters)."""
    try:
        data = yaml.load(text, Loader=_Loader)  # a SafeLoader
        jsontext.check(data)
    except yaml.YAMLError as exc:
        raise PlanError(origin, [Problem(origin, "", "", "", f"not valid YAML: {exc}")]) from exc
    except RecursionError:
        raise PlanError(origin, [Problem(origin, "", "", "", "not valid YAML: nested too deeply")]) from None
    except jsontext.TextError as exc:
        raise PlanError(origin, [Problem(origin, exc.field, "", "", exc.message)]) from None
    return data


def referenced_codes(data: object) -> set[str]:
    """The division codes a plan file names (its scope and communities), to look up first."""
    codes: set[str] = set()
    if not isinstance(data, dict):
        return codes
    plan = data.get("plan")
    if isinstance(plan, dict) and isinstance(plan.get("scope"), str):
        codes.add(plan["scope"])
    tasks = data.get("tasks")
    for task in tasks if isinstance(tasks, list) else []:
        if isinstance(task, dict) and isinstance(task.get("community"), str):
            codes.add(task["community"])
    return codes


def plan_id_of(data: object) -> str | None:
    if isinstance(data, dict) and isinstance(data.get("plan"), dict):
        value = data["plan"].get("id")
        return value if isinstance(value, str) else None
    return None


def _parse_header(raw: object, p: _Problems) -> dict[str, Any] | None:
    """The plan's header, validated by `HeaderModel`, with the dates it implies (starts, opens,
    ends), or None when it is wrong."""
    if not isinstance(raw, dict):
        p.add("plan", "", "", f"expected a mapping of plan fields, got {type(raw).__name__}")
        return None
    try:
        m = HeaderModel.model_validate(raw)
    except ValidationError as exc:
        for path, message in problems(exc, HeaderModel):
            p.add("plan", "", path, message)
        return None
    cross = m.cross_checks()
    for path, message in cross:
        p.add("plan", "", path, message)
    if cross:
        return None
    period = m.period or PeriodModel()
    phases = tuple(Phase(ph.name, ph.start, ph.until) for ph in m.phases or ())
    ends = period.until
    if ends is None and phases and phases[-1].until is not None:
        ends = phases[-1].until
    issuers = ([m.issuer] if m.issuer else []) + list(m.issuers or ())
    return {"id": m.id, "title": m.title, "scope": m.scope, "issued": m.issued,
            "issuers": tuple(dict.fromkeys(issuers)), "period_from": period.start,
            "period_until": period.until, "phases": phases, "implementing": m.implementing,
            "acceptance": m.acceptance, "opens": m.issued or period.start,
            "starts": period.start or m.issued, "ends": ends}


def _expansion(units: Sequence[str]) -> tuple[ExpandTier, str] | None:
    """The finest tier the units expand over, with the marker that said so."""
    found = [(EXPANSION_MARKERS[u], u) for u in units if u in EXPANSION_MARKERS]
    if not found:
        return None
    return max(found, key=lambda f: TIERS.index(f[0]))


def _parse_target(raw: object, p: _Problems, loc: str, label: str, name: str, plan: Mapping[str, Any],
                  task_no: str | None, task_deadline: date | None, strict: bool,
                  warnings: list[str], community: bool = False) -> PlanTarget | None:
    """One target, validated by `TargetModel`, then checked against its task and plan. A
    community task's target counts one of `COMMUNITY_METRICS` at its community."""
    if not isinstance(raw, dict):
        p.add(loc, label, name, f"expected {{metric, threshold}}, got {raw!r}")
        return None
    try:
        model = TargetModel.model_validate(raw)
    except ValidationError as exc:
        for path, message in problems(exc, TargetModel):
            p.add(loc, label, f"{name}.{path}", message)
        return None
    ok = True
    untracked = model.untracked
    known = COMMUNITY_METRICS if community else FIGURES
    if community and not untracked:
        for key in ("each", "counts", "new", "target"):
            if getattr(model, key) is not None:
                p.add(loc, label, f"{name}.{key}", "a community task's target counts at its community: it "
                      "takes no each, counts, new or target")
                ok = False
    if model.metric not in known and not untracked:
        if community:
            p.add(loc, label, f"{name}.metric",
                  f"unknown metric {model.metric!r} for a community task; known: {', '.join(COMMUNITY_METRICS)}")
            ok = False
        elif strict:
            p.add(loc, label, f"{name}.metric",
                  f"unknown metric {model.metric!r}; known metrics: {', '.join(FIGURES)}. A figure cso does "
                  "not compute can be recorded with `untracked: true`")
            ok = False
        else:
            untracked = True
            warnings.append(f"{p.origin}: {loc} ({label}): {name}.metric: {model.metric!r} is not a metric cso "
                            "computes; recorded as an untracked target")
    if untracked and model.says_what_it_counts:
        p.add(loc, label, f"{name}.untracked", "an untracked target is recorded as written: it takes no "
              "target, each, counts or new")
        ok = False
    due: str | None = None
    deadline = task_deadline
    if model.due is not None:
        due, deadline = model.due
        ok = _within(deadline, plan, p, loc, label, f"{name}.due") and ok
        if task_deadline is not None and deadline > task_deadline:
            p.add(loc, label, f"{name}.due", f"{deadline} is after the task's own deadline {task_deadline}")
            ok = False
    # What it counts is checked field by field against the catalogue's rules (_check_catalogue).
    if not ok or deadline is None or task_no is None or plan.get("id") is None:
        return None
    return PlanTarget(metric=model.metric, threshold=model.threshold, comparison=model.comparison, due=due,
                      deadline=deadline, untracked=untracked,
                      target_id=None if untracked or community else target_id(plan["id"], task_no, model.metric),
                      each=model.each, counts=model.counts, new=model.new, quote=model.quote,
                      link=model.target,
                      counted=None if untracked or not community else
                      "evidence" if model.metric == EVIDENCE_METRIC else "figure")


def _within(deadline: date, plan: Mapping[str, Any], p: _Problems, loc: str, label: str, name: str) -> bool:
    opens: date | None = plan.get("opens")
    ends: date | None = plan.get("ends")
    if opens is not None and deadline < opens:
        what = "issued" if plan.get("issued") else "starts (period.from)"
        p.add(loc, label, name, f"deadline {deadline} is before the plan {what} on {opens}")
        return False
    if ends is not None and deadline > ends:
        p.add(loc, label, name, f"deadline {deadline} is after the plan ends on {ends}")
        return False
    return True


def parse_plan(data: object, origin: str, regions: Mapping[str, str], *, strict: bool = True) -> Plan:
    """Validate a parsed plan file and return its `Plan`, or raise `PlanError` with every problem.

    `regions` maps known division codes to their tier (at least the plan's scope and every
    community it names). `strict` (files users supply): a target on a metric cso does not
    compute is an error unless it says ``untracked: true``; not strict (the plans bundled with
    the service): it becomes an untracked target and a warning.
    """
    p = _Problems(origin)
    if not isinstance(data, dict):
        p.add("", "", "", f"expected a mapping with 'plan' and 'tasks', got {type(data).__name__}")
        raise PlanError(origin, p.items)
    for key in sorted(str(k) for k in data if k not in _TOP_KEYS):
        p.add("", "", key, "unknown top-level key; expected plan, work_plans, tasks")
    if "plan" not in data:
        p.add("", "", "plan", "required: the plan's header (id, title, scope, issued…)")
    header = _parse_header(data.get("plan"), p) if "plan" in data else None
    plan: dict[str, Any] = header or {}
    warnings: list[str] = []

    scope: str | None = plan.get("scope")
    scope_tier: str | None = None
    if scope is not None:
        known = regions.get(scope)
        if known is None:
            p.add("plan", "", "scope", f"unknown region {scope!r}: not in targets.division "
                  "(import the divisions first)")
            scope = None
        elif known == "community":
            p.add("plan", "", "scope", f"{scope!r} is a community; a plan covers a province, city, county "
                  "or township")
            scope = None
        else:
            scope_tier = known

    raw_tasks = data.get("tasks")
    tasks: list[Task] = []
    if not isinstance(raw_tasks, list) or not raw_tasks:
        got = "nothing" if raw_tasks is None else repr(raw_tasks) if not isinstance(raw_tasks, list) else "[]"
        p.add("", "", "tasks", f"expected a non-empty list of tasks, got {got}")
        raw_tasks = []
    first_at: dict[str, int] = {}
    for index, raw in enumerate(raw_tasks):
        loc = f"tasks[{index}]"
        if not isinstance(raw, dict):
            p.add(loc, "", "", f"expected a mapping of task fields, got {type(raw).__name__}")
            continue
        no_raw = raw.get("no")
        label = f"no {no_raw!r}" if isinstance(no_raw, str | int | float) and not isinstance(no_raw, bool) else ""
        model: TaskModel | None = None
        try:
            model = TaskModel.model_validate(raw)
        except ValidationError as exc:
            wrong = problems(exc, TaskModel)
            for path, message in wrong:
                p.add(loc, label, path, message)
            # Its number still counts (duplicates, work plans) and its targets are still checked.
            no_ok = not any(path == "no" for path, _ in wrong)
            raw_targets = raw.get("targets")
            for t_index, t_raw in enumerate(raw_targets if isinstance(raw_targets, list) else []):
                _parse_target(t_raw, p, loc, label, f"targets[{t_index}]", plan, None, None, strict, warnings)
        else:
            no_ok = True
        no: str | None = model.no if model is not None else str(no_raw).strip() if no_ok else None
        if no is not None:
            if no in first_at:
                p.add(loc, label, "no", f"duplicate task number {no!r} (first at tasks[{first_at[no]}])")
                no = None
            else:
                first_at[no] = index
        if model is None:
            continue
        for path, message in model.cross_checks():
            p.add(loc, label, path, message)
        leads: tuple[str, ...] = model.lead or ()
        if model.lead is None:
            implementing = plan.get("implementing")
            if implementing is not None:
                leads = (implementing,)
            elif header is not None:  # (a wrong header's implementing units are not known)
                p.add(loc, label, "lead", "required: no lead unit, and the plan names no implementing units")
        co = model.co or ()

        due: str | None = None
        deadline: date | None = None
        if model.due is not None:
            due, deadline = model.due
            if not _within(deadline, plan, p, loc, label, "due"):
                deadline = None
        elif plan.get("ends") is not None:
            deadline = plan["ends"]
        elif header is not None:
            p.add(loc, label, "due", "required: the plan has no end date to default to")

        community = model.community
        if community is not None:
            known = regions.get(community)
            if known is None:
                p.add(loc, label, "community", f"unknown community {community!r}: not in targets.division")
                community = None
            elif known != "community":
                p.add(loc, label, "community", f"{community!r} is a {known}, not a community")
                community = None
            elif scope is not None and not community.startswith(scope):
                p.add(loc, label, "community", f"{community!r} is not under the plan's scope {scope!r}")
                community = None

        expands: ExpandTier | None = None
        expansion = _expansion(leads + co)
        if expansion is not None and model.community is None and scope_tier is not None:
            tier, marker = expansion
            if TIERS.index(tier) <= [str(t) for t in TIERS].index(scope_tier):
                which = "lead" if marker in leads else "co"
                p.add(loc, label, which, f"{marker!r} means every {tier} under the scope, but the plan's "
                      f"scope {scope!r} is a {scope_tier}")
            else:
                expands = tier

        targets: list[PlanTarget] = []
        raw_targets = model.targets or []
        seen_metrics: dict[str, int] = {}
        for t_index, t_raw in enumerate(raw_targets):
            name = f"targets[{t_index}]"
            target = _parse_target(t_raw, p, loc, label, name, plan, no, deadline, strict, warnings,
                                   community=model.community is not None)
            if target is None:
                continue
            if target.metric in seen_metrics:
                p.add(loc, label, f"{name}.metric",
                      f"{target.metric!r} is already a target of this task (targets[{seen_metrics[target.metric]}])")
                continue
            seen_metrics[target.metric] = t_index
            targets.append(target)

        title = model.title
        if no is None or title is None or not leads or deadline is None or scope is None:
            continue
        tasks.append(Task(no=no, title=title, leads=leads, co=co, due=due, deadline=deadline,
                          community=community, scope_region=community or scope, expands=expands,
                          work_plan=None, targets=tuple(targets)))

    work_plans: list[WorkPlan] = []
    in_work_plan: dict[str, str] = {}
    raw_wps = data.get("work_plans")
    if raw_wps is not None and not isinstance(raw_wps, list):
        p.add("", "", "work_plans", f"expected a list, got {type(raw_wps).__name__}")
        raw_wps = []
    for index, wp in enumerate(raw_wps or []):
        loc = f"work_plans[{index}]"
        if not isinstance(wp, dict):
            p.add(loc, "", "", f"expected {{no, title, tasks}}, got {wp!r}")
            continue
        wno = wp.get("no")
        wlabel = f"no {wno!r}" if isinstance(wno, int | str) and not isinstance(wno, bool) else ""
        try:
            wmodel = WorkPlanModel.model_validate(wp)
        except ValidationError as exc:
            for path, message in problems(exc, WorkPlanModel):
                p.add(loc, wlabel, path, message)
            continue
        ok_members: list[str] = []
        for i, member in enumerate(wmodel.tasks):
            if not isinstance(member, str) or member not in first_at:
                p.add(loc, wlabel, f"tasks[{i}]", f"{member!r} is not a task of this plan")
            elif member in in_work_plan:
                p.add(loc, wlabel, f"tasks[{i}]", f"task {member!r} is already in work plan {in_work_plan[member]!r}")
            else:
                in_work_plan[member] = wmodel.no
                ok_members.append(member)
        work_plans.append(WorkPlan(wmodel.no, wmodel.title, tuple(ok_members)))

    if p.items or header is None:
        raise PlanError(origin, p.items)

    tasks = [replace(t, work_plan=in_work_plan.get(t.no)) for t in tasks]
    result = Plan(id=plan["id"], title=plan["title"], scope=plan["scope"], issued=plan["issued"],
                  issuers=plan["issuers"], period_from=plan["period_from"],
                  period_until=plan["period_until"], phases=plan["phases"],
                  implementing=plan["implementing"], acceptance=plan["acceptance"],
                  starts=plan["starts"], opens=plan["opens"], ends=plan["ends"],
                  work_plans=tuple(work_plans), tasks=tuple(tasks), warnings=tuple(warnings))
    _check_catalogue(result, p)
    if p.items:
        raise PlanError(origin, p.items)
    return result


def _check_catalogue(plan: Plan, p: _Problems) -> None:
    """Tracked targets must make valid catalogue entries (e.g. a share's threshold is at most 1)."""
    for index, task in enumerate(plan.tasks):
        for t_index, target in enumerate(task.targets):
            if target.untracked or target.counted is not None:
                continue
            try:
                parse_catalogue({"targets": [catalogue_item(plan, task, target)]}, p.origin)
            except CatalogueError as exc:
                for line in exc.problems:
                    # "<origin>: targets[0] (id '…'): <field>: <message>" -> "<field>: <message>"
                    detail = line.split("): ", 1)[-1]
                    fld, _, message = detail.partition(": ")
                    fld = {"figure": "metric", "scope_tier": "each"}.get(fld, fld)
                    fld = "due" if fld in ("deadline", "yearly_until") else fld
                    p.add(f"tasks[{index}]", f"no {task.no!r}", f"targets[{t_index}].{fld}", message or detail)


def load_plan(text: str, origin: str, regions: Mapping[str, str], *, strict: bool = True) -> Plan:
    return parse_plan(read_plan_text(text, origin), origin, regions, strict=strict)


def source_hash(text: str | bytes) -> str:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


# --- revisions -------------------------------------------------------------------------------


def diff_plans(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """What changed between two canonical documents (`Plan.to_json`): plan fields as
    ``{field: {from, to}}``, tasks added, removed and changed field by field."""
    if old is None:
        return {"created": True, "plan": {}, "tasks": {"added": [t["no"] for t in new["tasks"]],
                                                       "removed": [], "changed": {}}}
    plan_changes = {k: {"from": old.get(k), "to": new.get(k)} for k in sorted(set(old) | set(new))
                    if k != "tasks" and old.get(k) != new.get(k)}
    old_tasks = {t["no"]: t for t in old.get("tasks", [])}
    new_tasks = {t["no"]: t for t in new.get("tasks", [])}
    changed: dict[str, Any] = {}
    for no in sorted(set(old_tasks) & set(new_tasks), key=task_key):
        a, b = old_tasks[no], new_tasks[no]
        fields = {k: {"from": a.get(k), "to": b.get(k)} for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
        if fields:
            changed[no] = fields
    return {"created": False, "plan": plan_changes,
            "tasks": {"added": sorted(set(new_tasks) - set(old_tasks), key=task_key),
                      "removed": sorted(set(old_tasks) - set(new_tasks), key=task_key),
                      "changed": changed}}
