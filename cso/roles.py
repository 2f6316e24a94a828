"""PostgreSQL roles: one login role per service that owns that service's schema and nothing else,
and a read-only role for the Grafana dashboards.

`provision(admin_url, passwords)` (the CLI: `cso db roles`) brings a database to this model and
can run again at any time (every install and upgrade runs it before the migrations):

- `<prefix>_<service>` for registry, targets, training and notify: LOGIN; no SUPERUSER, CREATEDB,
  CREATEROLE, REPLICATION or BYPASSRLS; member of no role; CONNECT on the database.
- schema `<service>` owned by that role, with every table, view, sequence, type and function in it
  (a schema created by another user, as migrations run by an admin did before, is handed over).
- no other role holds any privilege in a service schema, except `<prefix>_dashboard`: USAGE on
  `targets` and SELECT on the tables the dashboards read (`DASHBOARD_TABLES`), in read-only
  transactions.
- PUBLIC keeps no privilege on the database (CONNECT, TEMPORARY) nor CREATE on schema `public`.
- per region scope asked for (`cso db roles --dashboard-scope 5111`), `<prefix>_dashboard_<scope>`:
  the dashboard role's rights, and on the dashboard tables row-level security lets it read only
  rows under its scope (`region LIKE '5111%'`; of the divisions, also the scope's ancestors, for
  the path and the region chain's upper steps). RLS is enabled (not forced) on those tables: their
  owner, targets, reads and writes them as before; `<prefix>_dashboard` has a policy that lets it
  read every row; any other reader has none, so it reads nothing (fails closed). Scoped roles that
  exist are kept on every later run (found by name).

Migrations run as the schema's owner (`cso.database.run_env` switches to it when an admin
connects), and targets' migrations grant the dashboard SELECT on the dashboard tables they create.
Statements are built with PostgreSQL's own quoting (`format('%I')`, `regclass`); passwords are
sent as SCRAM-SHA-256 verifiers computed here, so no plaintext password reaches the server's
statement log, and none is ever in a report.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

# service -> its schema (each service's store.SCHEMA; tests/integration/test_pg_roles.py checks).
SCHEMAS: dict[str, str] = {"registry": "registry", "targets": "targets", "training": "training",
                           "notify": "notify"}
SERVICES: tuple[str, ...] = tuple(SCHEMAS)
DASHBOARD = "dashboard"
# What the Grafana dashboards (infra/grafana) query: SELECT on these only.
DASHBOARD_SCHEMA = "targets"
DASHBOARD_TABLES: tuple[str, ...] = ("coverage_now", "division", "target_instance", "target_history")
DEFAULT_PREFIX = "cso"
# A region scope: a province, city, county, township or community code.
SCOPE = re.compile(r"[0-9]{2}(?:[0-9]{2}(?:[0-9]{2}(?:[0-9]{3}(?:[0-9]{3})?)?)?)?")
# The column of each dashboard table that names its region (target_history has none of its own).
_REGION_COLUMN = {"coverage_now": "region", "division": "code", "target_instance": "region"}
SCRAM_ITERATIONS = 4096  # PostgreSQL's default scram_iterations

_NAME = re.compile(r"[a-z_][a-z0-9_]{0,40}")
_ATTRIBUTES = ("rolsuper", "rolcreatedb", "rolcreaterole", "rolreplication", "rolbypassrls")


class ProvisionError(RuntimeError):
    """The roles cannot be provisioned as asked (a bad prefix or password, missing rights)."""


def scoped(scope: str) -> str:
    """The service name of the dashboard role of one region scope: `dashboard_5111`."""
    if not SCOPE.fullmatch(scope):
        raise ProvisionError(f"dashboard scope {scope!r}: a region code of 2, 4, 6, 9 or 12 digits")
    return f"{DASHBOARD}_{scope}"


def is_dashboard(service: str) -> bool:
    """DASHBOARD or a scoped dashboard (`dashboard_5111`)."""
    return service == DASHBOARD or (service.startswith(f"{DASHBOARD}_")
                                    and bool(SCOPE.fullmatch(service.removeprefix(f"{DASHBOARD}_"))))


def role_name(service: str, prefix: str = DEFAULT_PREFIX) -> str:
    """`cso_targets` for targets; `cso_dashboard` for DASHBOARD; `cso_dashboard_5111` for
    scoped('5111')."""
    if service not in (*SERVICES, DASHBOARD) and not is_dashboard(service):
        raise ValueError(f"unknown service {service!r}; one of {', '.join((*SERVICES, DASHBOARD))} "
                         f"or {DASHBOARD}_<region code>")
    if not _NAME.fullmatch(prefix):
        raise ProvisionError(f"role prefix {prefix!r}: lower-case letters, digits and _ only")
    if len(f"{prefix}_{service}") > 63:  # PostgreSQL would cut the name short, silently
        raise ProvisionError(f"role name {prefix}_{service}: longer than 63 characters (a shorter prefix)")
    return f"{prefix}_{service}"


def role_url(database_url: str, role: str, password: str | None = None) -> str:
    """database_url with role (and password, percent-encoded) as the user."""
    parts = urlsplit(database_url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port:
        host += f":{parts.port}"
    user = quote(role, safe="") + (f":{quote(password, safe='')}" if password is not None else "")
    return urlunsplit(parts._replace(netloc=f"{user}@{host}"))


def url_password(url: str) -> tuple[str | None, str | None]:
    """(user, password) of a postgresql:// URL, percent-decoded."""
    parts = urlsplit(url)
    return (unquote(parts.username) if parts.username is not None else None,
            unquote(parts.password) if parts.password is not None else None)


