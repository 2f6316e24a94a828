"""Plans and their task ledgers, pure code (no database, no bus, no clock), one idea a module:

- `plan_file`: the plan file format and its validation (`parse_plan`, `PlanError` naming the file,
  the task and the field), catalogue entries of its targets, revisions' diffs;
- `file_models`: the pydantic models of a plan file's parts (header, task, target, work plan);
- `states`: the task state machine (`transition`, `TransitionError`);
- `rollups`: overdue, roll-ups and completion, the ledger's order;
- `evidence`: the evidence files taken (`check_evidence`, `EvidenceError`);
- `community`: what a community task's target counts and how it stands.

Everything is importable from here as before (`from services.targets.plans import domain as d`).
"""

from .community import *  # noqa: F403
from .evidence import *  # noqa: F403
from .plan_file import *  # noqa: F403
from .rollups import *  # noqa: F403
from .states import *  # noqa: F403
