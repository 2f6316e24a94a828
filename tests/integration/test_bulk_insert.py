"""cso.bulk.insert on a real PostgreSQL: what registry's intervals, audit and refusals and notify's
deliveries and digest items rely on, in one place: the count inserted, ON CONFLICT as given, the
rows in the order given (a serial follows them, the first of a key stands), JSON text as jsonb."""

from __future__ import annotations

import json
import uuid

import pytest
from sqlalchemy import BigInteger, Column, MetaData, Table, Text, Uuid, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import IntegrityError

from cso import bulk
from cso.database import make_engine

pytestmark = pytest.mark.integration

# Like registry's audit and intake_refusal: a serial, a key of its own, a jsonb column.
NOTE = Table("note", MetaData(schema="public"), Column("seq", BigInteger, primary_key=True),
             Column("event_id", Uuid, nullable=False, unique=True), Column("reason", Text, nullable=False),
             Column("changes", JSONB, nullable=False))


@pytest.mark.parametrize("in_order", [True, False])
async def test_insert_counts_keeps_the_order_and_casts_json(database_url: str, in_order: bool) -> None:
    engine = make_engine(database_url)
    first, second, third = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    rows = [{"event_id": third, "reason": "a", "changes": json.dumps({"n": 1})},
            {"event_id": first, "reason": "b", "changes": json.dumps({"n": [2]})},
            {"event_id": third, "reason": "c", "changes": "{}"},
            {"event_id": second, "reason": "d", "changes": "null"}]
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE note (seq bigserial PRIMARY KEY, event_id uuid NOT NULL UNIQUE, "
                                    "reason text NOT NULL, changes jsonb NOT NULL)"))
            assert await bulk.insert(conn, NOTE, [], on_conflict="DO NOTHING") == 0
            assert await bulk.insert(conn, NOTE, rows, on_conflict="(event_id) DO NOTHING", in_order=in_order) == 3
            kept = (await conn.execute(text(
                "SELECT event_id, reason, changes, jsonb_typeof(changes) FROM note ORDER BY seq"))).all()
        if in_order:
            # The serial follows the rows, and of two rows of one key the first stands.
            assert [(r[0], r[1]) for r in kept] == [(third, "a"), (first, "b"), (second, "d")]
        else:
            assert sorted(r[1] for r in kept) in (["a", "b", "d"], ["b", "c", "d"])
        # JSON text went in as jsonb values, not as JSON strings.
        parsed = {"a": ({"n": 1}, "object"), "b": ({"n": [2]}, "object"), "c": ({}, "object"), "d": (None, "null")}
        assert all((r[2], r[3]) == parsed[r[1]] for r in kept), kept
        # Without ON CONFLICT a key there already is an error, as an INSERT row by row.
        with pytest.raises(IntegrityError):
            async with engine.begin() as conn:
                await bulk.insert(conn, NOTE, rows[:1])
    finally:
        await engine.dispose()