def scram_verifier(password: str, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS) -> str:
    """The SCRAM-SHA-256 secret PostgreSQL stores for password (what `\\password` sends).

    Only ASCII passwords: for them PostgreSQL's SASLprep normalization is the identity, so the
    verifier matches what the server would compute itself.
    """
    if not password or not password.isascii() or "\0" in password:
        raise ProvisionError("a database password must be non-empty ASCII without NUL "
                             "(e.g. `openssl rand -hex 32`)")
    salt = salt if salt is not None else os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


@dataclass
class Report:
    """What provision did (no secrets in it) and what still departs from the model."""

    database: str
    roles: dict[str, str] = field(default_factory=dict)  # service -> role name
    actions: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _asyncpg() -> Any:
    return importlib.import_module("asyncpg")  # untyped; Any keeps mypy quiet without stubs


def admin_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def provision(admin_url: str, passwords: Mapping[str, str | None] | None = None, *,
                    prefix: str = DEFAULT_PREFIX, scopes: Sequence[str] = ()) -> Report:
    """Make the database of admin_url match the role model (see the module doc), in one transaction.

    passwords: service (or DASHBOARD, or scoped(scope)) -> password; a role not named keeps the
    password it has (a new one gets none, and cannot log in with a password until it is given
    one). scopes: region codes that get a scoped dashboard role (those that exist are kept). admin_url must
    be a superuser, or a role with CREATEROLE that may SET ROLE to the service roles and owns
    (or is a member of the owners of) whatever must change hands.
    """
    passwords = dict(passwords or {})
    asked = [scoped(s) for s in scopes]
    unknown = set(passwords) - {*SERVICES, DASHBOARD, *asked}
    if unknown:
        raise ValueError(f"passwords for unknown services: {', '.join(sorted(unknown))}")
    verifiers = {s: scram_verifier(p) for s, p in passwords.items() if p is not None}
    conn = await _asyncpg().connect(admin_dsn(admin_url), timeout=10)
    try:
        async with conn.transaction():
            roles = {s: role_name(s, prefix)
                     for s in (*SERVICES, DASHBOARD, *sorted({*asked, *await _scoped_services(conn, prefix)}))}
            # regclass, regtype and regprocedure print schema-qualified names under this path.
            await conn.execute("SET LOCAL search_path = pg_catalog")
            database = await conn.fetchval("SELECT current_database()")
            report = Report(database=database, roles=dict(roles))
            await _roles(conn, roles, verifiers, report)
            await _database(conn, database, roles, report)
            for service, schema in SCHEMAS.items():
                await _schema(conn, service, schema, roles[service], report)
                await _schema_acl(conn, schema, roles, report)
            await _dashboard(conn, [r for s, r in roles.items() if is_dashboard(s)], report)
            report.problems = await audit(conn, prefix)
    finally:
        await conn.close()
    return report


