"""Set-based writes written from the Table (cso/bulk.py) and registry's settings on the shared ones."""

from __future__ import annotations

import pytest
from sqlalchemy import BigInteger, Column, Date, MetaData, Table, Text, Uuid
from sqlalchemy.dialects.postgresql import CHAR

from cso import bulk
from cso.settings import Settings
from services.registry import store
from services.registry.settings import RegistrySettings

T = Table("t", MetaData(schema="s"), Column("id", Uuid, primary_key=True), Column("code", CHAR(12)),
          Column("name", Text), Column("on", Date), Column("n", BigInteger))


def test_arrays_take_the_columns_types_and_strings_travel_as_text() -> None:
    # char(12)[] would cut a longer value silently; text[] leaves the insert into char(12) to refuse it.
    assert [bulk.array_type(T, c) for c in ("id", "code", "name", "on", "n")] == \
        ["UUID[]", "text[]", "text[]", "DATE[]", "BIGINT[]"]
    assert bulk.unnest(T, ["id", "code"]) == "unnest(CAST(:id AS UUID[]), CAST(:code AS text[]))"
    assert bulk.unnest(T, ["n", "on"], as_text={"n"}) == "unnest(CAST(:n AS text[]), CAST(:on AS DATE[]))"
    assert bulk.arrays([{"id": 1, "code": "a"}, {"id": 2, "code": "b"}], ["id", "code"]) == \
        {"id": [1, 2], "code": ["a", "b"]}


def test_registry_organization_upsert_is_written_from_its_table() -> None:
    # Every column the organization record saves has its type in the table: none is typed by hand.
    columns = [*store._ORG_COLUMNS, "updated_by", "last_event_id"]
    assert {c: bulk.array_type(store.organization, c) for c in ("id", "filed_on", "brand", "brand_projects",
                                                                "last_event_id", "community_code")} == {
        "id": "UUID[]", "filed_on": "DATE[]", "brand": "BOOLEAN[]", "brand_projects": "INTEGER[]",
        "last_event_id": "UUID[]", "community_code": "text[]"}
    assert set(columns) <= set(store.organization.c.keys())


def test_registry_settings_keep_the_shared_ones_and_read_their_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CSO_WAITING_MAX_DAYS", "3")
    shared = Settings(database_url="postgresql://x@h/db", batch_size=7, auth="off")
    own = RegistrySettings.of(shared)
    assert (own.database_url, own.batch_size, own.auth) == ("postgresql://x@h/db", 7, "off")
    assert (own.waiting_max_days, own.waiting_sweep_seconds) == (3.0, 60.0)
    given = RegistrySettings(waiting_sweep_seconds=0.3)
    assert RegistrySettings.of(given) is given
    assert "waiting_max_days" not in {f for f in Settings.__dataclass_fields__}  # registry's own, not shared
