"""One PostgreSQL role per service on the real server: `cso.roles.provision` in a fresh database,
each service's migrations run as its role, the four services doing their work under their roles
(a filing recorded by registry and counted by targets), and the refusals: a role outside its
schema gets SQLSTATE 42501, cannot create or drop there, is no superuser; the dashboard role
only reads the tables the dashboards query. Also: a schema an admin migrated before is handed
over, passwords reach the server as SCRAM verifiers, and `cso db roles` prints no password."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from datetime import date
from typing import Any

import asyncpg
import nats
import pytest
from typer.testing import CliRunner

from contracts import events as ev
from contracts import make_event
from cso import roles
from cso.database import make_engine
from cso.outbox import count_pending
from cso.settings import Settings
from cso_local.cli import app as cli
from services.notify import app as notify
from services.registry import app as registry
from services.targets import app as targets
from services.targets.rebuild import rebuild
from services.training import app as training
from services.training.domain import id_check_character
from tests.support import GUANGHAN, eventually, publish, publish_divisions, running
from tests.support.grafana import SEED, dashboards, panel, panels, substitute

pytestmark = pytest.mark.integration

APPS = {"registry": registry, "targets": targets, "training": training, "notify": notify}
COMMUNITY = "510681001014"  # 西城社区, 雒城街道, 广汉市 (tests.support.GUANGHAN)
PRIVILEGE = "42501"  # insufficient_privilege
READ_ONLY = "25006"  # read_only_sql_transaction


@dataclass
class Provisioned:
    admin_url: str
    prefix: str
    urls: dict[str, str]  # service (or "dashboard") -> its role's URL, password included
    report: roles.Report

    def role(self, service: str) -> str:
        return roles.role_name(service, self.prefix)

    def settings(self, base: Settings, service: str) -> Settings:
        return replace(base, database_url=self.urls[service])


async def connect(url: str) -> asyncpg.Connection:
    return await asyncpg.connect(roles.admin_dsn(url))


async def drop_roles(admin_url: str, prefix: str) -> None:
    """Everything the test's roles own or were granted in the test database, then the roles."""
    names = [roles.role_name(s, prefix) for s in (*roles.SERVICES, roles.DASHBOARD)]
    db = await connect(admin_url)
    try:
        names += [r["rolname"] for r in await db.fetch("SELECT rolname FROM pg_roles WHERE starts_with(rolname, $1)",
                                                       f"{prefix}_{roles.DASHBOARD}_")]
        await db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = ANY($1)", names)
        existing = [r["rolname"] for r in await db.fetch("SELECT rolname FROM pg_roles WHERE rolname = ANY($1)",
                                                         names)]
        for name in existing:
            await db.execute(f'DROP OWNED BY "{name}" CASCADE')
            await db.execute(f'DROP ROLE "{name}"')
    finally:
        await db.close()


@pytest.fixture
async def admin(database_url: str) -> AsyncIterator[tuple[str, str]]:
    """(admin URL of a fresh database, a role prefix of this test only); the roles go afterwards."""
    db = await connect(database_url)
    try:
        if not await db.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"):
            pytest.skip("provisioning roles needs a superuser URL (CSO_DATABASE_URL is not one)")
    finally:
        await db.close()
    prefix = f"t{uuid.uuid4().hex[:8]}"
    yield database_url, prefix
    await drop_roles(database_url, prefix)


@pytest.fixture
async def provisioned(admin: tuple[str, str]) -> Provisioned:
    admin_url, prefix = admin
    passwords = {s: secrets.token_hex(16) for s in (*roles.SERVICES, roles.DASHBOARD)}
    report = await roles.provision(admin_url, passwords, prefix=prefix)
    assert report.problems == []
    urls = {s: roles.role_url(admin_url, roles.role_name(s, prefix), p) for s, p in passwords.items()}
    return Provisioned(admin_url, prefix, urls, report)


async def migrate_as_roles(p: Provisioned, base: Settings) -> None:
    for service, module in APPS.items():
        await asyncio.to_thread(module.run_migrations, p.settings(base, service))