async def _run(conn: Any, report: Report, statement: str, action: str | None = None) -> None:
    await conn.execute(statement)
    if action is not None:
        report.actions.append(action)


async def _roles(conn: Any, roles: Mapping[str, str], verifiers: Mapping[str, str], report: Report) -> None:
    for service, role in roles.items():
        row = await conn.fetchrow(f"SELECT oid, rolcanlogin, {', '.join(_ATTRIBUTES)} FROM pg_roles "
                                  "WHERE rolname = $1", role)
        if row is None:
            await _run(conn, report, await conn.fetchval(
                "SELECT format('CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION "
                "NOBYPASSRLS', $1::text)", role), f"created role {role}")
        else:
            wrong = [a.removeprefix("rol").upper() for a in _ATTRIBUTES if row[a]]
            if wrong or not row["rolcanlogin"]:
                await _run(conn, report, await conn.fetchval(
                    "SELECT format('ALTER ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION "
                    "NOBYPASSRLS', $1::text)", role),
                    f"role {role}: removed {', '.join(wrong) or 'nothing'}"
                    + ("" if row["rolcanlogin"] else ", allowed LOGIN"))
            # Membership in any role (pg_read_all_data, another service's role...) would widen it.
            for granted in await conn.fetch(
                    "SELECT r.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid "
                    "WHERE m.member = $1 ORDER BY 1", row["oid"]):
                await _run(conn, report, await conn.fetchval(
                    "SELECT format('REVOKE %I FROM %I', $1::text, $2::text)", granted["rolname"], role),
                    f"role {role}: no longer a member of {granted['rolname']}")
        if service in verifiers:
            await _run(conn, report, await conn.fetchval(
                "SELECT format('ALTER ROLE %I PASSWORD %L', $1::text, $2::text)", role, verifiers[service]),
                f"role {role}: password set")
    for dashboard in (r for s, r in roles.items() if is_dashboard(s)):
        for setting, value in (("default_transaction_read_only", "on"), ("statement_timeout", "30s")):
            await conn.execute(await conn.fetchval("SELECT format('ALTER ROLE %I SET %I = %L', $1::text, "
                                                   "$2::text, $3::text)", dashboard, setting, value))


async def _scoped_services(conn: Any, prefix: str) -> list[str]:
    """The scoped dashboard roles of this prefix that exist (`dashboard_5111`, ...)."""
    names = await conn.fetch("SELECT rolname FROM pg_roles WHERE starts_with(rolname, $1) ORDER BY 1",
                             f"{prefix}_{DASHBOARD}_")
    return [s for s in (r["rolname"].removeprefix(f"{prefix}_") for r in names) if is_dashboard(s)]


