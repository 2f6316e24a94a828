"""Idempotent commands: a retried command answers its first reply instead of acting twice.

A caller that sends a command with an `Idempotency-Key` (an HTTP header, or a NATS header on
`cso.cmd.<service>.<command>`) and sends it again, say after a timeout, gets the first reply back,
same status and body, and the command has acted once. The key belongs to its caller (`Key.caller`:
the token's subject over HTTP, the `Cso-Source` over NATS), so two callers' keys never meet. Each
key is kept with a fingerprint of its command and body: the same key with another command or body
is refused (422 naming `Idempotency-Key`), since the caller has mixed up two commands.

The reply is kept in the service's own schema (`ddl`), written in the transaction of the command's
effect (`once`): a crash loses both or keeps both. A request that arrives while the first with its
key is still running waits for it (the first holds the key's row) and then answers its reply: two at
once make one effect.

Kept: the replies of commands that ran, accepted (200) or refused by what is on record (403, 404,
409): a retry is told the same. Not kept: a body that does not parse (422; nothing ran) and a failure
or a conflict the caller is told to retry (5xx, 409 "retry"): the transaction, key included, is rolled
back, so the retry runs. A key expires `ttl` after its first use (CSO_IDEMPOTENCY_HOURS, 24 h by
default); then the same key runs the command again. Expired keys are pruned (`prune`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from contracts import ContractError

log = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
# Visible ASCII, as an HTTP header value can carry it; a UUID is a good key.
_KEY = re.compile(r"[\x21-\x7e]{1,200}")
PRUNE_EVERY_SECONDS = 600.0

Reply = tuple[int, dict[str, Any]]


@dataclass(frozen=True)
class Key:
    """A caller's key for one command and body."""

    caller: str
    value: str
    fingerprint: str

    @classmethod
    def of(cls, value: str | None, caller: str, command: str, body: bytes) -> Key | None:
        """None without a key; ContractError naming the header for one that cannot be a key."""
        if value is None:
            return None
        if not _KEY.fullmatch(value):
            raise ContractError.single(HEADER, "1 to 200 visible ASCII characters (a UUID, say)")
        digest = hashlib.sha256(command.encode() + b"\0" + body).hexdigest()
        return cls(caller=caller, value=value, fingerprint=digest)


class KeyReused(ContractError):
    """The key was used before for another command or body."""

    def __init__(self) -> None:
        error = ContractError.single(HEADER, "this key was used before with another command or body; "
                                     "a new command needs a new key")
        super().__init__(error.errors)


def ddl(schema: str) -> list[str]:
    """The table of kept replies, in a service's own schema (its migrations run this)."""
    return [
        f"""CREATE TABLE "{schema}".idempotency (
            caller text NOT NULL,
            key text NOT NULL,
            fingerprint text NOT NULL,
            status smallint,
            reply json,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (caller, key))""",
        f'CREATE INDEX idempotency_created ON "{schema}".idempotency (created_at)',
    ]


async def claim(conn: AsyncConnection, schema: str, key: Key, ttl: timedelta) -> Reply | None:
    """Take the key in this transaction (None: run the command, then `save`), or the reply kept
    for it. A key whose first use is still running is waited for: its row is locked until then.
    KeyReused when it was used with another command or body."""
    taken = (await conn.execute(text(
        f'INSERT INTO "{schema}".idempotency AS i (caller, key, fingerprint) VALUES (:c, :k, :f) '
        # An expired key is taken afresh, whether or not it has been pruned yet.
        "ON CONFLICT (caller, key) DO UPDATE SET fingerprint = excluded.fingerprint, status = NULL, "
        "reply = NULL, created_at = now() WHERE i.created_at < now() - CAST(:ttl AS interval) RETURNING 1"),
        {"c": key.caller, "k": key.value, "f": key.fingerprint, "ttl": ttl})).first()
    if taken is not None:
        return None
    row = (await conn.execute(text(
        f'SELECT fingerprint, status, CAST(reply AS text) AS reply FROM "{schema}".idempotency '
        "WHERE caller = :c AND key = :k"), {"c": key.caller, "k": key.value})).one()
    if row.fingerprint != key.fingerprint:
        raise KeyReused()
    if row.status is None or row.reply is None:  # `once` never commits a key without its reply
        raise RuntimeError(f"idempotency key {key.value!r} of {key.caller!r} has no reply")
    return int(row.status), json.loads(row.reply)


async def save(conn: AsyncConnection, schema: str, key: Key, reply: Reply) -> Reply:
    """Keep the reply with its key (in the command's transaction); the reply as it will be read back."""
    status, body = reply
    kept = json.dumps(body, default=str, ensure_ascii=False)
    await conn.execute(text(
        f'UPDATE "{schema}".idempotency SET status = :s, reply = CAST(:r AS json) '
        "WHERE caller = :c AND key = :k"), {"s": status, "r": kept, "c": key.caller, "k": key.value})
    return status, json.loads(kept)


async def once(engine: AsyncEngine, schema: str, key: Key | None, ttl: timedelta,
               command: Callable[[AsyncConnection], Awaitable[Reply]]) -> tuple[Reply, bool]:
    """Run `command` in a transaction, its reply kept with `key` in the same one; with a key seen
    before, its kept reply instead. (reply, whether it was replayed.)

    `command` returns the replies to keep; it raises to roll back everything, key included (a
    failure, a conflict to retry): then nothing is kept and a retry runs again."""
    async with engine.begin() as conn:
        if key is not None and (earlier := await claim(conn, schema, key, ttl)) is not None:
            return earlier, True
        reply = await command(conn)
        if key is not None:
            reply = await save(conn, schema, key, reply)
        return reply, False


async def prune(engine: AsyncEngine, schema: str, ttl: timedelta) -> int:
    """Delete the keys that expired; how many."""
    async with engine.begin() as conn:
        result = await conn.execute(text(
            f'DELETE FROM "{schema}".idempotency WHERE created_at < now() - CAST(:ttl AS interval)'),
            {"ttl": ttl})
    return int(result.rowcount or 0)


def ttl_of(hours: float) -> timedelta:
    if not hours > 0:
        raise ValueError(f"CSO_IDEMPOTENCY_HOURS must be more than 0, not {hours}")
    return timedelta(hours=hours)


def pruning(engine: AsyncEngine, schema: str, ttl: timedelta) -> Callable[[], Awaitable[None]]:
    """A background job (Runtime.every) that prunes expired keys every PRUNE_EVERY_SECONDS; a
    failed round (the database away) is logged and tried again at the next."""
    async def job() -> None:
        while True:
            try:
                if removed := await prune(engine, schema, ttl):
                    log.info("%s: pruned %d expired idempotency keys", schema, removed)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s: pruning idempotency keys failed; trying again later", schema)
            await asyncio.sleep(PRUNE_EVERY_SECONDS)

    return job


def http_caller(authenticated: bool, sub: str, source: str) -> str:
    """Whose keys an HTTP caller's are: its token's subject; with CSO_AUTH=off the source it names."""
    return f"token:{sub}" if authenticated else f"source:{source}"


def nats_caller(source: str) -> str:
    """Whose keys a NATS command's are: the `Cso-Source` it names (only the operators' user may
    send commands, cso/natsauth.py, so the header is the operator's word)."""
    return f"nats:{source}"
