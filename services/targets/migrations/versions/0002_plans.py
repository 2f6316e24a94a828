"""Plans and their task ledgers: plans with their revisions, tasks, progress (a task's own and one
line per township or county of an expanded task), the history of every change, evidence files.

Revision ID: 0002
Revises: 0001
"""
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade(schema: str) -> None:
    s = f'"{schema}"'
    for statement in [
        # A plan as last imported: `document` is its canonical form (plans/domain/plan_file.py Plan.to_json).
        f"""CREATE TABLE {s}.plan (
            id text PRIMARY KEY, title text NOT NULL, scope text NOT NULL, document jsonb NOT NULL,
            revision integer NOT NULL, origin text NOT NULL, warnings jsonb NOT NULL DEFAULT '[]',
            seed_hash text, imported_at timestamptz NOT NULL DEFAULT now(),
            accepted_at timestamptz, accepted_on date, accepted_by text)""",
        # Every import that changed the plan, with what changed.
        f"""CREATE TABLE {s}.plan_revision (
            plan_id text NOT NULL REFERENCES {s}.plan (id), revision integer NOT NULL,
            origin text NOT NULL, by text, diff jsonb NOT NULL, document jsonb NOT NULL,
            imported_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (plan_id, revision))""",
        f"""CREATE TABLE {s}.plan_task (
            plan_id text NOT NULL REFERENCES {s}.plan (id), task_no text NOT NULL,
            position integer NOT NULL, title text NOT NULL, lead text NOT NULL,
            co text[] NOT NULL DEFAULT '{{}}', deadline date NOT NULL, scope_region text NOT NULL,
            expands text, work_plan text, targets jsonb NOT NULL DEFAULT '[]',
            removed boolean NOT NULL DEFAULT false, PRIMARY KEY (plan_id, task_no))""",
        # Progress: line '' is the task itself (its unit is the lead), other lines are the
        # divisions an expanded task is carried out in (their unit is the division's name).
        f"""CREATE TABLE {s}.plan_progress (
            plan_id text NOT NULL, task_no text NOT NULL, line text NOT NULL,
            region text NOT NULL, unit text NOT NULL,
            state text NOT NULL DEFAULT 'not_started', submissions integer NOT NULL DEFAULT 0,
            returns integer NOT NULL DEFAULT 0, note text, reason text, updated_by text,
            updated_on date, updated_at timestamptz NOT NULL DEFAULT now(), overdue_for date,
            removed boolean NOT NULL DEFAULT false,
            PRIMARY KEY (plan_id, task_no, line),
            FOREIGN KEY (plan_id, task_no) REFERENCES {s}.plan_task (plan_id, task_no))""",
        f"CREATE INDEX plan_progress_unit ON {s}.plan_progress (unit)",
        f"""CREATE TABLE {s}.plan_task_history (
            id bigserial PRIMARY KEY, plan_id text NOT NULL, task_no text NOT NULL,
            line text NOT NULL, action text NOT NULL, previous_status text, status text NOT NULL,
            by text, note text, on_day date NOT NULL, at timestamptz NOT NULL DEFAULT now())""",
        f"CREATE INDEX plan_task_history_task ON {s}.plan_task_history (plan_id, task_no, line, id)",
        f"""CREATE TABLE {s}.plan_evidence (
            id uuid PRIMARY KEY, plan_id text NOT NULL, task_no text NOT NULL, line text NOT NULL,
            filename text NOT NULL, file_type text NOT NULL, media_type text NOT NULL,
            size integer NOT NULL, sha256 text NOT NULL, content bytea NOT NULL,
            uploaded_by text, uploaded_on date NOT NULL, uploaded_at timestamptz NOT NULL DEFAULT now(),
            submission integer,
            FOREIGN KEY (plan_id, task_no, line) REFERENCES {s}.plan_progress (plan_id, task_no, line))""",
        f"CREATE INDEX plan_evidence_task ON {s}.plan_evidence (plan_id, task_no, line)",
    ]:
        op.execute(statement)