async def _database(conn: Any, database: str, roles: Mapping[str, str], report: Report) -> None:
    # PUBLIC: no CONNECT, no TEMPORARY (PostgreSQL's defaults grant both) on this database.
    public = await conn.fetch(
        "SELECT a.privilege_type FROM pg_database d, aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a "
        "WHERE d.datname = $1 AND a.grantee = 0 ORDER BY 1", database)
    if public:
        await _run(conn, report, await conn.fetchval(
            "SELECT format('REVOKE ALL ON DATABASE %I FROM PUBLIC', $1::text)", database),
            f"database {database}: PUBLIC lost {', '.join(r['privilege_type'] for r in public)}")
    for role in roles.values():
        await conn.execute(await conn.fetchval(
            "SELECT format('REVOKE CREATE, TEMPORARY ON DATABASE %I FROM %I', $1::text, $2::text)",
            database, role))
        await conn.execute(await conn.fetchval(
            "SELECT format('GRANT CONNECT ON DATABASE %I TO %I', $1::text, $2::text)", database, role))
    if await conn.fetchval(
            "SELECT has_schema_privilege('public', n.nspname, 'CREATE') FROM pg_namespace n "
            "WHERE n.nspname = 'public'"):
        await _run(conn, report, "REVOKE CREATE ON SCHEMA public FROM PUBLIC",
                   "schema public: PUBLIC lost CREATE")
    for role in roles.values():
        if await conn.fetchval("SELECT has_schema_privilege($1, 'public', 'CREATE') AND NOT "
                               "EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'public' "
                               "AND nspowner = (SELECT oid FROM pg_roles WHERE rolname = $1))", role):
            await _run(conn, report, await conn.fetchval(
                "SELECT format('REVOKE CREATE ON SCHEMA public FROM %I', $1::text)", role),
                f"schema public: {role} lost CREATE")


async def _schema(conn: Any, service: str, schema: str, role: str, report: Report) -> None:
    """The schema exists, owned by role, and so is everything in it."""
    owner = await conn.fetchval("SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = $1", schema)
    if owner is not None and owner != role and re.fullmatch(rf"[a-z_][a-z0-9_]*_{service}", owner):
        # Another prefix's role: most likely the wrong --prefix, not an installation to take over.
        raise ProvisionError(f"schema {schema} belongs to {owner}, the {service} role of another prefix: "
                             f"give that prefix, or hand the schema over first "
                             f"(ALTER SCHEMA {schema} OWNER TO {role})")
    if owner is None:
        await _run(conn, report, await conn.fetchval(
            "SELECT format('CREATE SCHEMA %I AUTHORIZATION %I', $1::text, $2::text)", schema, role),
            f"created schema {schema} owned by {role}")
        return
    if owner != role:
        await _run(conn, report, await conn.fetchval(
            "SELECT format('ALTER SCHEMA %I OWNER TO %I', $1::text, $2::text)", schema, role),
            f"schema {schema}: owner {owner} -> {role}")
    # Tables first (their indexes and serial sequences follow them), then what stands alone.
    statements = await conn.fetch("""
        SELECT format('ALTER %s %s OWNER TO %I',
                      CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                                     WHEN 'f' THEN 'FOREIGN TABLE' WHEN 'S' THEN 'SEQUENCE'
                                     ELSE 'TABLE' END, c.oid::regclass, $2::text) AS sql,
               c.oid::regclass::text AS name
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = $1 AND pg_get_userbyid(c.relowner) <> $2
          AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
          AND NOT (c.relkind = 'S' AND EXISTS (
              SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')))
        ORDER BY c.relkind = 'S', c.relkind IN ('v', 'm'), 2
    """, schema, role)
    statements += await conn.fetch("""
        SELECT format('ALTER %s %s OWNER TO %I', CASE t.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END,
                      t.oid::regtype, $2::text) AS sql, t.oid::regtype::text AS name
        FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
        WHERE n.nspname = $1 AND pg_get_userbyid(t.typowner) <> $2
          AND t.typtype IN ('e', 'd', 'r', 'c') AND t.typcategory <> 'A'
          AND (t.typrelid = 0 OR (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c')
        ORDER BY 2
    """, schema, role)
    statements += await conn.fetch("""
        SELECT format('ALTER ROUTINE %s OWNER TO %I', p.oid::regprocedure, $2::text) AS sql,
               p.oid::regprocedure::text AS name
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = $1 AND pg_get_userbyid(p.proowner) <> $2
        ORDER BY 2
    """, schema, role)
    for row in statements:
        await _run(conn, report, row["sql"], f"{row['name']}: owner -> {role}")


