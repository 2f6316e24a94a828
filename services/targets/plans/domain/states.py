"""A task's (or a township line's) states and the moves between them: the state machine."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from .plan_file import MAX_NOTE

# --- the state machine -----------------------------------------------------------------------


class TaskState(StrEnum):
    """A task's (or a township line's) progress. `returned` is passed through: a returned
    submission goes back to `in_progress` at once, so it is never a stored state."""

    NOT_STARTED = "not_started"
    IN_PROGRESS = "in_progress"
    SUBMITTED = "submitted"
    RETURNED = "returned"
    ACCEPTED = "accepted"


class Action(StrEnum):
    START = "start"
    SUBMIT = "submit"
    ACCEPT = "accept"
    RETURN = "return"


STORED_STATES = (TaskState.NOT_STARTED, TaskState.IN_PROGRESS, TaskState.SUBMITTED, TaskState.ACCEPTED)
MOVES: dict[Action, tuple[TaskState, TaskState]] = {
    Action.START: (TaskState.NOT_STARTED, TaskState.IN_PROGRESS),
    Action.SUBMIT: (TaskState.IN_PROGRESS, TaskState.SUBMITTED),
    Action.ACCEPT: (TaskState.SUBMITTED, TaskState.ACCEPTED),
    Action.RETURN: (TaskState.SUBMITTED, TaskState.RETURNED),
}


@dataclass(frozen=True)
class Step:
    previous: TaskState
    status: TaskState
    note: str | None


class TransitionError(Exception):
    """A move the state machine refuses: 409 (not from this state), 422 (something missing)."""

    def __init__(self, status: int, field_: str, message: str) -> None:
        self.status, self.field, self.message = status, field_, message
        super().__init__(f"{field_}: {message}")


def allowed_actions(state: TaskState) -> list[Action]:
    return [a for a, (frm, _) in MOVES.items() if frm is state]


def transition(current: TaskState, action: Action | str, *, what: str, note: str | None = None,
               evidence_files: int = 0, open_lines: Sequence[str] = ()) -> list[Step]:
    """The steps an action takes from `current`, or `TransitionError`.

    - start: not_started -> in_progress;
    - submit: in_progress -> submitted, with a self-assessment `note` and at least one evidence file;
    - accept: submitted -> accepted, only when every township line (`open_lines`: those not
      accepted, described) is accepted;
    - return: submitted -> returned -> in_progress, with the reason as `note`.
    """
    try:
        act = Action(action)
    except ValueError:
        raise TransitionError(422, "action", f"unknown action {action!r}; one of "
                              f"{', '.join(a.value for a in Action)}") from None
    frm, to = MOVES[act]
    if current is not frm:
        allowed = allowed_actions(current)
        then = (f"from {current.value} it can only be {', '.join(a.value for a in allowed)}"
                if allowed else "an accepted task is final")
        raise TransitionError(409, "state", f"cannot {act.value} {what}: it is {current.value}, and "
                              f"{act.value} needs it {frm.value}; {then}")
    text = note.strip() if note else None
    if text is not None and len(text) > MAX_NOTE:
        raise TransitionError(422, "note", f"at most {MAX_NOTE} characters, got {len(text)}")
    if act is Action.SUBMIT:
        if not text:
            raise TransitionError(422, "note", f"submitting {what} needs a self-assessment note")
        if evidence_files < 1:
            raise TransitionError(409, "evidence", f"cannot submit {what} without evidence: attach at least "
                                  "one file (pdf, jpg, png, docx or xlsx)")
    if act is Action.RETURN and not text:
        raise TransitionError(422, "reason", f"returning {what} needs the reason")
    if act is Action.ACCEPT and open_lines:
        shown = "; ".join(open_lines[:20]) + ("; …" if len(open_lines) > 20 else "")
        raise TransitionError(409, "lines", f"cannot accept {what} while {len(open_lines)} of its lines "
                              f"are not accepted: {shown}")
    steps = [Step(frm, to, text)]
    if act is Action.RETURN:
        steps.append(Step(TaskState.RETURNED, TaskState.IN_PROGRESS, None))
    return steps