async def sqlstate(url: str, *statements: str) -> str | None:
    """The SQLSTATE the last statement fails with (earlier ones must pass), or None."""
    db = await connect(url)
    try:
        for statement in statements[:-1]:
            await db.execute(statement)
        try:
            await db.execute(statements[-1])
        except asyncpg.PostgresError as e:
            return str(e.sqlstate)
        return None
    finally:
        await db.close()


async def value(url: str, sql: str, *args: Any) -> Any:
    db = await connect(url)
    try:
        return await db.fetchval(sql, *args)
    finally:
        await db.close()


async def owners(url: str, schema: str) -> dict[str, str]:
    db = await connect(url)
    try:
        rows = await db.fetch(
            "SELECT c.relname, pg_get_userbyid(c.relowner) AS owner FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 "
            "AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'i')", schema)
        return {r["relname"]: r["owner"] for r in rows}
    finally:
        await db.close()


# --- the model --------------------------------------------------------------------------------

def test_schemas_are_the_services_own() -> None:
    from services.notify import store as notify_store
    from services.registry import store as registry_store
    from services.targets import store as targets_store
    from services.training import store as training_store

    assert roles.SCHEMAS == {"registry": registry_store.SCHEMA, "targets": targets_store.SCHEMA,
                             "training": training_store.SCHEMA, "notify": notify_store.SCHEMA}


def test_dashboard_tables_are_what_the_dashboards_read() -> None:
    read: set[str] = set()
    for dashboard in dashboards().values():
        queries = [t["rawSql"] for p in panels(dashboard) for t in p["targets"] if "rawSql" in t]
        queries += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
        for sql in queries:
            read.update(re.findall(r"\btargets\.(\w+)", sql))
    assert read == set(roles.DASHBOARD_TABLES)


async def test_provision_makes_least_privilege_roles_and_is_idempotent(provisioned: Provisioned) -> None:
    p = provisioned
    db = await connect(p.admin_url)
    try:
        for service in (*roles.SERVICES, roles.DASHBOARD):
            row = await db.fetchrow("SELECT * FROM pg_roles WHERE rolname = $1", p.role(service))
            assert row["rolcanlogin"], service
            assert not any(row[a] for a in ("rolsuper", "rolcreatedb", "rolcreaterole", "rolreplication",
                                            "rolbypassrls")), service
            assert await db.fetchval("SELECT has_database_privilege($1, current_database(), 'CONNECT')",
                                     p.role(service))
        for service, schema in roles.SCHEMAS.items():
            assert await db.fetchval("SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = $1",
                                     schema) == p.role(service)
        for privilege in ("CONNECT", "TEMPORARY", "CREATE"):
            assert not await db.fetchval("SELECT has_database_privilege('public', current_database(), $1)",
                                         privilege), privilege
        assert not await db.fetchval("SELECT has_schema_privilege('public', 'public', 'CREATE')")
        settings = await db.fetch("SELECT unnest(setconfig) AS s FROM pg_db_role_setting "
                                  "WHERE setrole = (SELECT oid FROM pg_roles WHERE rolname = $1)",
                                  p.role(roles.DASHBOARD))
        assert "default_transaction_read_only=on" in {r["s"] for r in settings}
        assert await roles.audit(db, p.prefix) == []
    finally:
        await db.close()
    again = await roles.provision(p.admin_url, prefix=p.prefix)
    assert again.actions == [f"{p.role(roles.DASHBOARD)}: SELECT on targets.coverage_now, division, "
                             "target_instance, target_history will be granted by targets' migrations, "
                             "which create them"]
    assert again.problems == []


async def test_another_prefix_does_not_take_the_schemas_over(provisioned: Provisioned) -> None:
    other = f"{provisioned.prefix}x"
    with pytest.raises(roles.ProvisionError, match=f"belongs to {provisioned.role('registry')}"):
        await roles.provision(provisioned.admin_url, prefix=other)
    assert await value(provisioned.admin_url, "SELECT count(*) FROM pg_roles WHERE rolname LIKE $1",
                       f"{other}\\_%") == 0  # one transaction: nothing of it stayed


