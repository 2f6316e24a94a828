"""`cso`: the operator's command line. The local stack (up, down, status), migrations, divisions,
publishing events from a file, and coverage as a table. The work is done in cso_local.stack and the
services; this module wires commands and prints."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import urllib.error
import urllib.parse
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from cso.settings import env

from .stack import BACKENDS, Part, Stack, StackError, http_get, recorded, redact
from .supervisor import Supervisor

app = typer.Typer(
    name="cso",
    help="cso: coverage of community social organization cultivation plans, tier by tier.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
divisions_app = typer.Typer(help="Division reference data (NBS statistical division codes).",
                            no_args_is_help=True)
app.add_typer(divisions_app, name="divisions")
db_app = typer.Typer(help="The database: roles and privileges.", no_args_is_help=True)
app.add_typer(db_app, name="db")
publisher_app = typer.Typer(help="Outside publisher systems on the local stack's NATS.", no_args_is_help=True)
app.add_typer(publisher_app, name="publisher")


class OnOff(StrEnum):
    on = "on"
    off = "off"


DataDir = Annotated[Path, typer.Option("--data-dir", help="Where the local stack keeps its data, "
                                                          "logs and stack.json.")]
DEFAULT_DATA_DIR = Path(".cso")
STATE_STYLE = {"ready": "green", "up": "green", "not ready": "yellow", "down": "red"}
STATUS_STYLE = {"met": "green", "on_track": "", "at_risk": "yellow", "missed": "red"}


def _console() -> Console:
    # Made per command (not at import) so COLUMNS and redirections of the moment apply.
    return Console(highlight=False)


def _err_console() -> Console:
    return Console(stderr=True, highlight=False)


def fail(message: str, code: int = 1) -> typer.Exit:
    _err_console().print(f"[red]error:[/red] {escape(message)}")
    return typer.Exit(code)


def _namespace(data_dir: Path) -> str:
    if value := env("CSO_NAMESPACE", ""):
        return value
    state = Stack(data_dir).state
    return str(state.get("namespace") or "") if not state.get("stopped_at") else ""


def _nats_url(data_dir: Path) -> str:
    url = env("CSO_NATS_URL", "") or recorded(data_dir, "nats")
    if url is None:
        raise fail(f"no NATS: set CSO_NATS_URL, or start the local stack (`cso up --data-dir {data_dir}`)")
    return url


def _nats_login(data_dir: Path, url: str) -> tuple[str, str]:
    """(user, password) for the CLI: CSO_NATS_USER / CSO_NATS_PASSWORD if set (Settings reads them:
    ("", "") here), else `admin` of the local stack whose NATS url is, from its data dir."""
    from .localnats import credentials

    if env("CSO_NATS_USER", "") or url != recorded(data_dir, "nats"):
        return "", ""
    return credentials(data_dir, "admin") or ("", "")


# ---------------------------------------------------------------- the local stack


def listen_table(state: dict[str, Any]) -> Table:
    """Where each part listens: its URL, and under it what else it serves."""
    nats, pg = state["nats"], state["postgres"]
    rows: list[tuple[str, str, str, str]] = [
        ("nats", str(nats["pid"] or "-"), redact(nats["url"]),
         f"monitor {nats['monitor_url']}" if nats.get("monitor_url") else "CSO_NATS_URL"),
        ("postgres", str(pg["pid"] or "-"), redact(pg["url"]), "" if pg.get("managed") else "CSO_DATABASE_URL"),
        *((name, str(info["pid"]), info["url"],
           " ".join(e.removeprefix(info["url"]) for e in info["endpoints"]))
          for name, info in state["services"].items()),
    ]
    table = Table(title="cso is up", title_justify="left")
    table.add_column("part", style="bold", no_wrap=True)
    table.add_column("pid", justify="right", no_wrap=True)
    table.add_column("listens on", min_width=max(len(r[2]) for r in rows))
    for name, pid, url, extra in rows:
        table.add_row(name, pid, escape(url) + (f"\n[dim]{escape(extra)}[/dim]" if extra else ""))
    return table


@app.command()
def up(
    data_dir: DataDir = DEFAULT_DATA_DIR,
    registry_port: Annotated[int, typer.Option(help="registry's HTTP port")] = 8001,
    targets_port: Annotated[int, typer.Option(help="targets' HTTP port")] = 8002,
    training_port: Annotated[int, typer.Option(help="training's HTTP port")] = 8003,
    notify_port: Annotated[int, typer.Option(help="notify's HTTP port")] = 8004,
    console_port: Annotated[int, typer.Option(help="the web console's HTTP port")] = 8000,
    demo: Annotated[bool, typer.Option("--demo/--no-demo",
                                       help="Publish the demo divisions (乐山市, 广汉市).")] = True,
    nats_auth: Annotated[OnOff, typer.Option(
        "--nats-auth", help="on: NATS requires a user and password of everyone (kept in DATA_DIR/nats/"
                            "users.json); off: anyone on this machine may use the bus (not advised).")] = OnOff.on,
    publisher: Annotated[list[str] | None, typer.Option(
        "--publisher", "-p", help="An outside publisher system allowed on NATS for its region: NAME=REGION, "
                                  "e.g. guanghan-register=510681. Its password is printed once. Repeat.")] = None,
) -> None:
    """Start the local stack and stay in the foreground; Ctrl-C (or `cso down`) stops it.

    NATS and PostgreSQL come from CSO_NATS_URL / CSO_DATABASE_URL if set, else are started from
    the venv's wheels under DATA_DIR (a later `cso up` reuses their data).
    """
    console = _console()
    running, interrupted, stop = threading.Event(), threading.Event(), threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        if running.is_set():
            stop.set()
        elif not interrupted.is_set():
            # Still starting: unwind start(), which stops whatever it had started.
            interrupted.set()
            raise KeyboardInterrupt

    stack = Stack(data_dir, registry_port=registry_port, targets_port=targets_port,
                  training_port=training_port, notify_port=notify_port, console_port=console_port, demo=demo,
                  nats_auth=nats_auth is OnOff.on, publishers=tuple(publisher or ()),
                  nats_url=env("CSO_NATS_URL", "") or None, database_url=env("CSO_DATABASE_URL", "") or None,
                  namespace=env("CSO_NAMESPACE", ""), owner_pid=os.getpid(),
                  log=lambda m: console.print(f"[dim]· {escape(m)}[/dim]"))
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    if env("CSO_AUTH", "").strip().lower() == "off":
        _err_console().print("[bold red]CSO_AUTH=off:[/bold red] the services will take HTTP requests without "
                             "tokens; anyone who reaches them may write anywhere (unset CSO_AUTH to require tokens)")
    try:
        try:
            state = stack.start()
        except StackError as e:
            raise fail(f"cso up: {e}") from None
        except KeyboardInterrupt:
            console.print("interrupted while starting; everything started was stopped")
            raise typer.Exit(130) from None
        running.set()
        console.print(listen_table(state))
        _warn_open_nats(state)
        console.print(f"data and logs in {stack.data_dir}; a part that dies is restarted, "
                      "Ctrl-C or `cso down` stops the stack")
        Supervisor(stack).run(stop)  # until stop: restarts what dies, serves `cso restart`
        console.print("stopping")
    finally:
        interrupted.set()
        running.set()  # further signals only set `stop`, which is already on its way
        stack.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    console.print("stopped")


class PartName(StrEnum):
    registry = "registry"
    targets = "targets"
    training = "training"
    notify = "notify"
    console = "console"
    nats = "nats"
    postgres = "postgres"


@app.command()
def restart(
    part: Annotated[PartName, typer.Argument(help="The part to restart.")],
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Restart one part of the local stack in DATA_DIR, on the same port.

    The `cso up` running the stack stops the part and starts it again (and waits, for a
    service, until it is ready); `cso status` then shows its new pid and restart count.
    """
    from .supervisor import RestartError
    from .supervisor import restart as restart_part

    try:
        info = restart_part(data_dir, part.value)
    except RestartError as e:
        raise fail(f"cso restart: {e}") from None
    _console().print(f"restarted {part.value}: pid {info.get('pid')}, "
                     f"{info.get('restarts')} restart(s) since cso up started")