async def _schema_acl(conn: Any, schema: str, roles: Mapping[str, str], report: Report) -> None:
    """Revoke every privilege in the schema held by anyone but its owner (the dashboard's own
    USAGE and SELECT excepted), and default privileges that would grant new ones."""
    dashboard = [r for s, r in roles.items() if is_dashboard(s)]
    allowed_usage = schema == DASHBOARD_SCHEMA
    tables = list(DASHBOARD_TABLES) if schema == DASHBOARD_SCHEMA else []
    rows = await conn.fetch("""
        WITH acl AS (
            SELECT format('SCHEMA %I', n.nspname) AS target, NULL::text AS col, a.grantee,
                   a.privilege_type, a.is_grantable, FALSE AS readable
            FROM pg_namespace n, aclexplode(n.nspacl) a
            WHERE n.nspname = $1 AND a.grantee <> n.nspowner
            UNION ALL
            SELECT format('%s %s', CASE c.relkind WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END, c.oid::regclass),
                   NULL, a.grantee, a.privilege_type, a.is_grantable, c.relname = ANY($3::text[])
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, aclexplode(c.relacl) a
            WHERE n.nspname = $1 AND a.grantee <> c.relowner
            UNION ALL
            SELECT format('TABLE %s', c.oid::regclass), att.attname, a.grantee, a.privilege_type,
                   a.is_grantable, FALSE
            FROM pg_attribute att JOIN pg_class c ON c.oid = att.attrelid
                 JOIN pg_namespace n ON n.oid = c.relnamespace, aclexplode(att.attacl) a
            WHERE n.nspname = $1 AND a.grantee <> c.relowner AND NOT att.attisdropped
            UNION ALL
            SELECT format('%s %s', CASE WHEN p.prokind = 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END,
                          p.oid::regprocedure),
                   NULL, a.grantee, a.privilege_type, a.is_grantable, FALSE
            FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace, aclexplode(p.proacl) a
            WHERE n.nspname = $1 AND a.grantee <> p.proowner
        )
        SELECT DISTINCT target, col, privilege_type,
               CASE WHEN grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(grantee)) END AS who,
               CASE WHEN grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(grantee) END AS name
        FROM acl
        WHERE NOT (grantee <> 0 AND pg_get_userbyid(grantee) = ANY($2::text[]) AND NOT is_grantable AND col IS NULL
                   AND ((target LIKE 'SCHEMA %' AND privilege_type = 'USAGE' AND $4)
                        OR (readable AND privilege_type = 'SELECT')))
        ORDER BY 1, 2 NULLS FIRST, 4, 3
    """, schema, dashboard, tables, allowed_usage)
    for r in rows:
        column = f" ({await conn.fetchval('SELECT quote_ident($1)', r['col'])})" if r["col"] else ""
        await _run(conn, report, f"REVOKE {r['privilege_type']}{column} ON {r['target']} FROM {r['who']} CASCADE",
                   f"{'schema ' if r['target'].startswith('SCHEMA ') else ''}{r['target'].split(' ', 1)[1]}"
                   f"{column}: {r['name']} lost {r['privilege_type']}")
    defaults = await conn.fetch("""
        SELECT format('ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA %I REVOKE ALL ON %s FROM %s',
                      pg_get_userbyid(d.defaclrole), n.nspname,
                      CASE d.defaclobjtype WHEN 'r' THEN 'TABLES' WHEN 'S' THEN 'SEQUENCES'
                                           WHEN 'f' THEN 'FUNCTIONS' WHEN 'T' THEN 'TYPES' ELSE 'SCHEMAS' END,
                      CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END)
               AS sql,
               pg_get_userbyid(d.defaclrole) AS creator,
               CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END AS name
        FROM pg_default_acl d JOIN pg_namespace n ON n.oid = d.defaclnamespace, aclexplode(d.defaclacl) a
        WHERE n.nspname = $1 AND a.grantee <> d.defaclrole
        GROUP BY 1, 2, 3 ORDER BY 1
    """, schema)
    for r in defaults:
        await _run(conn, report, r["sql"],
                   f"schema {schema}: default privileges of {r['creator']} for {r['name']} dropped")