# --- migrations and the services under their roles ------------------------------------------

async def test_migrations_run_as_each_owner(provisioned: Provisioned, settings: Settings) -> None:
    p = provisioned
    # registry and training migrated by the admin (`cso migrate` with a superuser URL), targets and
    # notify by their own roles: either way every object belongs to the service's role.
    for service in ("registry", "training"):
        await asyncio.to_thread(APPS[service].run_migrations, replace(settings, database_url=p.admin_url))
    for service in ("targets", "notify"):
        await asyncio.to_thread(APPS[service].run_migrations, p.settings(settings, service))
    # Again, each as its role: at head already, and the schema is not created twice (a role may not
    # CREATE SCHEMA, even IF NOT EXISTS).
    await migrate_as_roles(p, settings)
    for service, schema in roles.SCHEMAS.items():
        found = await owners(p.admin_url, schema)
        assert {"alembic_version", "outbox", "outbox_seq_seq", "inbox", "consumer_position",
                "bus_stream", "outbox_relay", "outbox_stream"} <= set(found), schema
        assert set(found.values()) == {p.role(service)}, (schema, found)
        assert await value(p.urls[service], f"SELECT version_num FROM {schema}.alembic_version")
    db = await connect(p.admin_url)
    try:
        assert await roles.audit(db, p.prefix) == []
        # targets' migrations granted the dashboard what it reads, and nothing else.
        grants = await db.fetch("SELECT c.relname, a.privilege_type FROM pg_class c, aclexplode(c.relacl) a "
                                "WHERE a.grantee = (SELECT oid FROM pg_roles WHERE rolname = $1)",
                                p.role(roles.DASHBOARD))
        assert {(g["relname"], g["privilege_type"]) for g in grants} == {
            (t, "SELECT") for t in roles.DASHBOARD_TABLES}
    finally:
        await db.close()


