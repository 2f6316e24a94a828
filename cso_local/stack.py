"""The local stack behind `cso up`: NATS and PostgreSQL (from the venv's wheels, or the servers
CSO_NATS_URL / CSO_DATABASE_URL name), the database and its migrations, the four services (registry,
targets, training, notify) as uvicorn processes, and the demo divisions. On its own PostgreSQL the
stack gives each service its own role, the owner of its schema (cso.roles); on a server named by
CSO_DATABASE_URL every service uses that URL.

Everything lives under one data dir (default `.cso`): `nats/` and `postgres/` hold the servers'
data (a later start reuses it), `logs/` the services' output, and `stack.json` where each part
listens and its pid, so `cso status`, `cso down` and the other commands find a stack that another
process started.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from cso import natsauth
from cso.connect import connect_nats
from cso.settings import Settings, redact

from . import localnats, servers

STACK_FILE = "stack.json"
DATABASE = "cso"
ROOT = Path(__file__).resolve().parents[1]
READY_TIMEOUT = 60.0
DIVISIONS_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
STREAMS_CHECK_SECONDS = 5.0  # how often `cso up` looks for streams a lost NATS store lost
ENDPOINTS = ("/healthz", "/readyz", "/metrics", "/docs")

State = Literal["ready", "up", "not ready", "down"]


class StackError(RuntimeError):
    """The stack cannot start (or a part of it died); the message says why, with a log tail."""


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    factory: str  # module:function for `uvicorn --factory`
    migrations: str | None  # module with run_migrations(settings); None: no database, no NATS user
    endpoints: tuple[str, ...] = ENDPOINTS


SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec("registry", "services.registry.app:create_app", "services.registry.app"),
    ServiceSpec("targets", "services.targets.app:create_app", "services.targets.app"),
    ServiceSpec("training", "services.training.app:create_app", "services.training.app"),
    ServiceSpec("notify", "services.notify.app:create_app", "services.notify.app"),
    # The officials' web console (services/console): reads the four over HTTP with the user's token.
    ServiceSpec("console", "services.console.app:create_app", None, ("/", "/healthz", "/readyz")),
)
BACKENDS = tuple(s for s in SERVICES if s.migrations)  # the services that own data


@dataclass(frozen=True)
class Part:
    """One part of the stack as `status()` sees it."""

    name: str
    state: State
    url: str | None
    pid: int | None = None
    detail: str = ""
    managed: bool = True  # started by the stack (False: a server named by CSO_*_URL)
    restarts: int = 0  # by `cso up` (a death) or `cso restart`, since the stack started


@dataclass
class _Service:
    spec: ServiceSpec
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    log_start: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass(frozen=True)
class Died:
    """A service process that exited while the stack was running."""

    name: str
    returncode: int | None  # None: gone, but not our child, so how it ended is unknown
    log: Path
    tail: str
    pid: int | None = None

    @property
    def how(self) -> str:
        code = self.returncode
        if code is None:
            return "is gone (exit status unknown)"
        if code is not None and code < 0:
            try:
                return f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"was killed by signal {-code}"
        return f"exited with code {code}"


# ---------------------------------------------------------------- small helpers


def _opener() -> urllib.request.OpenerDirector:
    # An explicit empty ProxyHandler: an http_proxy in the environment must not see 127.0.0.1.
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str, timeout: float = 5.0, headers: Mapping[str, str] | None = None) -> tuple[int, Any]:
    """(status, JSON body or text) of a GET; raises OSError when nothing answers."""
    try:
        with _opener().open(urllib.request.Request(url, headers=dict(headers or {})), timeout=timeout) as resp:
            status, raw = int(resp.status), resp.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw or b"null")
    except ValueError:
        return status, raw.decode(errors="replace")


class NotReady(Exception):
    """A service's /readyz did not answer 200 in time, or its process ended while starting."""

    def __init__(self, last: str, exit_code: int | None = None) -> None:
        super().__init__(last)
        self.last = last              # what /readyz last answered, or why nothing did
        self.exit_code = exit_code    # the process's, when it ended while starting


def wait_ready(url: str, deadline: float, exit_code: Callable[[], int | None] = lambda: None) -> None:
    """Until `url`/readyz answers 200, asked every 0.2 s; NotReady when the monotonic `deadline`
    passes or `exit_code()` (a process's poll) says the process ended. `cso up` waits so on each
    service it starts, `cso restart` on the one it restarted."""
    last = "no answer"
    while True:
        if (code := exit_code()) is not None:
            raise NotReady(last, code)
        try:
            status, body = http_get(f"{url}/readyz", timeout=2)
            if status == 200:
                return
            last = f"{status} {body}"
        except OSError as e:
            last = str(e)
        if time.monotonic() >= deadline:
            raise NotReady(last)
        time.sleep(0.2)


