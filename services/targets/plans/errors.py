"""Plans' write-side errors, each naming the field it is about; plans/api.py answers them over
HTTP (NotFound 404, Conflict 409). The state machine's own refusals are domain.TransitionError."""

from __future__ import annotations


class PlanWriteError(Exception):
    def __init__(self, field: str, message: str) -> None:
        self.field, self.message = field, message
        super().__init__(f"{field}: {message}")


class NotFound(PlanWriteError):
    """No such plan, task of it, or line of the task."""


class Conflict(PlanWriteError):
    """The task or line is in a state that does not allow the write (evidence once submitted)."""