async def test_services_do_their_work_under_their_roles(
        provisioned: Provisioned, settings: Settings, nc: nats.NATS, caplog: pytest.LogCaptureFixture) -> None:
    p = provisioned
    await migrate_as_roles(p, settings)
    caplog.set_level(logging.WARNING)
    async with AsyncExitStack() as stack:
        clients = {}
        for service, module in APPS.items():
            _, clients[service] = await stack.enter_async_context(
                running(module.create_app, p.settings(settings, service)))
        for service, client in clients.items():
            assert (await client.get("/readyz")).json() == {"status": "ok", "database": "ok", "nats": "ok",
                                                               "auth": "off", "streams": "ok"}, service
        # Every service's sessions are its role's.
        users = await value(p.admin_url, "SELECT array_agg(DISTINCT usename::text) FROM pg_stat_activity "
                                         "WHERE datname = current_database() AND usename <> current_user")
        assert set(users) == {p.role(s) for s in roles.SERVICES}

        await publish_divisions(nc, settings.topology)
        for sql, n in (("SELECT count(*) FROM registry.township", 3), ("SELECT count(*) FROM training.township", 3),
                       ("SELECT count(*) FROM targets.division WHERE tier = 'township'", 3),
                       ("SELECT count(*) FROM notify.division WHERE length(code) = 9", 3)):
            await eventually(lambda sql=sql, n=n: _is(value(p.admin_url, sql), n), timeout=30)

        # A filing from an outside system: recorded by registry (inbox, record, outbox, relay), counted
        # by targets (consumer, advisory locks, projection), seen by training and notify.
        filed = make_event(ev.OrganizationFiled(name="西城社区书画协会", community_code=COMMUNITY,
                                                category=ev.Category.CULTURE_SPORTS, filed_on=date(2024, 3, 1)),
                           source="city-register")
        await publish(nc, settings.topology.intake_subject(filed.source, "OrganizationFiled", COMMUNITY), filed)

        async def counted() -> bool:
            response = await clients["targets"].get(f"/coverage/{GUANGHAN.county.code}")
            return response.status_code == 200 and response.json()["counters"].get("orgs") == 1

        await eventually(counted, timeout=30)
        await eventually(lambda: _is(value(
            p.admin_url, "SELECT count(*) FROM training.inbox WHERE event_id = $1", filed.event_id), 1),
            timeout=30)
        # notify, with no subscription naming it, takes the filing off the bus unparsed (its screen,
        # services/notify/handlers.Screened): acknowledged, nothing written.
        js = nc.jetstream()

        async def notify_took_it() -> bool:
            info = await js.consumer_info(settings.topology.stream("CSO_REGISTRY"), "notify-registry")
            return bool(info.delivered.stream_seq >= 1 and info.num_pending == 0 and info.num_ack_pending == 0)

        await eventually(notify_took_it, timeout=30)
        assert await value(p.admin_url, "SELECT count(*) FROM notify.inbox WHERE event_id = $1", filed.event_id) == 0
        assert await value(p.admin_url, "SELECT count(*) FROM registry.organization") == 1
        assert await value(p.admin_url, count_pending('registry')) == 0
        # `cso rebuild --apply` as targets' role: its fact log read, its projection tables locked and swapped.
        engine = make_engine(p.urls["targets"])
        try:
            rebuilt = await rebuild(engine, apply=True)
        finally:
            await engine.dispose()
        assert rebuilt.facts >= 1 and rebuilt.equal

        # Writes of training and notify through their APIs.
        id_number = "51068119850312123" + id_check_character("51068119850312123")
        reply = await nc.request(settings.topology.command_subject("training", "add_member"), json.dumps({
            "county_code": GUANGHAN.county.code, "role": "cso_leader", "name": "张丽华",
            "id_number": id_number, "phone": "13808380123"}).encode(), timeout=10)
        assert json.loads(reply.data)["ok"], reply.data
        made = await clients["notify"].post("/subscriptions", json={
            "recipient": "guanghan.mzj", "region": GUANGHAN.county.code, "channels": {"inbox": True}})
        assert made.status_code == 201, made.text
        await asyncio.sleep(1)  # background loops (relays, bus watch, notify's sender) take a turn
    refused = [r.getMessage() for r in caplog.records
               if "permission denied" in r.getMessage() or "InsufficientPrivilege" in r.getMessage()
               or (r.exc_info and isinstance(r.exc_info[1], Exception)
                   and "permission denied" in str(r.exc_info[1]))]
    assert refused == []


async def _is(awaitable: Awaitable[Any], expected: Any) -> bool:
    return bool(await awaitable == expected)


# --- the refusals -----------------------------------------------------------------------------

def _pairs() -> Iterator[tuple[str, str]]:
    for service in roles.SERVICES:
        for other in roles.SERVICES:
            if other != service:
                yield service, other


