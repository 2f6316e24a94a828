"""The clock a service goes by for what is counted in civil days in China: targets' daily
evaluation and deadline announcements, notify's reminders and digests. Tests and what-if runs set
`fixed` (and move it); otherwise it is the wall clock. Seconds-scale timing (retries, leases,
batches) goes by the database's or the event loop's clock, not this one."""

from __future__ import annotations

import dataclasses
from datetime import date, datetime, time, timezone

from contracts.events import CHINA


@dataclasses.dataclass
class Clock:
    """`fixed`: a moment, or a day (taken as noon of that day in China); None: now."""

    fixed: datetime | date | None = None

    def now(self) -> datetime:
        if self.fixed is None:
            return datetime.now(timezone.utc)
        if isinstance(self.fixed, datetime):
            return self.fixed
        return datetime.combine(self.fixed, time(12), CHINA)

    def today(self) -> date:
        """Today in China, where deadlines are civil dates."""
        return self.now().astimezone(CHINA).date()


__all__ = ["Clock"]