def _warn_open_nats(state: dict[str, Any]) -> None:
    if (state.get("nats") or {}).get("auth") == "off":
        _err_console().print("[bold red]WARNING: NATS runs without authentication (cso up --nats-auth off): "
                             "anyone on this machine can send commands and publish events, past every "
                             "HTTP token.[/bold red]")


@app.command()
def down(data_dir: DataDir = DEFAULT_DATA_DIR) -> None:
    """Stop the local stack in DATA_DIR (started by `cso up` in another terminal)."""
    console = _console()
    stack = Stack(data_dir, log=lambda m: console.print(f"[dim]· {escape(m)}[/dim]"))
    stopped = stack.stop_recorded()
    if stopped:
        console.print(f"stopped: {', '.join(stopped)}")
    else:
        console.print(f"nothing was running from {stack.data_dir}")


def status_table(parts: list[Part]) -> Table:
    """Each part: up/ready, pid, its URL and under it what the check said."""
    table = Table()
    table.add_column("part", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("pid", justify="right", no_wrap=True)
    table.add_column("restarts", justify="right", no_wrap=True)
    table.add_column("url", min_width=max([3, *(len(p.url or "") for p in parts)]))
    for p in parts:
        style = STATE_STYLE[p.state]
        detail = f"\n[dim]{escape(p.detail)}[/dim]" if p.detail else ""
        table.add_row(p.name, f"[{style}]{p.state}[/{style}]", str(p.pid or "-"), str(p.restarts),
                      escape(p.url or "-") + detail)
    return table


@app.command()
def status(data_dir: DataDir = DEFAULT_DATA_DIR) -> None:
    """Which parts of the local stack are up, where they listen, whether they are ready.

    Exit code 0 when every part is ready, 1 otherwise.
    """
    console = _console()
    stack = Stack(data_dir)
    parts = stack.status()
    state = stack.state
    if not state:
        console.print(f"no stack recorded in {stack.data_dir} (`cso up` starts one)")
    elif state.get("stopped_at"):
        console.print(f"stack in {stack.data_dir}: stopped at {state['stopped_at']}")
    else:
        owner = state.get("owner_pid")
        console.print(f"stack in {stack.data_dir}: started at {state.get('started_at')}"
                      + (f" by cso up (pid {owner})" if owner else ""))
    console.print(status_table(parts))
    if state and not state.get("stopped_at"):
        _warn_open_nats(state)
    raise typer.Exit(0 if all(p.state in ("ready", "up") for p in parts) else 1)


# ---------------------------------------------------------------- migrations and data


class Which(StrEnum):
    registry = "registry"
    targets = "targets"
    training = "training"
    notify = "notify"
    all = "all"


@app.command()
def migrate(
    which: Annotated[Which, typer.Argument(help="Whose schema to migrate.")] = Which.all,
    with_streams: Annotated[bool, typer.Option(
        "--streams/--no-streams",
        help="With `all`: then the JetStream streams too, as `cso streams` does.")] = True,
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Bring service schemas to the latest migration, in CSO_DATABASE_URL (else the local stack's);
    with `all`, then the streams (`cso streams`) in CSO_NATS_URL, as the NATS admin user."""
    from cso.settings import Settings

    from .stack import migrate_one

    nats_url = None
    if which is Which.all and with_streams:
        nats_url = env("CSO_NATS_URL", "") or recorded(data_dir, "nats")
        if nats_url is None:
            raise fail("no NATS for the streams: set CSO_NATS_URL (and CSO_NATS_USER=admin, "
                       "CSO_NATS_PASSWORD), or pass --no-streams", 2)

    url = env("CSO_DATABASE_URL", "") or recorded(data_dir, "database")
    if url is None:
        raise fail("no database: set CSO_DATABASE_URL, or start the local stack "
                   f"(`cso up --data-dir {data_dir}`)", 2)
    settings = Settings(database_url=url)
    # The services that own a schema: the console has none, and saying it was migrated would be false.
    names = [s.name for s in BACKENDS] if which is Which.all else [which.value]
    console = _console()
    for name in names:
        try:
            migrate_one(name, settings)
        except Exception as e:
            raise fail(f"{name}: migration failed on {redact(url)}: {type(e).__name__}: {e}") from None
        console.print(f"{name}: schema {name} at the latest migration on {redact(url)}")
    if nats_url is not None:
        _migrate_streams(nats_url, _namespace(data_dir), _nats_login(data_dir, nats_url))


@app.command()
def streams(
    wait: Annotated[float, typer.Option(
        help="Seconds to keep trying while NATS or its cluster is not ready yet.")] = 0.0,
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Create the JetStream streams that are missing and put back the settings that drifted, in
    CSO_NATS_URL (else the local stack's), as the NATS admin user (CSO_NATS_USER, CSO_NATS_PASSWORD).
    Never deletes. Replicas: CSO_STREAM_REPLICAS, or <STREAM>_REPLICAS (e.g. CSO_INTAKE_REPLICAS),
    each `auto` (3 on a NATS cluster, 1 on a single server) or 1-5."""
    url = _nats_url(data_dir)
    _migrate_streams(url, _namespace(data_dir), _nats_login(data_dir, url), wait)


def _migrate_streams(url: str, namespace: str, login: tuple[str, str], wait: float = 0.0) -> None:
    from cso.streams import Replicas, StreamMigrationError, migrate_at

    try:
        changes = asyncio.run(migrate_at(url, namespace, Replicas.from_env(), wait=wait, login=login))
    except (StreamMigrationError, ValueError) as e:
        raise fail(f"streams on {redact(url)}: {e}", 2) from None
    except ConnectionError as e:
        raise fail(f"NATS: {e}") from None
    except Exception as e:
        raise fail(f"streams on {redact(url)}: {type(e).__name__}: {e}") from None
    console = _console()
    for change in changes:
        console.print(f"stream {escape(str(change))}")


@app.command()
def rebuild(
    apply: Annotated[bool, typer.Option("--apply", help="Put the rebuilt projection in place.")] = False,
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Rebuild targets' projections from its fact log and compare them row for row with the live
    ones (consumers keep running); with --apply, swap the rebuilt ones in. Exit 1 on differences."""
    import asyncio

    from cso.database import make_engine
    from services.targets.rebuild import rebuild as run_rebuild

    url = env("CSO_DATABASE_URL", "") or recorded(data_dir, "database")
    if url is None:
        raise fail("no database: set CSO_DATABASE_URL, or start the local stack", 2)

    async def go() -> Any:
        engine = make_engine(url)
        try:
            return await run_rebuild(engine, apply=apply)
        finally:
            await engine.dispose()

    report = asyncio.run(go())
    console = _console()
    console.print(f"facts {report.facts}, entities {report.entities}, coverage rows {report.rows}, "
                  f"differences {len(report.differences)}" + (", applied" if report.applied else ""))
    for (region, counter, day), live, rebuilt in report.differences[:50]:
        console.print(f"  {region} {counter} {day}: live {live}, rebuilt {rebuilt}")
    if report.differences and not report.applied:
        raise typer.Exit(1)


@db_app.command("roles")
def db_roles(
    prefix: Annotated[str, typer.Option(
        help="Role names are PREFIX_<service> and PREFIX_dashboard (roles are per server: give each "
             "cso database on one server its own prefix).")] = "cso",
    dashboard_scope: Annotated[list[str] | None, typer.Option(
        help="A region code (repeatable): its dashboard role PREFIX_dashboard_<code> reads only rows "
             "under that region (row-level security; infra/README.md, per-region dashboards). "
             "Password: CSO_DASHBOARD_<code>_DB_PASSWORD.")] = None,
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Create or update one login role per service, owning its schema and nothing else, and a
    read-only dashboard role, in the database of CSO_ADMIN_DATABASE_URL (else the local stack's).

    Safe to run again: it also hands schemas created by another user to their service's role and
    revokes privileges outside the model. Passwords come from the environment only:
    CSO_<SERVICE>_DB_PASSWORD, or the password in CSO_<SERVICE>_DATABASE_URL (SERVICE: REGISTRY,
    TARGETS, TRAINING, NOTIFY, DASHBOARD, DASHBOARD_<code>). A role whose password is not given
    keeps its own. --dashboard-scope 5111 adds cso_dashboard_5111, which reads only rows under 5111
    (row-level security); scoped roles that exist are kept on every run.
    Exit 1 if the database still departs from the model afterwards (each finding is printed).
    """
    from cso.roles import DASHBOARD, SERVICES, ProvisionError, passwords_from_env, provision, scoped

    url = env("CSO_ADMIN_DATABASE_URL", "") or recorded(data_dir, "database")
    if url is None:
        raise fail("no database: set CSO_ADMIN_DATABASE_URL (a superuser of the cso database), or start "
                   f"the local stack (`cso up --data-dir {data_dir}`)", 2)
    try:
        scopes = list(dashboard_scope or [])
        services = (*SERVICES, DASHBOARD, *(scoped(code) for code in scopes))
        passwords = passwords_from_env(os.environ, prefix, services)
        report = asyncio.run(provision(url, passwords, prefix=prefix, scopes=scopes))
    except (ProvisionError, ValueError) as e:
        raise fail(str(e), 2) from None
    except Exception as e:
        raise fail(f"provisioning roles on {redact(url)} failed: {type(e).__name__}: {e}") from None
    console = _console()
    for action in report.actions:
        console.print(f"· {escape(action)}")
    roles = ", ".join(f"{service} {role}" for service, role in report.roles.items())
    console.print(f"database {report.database} on {redact(url)}: roles {roles}"
                  + ("" if report.actions else " (nothing to change)"))
    if report.problems:
        err = _err_console()
        for problem in report.problems:
            err.print(f"[yellow]{escape(problem)}[/yellow]")
        raise fail(f"{len(report.problems)} departure(s) from the role model remain")


@divisions_app.command("import")
def divisions_import(
    path: Annotated[Path | None, typer.Argument(
        help="Directory of NBS CSV files (provinces, cities, areas, streets, villages; .csv or "
             ".csv.gz). Default: the --edition shipped with cso, else the demo edition.",
        exists=True, file_okay=False)] = None,
    edition: Annotated[str | None, typer.Option(
        help="The edition: one shipped with cso (2023: all of China) when no PATH is given, or the "
             "name of PATH's edition.")] = None,
    scope: Annotated[str | None, typer.Option(
        "--scope", "--only",
        help="Comma-separated code prefixes of at most 6 digits (province, city, county), e.g. 44.")] = None,
    previous: Annotated[str | None, typer.Option(
        help="The edition imported before (a shipped edition or a directory): what changed since is "
             "published as DivisionChanged. Default: the newest shipped edition older than --edition.")] = None,
    effective_on: Annotated[str | None, typer.Option(
        help="The day the changes took effect (YYYY-MM-DD). Default: 30 June of the edition's year.")] = None,
    changes: Annotated[Path | None, typer.Option(
        "--changes", exists=True, dir_okay=False,
        help="A change-set file (CSV: old_code,new_code) for changes the names do not reveal; they "
             "override what the names say. Needs a previous edition.")] = None,
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Publish DivisionsImported, one event per county, to CSO_NATS_URL (else the local stack's),
    then a DivisionChanged for each merge, rename, recode or abolition since the previous edition.

    Event ids derive from the content, so importing the same edition again changes nothing.
    """
    from datetime import date

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from cso.divisions import DEMO_DIVISIONS, NbsFormatError, editions
    from cso.divisions.changes import read_declared

    from .stack import import_edition

    try:
        if path is None and edition is None:
            directory, name, before = DEMO_DIVISIONS, "2023", None
        else:
            name = edition or "2023"
            directory = path or editions.edition(name)
            before_name = previous if previous is not None else editions.previous(name)
            before = (None if before_name is None else
                      Path(before_name) if Path(before_name).is_dir() else editions.edition(before_name))
        day = None
        if before is not None:
            day = (date.fromisoformat(effective_on) if effective_on
                   else editions.effective_day(name, date.today()))
        if changes is not None and before is None:
            raise ValueError("--changes: a change set needs the edition before (--previous)")
        declared = read_declared(changes) if changes is not None else None
    except ValueError as e:
        raise fail(str(e), 2) from None
    prefixes = [p.strip() for p in scope.split(",") if p.strip()] if scope else None
    url = _nats_url(data_dir)
    user, password = _nats_login(data_dir, url)
    columns = (TextColumn("counties"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=_err_console(), transient=False) as bar:
        task = bar.add_task("counties", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        try:
            report = asyncio.run(import_edition(url, _namespace(data_dir), directory, prefixes, user=user,
                                                password=password, edition=name, previous=before,
                                                effective_on=day, progress=progress, declared=declared))
        except (NbsFormatError, ValueError) as e:
            raise fail(str(e), 2) from None
        except ConnectionError as e:
            raise fail(f"NATS: {e}") from None
        except Exception as e:
            raise fail(f"publishing to {redact(url)} failed: {type(e).__name__}: {e}") from None
    count = report.counties
    _console().print(f"published {count} {'county' if count == 1 else 'counties'} of edition {name} "
                     f"from {directory} to {redact(url)}")
    if before is not None:
        changed = ", ".join(f"{n} {kind}" for kind, n in report.changes.items()) or "none"
        _console().print(f"changes since {before.name} (effective {day}): {changed}")


@app.command()
def publish(
    file: Annotated[Path, typer.Argument(help="JSON lines: one event envelope per line.",
                                         exists=True, dir_okay=False, readable=True)],
    intake: Annotated[bool, typer.Option(
        "--intake/--direct",
        help="--intake: registry facts go to registry's intake subjects, to be validated and "
             "recorded by registry (other events on their own subjects). --direct: every event on "
             "its own subject.")] = True,
    reconcile: Annotated[bool, typer.Option(
        "--reconcile", help="Ask registry for the receipts of the file's intake facts and publish again "
                            "only those it never took (after it announced lost intake).")] = False,
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Publish events from a file to CSO_NATS_URL (else the local stack's), Nats-Msg-Id = event_id.

    Every line is validated first; if any is bad, the errors are listed and nothing is published.
    With --reconcile, only what registry has no receipt for is published again (cso_local/reconcile.py).
    """
    from contracts import ContractError, Topology, encode, parse_event
    from services.registry.record import REGISTRY_FACTS

    topology = Topology(_namespace(data_dir))
    messages: list[tuple[str, bytes, str]] = []
    sources: list[str] = []
    errors: list[str] = []
    with file.open(encoding="utf-8", errors="surrogateescape") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                envelope = parse_event(line.encode("utf-8", errors="surrogateescape"))
                if intake and isinstance(envelope.payload, REGISTRY_FACTS):
                    # Operators (admin) only: under the fact's own source, or version 1 if it has none.
                    subject = topology.intake_subject_for(envelope.source, envelope.type, envelope.region)
                else:
                    subject = topology.event_subject(envelope.type, envelope.region)
            except ContractError as e:
                errors.extend(f"line {number}: {err.field}: {err.message}" for err in e.errors)
                continue
            except ValueError as e:
                errors.append(f"line {number}: {e}")
                continue
            messages.append((subject, encode(envelope), str(envelope.event_id)))
            sources.append(envelope.source)
    if errors:
        err = _err_console()
        for message in errors:
            err.print(f"[red]{escape(message)}[/red]")
        raise fail(f"{file}: {len(errors)} error(s); nothing was published", 2)
    if not messages:
        _console().print(f"{file}: no events")
        return
    url = _nats_url(data_dir)
    if reconcile:
        _reconcile(url, topology, file, messages, sources, _nats_login(data_dir, url))
        return
    try:
        duplicates = asyncio.run(_publish(url, topology, messages, _nats_login(data_dir, url)))
    except ConnectionError as e:
        raise fail(f"NATS: {e}") from None
    except ValueError as e:
        raise fail(f"nothing was published: {e}") from None
    except Exception as e:
        raise fail(f"publishing to {redact(url)} failed: {type(e).__name__}: {e} (publishing the file again "
                   "is safe: event ids make repeats no-ops)") from None
    to_intake = sum(1 for subject, _, _ in messages if ".intake." in f".{subject}")
    where = [f"{to_intake} on intake subjects for registry to validate"] if to_intake else []
    if len(messages) > to_intake:
        where.append(f"{len(messages) - to_intake} on their own subjects")
    _console().print(f"published {len(messages)} events from {file} to {redact(url)} ({', '.join(where)})")
    if duplicates:
        _console().print(f"{duplicates} of them were already in the stream (same event_id): no-ops")


def _reconcile(url: str, topology: Any, file: Path, messages: list[tuple[str, bytes, str]],
               sources: list[str], login: tuple[str, str]) -> None:
    from uuid import UUID

    from contracts.subjects import source_token
    from cso.connect import connect_nats

    from .reconcile import Entry, ReconcileError, reconcile

    intake = f"{topology.namespace}.cso.intake." if topology.namespace else "cso.intake."
    others = sum(1 for subject, _, _ in messages if not subject.startswith(intake))
    if others:
        raise fail(f"{file}: {others} events are not registry facts on intake; --reconcile covers those only", 2)
    try:
        # A source that cannot stand in the query's subject cannot be asked about: said before anything.
        entries = [Entry(subject, data, UUID(event_id), source_token(source))
                   for (subject, data, event_id), source in zip(messages, sources, strict=True)]
    except ValueError as e:
        raise fail(f"{file}: {e}", 2) from None
    err = _err_console()

    async def run() -> Any:
        nc = await connect_nats(url, "cso-publish-reconcile", user=login[0], password=login[1])
        try:
            return await reconcile(nc, topology, entries, progress=lambda line: err.print(line))
        finally:
            await nc.close()

    try:
        out = asyncio.run(run())
    except ReconcileError as e:
        raise fail(str(e)) from None
    except ConnectionError as e:
        raise fail(f"NATS: {e}") from None
    except Exception as e:
        raise fail(f"reconciling with {redact(url)} failed: {type(e).__name__}: {e} (running it again is "
                   "safe: event ids make repeats no-ops)") from None
    console = _console()
    if out.losses:
        latest = out.losses[0]
        console.print(f"registry noticed {len(out.losses)} loss(es) of intake lately; the latest, detected "
                      f"{latest.get('detected_at')}: after sequence {latest.get('applied_sequence')} of "
                      f"{latest.get('stream')}, facts acknowledged after {latest.get('intact_at')} may be among them")
    for event_id, field, reason in out.refused[:20]:
        console.print(f"[yellow]refused {event_id}: {escape(field)}: {escape(reason)}[/yellow]")
    if len(out.refused) > 20:
        console.print(f"[yellow]… and {len(out.refused) - 20} more refused[/yellow]")
    console.print(f"reconciled {out.events:,} events from {file}: {out.accepted:,} accepted already, "
                  f"{len(out.refused):,} refused, {out.resent:,} sent again"
                  + (f" ({out.duplicates:,} still in the stream)" if out.duplicates else ""))
    console.print(f"{out.calls:,} receipt calls, {out.resent:,} publishes, {out.seconds:.2f} s")


async def _publish(url: str, topology: Any, messages: list[tuple[str, bytes, str]],
                   login: tuple[str, str] = ("", "")) -> int:
    """Publish in order, awaiting each ack; how many the stream already had (duplicates). The
    streams must exist (the migrate step makes them): ValueError naming the missing ones."""
    from cso.connect import connect_nats
    from cso.natsauth import matches
    from cso.streams import missing, missing_message

    nc = await connect_nats(url, "cso-publish", user=login[0], password=login[1])
    try:
        js = nc.jetstream()
        targets = {spec.name for spec in topology.streams for subject, _, _ in messages
                   if any(matches(pattern, subject) for pattern in spec.subjects)}
        if absent := await missing(js, sorted(targets)):
            raise ValueError(missing_message(absent))
        duplicates = 0
        for subject, data, msg_id in messages:
            ack = await js.publish(subject, data, headers={"Nats-Msg-Id": msg_id})
            duplicates += bool(ack.duplicate)
        return duplicates
    finally:
        await nc.close()


# ---------------------------------------------------------------- coverage


def _fmt(value: float | None, kind: str) -> str:
    if value is None:
        return "–"
    if kind == "share":
        percent = round(value * 100, 1)
        return f"{percent:.0f}%" if percent == int(percent) else f"{percent:.1f}%"
    if kind == "average":
        return f"{value:.2f}"
    return f"{value:,.0f}"


def _base_share(counters: dict[str, int]) -> float | None:
    covered = counters.get("streets_with_base", 0) + counters.get("towns_with_base", 0)
    total = counters.get("streets", 0) + counters.get("towns", 0)
    return covered / total if total else None


COVERAGE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("avg_orgs_per_urban_community", "avg/\nurban", "average"),
    ("avg_orgs_per_rural_community", "avg/\nrural", "average"),
    ("streets_with_hub_share", "street\nhub", "share"),
    ("towns_with_hub_share", "town\nhub", "share"),
    ("base_share", "base\ncov.", "share"),
    ("orgs", "orgs", "count"),
    ("party_covered_share", "party\ncov.", "share"),
    ("training_person_times", "train.\np-times", "count"),
)
LEGEND = ("avg/urban, avg/rural: organizations per urban / rural community; street hub, town hub: "
          "share of streets / of towns and townships with an active hub; base cov.: share of streets, "
          "towns and townships covered by an incubation base; orgs: active organizations; party cov.: "
          "share of organizations covered by party organizations; train. p-times: training "
          "person-times of every trainee, pool member or not (cumulative)")
COMPARISON = {">=": "≥", "<=": "≤"}


def coverage_table(body: dict[str, Any]) -> Table:
    as_of = f" as of {body['as_of']}" if body.get("as_of") else ""
    rows = [body, *body["children"]]
    table = Table(title=f"coverage of {body['code']} {body['name']} ({body['tier']}){as_of}",
                  title_justify="left", caption=LEGEND, caption_justify="left", box=box.SIMPLE_HEAD,
                  collapse_padding=True, pad_edge=False)
    # Codes and names are what a row is; the figures give way first on a narrow terminal.
    table.add_column("code", no_wrap=True, min_width=max(len(r["code"]) for r in rows))
    table.add_column("name", no_wrap=True, min_width=max(cell_len(r["name"]) for r in rows))
    for _, header, _ in COVERAGE_COLUMNS:
        table.add_column(header, justify="right")

    def cells(row: dict[str, Any]) -> list[str]:
        figures = {**row["figures"], "base_share": _base_share(row["counters"])}
        return [_fmt(figures.get(name), kind) for name, _, kind in COVERAGE_COLUMNS]

    table.add_row(body["code"], escape(body["name"]), *cells(body), style="bold",
                  end_section=bool(body["children"]))
    for child in body["children"]:
        table.add_row(child["code"], escape(child["name"]), *cells(child))
    return table


def targets_table(body: dict[str, Any], width: int = 200) -> Table:
    from services.targets.domain.metrics import FIGURES

    # As of a past day, statuses are those evaluated for that day: the title says which.
    as_of = f" as of {body['as_of']}" if body.get("as_of") else ""
    table = Table(title=f"targets of {body['code']} {body['name']}{as_of}", title_justify="left",
                  box=box.SIMPLE_HEAD, collapse_padding=True, pad_edge=False)
    rows: list[tuple[str, str, str, str, str, str]] = []
    for t in body["targets"]:
        spec = FIGURES.get(t["figure"])
        kind = spec.kind if spec else "count"
        status = t["status"] or "pending"
        style = STATUS_STYLE.get(status, "")
        value = None if t["value"] is None else float(t["value"])
        comparison = t.get("comparison") or ">="
        threshold = f"{COMPARISON.get(comparison, comparison)} {_fmt(float(t['threshold']), kind)}"
        label = t["target_id"] + (f" ({t['year']})" if t.get("year") else "")
        rows.append((label, f"[{style}]{status}[/{style}]" if style else status, _fmt(value, kind),
                     threshold, str(t["deadline"]), escape(t.get("title") or "")))
    # Everything but the title keeps its width; the title folds into what is left, if enough is.
    used = 0
    for i, (header, justify) in enumerate((("target", "left"), ("status", "left"), ("value", "right"),
                                           ("threshold", "right"), ("deadline", "left"))):
        column = max([len(header), *(cell_len(Text.from_markup(r[i]).plain) for r in rows)])
        table.add_column(header, justify=justify, no_wrap=True, min_width=column)  # type: ignore[arg-type]
        used += column + 2
    with_title = width - used >= 20
    if with_title:
        table.add_column("title", overflow="fold")
    for row in rows:
        table.add_row(*(row if with_title else row[:-1]))
    return table


def _targets_url(url: str | None, data_dir: Path) -> str:
    return (url or env("CSO_TARGETS_URL", "") or recorded(data_dir, "targets")
            or "http://127.0.0.1:8002").rstrip("/")


@app.command()
def coverage(
    region: Annotated[str, typer.Argument(help="Division code: 2, 4, 6, 9 or 12 digits.")],
    as_of: Annotated[str | None, typer.Option("--as-of", help="Coverage as of a day (YYYY-MM-DD).")] = None,
    url: Annotated[str | None, typer.Option(
        help="targets' base URL. Default: CSO_TARGETS_URL, else the local stack's.")] = None,
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """A region and its children with the key figures, then the region's targets; with --as-of,
    both as of the end of that day (facts dated later do not count; statuses are that day's)."""
    base = _targets_url(url, data_dir)
    query = f"?{urllib.parse.urlencode({'as_of': as_of})}" if as_of else ""
    body = _get_from_targets(base, f"/coverage/{urllib.parse.quote(region, safe='')}{query}", data_dir)
    console = _console()
    console.print(coverage_table(body))
    if body["targets"]:
        console.print(targets_table(body, console.width))
    else:
        console.print(f"no targets set for {body['code']} {escape(body['name'])}")


@app.command()
def behind(
    region: Annotated[str, typer.Argument(help="Division code: 2, 4, 6, 9 or 12 digits.")],
    target: Annotated[str | None, typer.Option("--target", help="One target's catalogue id.")] = None,
    limit: Annotated[int, typer.Option("--limit", help="Rows per list, worst first.")] = 20,
    url: Annotated[str | None, typer.Option(
        help="targets' base URL. Default: CSO_TARGETS_URL, else the local stack's.")] = None,
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """The region's townships and communities under each per-community or per-township target's
    threshold, worst first, with how many organizations (or hubs, bases) each lacks."""
    from .behind_table import behind_tables

    query = urllib.parse.urlencode({k: v for k, v in (("target", target), ("limit", limit)) if v is not None})
    body = _get_from_targets(_targets_url(url, data_dir),
                             f"/behind/{urllib.parse.quote(region, safe='')}?{query}", data_dir)
    console = _console()
    for part in behind_tables(body):
        console.print(part)


def _target_cell(target: dict[str, Any]) -> str:
    """A task's target in the ledger: its metric and status; a community task's counted one with
    its value against the threshold (orgs_charity 1/3 pending), since nothing else shows it."""
    text_ = f"{target['metric']} {target.get('status') or ''}".strip()
    if target.get("counted") and target.get("value") is not None:
        text_ = (f"{target['metric']} {target['value']:g}/{target['threshold']:g} "
                 f"{target.get('status') or ''}").strip()
    return text_


def ledger_table(body: dict[str, Any]) -> Table:
    """A plan's tasks, overdue first, with their state, lead units (joint leads as 市委组织部、市民政局),
    deadline and targets."""
    plan, done = body["plan"], body["completion"]
    table = Table(title=f"{plan.get('id')} {escape(str(plan.get('title', '')))} — accepted "
                        f"{done['accepted']}/{done['total']} ({done['share']:.0%}), as of {body['as_of']}",
                  title_justify="left", box=box.SIMPLE_HEAD)
    for header in ("task", "state", "lead", "deadline", "targets", "title"):
        table.add_column(header, overflow="fold", no_wrap=header in ("task", "state", "deadline"))
    for t in body["tasks"]:
        state = "overdue" if t.get("overdue") else t["state"]
        style = {"overdue": "red", "accepted": "green", "submitted": "cyan", "in_progress": "yellow"}.get(state, "")
        lines = t.get("lines") or {}
        if lines:
            state += f" ({lines.get('accepted', 0)}/{lines.get('total', 0)} lines)"
        targets = ", ".join(_target_cell(x) for x in t.get("targets") or [])
        leads = "、".join(t.get("leads") or [t.get("lead") or ""])   # joint leads: 市委组织部、市民政局
        table.add_row(str(t["no"]), f"[{style}]{state}[/{style}]" if style else state, escape(leads),
                      str(t.get("deadline") or ""), escape(targets), escape(str(t.get("title") or "")))
    return table


@app.command()
def replay(
    service: Annotated[Which, typer.Argument(help="Whose outbox to publish again.")],
    since: Annotated[str, typer.Option(help="A time (ISO 8601) or an outbox sequence number.")],
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Publish a service's events again from its outbox (kept for its retention period), e.g. after
    the bus lost messages. The running service's relay sends them; consumers drop what they have."""
    import asyncio
    from datetime import datetime

    import asyncpg

    if service is Which.all:
        raise fail("name one service", 2)
    url = env("CSO_DATABASE_URL", "") or recorded(data_dir, "database")
    if url is None:
        raise fail("no database: set CSO_DATABASE_URL, or start the local stack", 2)
    if since.isdigit():
        where, arg = "seq >= $1", int(since)
    else:
        try:
            moment: Any = datetime.fromisoformat(since)
        except ValueError:
            raise fail(f"--since: {since!r} is neither a time (ISO 8601) nor a sequence number", 2) from None
        where, arg = "created_at >= $1", moment if moment.tzinfo else moment.astimezone()

    from cso import outbox

    async def go() -> int:
        db = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            # The relay publishes what lies above its position: the position moves back.
            await db.execute(outbox.replay_sql(service.value, where), arg)
            return int(await db.fetchval(
                f'SELECT count(*) FROM "{service.value}".outbox o WHERE {outbox.pending(service.value, alias="o")}'))
        finally:
            await db.close()

    count = asyncio.run(go())
    _console().print(f"{service.value}: {count} events queued for publishing again")


@app.command()
def plan(
    plan_id: Annotated[str, typer.Argument(help="The plan's id, e.g. guanghan-2024-chuangtese.")],
    url: Annotated[str | None, typer.Option(
        help="targets' base URL. Default: CSO_TARGETS_URL, else the local stack's.")] = None,
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """A plan's task ledger: every task with its state (overdue first), lead unit and targets."""
    base = _targets_url(url, data_dir)
    _console().print(ledger_table(_get_from_targets(base, f"/plans/{urllib.parse.quote(plan_id, safe='')}",
                                                    data_dir)))


def _get_from_targets(base: str, path: str, data_dir: Path) -> dict[str, Any]:
    """A JSON object from targets' read API; its 404/422 reason exits 2, anything else 1. With the
    stack's token key at hand it sends a short-lived token, for services with CSO_READ_AUTH=scoped."""
    from cso.tokens import bearer

    target = base + path
    try:
        code, body = http_get(target, timeout=30, headers=bearer(data_dir))
    except (OSError, urllib.error.URLError) as e:
        raise fail(f"targets does not answer at {base}: {e}") from None
    if code in (404, 422):
        raise fail(_error_text(body), 2)
    if code != 200 or not isinstance(body, dict):
        raise fail(f"GET {target}: {code} {body}")
    return body


def _error_text(body: Any) -> str:
    if isinstance(body, dict):
        if isinstance(body.get("errors"), list):
            return "; ".join(f"{e.get('field')}: {e.get('message')}" for e in body["errors"])
        if "detail" in body:
            return str(body["detail"])
    return json.dumps(body, ensure_ascii=False) if not isinstance(body, str) else body

# ---------------------------------------------------------------- HTTP tokens


@app.command("import")
def import_sheet(
    file: Annotated[Path, typer.Argument(help="The organizations sheet: .xlsx or CSV, as the template "
                                              "(GET /imports/template.xlsx) lays it out.")],
    apply: Annotated[bool, typer.Option("--apply", help="Apply the sheet (default: a dry run that only "
                                                        "shows each row's verdict).")] = False,
    partial: Annotated[bool, typer.Option("--partial", help="With refused rows, apply the good ones "
                                                            "(default: nothing while a row is refused).")] = False,
    url: Annotated[str | None, typer.Option(
        help="registry's base URL. Default: CSO_REGISTRY_URL, else the local stack's.")] = None,
    token: Annotated[str | None, typer.Option(
        help="A bearer token with the registrar role (default: CSO_TOKEN, else a short-lived national "
             "one signed with the local stack's key).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print registry's whole result as JSON.")] = False,
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Upload organizations (备案, 登记, 枢纽型组织, 孵化基地) from a sheet: a verdict per row (sheet,
    row, field, reason), and with --apply the rows applied. Uploading the same sheet again changes
    nothing. Exits 0 when no row is refused, 1 otherwise, 2 when the sheet cannot be read."""
    import httpx

    from cso.tokens import bearer

    from .upload import counts_line, verdicts_table, with_progress

    base = (url or env("CSO_REGISTRY_URL", "") or recorded(data_dir, "registry") or "http://127.0.0.1:8001")
    try:
        data = file.read_bytes()
    except OSError as e:
        raise fail(f"{file}: {e.strerror or e}", 2) from None
    given = token or env("CSO_TOKEN", "")
    headers = {"Authorization": f"Bearer {given}"} if given else bearer(data_dir, roles=("registrar",))
    console = _console()
    try:
        status, result = with_progress(_err_console(), base, data, apply, partial, headers)
    except httpx.HTTPError as e:
        raise fail(f"registry does not answer at {base}: {e}") from None
    if as_json:
        typer.echo(json.dumps(result, ensure_ascii=False, indent=1))
    if "counts" not in result:
        raise fail(f"{status}: {_error_text(result)}", 2)
    if not as_json:
        if result["refused"]:
            console.print(verdicts_table(result))
        for ignored in result.get("ignored_sheets") or []:
            console.print(f"ignored sheet {escape(ignored['sheet'])}: {escape(ignored['reason'])}")
        console.print(counts_line(result))
    if result["refused"]:
        raise typer.Exit(1)


@app.command()
def token(
    role: Annotated[list[str], typer.Option(
        "--role", "-r", help="A role the token grants (repeat for several): registrar, trainer, planner, "
                             "subscriber, notify_admin, pii_reader, admin.")],
    region: Annotated[str, typer.Option(
        help="The division code the token covers: 51 a province, 5106 a city, 510681 a county, … "
             "(00: national).")],
    sub: Annotated[str | None, typer.Option(
        help="Who holds it (recorded with personal data requests; a subscriber's recipient). "
             "Default: your user name.")] = None,
    source: Annotated[str | None, typer.Option(
        help="The source of the events filed with it (default: its sub).")] = None,
    ttl: Annotated[str, typer.Option(help="How long it is good: 30m, 8h, 2d (at most 30d).")] = "8h",
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Print a signed bearer token (JWT) for the services' HTTP APIs, signed with the local stack's
    key (DATA_DIR/jwt.secret, made by `cso up`) or CSO_JWT_SECRET. Use it as
    `-H "authorization: Bearer $(cso token --role registrar --region 510681)"`."""
    import getpass

    from cso.tokens import TokenError, claims, mint, parse_ttl, signing_key

    try:
        key = signing_key(data_dir)
        made = claims(role, region, sub or getpass.getuser(), parse_ttl(ttl), source)
    except TokenError as e:
        raise fail(str(e), 2) from None
    typer.echo(mint(key, made))


# ---------------------------------------------------------------- NATS users and permissions


class PasswordMode(StrEnum):
    env = "env"
    bcrypt = "bcrypt"
    plain = "plain"


@app.command("nats-config")
def nats_config(
    publisher: Annotated[list[str] | None, typer.Option(
        "--publisher", "-p", help="An outside publisher system and its region: NAME=REGION, e.g. "
                                  "leshan-register=5111 (province 2, city 4 or county 6 digits). Repeat.")] = None,
    namespace: Annotated[str | None, typer.Option(
        help="Subject namespace (CSO_NAMESPACE); empty in production.")] = None,
    passwords: Annotated[PasswordMode, typer.Option(
        help="env: `$CSO_NATS_<USER>_PASSWORD` references that nats-server resolves from its environment; "
             "bcrypt: hashes of those variables' values now (rotate by regenerating and reloading); "
             "plain: the values themselves (tests only).")] = PasswordMode.env,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Write here (mode 0600 unless --passwords env) instead of stdout.")] = None,
    explain: Annotated[bool, typer.Option(
        "--explain", help="Print who may publish and subscribe what, and the password variables, instead.")] = False,
) -> None:
    """The `authorization` block of nats-server for cso: a user per service, the divisions importer,
    admin, and each outside publisher bound to its region (include it from nats.conf)."""
    import shlex

    from contracts import Topology
    from cso.natsauth import Publisher, Users, render
    from cso.natsauth import explain as explain_permissions

    try:
        users = Users(publishers=tuple(Publisher.parse(p) for p in publisher or ()))
        topology = Topology(namespace if namespace is not None else env("CSO_NAMESPACE", ""))
        if explain:
            typer.echo(explain_permissions(topology, users))
            return
        args = [f"--publisher {shlex.quote(p.name + '=' + p.region)}" for p in users.publishers]
        if topology.namespace:
            args.append(f"--namespace {topology.namespace}")
        if passwords is not PasswordMode.env:
            args.append(f"--passwords {passwords.value}")
        command = " ".join(["cso nats-config", *args])
        text = render(topology, users, passwords=passwords.value,
                      header=f"Generated by `{command}`; do not edit, generate again.\n"
                             "Users, permissions and password rotation: infra/README.md, "
                             "\"NATS credentials and permissions\".")
    except ValueError as e:
        raise fail(str(e), 2) from None
    if output is None:
        typer.echo(text, nl=False)
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    if passwords is not PasswordMode.env:
        tmp.chmod(0o600)
    tmp.replace(output)
    _err_console().print(f"wrote {output} ({len(users.publishers)} publishers, passwords: {passwords.value})")


@publisher_app.command("add")
def publisher_add(
    spec: Annotated[str, typer.Argument(help="NAME=REGION, e.g. guanghan-register=510681 (province 2, city 4 "
                                             "or county 6 digits).")],
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Let an outside system publish registry facts of its region on the local stack's NATS: a new
    NATS user (cso.natsauth's publisher permissions), applied to the running nats-server by a reload.
    Its password is printed once, here; only its hash is kept."""
    from cso.natsauth import Publisher, inbox_prefix

    from .localnats import add_publisher, users_path

    state = Stack(data_dir).state
    if (state.get("nats") or {}).get("auth") in ("off", "external") and not state.get("stopped_at"):
        raise fail("the running stack's NATS has no users of cso up (--nats-auth off, or CSO_NATS_URL): "
                   "nothing to add a publisher to", 2)
    try:
        publisher = Publisher.parse(spec)
        password, reloaded = add_publisher(data_dir, publisher, _namespace(data_dir))
    except ValueError as e:
        raise fail(str(e), 2) from None
    console = _console()
    console.print(f"NATS user {publisher.name} may publish registry facts of region {publisher.region} "
                  f"(its users: {users_path(data_dir)})")
    console.print(f"password: {password}")
    console.print(f"[dim]shown only now; connect with user={publisher.name}, that password and "
                  f"inbox_prefix={inbox_prefix(publisher.name)}[/dim]")
    if not reloaded:
        console.print("[dim]no running stack in this data dir: the user applies from the next `cso up`[/dim]")


if __name__ == "__main__":
    app()