async def test_a_role_is_refused_outside_its_schema(provisioned: Provisioned, settings: Settings) -> None:
    p = provisioned
    await migrate_as_roles(p, settings)
    targets_url = p.urls["targets"]
    # The example of the issue: targets may not read registry's organizations.
    db = await connect(targets_url)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError) as refused:
            await db.fetch("SELECT * FROM registry.organization")
        assert refused.value.sqlstate == PRIVILEGE
        assert await db.fetchval("SELECT count(*) FROM targets.division") == 0  # its own: fine
        async with db.transaction():
            await db.execute("SELECT pg_advisory_xact_lock(42)")
    finally:
        await db.close()
    for service, other in _pairs():
        url = p.urls[service]
        for statement in (f"SELECT * FROM {other}.outbox", f"INSERT INTO {other}.inbox VALUES "
                          "(gen_random_uuid(), 's', 1)", f"DELETE FROM {other}.outbox",
                          f"CREATE TABLE {other}.intruder (i int)", f"DROP TABLE {other}.outbox",
                          f"ALTER TABLE {other}.outbox ADD COLUMN x int", f"TRUNCATE {other}.inbox",
                          f"SET ROLE {p.role(other)}"):
            assert await sqlstate(url, statement) == PRIVILEGE, (service, statement)
    off = "SET default_transaction_read_only = off"  # the dashboard's sessions are read-only by default
    for service in (*roles.SERVICES, roles.DASHBOARD):
        url = p.urls[service]
        for statement in ("CREATE SCHEMA intruder", "CREATE TABLE public.intruder (i int)",
                          "CREATE TEMPORARY TABLE scratch (i int)", "ALTER ROLE CURRENT_USER CREATEDB",
                          f"CREATE DATABASE {p.prefix}_{service}", "SELECT pg_read_file('PG_VERSION')"):
            assert await sqlstate(url, off, statement) == PRIVILEGE, (service, statement)
        assert await value(url, "SELECT rolsuper OR rolcreatedb OR rolcreaterole FROM pg_roles "
                                "WHERE rolname = current_user") is False
        assert await value(url, "SELECT count(*) FROM pg_auth_members WHERE member = "
                                "(SELECT oid FROM pg_roles WHERE rolname = current_user)") == 0
    # Its own schema: everything, including DDL (the migrations need it).
    assert await sqlstate(p.urls["registry"], "CREATE TABLE registry.scratch (i int)",
                          "DROP TABLE registry.scratch") is None


async def test_the_dashboard_role_only_reads_the_dashboard_tables(
        provisioned: Provisioned, settings: Settings) -> None:
    p = provisioned
    await migrate_as_roles(p, settings)
    # Every upgrade provisions again: with the tables there, nothing changes and nothing departs.
    again = await roles.provision(p.admin_url, prefix=p.prefix)
    assert (again.actions, again.problems) == ([], [])
    owner = await connect(p.urls["targets"])
    try:
        await owner.execute(SEED)
    finally:
        await owner.close()
    url = p.urls[roles.DASHBOARD]
    db = await connect(url)
    try:
        queries = [sql for dashboard in dashboards().values() for sql in
                   [t["rawSql"] for q in panels(dashboard) for t in q["targets"] if "rawSql" in t]
                   + [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]]
        assert len(queries) > 10
        for sql in queries:
            for region in ("51", "5111", "511102"):
                await db.fetch(substitute(sql, region=region, scope=region[:2]))
        assert await db.fetchval("SELECT count(*) FROM targets.target_instance") == 3
    finally:
        await db.close()
    for table in ("outbox", "inbox", "fact", "entity", "coverage", "target"):
        assert await sqlstate(url, f"SELECT * FROM targets.{table}") == PRIVILEGE, table
    for schema in ("registry", "training", "notify"):
        assert await sqlstate(url, f"SELECT * FROM {schema}.outbox") == PRIVILEGE, schema
    # Read-only transactions by default; and without them (a session may turn that off) still no
    # right to write.
    write = "INSERT INTO targets.coverage_now (region, counter, value) VALUES ('51', 'orgs', 1)"
    assert await sqlstate(url, write) == READ_ONLY
    off = "SET default_transaction_read_only = off"
    for statement in (write, "UPDATE targets.target_instance SET value = 0", "DELETE FROM targets.division",
                      "TRUNCATE targets.target_history", "CREATE TABLE targets.intruder (i int)",
                      "DROP TABLE targets.division"):
        assert await sqlstate(url, off, statement) == PRIVILEGE, statement


