"""Why registry's rules refuse a fact, in the domain's own words.

The rules raise these; the edges translate them: the handler table (services/registry/handlers.py)
into the consumer's `Rejected` / `NotYet` (dead letter, retry), the command path into an HTTP
status, the sheet upload into a row's verdict. The domain knows nothing of those edges.
"""

from __future__ import annotations


class Rejected(Exception):
    """The fact breaks a rule and is refused for good. `field` names the field at fault (as the
    payload names it); `code` is the stable name of the refusal (contracts.receipts.RefusalCode)."""

    def __init__(self, field: str, message: str, code: str = "rule") -> None:
        self.field, self.message, self.code = field, message, code
        super().__init__(f"{field}: {message}")


class OutOfScope(Rejected):
    """The caller may not touch this region (its token's scope): refused, nothing written."""


class NotYet(Rejected):
    """It may apply once something else is on record: the fact came before its predecessor or
    its county's divisions. `waits_for` names what it needs: `organization:<id>`, `hub:<id>`,
    `base:<id>`, `party:<id>` or `county:<code>` (the waiting room's keys)."""

    def __init__(self, field: str, message: str, waits_for: str = "") -> None:
        super().__init__(field, message, code="waited_too_long")
        self.waits_for = waits_for
