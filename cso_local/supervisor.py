"""`cso up` keeps its stack running: a part that dies (a service, or nats-server / PostgreSQL when
the stack started them) is started again on its port with exponential backoff, and said so in
one log line; one death never stops the stack. `cso restart <part>` asks the running `cso up` to
restart one part: the owner of the processes does it (its children, which it reaps; it knows their
settings), so nothing else starts a second copy, and stack.json follows every new pid.

The ask travels through files in the data dir's `control/` (0700, like the data dir's owner):
`<id>.request` written by `cso restart`, `<id>.result` written back by `cso up` once the part was
stopped and started again. No socket to secure, and it works between any two processes of the
user that may read the data dir anyway.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import servers
from .stack import READY_TIMEOUT, SERVICES, NotReady, Stack, StackError, read_stack_file, wait_ready

PARTS: tuple[str, ...] = ("registry", "targets", "training", "notify", "console", "nats", "postgres")
CONTROL_DIR = "control"
TAIL_LINES = 15  # of the dead part's log, in cso up's output
RESTART_TIMEOUT = 120.0  # a PostgreSQL restart waits for its shutdown checkpoint and recovery


class RestartError(RuntimeError):
    """`cso restart` could not restart the part; the message says why."""


@dataclass(frozen=True)
class Backoff:
    """Delay before restarting a part that died: `first` doubling up to `cap` while it keeps
    dying; forgiven once it stayed up `reset_after` seconds."""

    first: float = 1.0
    cap: float = 30.0
    reset_after: float = 60.0

    def delay(self, deaths: int) -> float:
        """Before the restart after the `deaths`-th death in a row (1: the first)."""
        return min(self.cap, self.first * 2.0 ** max(0, deaths - 1))


@dataclass
class _Watch:
    """What the supervisor knows of one part."""

    name: str
    up_since: float
    deaths: int = 0  # in a row, not yet forgiven
    restarts: int = 0
    retry_at: float | None = None  # dead (or failed to start): when to try again


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class Supervisor:
    """Runs in `cso up` after the stack started: `run` until `stop` is set."""

    def __init__(self, stack: Stack, backoff: Backoff | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stack = stack
        self.backoff = backoff or Backoff()
        self.clock = clock
        self.control = Control(stack.data_dir)
        self.watches = {name: _Watch(name, clock()) for name in stack.restartable()}
        for name in self.watches:
            stack.record_part(name, restarts=0)

    def run(self, stop: threading.Event, interval: float = 0.5) -> None:
        self.control.clear()
        while not stop.wait(interval):
            self.tick(stop)

    def tick(self, stop: threading.Event | None = None) -> None:
        """One look at every part (servers first: services need them), then at the requests."""
        for watch in self.watches.values():
            if stop is not None and stop.is_set():
                return
            if watch.retry_at is None:
                self._look(watch)
            if watch.retry_at is not None and self.clock() >= watch.retry_at:
                with contextlib.suppress(StackError):  # logged, and the next try is scheduled
                    self._restart(watch, "after it died")
        for request in self.control.pending():
            if stop is not None and stop.is_set():
                return
            self.control.answer(request, self._serve(request))
        # Streams a lost NATS store lost: the operator's to make again (the services may not).
        self.stack.restore_streams()

    def _look(self, watch: _Watch) -> None:
        died = self.stack.exit_of(watch.name)
        now = self.clock()
        if died is None:
            if watch.deaths and now - watch.up_since >= self.backoff.reset_after:
                watch.deaths = 0
            return
        watch.deaths += 1
        delay = self.backoff.delay(watch.deaths)
        watch.retry_at = now + delay
        lines = died.tail.splitlines()[-TAIL_LINES:]
        self.stack.log(f"{watch.name} (pid {died.pid}) {died.how}; the end of {died.log}:\n"
                       + "".join(f"  | {line}\n" for line in lines)
                       + f"restarting {watch.name} in {delay:.0f}s (restart {watch.restarts + 1}, "
                       f"death {watch.deaths} in a row); the rest of the stack keeps running")
        self.stack.record_part(watch.name, last_exit=f"{died.how} at {_now()}")

    def _restart(self, watch: _Watch, why: str) -> int:
        """Start the part again, its pid; on failure schedule the next try and raise StackError."""
        try:
            pid = self.stack.start_part(watch.name)
        except (StackError, OSError) as e:
            watch.deaths += 1
            delay = self.backoff.delay(watch.deaths)
            watch.retry_at = self.clock() + delay
            self.stack.log(f"restarting {watch.name} failed: {e}; trying again in {delay:.0f}s")
            raise StackError(f"{watch.name} did not start again: {e}; cso up tries again "
                             f"in {delay:.0f}s") from None
        watch.restarts += 1
        watch.retry_at = None
        watch.up_since = self.clock()
        self.stack.record_part(watch.name, pid=pid, restarts=watch.restarts, restarted_at=_now())
        self.stack.log(f"restarted {watch.name} {why} (pid {pid}, restart {watch.restarts})")
        return pid

    def _serve(self, request: Request) -> dict[str, Any]:
        watch = self.watches.get(request.part)
        if watch is None:
            why = ("it is not run by this stack (CSO_NATS_URL / CSO_DATABASE_URL name it): restart it "
                   "where it runs" if request.part in PARTS else f"one of {', '.join(PARTS)}")
            return {"ok": False, "error": f"part: cannot restart {request.part!r}; {why}"}
        self.stack.log(f"restarting {watch.name}: asked by cso restart (pid {request.pid})")
        try:
            self.stack.stop_part(watch.name)
        except (StackError, OSError) as e:
            return {"ok": False, "error": f"stopping {watch.name} failed: {e}"}
        # The operator asked: whatever deaths came before are forgiven, and no backoff applies.
        watch.deaths, watch.retry_at = 0, None
        try:
            pid = self._restart(watch, "as asked by cso restart")
        except StackError as e:
            return {"ok": False, "error": str(e)}
        return {"ok": True, "pid": pid, "restarts": watch.restarts}


# ---------------------------------------------------------------- the control dir


@dataclass(frozen=True)
class Request:
    id: str
    part: str
    pid: int


class Control:
    """Restart requests and their results under `<data_dir>/control/`."""

    def __init__(self, data_dir: Path) -> None:
        self.dir = Path(data_dir) / CONTROL_DIR

    def _ensure(self) -> None:
        self.dir.mkdir(mode=0o700, exist_ok=True)

    def clear(self) -> None:
        """A new owner: results nobody read are stale. Requests stay: one may have been asked while
        the stack was starting (pending() drops those whose asker is gone)."""
        self._ensure()
        for path in self.dir.iterdir():
            if not path.name.endswith(".request"):
                with contextlib.suppress(OSError):
                    path.unlink()

    def _write(self, path: Path, body: dict[str, Any]) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(body))
        os.replace(tmp, path)  # the reader never sees half a file

    def ask(self, part: str) -> str:
        self._ensure()
        request_id = uuid.uuid4().hex
        self._write(self.dir / f"{request_id}.request", {"part": part, "pid": os.getpid()})
        return request_id

    def pending(self) -> list[Request]:
        try:
            paths = sorted(self.dir.glob("*.request"), key=lambda p: p.stat().st_mtime)
        except OSError:
            return []
        out = []
        for path in paths:
            try:
                body = json.loads(path.read_text())
                path.unlink()
            except (OSError, ValueError):
                continue  # taken meanwhile, or garbage: nobody waits for an answer to garbage
            if not isinstance(body, dict):
                continue
            request = Request(path.stem, str(body.get("part")), int(body.get("pid") or 0))
            if servers.pid_alive(request.pid):  # else nobody waits for it: a restart nobody wants now
                out.append(request)
        return out

    def answer(self, request: Request, result: dict[str, Any]) -> None:
        self._write(self.dir / f"{request.id}.result", {"part": request.part, **result})

    def result(self, request_id: str) -> dict[str, Any] | None:
        path = self.dir / f"{request_id}.result"
        try:
            body = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        path.unlink(missing_ok=True)
        return body if isinstance(body, dict) else None


# ---------------------------------------------------------------- `cso restart`


def restart(data_dir: Path, part: str, timeout: float = RESTART_TIMEOUT) -> dict[str, Any]:
    """Ask the `cso up` running the stack in data_dir to restart `part`; wait until it did (and,
    for a service, until it is ready). Returns the part's entry of stack.json; RestartError
    says why not."""
    if part not in PARTS:
        raise RestartError(f"part: {part!r} is not one of {', '.join(PARTS)}")
    data_dir = Path(data_dir).expanduser().absolute()
    state = read_stack_file(data_dir)
    if state is None or state.get("stopped_at"):
        raise RestartError(f"no stack is running from {data_dir} (`cso up` starts one)")
    owner = state.get("owner_pid")
    if not isinstance(owner, int):
        raise RestartError(f"the stack in {data_dir} was not started by `cso up`, which alone restarts parts")
    if not servers.pid_alive(owner):
        raise RestartError(f"the cso up that ran the stack in {data_dir} (pid {owner}) is gone; "
                           "`cso down`, then `cso up`, starts it again")
    control = Control(data_dir)
    request_id = control.ask(part)
    deadline = time.monotonic() + timeout
    while (result := control.result(request_id)) is None:
        if not servers.pid_alive(owner):
            raise RestartError(f"cso up (pid {owner}) ended before it restarted {part}")
        if time.monotonic() >= deadline:
            raise RestartError(f"cso up (pid {owner}) did not restart {part} within {timeout:.0f}s")
        time.sleep(0.1)
    if not result.get("ok"):
        raise RestartError(str(result.get("error")))
    state = read_stack_file(data_dir) or {}
    info: dict[str, Any] = dict(state.get("services", {}).get(part) or state.get(part) or {})
    if part in {s.name for s in SERVICES}:
        try:
            wait_ready(str(info.get("url")), deadline=time.monotonic() + READY_TIMEOUT)
        except NotReady as e:
            raise RestartError(f"{part} was restarted but is not ready (/readyz: {e.last}); "
                               "`cso up` shows its log if it dies") from None
    return info


__all__ = ["PARTS", "Backoff", "Control", "RestartError", "Supervisor", "restart"]