# Regions outside 乐山市 (5111, SEED's city): what a 5111-scoped role must not see.
OUTSIDE = """
INSERT INTO targets.division (code, name, tier, kind, parent_code, edition) VALUES
  ('5106', '德阳市', 'city', NULL, '51', 't'), ('510681', '广汉市', 'county', NULL, '5106', 't'),
  ('44', '广东省', 'province', NULL, NULL, 't');
INSERT INTO targets.coverage_now (region, counter, value) VALUES ('5106', 'orgs', 7), ('510681', 'orgs', 7),
  ('51', 'orgs', 37);
INSERT INTO targets.target_instance
  (id, target_id, region, figure, threshold, deadline, instance, status, value, evaluated_at) VALUES
  ('o1', 'urban-12', '510681', 'avg_orgs_per_urban_community', 12, current_date + 30, '{}', 'at_risk', 3, now());
INSERT INTO targets.target_history (instance_id, status, previous_status, value, changed_at, on_day) VALUES
  ('o1', 'at_risk', NULL, 3, now() - interval '1 day', current_date - 1);
"""
REGION_OF = {"coverage_now": "region", "division": "code", "target_instance": "region",
             "target_history": "(SELECT region FROM targets.target_instance i WHERE i.id = instance_id)"}


async def test_a_scoped_dashboard_role_reads_only_its_region(provisioned: Provisioned, settings: Settings) -> None:
    """`cso db roles --dashboard-scope 5111` before the migrations (their tables get row security
    as they are created): the 5111 role reads, of every dashboard table, only rows under 5111 (and
    of the divisions the ancestor 51); the 511102 role only 511102's; the national role and
    targets itself everything; and a later run without the flag keeps the scoped roles as they are."""
    p = provisioned
    passwords = {roles.scoped(s): secrets.token_hex(16) for s in ("5111", "511102")}
    report = await roles.provision(p.admin_url, passwords, prefix=p.prefix, scopes=["5111", "511102"])
    assert report.problems == []
    assert {p.role(roles.scoped("5111")), p.role(roles.scoped("511102"))} <= set(report.roles.values())
    await migrate_as_roles(p, settings)
    again = await roles.provision(p.admin_url, prefix=p.prefix)
    assert (again.actions, again.problems) == ([], [])
    assert p.role(roles.scoped("5111")) in again.roles.values()
    owner = await connect(p.urls["targets"])
    try:
        await owner.execute(SEED + OUTSIDE)
    finally:
        await owner.close()
    urls = {scope: roles.role_url(p.admin_url, p.role(roles.scoped(scope)), password)
            for scope, password in ((s.removeprefix("dashboard_"), pw) for s, pw in passwords.items())}

    async def regions(url: str, table: str) -> list[str]:
        db = await connect(url)
        try:
            return sorted(r[0] for r in await db.fetch(f"SELECT {REGION_OF[table]} FROM targets.{table}"))
        finally:
            await db.close()

    for table in roles.DASHBOARD_TABLES:
        everything = await regions(p.admin_url, table)
        assert any(not r.startswith("5111") for r in everything), table
        # targets (the tables' owner) and the national dashboard role: every row.
        assert await regions(p.urls["targets"], table) == everything, table
        assert await regions(p.urls[roles.DASHBOARD], table) == everything, table
        for scope, url in urls.items():
            ancestors = [r for r in everything if scope.startswith(r) and r != scope] if table == "division" else []
            expected = sorted([r for r in everything if r.startswith(scope)] + ancestors)
            assert expected and await regions(url, table) == expected, (scope, table)
    # The dashboards' own queries under the 5111 role: counts of 5111 and below only, even asked at 51.
    d = dashboards()["cso-targets-at-risk.json"]
    db = await connect(urls["5111"])
    try:
        (counts,) = await db.fetch(substitute(panel(d, "有风险 / 未完成")["targets"][0]["rawSql"], scope=""))
        assert dict(counts) == {"at_risk": 1, "missed": 1}  # 510681's at_risk is not counted
        assert await db.fetchval("SELECT sum(value) FROM targets.coverage_now WHERE region = '51'") is None
    finally:
        await db.close()
    # Still read-only: row security does not widen anything.
    assert await sqlstate(urls["5111"], "SET default_transaction_read_only = off",
                          "DELETE FROM targets.division") == PRIVILEGE


