"""notify's tables: division names, subscriptions, deliveries (the send queue), the in-app inbox,
digest items and runs, and reminders made.

Revision ID: 0001
"""
from alembic import op

from cso import outbox

revision = "0001"
down_revision = None


def upgrade(schema: str) -> None:
    s = f'"{schema}"'
    for statement in outbox.ddl(schema) + [
        # Names of every division notify has heard of, to name a region by its full path.
        f"""CREATE TABLE {s}.division (
            code text PRIMARY KEY, name text NOT NULL, edition text NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now())""",
        f"""CREATE TABLE {s}.subscription (
            id uuid PRIMARY KEY,
            recipient text NOT NULL,
            language text NOT NULL CHECK (language IN ('zh', 'en')),
            email text,
            webhook_url text,
            webhook_secret text,
            inbox boolean NOT NULL DEFAULT false,
            events text[] NOT NULL,
            statuses text[],
            region text NOT NULL,
            include_subregions boolean NOT NULL DEFAULT false,
            frequency text NOT NULL CHECK (frequency IN ('immediate', 'digest')),
            digest_time time,
            timezone text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            deleted_at timestamptz,
            CHECK (webhook_url IS NULL OR webhook_secret IS NOT NULL),
            CHECK (frequency = 'immediate' OR digest_time IS NOT NULL))""",
        f"CREATE INDEX subscription_recipient ON {s}.subscription (recipient) WHERE deleted_at IS NULL",
        f"CREATE INDEX subscription_events ON {s}.subscription USING gin (events) WHERE deleted_at IS NULL",
        # One row per (event, subscription, channel), written with the event's consumption and
        # before any send: the unique key is what makes a duplicate event send nothing twice.
        f"""CREATE TABLE {s}.delivery (
            id uuid PRIMARY KEY,
            event_id uuid NOT NULL,
            subscription_id uuid NOT NULL REFERENCES {s}.subscription(id),
            channel text NOT NULL CHECK (channel IN ('email', 'webhook', 'inbox')),
            kind text NOT NULL,
            region text NOT NULL,
            recipient text NOT NULL,
            subject text NOT NULL,
            body text NOT NULL,
            data jsonb NOT NULL,
            status text NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'sent', 'failed', 'cancelled')),
            attempts integer NOT NULL DEFAULT 0,
            next_attempt_at timestamptz NOT NULL DEFAULT now(),
            lease_until timestamptz,
            claim_token uuid,
            last_error text,
            created_at timestamptz NOT NULL DEFAULT now(),
            sent_at timestamptz,
            failed_at timestamptz,
            UNIQUE (event_id, subscription_id, channel))""",
        f"CREATE INDEX delivery_due ON {s}.delivery (next_attempt_at) WHERE status = 'pending'",
        f"CREATE INDEX delivery_subscription ON {s}.delivery (subscription_id, created_at)",
        f"""CREATE TABLE {s}.inbox_message (
            id uuid PRIMARY KEY REFERENCES {s}.delivery(id),
            recipient text NOT NULL,
            subscription_id uuid NOT NULL,
            event_id uuid NOT NULL,
            kind text NOT NULL,
            region text NOT NULL,
            subject text NOT NULL,
            body text NOT NULL,
            data jsonb NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            read_at timestamptz)""",
        f"CREATE INDEX inbox_recipient ON {s}.inbox_message (recipient, created_at DESC, id)",
        f"CREATE INDEX inbox_unread ON {s}.inbox_message (recipient, created_at DESC) WHERE read_at IS NULL",
        # What a digest subscription heard, waiting for its next digest (digest_event_id NULL).
        f"""CREATE TABLE {s}.digest_item (
            subscription_id uuid NOT NULL REFERENCES {s}.subscription(id),
            event_id uuid NOT NULL,
            kind text NOT NULL,
            region text NOT NULL,
            headline text NOT NULL,
            recorded_at timestamptz NOT NULL,
            digest_event_id uuid,
            PRIMARY KEY (subscription_id, event_id))""",
        f"""CREATE INDEX digest_item_open ON {s}.digest_item (subscription_id, recorded_at)
            WHERE digest_event_id IS NULL""",
        # One digest per subscription and local day.
        f"""CREATE TABLE {s}.digest (
            subscription_id uuid NOT NULL REFERENCES {s}.subscription(id),
            day date NOT NULL,
            event_id uuid NOT NULL UNIQUE,
            items integer NOT NULL DEFAULT 0,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (subscription_id, day))""",
        # One reminder per target, deadline and offset (90, 30, 7 days before).
        f"""CREATE TABLE {s}.reminder (
            target_id text NOT NULL,
            deadline date NOT NULL,
            offset_days integer NOT NULL,
            event_id uuid NOT NULL UNIQUE,
            recipients integer NOT NULL DEFAULT 0,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (target_id, deadline, offset_days))""",
    ]:
        op.execute(statement)