def _alive(pid: int | None) -> bool:
    """True while pid runs (a zombie, dead but not yet reaped, counts as gone)."""
    return bool(pid) and servers.pid_alive(pid)  # type: ignore[arg-type]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _is_service(pid: int | None, factory: str) -> bool:
    """pid is alive and still serves that app (guards against pid reuse)."""
    if not _alive(pid):
        return False
    assert pid is not None
    line = _cmdline(pid)
    return not Path(f"/proc/{pid}").exists() or ("cso.http_server" in line and factory in line)


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _port_free(port: int) -> bool:
    return servers.port_is_free(port)


def tail(path: Path, offset: int = 0, lines: int = 30) -> str:
    """The last lines of a log, from offset on (this run's part)."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError as e:
        return f"(no log at {path}: {e})"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


async def ensure_database(admin_url: str, database: str = DATABASE) -> bool:
    """Create `database` on the server of admin_url if it is missing; True if it was created."""
    import importlib

    asyncpg: Any = importlib.import_module("asyncpg")  # untyped; Any keeps mypy quiet without stubs
    conn = await asyncpg.connect(admin_url, timeout=10)
    try:
        if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database):
            return False
        try:
            await conn.execute(f'CREATE DATABASE "{database}"')
        except asyncpg.DuplicateDatabaseError:
            return False  # created by someone else meanwhile
        return True
    finally:
        await conn.close()


def read_stack_file(data_dir: Path) -> dict[str, Any] | None:
    try:
        raw = json.loads((Path(data_dir) / STACK_FILE).read_text())
    except (OSError, ValueError):
        return None
    return raw if isinstance(raw, dict) else None


def _write_stack_file(data_dir: Path, state: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=data_dir, prefix=".stack.", suffix=".json")
    with os.fdopen(fd, "w") as out:
        json.dump(state, out, indent=2)
        out.write("\n")
    # 0600: a CSO_DATABASE_URL recorded here may carry a password.
    os.chmod(tmp, 0o600)
    os.replace(tmp, data_dir / STACK_FILE)


def recorded(data_dir: Path, key: str) -> str | None:
    """A URL of a running local stack from its stack.json: "nats", "database" or a service name."""
    state = read_stack_file(data_dir)
    if state is None or state.get("stopped_at"):
        return None
    if key == "nats":
        value = state.get("nats", {}).get("url")
    elif key == "database":
        value = state.get("postgres", {}).get("url")
    else:
        value = state.get("services", {}).get(key, {}).get("url")
    return str(value) if value else None


# ---------------------------------------------------------------- the stack


@dataclass
class Stack:
    """NATS, PostgreSQL and the four services on one machine, data kept under `data_dir`.

    `nats_url` / `database_url` name servers to use instead of starting ones from the wheels.
    `owner_pid` is the process that keeps the stack running (`cso up`): `stop_recorded` (`cso
    down`) asks it to stop; without one it stops the recorded processes itself.
    """

    data_dir: Path = field(default_factory=lambda: Path(".cso"))
    registry_port: int = 8001
    targets_port: int = 8002
    training_port: int = 8003
    notify_port: int = 8004
    console_port: int = 8000
    demo: bool = True
    nats_url: str | None = None
    database_url: str | None = None
    namespace: str = ""
    owner_pid: int | None = None
    ready_timeout: float = READY_TIMEOUT
    # `-c` settings of a PostgreSQL the stack starts itself (servers.postgres_sizing(), say).
    postgres_settings: Mapping[str, str] = field(default_factory=dict)
    # Our own nats-server requires a user and password of everyone (cso_local.localnats); False runs it
    # open to anyone on the machine, loudly. Outside publishers: `NAME=REGION` each.
    nats_auth: bool = True
    publishers: Sequence[str] = ()
    log: Callable[[str], None] = lambda _message: None

    _nats: servers.ServerHandle | None = field(default=None, init=False, repr=False)
    _nats_users: localnats.LocalUsers | None = field(default=None, init=False, repr=False)
    _nats_conf: Path | None = field(default=None, init=False, repr=False)
    _postgres: servers.ServerHandle | None = field(default=None, init=False, repr=False)
    _services: dict[str, _Service] = field(default_factory=dict, init=False, repr=False)
    _roles: dict[str, str] = field(default_factory=dict, init=False, repr=False)
    _state: dict[str, Any] = field(default_factory=dict, init=False, repr=False)
    _settings: Settings | None = field(default=None, init=False, repr=False)
    _auth: dict[str, str] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _streams_checked: float = field(default=0.0, init=False, repr=False)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).expanduser().absolute()

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def state(self) -> dict[str, Any]:
        """What stack.json says (after start(): this run's urls and pids)."""
        return self._state or read_stack_file(self.data_dir) or {}

    @property
    def service_ports(self) -> set[int]:
        """The services' ports: the servers, which start first, must leave them free."""
        return {self.port_of(spec.name) for spec in SERVICES}

    def port_of(self, name: str) -> int:
        return {"registry": self.registry_port, "targets": self.targets_port,
                "training": self.training_port, "notify": self.notify_port, "console": self.console_port}[name]

    # ------------------------------------------------------------ start

    def start(self) -> dict[str, Any]:
        """Bring everything up; on any failure stop what was started and raise StackError."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(exist_ok=True)
        try:
            self._refuse_running()
            self._clear_leftovers()
            for spec in SERVICES:
                port = self.port_of(spec.name)
                if not _port_free(port):
                    raise StackError(f"{spec.name}: port {port} on 127.0.0.1 is already in use; "
                                     f"choose another with --{spec.name}-port")
            nats_url, monitor_url = self._start_nats()
            database_url, admin_url = self._start_postgres()
            settings = Settings(database_url=database_url, nats_url=nats_url, namespace=self.namespace)
            self._settings = settings
            if self._postgres is not None:
                self._provision_roles(database_url)
            self._migrate(settings)
            self._migrate_streams(nats_url)
            for spec in SERVICES:
                self._spawn(spec, settings)
            for service in self._services.values():
                self._wait_ready(service)
            self._state = self._describe(nats_url, monitor_url, database_url, admin_url)
            _write_stack_file(self.data_dir, self._state)
            if self.demo:
                self._import_demo(settings)
            return self._state
        except BaseException:
            self.stop()
            raise

    def _refuse_running(self) -> None:
        state = read_stack_file(self.data_dir)
        if state is None or state.get("stopped_at"):
            return
        owner = state.get("owner_pid")
        if isinstance(owner, int) and owner != os.getpid() and _alive(owner):
            raise StackError(f"a stack is already running from {self.data_dir} (cso up, pid {owner}); "
                             f"`cso status` shows it, `cso down` stops it")

    def _clear_leftovers(self) -> None:
        """Services of an earlier run whose owner died without stopping them hold their ports."""
        state = read_stack_file(self.data_dir) or {}
        for spec in SERVICES:
            pid = state.get("services", {}).get(spec.name, {}).get("pid")
            if isinstance(pid, int) and _is_service(pid, spec.factory):
                self.log(f"stopping {spec.name} left over from an earlier run (pid {pid})")
                _terminate(pid)

    def _start_nats(self) -> tuple[str, str | None]:
        if self.nats_url:
            if not servers.answers(self.nats_url):
                raise StackError(f"NATS at {redact(self.nats_url)} (CSO_NATS_URL) does not answer")
            self.log(f"using NATS at {redact(self.nats_url)}")
            return self.nats_url, None
        config = self._nats_config()
        self.log("starting nats-server" + ("" if config else " WITHOUT AUTHENTICATION"))
        self._nats_conf = config
        self._nats = self._run_nats()
        return self._nats.url, self._nats.monitor_url

    def _run_nats(self, port: int | None = None, monitor_port: int | None = None) -> servers.ServerHandle:
        """nats-server on the data dir; a restart (cso_local.supervisor) passes the ports it had, and
        the same auth.conf (which `cso publisher add` keeps current)."""
        try:
            return servers.start_nats(localnats.nats_dir(self.data_dir), port, monitor_port,
                                      config=self._nats_conf, avoid=self.service_ports)
        except servers.ServerStartError as e:
            raise StackError(f"nats-server did not start: {e}") from None

    def _nats_config(self) -> Path | None:
        """auth.conf of the stack's NATS users (made on the first start), or None when asked to run
        without authentication (then said loudly: anyone on this machine may publish anything)."""
        if not self.nats_auth:
            self.log("WARNING: NATS without authentication (--nats-auth off): anyone on this machine can "
                     "send commands and publish events on the bus, past every HTTP token")
            return None
        from contracts import Topology

        try:
            users, shown = localnats.ensure(self.data_dir, [natsauth.Publisher.parse(p) for p in self.publishers])
            config = localnats.write_config(self.data_dir, users, Topology(self.namespace))
        except ValueError as e:
            raise StackError(f"NATS users: {e}") from None
        self._nats_users = users
        self.log(f"NATS users and their passwords in {users.path} (services, divisions, admin"
                 + (f", outside publishers {', '.join(p.name for p in users.publishers)})"
                    if users.publishers else ")"))
        for name, password in shown.items():
            # Kept nowhere (only its hash is): the one time it is shown.
            self.log(f"new NATS publisher {name}: password {password} (shown once; give it to its system)")
        return config

    def _start_postgres(self) -> tuple[str, str]:
        if self.database_url:
            if not servers.answers(self.database_url):
                raise StackError(f"PostgreSQL at {redact(self.database_url)} (CSO_DATABASE_URL) "
                                 "does not answer")
            self.log(f"using PostgreSQL at {redact(self.database_url)}")
            name = urlsplit(self.database_url).path.lstrip("/")
            if name and name != "postgres":
                try:
                    if asyncio.run(ensure_database(with_database(self.database_url, "postgres"), name)):
                        self.log(f"created database {name}")
                except Exception as e:
                    # No rights on the server's postgres db, say: the migrations will tell.
                    self.log(f"could not check for database {name}: {type(e).__name__}: {e}")
            return self.database_url, self.database_url
        self.log("starting PostgreSQL")
        self._postgres = self._run_postgres()
        admin_url = self._postgres.url
        try:
            if asyncio.run(ensure_database(admin_url)):
                self.log(f"created database {DATABASE}")
        except Exception as e:
            raise StackError(f"creating database {DATABASE} on {admin_url} failed: "
                             f"{type(e).__name__}: {e}") from e
        return with_database(admin_url, DATABASE), admin_url

    def _run_postgres(self, port: int | None = None) -> servers.ServerHandle:
        """PostgreSQL on the data dir; a restart (cso_local.supervisor) passes the port it had."""
        try:
            return servers.start_postgres(self.data_dir / "postgres", port, settings=self.postgres_settings,
                                          avoid=self.service_ports)
        except servers.ServerStartError as e:
            raise StackError(f"PostgreSQL did not start: {e}") from None

    def _provision_roles(self, database_url: str) -> None:
        """Our own PostgreSQL: each service connects as its own role (cso.roles), which owns its
        schema; local trust authentication, so the roles need no password."""
        from cso import roles

        try:
            report = asyncio.run(roles.provision(database_url))
        except Exception as e:
            raise StackError(f"creating the services' database roles on {redact(database_url)} failed: "
                             f"{type(e).__name__}: {e}") from e
        for action in report.actions:
            self.log(action)
        self._roles = {spec.name: report.roles[spec.name] for spec in BACKENDS}

    def _service_settings(self, name: str, settings: Settings) -> Settings:
        """settings with the URL of the service's own role (when the stack provisioned roles)."""
        from dataclasses import replace

        from cso.roles import role_url

        role = self._roles.get(name)
        return settings if role is None else replace(settings, database_url=role_url(settings.database_url, role))

    def _migrate(self, settings: Settings) -> None:
        for spec in BACKENDS:
            self.log(f"migrating {spec.name}" + (f" as {self._roles[spec.name]}" if spec.name in self._roles else ""))
            try:
                migrate_one(spec.name, self._service_settings(spec.name, settings))
            except Exception as e:
                raise StackError(f"migrating {spec.name} on {redact(settings.database_url)} failed: "
                                 f"{type(e).__name__}: {e}") from e

    def _migrate_streams(self, nats_url: str) -> None:
        """The operator's step for the streams (cso/streams.py), as NATS's admin: the services may
        not create them."""
        from cso.streams import migrate_at

        try:
            changes = asyncio.run(migrate_at(nats_url, self.namespace, login=self._admin_login()))
        except Exception as e:
            raise StackError(f"creating the streams on {redact(nats_url)} failed: {type(e).__name__}: {e}") from e
        for change in changes:
            if change.action != "unchanged":
                self.log(f"stream {change}")
        self._streams_checked = time.monotonic()

    def _admin_login(self) -> tuple[str, str]:
        """NATS's admin of our own nats-server (cso_local.localnats); else CSO_NATS_USER's, from the
        environment (a server named by CSO_NATS_URL)."""
        if self._nats_users is None:
            return "", ""
        return natsauth.ADMIN, self._nats_users.password(natsauth.ADMIN)

    def restore_streams(self, every: float = STREAMS_CHECK_SECONDS) -> list[str]:
        """For the supervision loop: at most every `every` seconds, create again the streams a lost
        NATS store lost (the services wait for them, they do not create them); what it did, logged.
        Never raises: NATS may be down or restarting, and the next call tries again."""
        from cso.streams import migrate_at

        if time.monotonic() - self._streams_checked < every:
            return []
        self._streams_checked = time.monotonic()
        url = self.state.get("nats", {}).get("url")
        if not url:
            return []
        try:
            changes = asyncio.run(migrate_at(url, self.namespace, login=self._admin_login()))
        except Exception as e:
            self.log(f"checking the streams failed ({type(e).__name__}: {e}); trying again in {every:.0f}s")
            return []
        done = [str(change) for change in changes if change.action != "unchanged"]
        for line in done:
            self.log(f"stream {line} (the NATS store had lost or changed it)")
        return done

    def _spawn(self, spec: ServiceSpec, settings: Settings) -> None:
        port = self.port_of(spec.name)
        log = self.logs_dir / f"{spec.name}.log"
        database_url = self._service_settings(spec.name, settings).database_url
        env = {**os.environ, "CSO_DATABASE_URL": database_url, "CSO_NATS_URL": settings.nats_url,
               "CSO_NAMESPACE": settings.namespace, "PYTHONUNBUFFERED": "1", **self._auth_env()}
        if self._nats_users is not None and spec.migrations:  # its own NATS user (cso_local.localnats)
            env.update(localnats.service_env(self._nats_users, spec.name))
        # Where the others are (the console reads them over HTTP: services/console/upstream.py).
        env.update({f"CSO_{other.name.upper()}_URL": f"http://127.0.0.1:{self.port_of(other.name)}"
                    for other in BACKENDS})
        # No access log: the readiness polls would bury what the service itself says.
        # The same launcher as the image: uvicorn with the CSO_HTTP_* limits (cso/http_server.py).
        cmd = [sys.executable, "-m", "cso.http_server", spec.factory,
               "--host", "127.0.0.1", "--port", str(port), "--no-access-log"]
        with log.open("ab") as out:
            start = out.tell()
            out.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd[1:])}\n".encode())
            out.flush()
            # Own session: Ctrl-C in the terminal reaches `cso up` only, which stops the services
            # itself, in order, before the servers they use.
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    cwd=ROOT, env=env, start_new_session=True)
        self.log(f"starting {spec.name} on http://127.0.0.1:{port} (pid {proc.pid})")
        self._services[spec.name] = _Service(spec, port, proc, log, start)

    def _auth_env(self) -> dict[str, str]:
        """CSO_AUTH=jwt and the data dir's key (made on first start), or CSO_AUTH=off when the
        environment asks for it: decided once a run (cso/tokens.py)."""
        if not self._auth:
            from cso.tokens import TokenError, service_env

            try:
                self._auth = service_env(self.data_dir, log=self.log)
            except TokenError as e:
                raise StackError(str(e)) from None
        return self._auth

    def _wait_ready(self, service: _Service) -> None:
        try:
            wait_ready(service.url, time.monotonic() + self.ready_timeout, service.proc.poll)
        except NotReady as e:
            log = f"log tail of {service.log}:\n{tail(service.log, service.log_start)}"
            if e.exit_code is not None:
                raise StackError(f"{service.spec.name} exited with code {e.exit_code} while starting; {log}") from None
            raise StackError(f"{service.spec.name} not ready within {self.ready_timeout:.0f}s "
                             f"(/readyz: {e.last}); {log}") from None

    def _describe(self, nats_url: str, monitor_url: str | None, database_url: str,
                  admin_url: str) -> dict[str, Any]:
        return {
            "data_dir": str(self.data_dir),
            "owner_pid": self.owner_pid,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "stopped_at": None,
            "namespace": self.namespace,
            "nats": {"url": nats_url, "monitor_url": monitor_url,
                     "pid": self._nats.pid if self._nats else None, "managed": self._nats is not None,
                     # "users" (never a password here), "off" (--nats-auth off) or "external".
                     "auth": self._nats_auth_mode(),
                     "users_file": str(self._nats_users.path) if self._nats_users else None},
            "postgres": {"url": database_url, "admin_url": admin_url,
                         "pid": self._postgres.pid if self._postgres else None,
                         "managed": self._postgres is not None},
            "services": {name: {"url": s.url, "port": s.port, "pid": s.proc.pid, "log": str(s.log),
                                "database_role": self._roles.get(name),
                                "endpoints": [s.url + e for e in s.spec.endpoints]}
                         for name, s in self._services.items()},
        }

    def _nats_auth_mode(self) -> str:
        if self._nats is None:
            return "external"
        return "users" if self._nats_users is not None else "off"

    def _import_demo(self, settings: Settings) -> None:
        from cso.divisions import DEMO_DIVISIONS, county_payloads

        self.log(f"publishing the demo divisions from {DEMO_DIVISIONS}")
        user, password = ((natsauth.DIVISIONS, self._nats_users.password(natsauth.DIVISIONS))
                          if self._nats_users is not None else ("", ""))
        count = asyncio.run(import_divisions(settings.nats_url, settings.namespace, DEMO_DIVISIONS,
                                             user=user, password=password))
        counties = [p.county.code for p in county_payloads(DEMO_DIVISIONS)]
        self.log(f"published {count} counties; waiting for registry and targets to apply them")
        self._wait_divisions(counties)

    def _wait_divisions(self, counties: Sequence[str]) -> None:
        """Until both services know every county (registry's region API, targets' coverage)."""
        urls = {s.spec.name: s.url for s in self._services.values()}
        pending = [f"{urls['registry']}/regions/{c}/organizations?limit=1" for c in counties]
        pending += [f"{urls['targets']}/coverage/{c}" for c in counties]
        deadline = time.monotonic() + DIVISIONS_TIMEOUT
        while pending:
            still: list[str] = []
            for url in pending:
                try:
                    ok = http_get(url)[0] == 200
                except OSError:
                    ok = False
                if not ok:
                    still.append(url)
            pending = still
            if not pending:
                return
            if died := self.dead():
                raise StackError(f"{died[0].name} {died[0].how} while applying the divisions; "
                                 f"log tail of {died[0].log}:\n{died[0].tail}")
            if time.monotonic() >= deadline:
                raise StackError(f"the divisions were not applied within {DIVISIONS_TIMEOUT:.0f}s "
                                 f"(still unknown at {pending[0]}); see {self.logs_dir}")
            time.sleep(0.3)

    # ------------------------------------------------------------ running

    def dead(self) -> list[Died]:
        """Services this stack started that have exited since."""
        out = []
        for name, s in self._services.items():
            code = s.proc.poll()
            if code is not None:
                out.append(Died(name, code, s.log, tail(s.log, s.log_start), s.proc.pid))
        return out

    # ------------------------------------------------------------ one part (for cso_local.supervisor)

    def restartable(self) -> list[str]:
        """The parts this stack runs itself, servers first: what a restart may start again."""
        names = [kind for kind, handle in (("nats", self._nats), ("postgres", self._postgres)) if handle]
        return names + list(self._services)

    def exit_of(self, name: str) -> Died | None:
        """How part `name` ended, or None while it runs."""
        if name in self._services:
            s = self._services[name]
            code = s.proc.poll()
            return None if code is None else Died(name, code, s.log, tail(s.log, s.log_start), s.proc.pid)
        handle = self._server(name)
        # exit_code first: pid_alive reaps an adopted postmaster without keeping its status.
        code = servers.exit_code(handle.pid)
        if code is None and servers.pid_alive(handle.pid):
            return None
        log = handle.data_dir / ("nats.log" if name == "nats" else servers.PG_LOG)
        return Died(name, code, log, tail(log), handle.pid)

    def stop_part(self, name: str) -> None:
        """Stop one part as `stop` would (SIGTERM, then SIGKILL after STOP_TIMEOUT; a server's
        own clean shutdown), to start it again with start_part."""
        if name in self._services:
            proc = self._services[name].proc
            if proc.poll() is None:
                self.log(f"stopping {name} (pid {proc.pid})")
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self.log(f"{name} did not stop within {STOP_TIMEOUT:.0f}s; killing it")
                    proc.kill()
                    proc.wait()
            return
        handle = self._server(name)
        self.log(f"stopping {name} (pid {handle.pid})")
        servers.stop(handle)

    def start_part(self, name: str) -> int:
        """Start part `name` again on the port it had (clients reconnect to the same URL); its
        pid. A service is started, not awaited: `exit_of` tells if it dies starting."""
        if name in self._services:
            assert self._settings is not None, "start_part before start"
            spec = self._services[name].spec
            self._spawn(spec, self._settings)
            return self._services[name].proc.pid
        old = self._server(name)
        if name == "nats":
            assert old.monitor_url is not None
            self._nats = self._run_nats(old.port, urlsplit(old.monitor_url).port)
            return self._nats.pid
        self._postgres = self._run_postgres(old.port)
        return self._postgres.pid

    def record_part(self, name: str, **fields: Any) -> None:
        """Update part `name` in stack.json (atomically), so `cso status` follows a restart."""
        part = self._state["services"][name] if name in self._services else self._state[name]
        part.update(fields)
        _write_stack_file(self.data_dir, self._state)

    def _server(self, name: str) -> servers.ServerHandle:
        handle = {"nats": self._nats, "postgres": self._postgres}.get(name)
        if handle is None:
            raise StackError(f"{name} is not a part this stack runs (one of {', '.join(self.restartable())})")
        return handle

    # ------------------------------------------------------------ stop

    def stop(self) -> None:
        """Stop what this Stack started: services first, then NATS and PostgreSQL. Idempotent."""
        with self._lock:
            services = list(self._services.values())
            for s in services:
                if s.proc.poll() is None:
                    self.log(f"stopping {s.spec.name} (pid {s.proc.pid})")
                    with contextlib.suppress(ProcessLookupError):
                        s.proc.send_signal(signal.SIGTERM)
            for s in services:
                try:
                    s.proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self.log(f"{s.spec.name} did not stop within {STOP_TIMEOUT:.0f}s; killing it")
                    s.proc.kill()
                    s.proc.wait()
            self._services.clear()
            for attr in ("_nats", "_postgres"):
                handle: servers.ServerHandle | None = getattr(self, attr)
                if handle is not None:
                    self.log(f"stopping {'nats-server' if handle.kind == 'nats' else 'PostgreSQL'} "
                             f"(pid {handle.pid})")
                    servers.stop(handle)
                    setattr(self, attr, None)
            if self._state:
                self._state["stopped_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
                _write_stack_file(self.data_dir, self._state)
                self._state = {}

    def stop_recorded(self, timeout: float = 60.0) -> list[str]:
        """`cso down`: stop the stack recorded in data_dir, started by any process.

        If its owner (`cso up`) runs, it is asked to stop (SIGTERM) and does so in order; else the
        recorded services are terminated and the servers in the data dir stopped. Returns what
        was stopped.
        """
        state = read_stack_file(self.data_dir) or {}
        stopped: list[str] = []
        owner = state.get("owner_pid")
        if isinstance(owner, int) and owner != os.getpid() and _alive(owner) and not state.get("stopped_at"):
            self.log(f"asking cso up (pid {owner}) to stop")
            os.kill(owner, signal.SIGTERM)
            if _wait_gone(owner, timeout):
                stopped.append(f"cso up (pid {owner})")
            else:
                self.log(f"cso up (pid {owner}) did not stop within {timeout:.0f}s; stopping its parts")
        for spec in SERVICES:
            pid = state.get("services", {}).get(spec.name, {}).get("pid")
            if isinstance(pid, int) and _is_service(pid, spec.factory):
                self.log(f"stopping {spec.name} (pid {pid})")
                _terminate(pid)
                stopped.append(spec.name)
        for kind in ("nats", "postgres"):
            handle = servers.running(self.data_dir / kind, kind)
            if handle is not None:
                self.log(f"stopping {kind} (pid {handle.pid})")
                servers.stop(handle)
                stopped.append(kind)
        if state and not state.get("stopped_at"):
            state["stopped_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            _write_stack_file(self.data_dir, state)
        return stopped

    # ------------------------------------------------------------ status

    def status(self) -> list[Part]:
        """Each part recorded in data_dir: is it up, where, and is it ready."""
        state = self.state
        parts: list[Part] = []
        nats = state.get("nats") or {}
        handle = servers.running(self.data_dir / "nats", "nats")
        if nats.get("managed", True):
            url = handle.url if handle else nats.get("url")
            monitor = handle.monitor_url if handle else nats.get("monitor_url")
            ready = handle is not None and monitor is not None and _nats_healthy(monitor)
            auth = ("users: " + str(nats.get("users_file")) if nats.get("auth") == "users"
                    else "NO AUTHENTICATION (--nats-auth off)" if nats.get("auth") == "off" else "")
            parts.append(Part("nats", "ready" if ready else ("not ready" if handle else "down"), url,
                              handle.pid if handle else None,
                              "; ".join(x for x in (f"monitor {monitor}" if monitor else "", auth) if x)))
        else:
            url = nats.get("url")
            up = isinstance(url, str) and servers.answers(url)
            parts.append(Part("nats", "up" if up else "down", redact(url) if isinstance(url, str) else None, None,
                              "CSO_NATS_URL", managed=False))

        pg = state.get("postgres") or {}
        handle = servers.running(self.data_dir / "postgres", "postgres")
        url = pg.get("url") or (with_database(handle.url, DATABASE) if handle else None)
        if pg.get("managed", True):
            parts.append(Part("postgres", "ready" if handle else "down", url,
                              handle.pid if handle else None, f"database {DATABASE}" if url else ""))
        else:
            up = isinstance(url, str) and servers.answers(url)
            parts.append(Part("postgres", "up" if up else "down", redact(url) if url else None, None,
                              "CSO_DATABASE_URL", managed=False))

        for spec in SERVICES:
            info = state.get("services", {}).get(spec.name) or {}
            url = info.get("url")
            pid = info.get("pid")
            if not url or not _is_service(pid, spec.factory):
                parts.append(Part(spec.name, "down", url))
                continue
            try:
                code, body = http_get(f"{url}/readyz", timeout=3)
            except OSError as e:
                parts.append(Part(spec.name, "not ready", url, pid, f"/readyz: {e}"))
                continue
            checks = ", ".join(f"{k} {v}" for k, v in body.items() if k != "status") \
                if isinstance(body, dict) else str(body)
            parts.append(Part(spec.name, "ready" if code == 200 else "not ready", url, pid,
                              f"/readyz {code}: {checks}"))
        return [_with_restarts(p, state) for p in parts]


def _with_restarts(part: Part, state: Mapping[str, Any]) -> Part:
    from dataclasses import replace

    info = state.get("services", {}).get(part.name) or state.get(part.name) or {}
    last = info.get("last_exit")  # cso_local.supervisor: how it last died (a restart may be on its way)
    detail = "; ".join(d for d in (part.detail, f"last died: {last}" if last else "") if d)
    return replace(part, restarts=int(info.get("restarts") or 0), detail=detail)


def _nats_healthy(monitor_url: str) -> bool:
    try:
        code, body = http_get(f"{monitor_url}/healthz", timeout=2)
    except OSError:
        return False
    return code == 200 and isinstance(body, dict) and body.get("status") == "ok"


def _terminate(pid: int, timeout: float = STOP_TIMEOUT) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if not _wait_gone(pid, timeout):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _wait_gone(pid, 5)


def migrate_one(name: str, settings: Settings) -> None:
    """Run one service's migrations (its schema in settings.database_url) to head."""
    import importlib

    spec = next((s for s in SERVICES if s.name == name), None)
    if spec is None:
        raise ValueError(f"unknown service {name!r}; one of {', '.join(s.name for s in SERVICES)}")
    if spec.migrations is None:
        return  # owns no database
    module = importlib.import_module(spec.migrations)
    module.run_migrations(settings)


async def import_divisions(nats_url: str, namespace: str, directory: Path,
                           only: Sequence[str] | None = None, *, user: str = "", password: str = "",
                           edition: str = "2023", previous: Path | None = None,
                           effective_on: date | None = None, progress: Any = None,
                           declared: Mapping[str, str] | None = None) -> int:
    """Publish DivisionsImported per county; how many counties. The stream must exist: the operator's
    migrate step makes it (ValueError otherwise, before anything is published). With `previous`
    (the edition before, a directory), the counties count in this edition from `effective_on` and
    each change between the two is published as a DivisionChanged after them (`import_edition`)."""
    report = await import_edition(nats_url, namespace, directory, only, user=user, password=password,
                                  edition=edition, previous=previous, effective_on=effective_on,
                                  progress=progress, declared=declared)
    return report.counties


@dataclass(frozen=True)
class EditionImport:
    counties: int
    changes: dict[str, int]   # "township merged": 1, … (divisions.changes.summary)


async def import_edition(nats_url: str, namespace: str, directory: Path,
                         only: Sequence[str] | None = None, *, user: str = "", password: str = "",
                         edition: str = "2023", previous: Path | None = None,
                         effective_on: date | None = None, progress: Any = None,
                         declared: Mapping[str, str] | None = None) -> EditionImport:
    """The import of an edition: its counties, then, against `previous`, its changes. The changes
    are computed before anything is published, so an edition that cannot be compared publishes
    nothing; they go out after the counties, whose new codes they name."""
    from contracts import Topology
    from cso.divisions import publish_divisions
    from cso.divisions.changes import summary
    from cso.divisions.importer import edition_changes, publish_changes
    from cso.streams import missing, missing_message

    changes = []
    if previous is not None:
        if effective_on is None:
            raise ValueError("effective_on: the day the new edition's changes took effect is needed")
        changes = list(edition_changes(previous, directory, only, edition, effective_on, declared))
    topology = Topology(namespace)
    nc = await connect_nats(nats_url, "cso-divisions", user=user, password=password)
    try:
        js = nc.jetstream()
        if absent := await missing(js, [topology.stream("CSO_DIVISIONS")]):
            raise ValueError(missing_message(absent))
        counties = await publish_divisions(js, topology, directory, only=only, edition=edition,
                                           effective_on=effective_on if previous is not None else None,
                                           progress=progress)
        await publish_changes(js, topology, changes, edition)
        return EditionImport(counties, summary(changes))
    finally:
        await nc.close()


__all__ = ["DATABASE", "SERVICES", "Died", "EditionImport", "NotReady", "Part", "Stack", "StackError",
           "ensure_database", "http_get", "import_divisions", "import_edition", "migrate_one", "read_stack_file",
           "recorded", "redact", "wait_ready"]