def test_scoped_dashboard_names_and_policies() -> None:
    assert roles.role_name(roles.scoped("5111"), "cso") == "cso_dashboard_5111"
    for bad in ("5", "511", "51a1", "5111'--", ""):
        with pytest.raises(roles.ProvisionError):
            roles.scoped(bad)
    assert roles.reader_scope("cso_dashboard") == "" and roles.reader_scope("cso_dashboard_5111") == "5111"
    assert roles.reader_scope("cso_targets") is None and roles.reader_scope("cso_dashboard_511") is None
    assert roles.policy_filter("targets", "coverage_now", "5111") == "region LIKE '5111%'"
    assert roles.policy_filter("targets", "target_instance", "") == "true"


# --- an existing installation ----------------------------------------------------------------

async def test_provision_takes_over_schemas_an_admin_migrated(admin: tuple[str, str], settings: Settings) -> None:
    admin_url, prefix = admin
    # Before: every schema migrated as the superuser, Grafana's old reader with SELECT on all of
    # targets (and on tables to come), and PUBLIC allowed to read a registry table.
    for module in APPS.values():
        await asyncio.to_thread(module.run_migrations, replace(settings, database_url=admin_url))
    legacy = f"{prefix}_legacy"
    db = await connect(admin_url)
    try:
        await db.execute(f"""
            CREATE ROLE {legacy} LOGIN;
            GRANT USAGE ON SCHEMA targets TO {legacy};
            GRANT SELECT ON ALL TABLES IN SCHEMA targets TO {legacy};
            ALTER DEFAULT PRIVILEGES IN SCHEMA targets GRANT SELECT ON TABLES TO {legacy};
            GRANT SELECT (name) ON registry.organization TO PUBLIC;
            CREATE VIEW registry.names AS SELECT name FROM registry.organization;
            CREATE TYPE training.level AS ENUM ('a', 'b');
        """)
    finally:
        await db.close()
    try:
        passwords = {s: secrets.token_hex(16) for s in roles.SERVICES}
        report = await roles.provision(admin_url, passwords, prefix=prefix)
        assert report.problems == []
        assert f"schema registry: owner {await value(admin_url, 'SELECT current_user')} -> {prefix}_registry" \
            in report.actions
        assert f"registry.names: owner -> {prefix}_registry" in report.actions
        assert f"training.level: owner -> {prefix}_training" in report.actions
        assert f"targets.coverage_now: {legacy} lost SELECT" in report.actions
        assert f"schema targets: {legacy} lost USAGE" in report.actions
        assert "registry.organization (name): PUBLIC lost SELECT" in report.actions
        for service, schema in roles.SCHEMAS.items():
            assert set((await owners(admin_url, schema)).values()) == {roles.role_name(service, prefix)}
        legacy_url = roles.role_url(admin_url, legacy)
        with pytest.raises(asyncpg.InsufficientPrivilegeError):  # PUBLIC may no longer connect
            await connect(legacy_url)
        await value(admin_url, f"GRANT CONNECT ON DATABASE {await value(admin_url, 'SELECT current_database()')} "
                               f"TO {legacy}")
        assert await sqlstate(legacy_url, "SELECT * FROM targets.coverage_now") == PRIVILEGE
        assert await sqlstate(legacy_url, "SELECT name FROM registry.organization") == PRIVILEGE
        assert await value(admin_url, "SELECT count(*) FROM pg_default_acl d JOIN pg_namespace n "
                                      "ON n.oid = d.defaclnamespace WHERE n.nspname = 'targets'") == 0
        # The services carry on as their roles: migrations (at head) and writes, sequences included.
        for service, module in APPS.items():
            url = roles.role_url(admin_url, roles.role_name(service, prefix), passwords[service])
            await asyncio.to_thread(module.run_migrations, replace(settings, database_url=url))
            assert await sqlstate(url, f"INSERT INTO {service}.outbox (event_id, subject, type, data) "
                                       "VALUES (gen_random_uuid(), 's', 't', '')") is None
    finally:
        db = await connect(admin_url)
        try:
            await db.execute(f"DROP OWNED BY {legacy}; DROP ROLE {legacy}")
        finally:
            await db.close()


# --- passwords --------------------------------------------------------------------------------