async def _dashboard(conn: Any, dashboards: Sequence[str], report: Report) -> None:
    present = [r["relname"] for r in await conn.fetch(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = $1 AND c.relname = ANY($2::text[]) AND c.relkind IN ('r', 'p')",
        DASHBOARD_SCHEMA, list(DASHBOARD_TABLES))]
    # Row security before the grants: a new scoped role never reads a row its policy would hide.
    state = await conn.fetch(_ROW_SECURITY_STATE, DASHBOARD_SCHEMA, list(DASHBOARD_TABLES))
    for statement, action in row_security(DASHBOARD_SCHEMA, dashboards, [tuple(r) for r in state]):
        await _run(conn, report, statement, action)
    for dashboard in dashboards:
        await conn.execute(await conn.fetchval("SELECT format('GRANT USAGE ON SCHEMA %I TO %I', $1::text, "
                                               "$2::text)", DASHBOARD_SCHEMA, dashboard))
        for table in present:
            await conn.execute(await conn.fetchval("SELECT format('GRANT SELECT ON %I.%I TO %I', $1::text, "
                                                   "$2::text, $3::text)", DASHBOARD_SCHEMA, table, dashboard))
    missing = [t for t in DASHBOARD_TABLES if t not in present]
    if missing:
        report.actions.append(f"{', '.join(dashboards)}: SELECT on {DASHBOARD_SCHEMA}.{', '.join(missing)} "
                              f"will be granted by targets' migrations, which create them")


# (table, row security enabled, policy names) of the dashboard tables that exist.
_ROW_SECURITY_STATE = """
    SELECT c.relname, c.relrowsecurity,
           coalesce(array_agg(p.polname ORDER BY p.polname) FILTER (WHERE p.polname IS NOT NULL), '{}')
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         LEFT JOIN pg_policy p ON p.polrelid = c.oid
    WHERE n.nspname = $1 AND c.relname = ANY($2::text[]) AND c.relkind IN ('r', 'p')
    GROUP BY c.relname, c.relrowsecurity ORDER BY 1"""
_READER = re.compile(r"([a-z_][a-z0-9_]*)_dashboard(?:_([0-9]+))?")


def reader_scope(role: str) -> str | None:
    """'' for a national dashboard role (`cso_dashboard`), the scope for `cso_dashboard_5111`,
    None for any other role (it gets no policy, so reads no row of an RLS table)."""
    m = _READER.fullmatch(role)
    if m is None or (m[2] is not None and not SCOPE.fullmatch(m[2])):
        return None
    return m[2] or ""


def policy_filter(schema: str, table: str, scope: str) -> str:
    """The USING expression of a dashboard role's policy on one table (scope: validated digits)."""
    if not scope:
        return "true"
    if not SCOPE.fullmatch(scope):
        raise ProvisionError(f"dashboard scope {scope!r}: a region code of 2, 4, 6, 9 or 12 digits")
    if table == "target_history":
        # Its instance's region; target_instance's own policy applies inside the subquery too.
        return (f"instance_id IN (SELECT id FROM {schema}.target_instance "
                f"WHERE region LIKE '{scope}%')")
    column = _REGION_COLUMN[table]
    under = f"{column} LIKE '{scope}%'"
    if table == "division":
        # The scope's ancestors too (names only: their coverage and targets stay hidden), so that
        # the dashboards' path and region chain start at the province.
        return f"({under} OR '{scope}' LIKE {column} || '%')"
    return under


