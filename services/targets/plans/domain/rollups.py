"""What the views show of a plan's tasks: overdue, roll-ups of states, completion, the ledger's order."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date
from typing import Any

from .plan_file import task_key
from .states import STORED_STATES, TaskState

# --- roll-ups --------------------------------------------------------------------------------


def is_overdue(state: TaskState, deadline: date, today: date) -> bool:
    """Overdue: the deadline has passed (today is after it) and it is not accepted."""
    return state is not TaskState.ACCEPTED and today > deadline


def days_overdue(state: TaskState, deadline: date, today: date) -> int:
    return (today - deadline).days if is_overdue(state, deadline, today) else 0


def rollup(states: Iterable[TaskState]) -> dict[str, Any]:
    """Counts of a set of tasks or lines by state, and the share accepted (None when empty)."""
    by_state = {s.value: 0 for s in STORED_STATES}
    total = 0
    for s in states:
        by_state[s.value] = by_state.get(s.value, 0) + 1
        total += 1
    accepted = by_state[TaskState.ACCEPTED.value]
    return {"total": total, "by_state": by_state, "accepted": accepted,
            "share": accepted / total if total else None}


def task_progress(state: TaskState, line_states: Sequence[TaskState]) -> float:
    """1 for an accepted task; else the share of its lines accepted (0 without lines)."""
    if state is TaskState.ACCEPTED:
        return 1.0
    if line_states:
        return sum(s is TaskState.ACCEPTED for s in line_states) / len(line_states)
    return 0.0


def completion(tasks: Sequence[tuple[TaskState, Sequence[TaskState]]]) -> dict[str, Any]:
    """A plan's completion: `share` = tasks accepted / tasks; `progress` also credits the
    accepted lines of tasks not yet accepted (the mean of `task_progress`)."""
    summary = rollup(state for state, _ in tasks)
    summary["progress"] = (sum(task_progress(s, lines) for s, lines in tasks) / len(tasks)) if tasks else None
    return summary


STATE_RANK = {TaskState.NOT_STARTED: 0, TaskState.IN_PROGRESS: 1, TaskState.RETURNED: 1,
              TaskState.SUBMITTED: 2, TaskState.ACCEPTED: 3}


def ledger_key(state: TaskState, deadline: date, no: str, today: date
               ) -> tuple[int, int, int, date, tuple[tuple[int, int | str], ...]]:
    """Ledger order: overdue first (longest overdue first), then by state (least advanced
    first), deadline and task number."""
    late = days_overdue(state, deadline, today)
    return (0 if late else 1, -late, STATE_RANK[state], deadline, task_key(no))