def _verifier_parts(stored: str) -> tuple[int, bytes]:
    import base64

    match = re.fullmatch(r"SCRAM-SHA-256\$(\d+):([^$]+)\$[^:]+:.+", stored)
    assert match, "not a SCRAM-SHA-256 verifier"
    return int(match[1]), base64.b64decode(match[2])


async def test_passwords_are_scram_verifiers_postgresql_accepts(provisioned: Provisioned) -> None:
    p = provisioned
    role = p.role("notify")
    db = await connect(p.admin_url)
    try:
        # What provision stored is the verifier of the password in notify's URL...
        stored = await db.fetchval("SELECT rolpassword FROM pg_authid WHERE rolname = $1", role)
        iterations, salt = _verifier_parts(stored)
        password = roles.url_password(p.urls["notify"])[1]
        assert password is not None and password not in stored
        assert roles.scram_verifier(password, salt, iterations) == stored
        # ...computed exactly as PostgreSQL computes it from the plain password.
        await db.execute("SET password_encryption = 'scram-sha-256'")
        await db.execute(f"ALTER ROLE {role} PASSWORD 'Tr0ub4dor&3 with spaces'")
        stored = await db.fetchval("SELECT rolpassword FROM pg_authid WHERE rolname = $1", role)
        iterations, salt = _verifier_parts(stored)
        assert roles.scram_verifier("Tr0ub4dor&3 with spaces", salt, iterations) == stored
    finally:
        await db.close()
    with pytest.raises(roles.ProvisionError):
        roles.scram_verifier("pässword")


def test_cli_provisions_from_the_environment_and_prints_no_password(admin: tuple[str, str]) -> None:
    admin_url, prefix = admin
    runner = CliRunner()
    password = secrets.token_hex(16)
    targets_url = roles.role_url(admin_url, f"{prefix}_targets", password)
    env = {"CSO_ADMIN_DATABASE_URL": admin_url, "CSO_TARGETS_DATABASE_URL": targets_url, "COLUMNS": "200"}
    wrong = runner.invoke(cli, ["db", "roles", "--prefix", prefix],
                          env={**env, "CSO_TARGETS_DATABASE_URL": roles.role_url(admin_url, "cso", password)})
    assert wrong.exit_code == 2 and f"not as {prefix}_targets" in wrong.output, wrong.output
    result = runner.invoke(cli, ["db", "roles", "--prefix", prefix],
                           env={**env, "CSO_DASHBOARD_DB_PASSWORD": "dashboard-secret-1"})
    assert result.exit_code == 0, result.output
    assert f"role {prefix}_targets: password set" in result.output
    assert f"created schema targets owned by {prefix}_targets" in result.output
    assert password not in result.output and "dashboard-secret-1" not in result.output
    stored = asyncio.run(value(admin_url, "SELECT rolpassword FROM pg_authid WHERE rolname = $1", f"{prefix}_targets"))
    assert roles.scram_verifier(password, *reversed(_verifier_parts(stored))) == stored
    again = runner.invoke(cli, ["db", "roles", "--prefix", prefix], env={"CSO_ADMIN_DATABASE_URL": admin_url})
    assert again.exit_code == 0 and "password set" not in again.output, again.output
    # A region's dashboard role, its password from CSO_DASHBOARD_<code>_DB_PASSWORD.
    scoped = runner.invoke(cli, ["db", "roles", "--prefix", prefix, "--dashboard-scope", "5111"],
                           env={"CSO_ADMIN_DATABASE_URL": admin_url, "CSO_DASHBOARD_5111_DB_PASSWORD": "leshan-1",
                                "COLUMNS": "200"})
    assert scoped.exit_code == 0, scoped.output
    assert f"role {prefix}_dashboard_5111: password set" in scoped.output and "leshan-1" not in scoped.output
    bad = runner.invoke(cli, ["db", "roles", "--prefix", prefix, "--dashboard-scope", "511"],
                        env={"CSO_ADMIN_DATABASE_URL": admin_url})
    assert bad.exit_code == 2 and "dashboard scope '511'" in bad.output, bad.output