def row_security(schema: str, readers: Sequence[str],
                 state: Sequence[tuple[str, bool, Sequence[str]]]) -> list[tuple[str, str | None]]:
    """(statement, action or None) that enable RLS on the dashboard tables of `state` (from
    _ROW_SECURITY_STATE) and give each reader its policy, named after it: created where missing,
    altered to the expected filter where present (silently: it converges, like the grants)."""
    out: list[tuple[str, str | None]] = []
    for table, enabled, policies in state:
        if table not in DASHBOARD_TABLES:
            continue
        if not enabled:
            out.append((f'ALTER TABLE "{schema}"."{table}" ENABLE ROW LEVEL SECURITY',
                        f"{schema}.{table}: row-level security enabled"))
        for role in readers:
            scope = reader_scope(role)
            if scope is None:
                continue
            using = policy_filter(schema, table, scope)
            if role in policies:
                out.append((f'ALTER POLICY "{role}" ON "{schema}"."{table}" TO "{role}" USING ({using})', None))
            else:
                out.append((f'CREATE POLICY "{role}" ON "{schema}"."{table}" AS PERMISSIVE FOR SELECT '
                            f'TO "{role}" USING ({using})',
                            f"{schema}.{table}: policy {role} reads {'every row' if not scope else scope + '…'}"))
    return out


async def audit(conn: Any, prefix: str = DEFAULT_PREFIX) -> list[str]:
    """Where the database departs from the model: every finding is a sentence (empty: none)."""
    roles = {s: role_name(s, prefix) for s in (*SERVICES, DASHBOARD, *await _scoped_services(conn, prefix))}
    dashboards = [r for s, r in roles.items() if is_dashboard(s)]
    problems: list[str] = []
    for role in roles.values():
        row = await conn.fetchrow(f"SELECT oid, rolcanlogin, {', '.join(_ATTRIBUTES)} FROM pg_roles "
                                  "WHERE rolname = $1", role)
        if row is None:
            problems.append(f"role {role} does not exist")
            continue
        problems += [f"role {role} has {a.removeprefix('rol').upper()}" for a in _ATTRIBUTES if row[a]]
        problems += [f"role {role} is a member of {r['rolname']}" for r in await conn.fetch(
            "SELECT r.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid "
            "WHERE m.member = $1", row["oid"])]
        for privilege in ("CREATE", "TEMPORARY"):
            if await conn.fetchval("SELECT has_database_privilege($1, current_database(), $2)", role, privilege):
                problems.append(f"role {role} may {privilege} in database")
    for service, schema in SCHEMAS.items():
        owner = roles[service]
        found = await conn.fetchval("SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = $1",
                                    schema)
        if found is None:
            problems.append(f"schema {schema} does not exist")
            continue
        if found != owner:
            problems.append(f"schema {schema} is owned by {found}, not {owner}")
        problems += [f"{r['name']} in schema {schema} is owned by {r['owner']}, not {owner}" for r in await conn.fetch(
            "SELECT c.relname AS name, pg_get_userbyid(c.relowner) AS owner FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 "
            "AND pg_get_userbyid(c.relowner) <> $2 AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')",
            schema, owner)]
        for other in roles.values():
            if other == owner:
                continue
            usage = await conn.fetchval("SELECT has_schema_privilege($1, $2, 'USAGE')", other, schema)
            if usage and not (other in dashboards and schema == DASHBOARD_SCHEMA):
                problems.append(f"role {other} may use schema {schema}")
            if await conn.fetchval("SELECT has_schema_privilege($1, $2, 'CREATE')", other, schema):
                problems.append(f"role {other} may create in schema {schema}")
            for r in await conn.fetch("""
                    SELECT c.relname, p.privilege FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace,
                         unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES',
                                      'TRIGGER']) AS p(privilege)
                    WHERE n.nspname = $2 AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
                      AND has_table_privilege($1, c.oid, p.privilege)
                    ORDER BY 1, 2""", other, schema):
                if (other in dashboards and schema == DASHBOARD_SCHEMA and r["privilege"] == "SELECT"
                        and r["relname"] in DASHBOARD_TABLES):
                    continue
                problems.append(f"role {other} has {r['privilege']} on {schema}.{r['relname']}")
    for table, enabled, policies in await conn.fetch(_ROW_SECURITY_STATE, DASHBOARD_SCHEMA, list(DASHBOARD_TABLES)):
        if not enabled:
            problems.append(f"{DASHBOARD_SCHEMA}.{table} has no row-level security: every dashboard role reads "
                            "all of it")
        problems += [f"{DASHBOARD_SCHEMA}.{table} has no policy for {d}: it reads no row of it"
                     for d in dashboards if d not in policies]
    return problems


def after_migrations(connection: Any, schema: str) -> None:
    """Run by `cso.database.run_env` as the schema's owner once a service's migrations are done:
    the roles an admin allowed to read the schema (USAGE on it: the dashboard roles, for targets)
    get SELECT on its dashboard tables, including tables the migrations just created, and those
    tables row-level security with each reader's policy (row_security)."""
    from sqlalchemy import text

    if schema != DASHBOARD_SCHEMA:
        return
    readers = connection.execute(text(
        "SELECT pg_get_userbyid(a.grantee) FROM pg_namespace n, aclexplode(n.nspacl) a "
        "WHERE n.nspname = :s AND a.privilege_type = 'USAGE' AND a.grantee NOT IN (0, n.nspowner)"),
        {"s": schema}).scalars().all()
    tables = connection.execute(text(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = :s AND c.relname = ANY(CAST(:t AS text[])) AND c.relkind IN ('r', 'p', 'v', 'm')"),
        {"s": schema, "t": list(DASHBOARD_TABLES)}).scalars().all()
    # Row security first (tables just created have none): a reader never sees more than its scope.
    state = connection.execute(text(_ROW_SECURITY_STATE.replace("$1", "CAST(:s AS text)")
                                    .replace("$2::text[]", "CAST(:t AS text[])")),
                               {"s": schema, "t": list(DASHBOARD_TABLES)}).all()
    for statement, _ in row_security(schema, readers, [tuple(r) for r in state]):
        connection.execute(text(statement))
    for reader in readers:
        for table in tables:
            connection.execute(text(connection.execute(text(
                "SELECT format('GRANT SELECT ON %I.%I TO %I', CAST(:s AS text), CAST(:t AS text), "
                "CAST(:r AS text))"), {"s": schema, "t": table, "r": reader}).scalar_one()))


def passwords_from_env(environ: Mapping[str, str], prefix: str = DEFAULT_PREFIX,
                       services: Sequence[str] = (*SERVICES, DASHBOARD)) -> dict[str, str]:
    """Passwords for provision from CSO_<SERVICE>_DB_PASSWORD, or from the password in
    CSO_<SERVICE>_DATABASE_URL (whose user must then be the service's role)."""
    out: dict[str, str] = {}
    for service in services:
        key = service.upper()
        direct = environ.get(f"CSO_{key}_DB_PASSWORD") or None
        url = environ.get(f"CSO_{key}_DATABASE_URL") or None
        from_url = None
        if url is not None:
            user, from_url = url_password(url)
            role = role_name(service, prefix)
            if user != role:
                raise ProvisionError(f"CSO_{key}_DATABASE_URL connects as {user!r}, not as {role}")
        if direct is not None and from_url is not None and direct != from_url:
            raise ProvisionError(f"CSO_{key}_DB_PASSWORD and the password in CSO_{key}_DATABASE_URL differ")
        password = direct or from_url
        if password is not None:
            out[service] = password
    return out


__all__ = ["DASHBOARD", "DASHBOARD_SCHEMA", "DASHBOARD_TABLES", "DEFAULT_PREFIX", "SCHEMAS", "SCOPE", "SERVICES",
           "ProvisionError", "Report", "after_migrations", "audit", "is_dashboard", "passwords_from_env",
           "policy_filter", "provision", "reader_scope", "role_name", "role_url", "row_security", "scoped",
           "scram_verifier", "url_password"]
