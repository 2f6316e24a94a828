"""cso_local.supervisor's decisions on a stand-in stack and a hand-moved clock: when a dead part is
started again (1 s doubling to 30 s, forgiven after it stayed up), what a failed start does, and
how a `cso restart` request is answered. The real processes: tests/integration/test_supervision.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cso_local.stack import Died, StackError
from cso_local.supervisor import Backoff, Control, Supervisor


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeStack:
    """The part API of cso_local.stack.Stack that the supervisor uses, over pretend processes."""

    def __init__(self, data_dir: Path, parts: tuple[str, ...] = ("nats", "registry")) -> None:
        self.data_dir = data_dir
        self.parts = list(parts)
        self.pids = {name: 100 + i for i, name in enumerate(parts)}
        self.dead: dict[str, int] = {}  # name -> returncode
        self.failing: set[str] = set()  # start_part raises for these
        self.started: list[str] = []
        self.stopped: list[str] = []
        self.records: dict[str, dict[str, Any]] = {name: {} for name in parts}
        self.lines: list[str] = []
        self.stream_checks = 0

    def restartable(self) -> list[str]:
        return list(self.parts)

    def exit_of(self, name: str) -> Died | None:
        if name not in self.dead:
            return None
        return Died(name, self.dead[name], self.data_dir / f"{name}.log", "last words", self.pids[name])

    def start_part(self, name: str) -> int:
        self.started.append(name)
        if name in self.failing:
            raise StackError(f"{name}: port in use")
        self.dead.pop(name, None)
        self.pids[name] += 1000
        return self.pids[name]

    def stop_part(self, name: str) -> None:
        self.stopped.append(name)

    def record_part(self, name: str, **fields: Any) -> None:
        self.records[name].update(fields)

    def log(self, message: str) -> None:
        self.lines.append(message)

    def restore_streams(self) -> list[str]:
        self.stream_checks += 1
        return []


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make(tmp_path: Path, clock: Clock, **kwargs: Any) -> tuple[FakeStack, Supervisor]:
    stack = FakeStack(tmp_path, **kwargs)
    return stack, Supervisor(stack, Backoff(first=1, cap=30, reset_after=60), clock=clock)  # type: ignore[arg-type]


def test_backoff_doubles_from_one_second_up_to_thirty() -> None:
    assert [Backoff().delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


def test_a_dead_part_is_restarted_after_its_backoff_and_logged(tmp_path: Path, clock: Clock) -> None:
    stack, sup = make(tmp_path, clock)
    assert stack.records["registry"] == {"restarts": 0}
    sup.tick()
    assert stack.started == []
    stack.dead["registry"] = -9
    sup.tick()
    assert stack.started == []  # not before its second
    death = stack.lines[-1]
    assert death.startswith("registry (pid 101) was killed by SIGKILL; the end of")
    assert "  | last words\n" in death and "restarting registry in 1s (restart 1, death 1 in a row)" in death
    assert "was killed by SIGKILL at" in stack.records["registry"]["last_exit"]
    clock.now += 1
    sup.tick()
    assert stack.started == ["registry"]
    assert stack.records["registry"]["pid"] == 1101 and stack.records["registry"]["restarts"] == 1
    assert stack.lines[-1] == "restarted registry after it died (pid 1101, restart 1)"


def test_deaths_in_a_row_back_off_and_staying_up_forgives_them(tmp_path: Path, clock: Clock) -> None:
    stack, sup = make(tmp_path, clock)
    delays = []
    for _ in range(7):
        stack.dead["registry"] = 3
        sup.tick()
        retry_at = sup.watches["registry"].retry_at
        assert retry_at is not None
        delays.append(retry_at - clock.now)
        clock.now = retry_at
        sup.tick()
    assert delays == [1, 2, 4, 8, 16, 30, 30]
    assert "exited with code 3" in stack.lines[-2]
    clock.now += 59
    sup.tick()
    stack.dead["registry"] = 3
    sup.tick()
    assert sup.watches["registry"].retry_at == clock.now + 30  # 59 s up: not yet forgiven
    clock.now += 30
    sup.tick()
    clock.now += 60
    sup.tick()  # up 60 s: forgiven
    stack.dead["registry"] = 3
    sup.tick()
    assert sup.watches["registry"].retry_at == clock.now + 1


def test_a_failed_start_is_tried_again_later_without_stopping_anything(tmp_path: Path, clock: Clock) -> None:
    stack, sup = make(tmp_path, clock)
    stack.dead["nats"] = -9
    stack.failing.add("nats")
    sup.tick()
    clock.now += 1
    sup.tick()
    assert stack.lines[-1] == "restarting nats failed: nats: port in use; trying again in 2s"
    clock.now += 1.5
    sup.tick()
    assert stack.started == ["nats"]
    stack.failing.clear()
    clock.now += 0.5
    sup.tick()
    assert stack.started == ["nats", "nats"] and stack.records["nats"]["restarts"] == 1
    assert stack.stopped == []


def test_cso_restart_requests_are_served_once_by_the_owner(tmp_path: Path, clock: Clock) -> None:
    stack, sup = make(tmp_path, clock)
    control = Control(tmp_path)
    sup.control.clear()
    asked = control.ask("registry")
    unknown = control.ask("postgres")  # not run by this stack (CSO_DATABASE_URL)
    sup.tick()
    assert control.result(asked) == {"part": "registry", "ok": True, "pid": 1101, "restarts": 1}
    result = control.result(unknown)
    assert result is not None and not result["ok"]
    assert result["error"].startswith("part: cannot restart 'postgres'; it is not run by this stack")
    assert stack.stopped == ["registry"] and stack.started == ["registry"]
    sup.tick()  # answered requests are gone: nothing is restarted a second time
    assert stack.started == ["registry"] and list(tmp_path.joinpath("control").iterdir()) == []


def test_cso_restart_of_a_part_waiting_for_its_backoff_starts_it_now(tmp_path: Path, clock: Clock) -> None:
    stack, sup = make(tmp_path, clock)
    for _ in range(4):  # deaths in a row: the next try is 8 s away
        stack.dead["registry"] = 1
        sup.tick()
        clock.now = sup.watches["registry"].retry_at or clock.now
        sup.tick()
    stack.dead["registry"] = 1
    sup.tick()
    asked = Control(tmp_path).ask("registry")
    sup.tick()
    assert (Control(tmp_path).result(asked) or {}).get("ok") is True
    assert sup.watches["registry"].retry_at is None and sup.watches["registry"].deaths == 0


def test_a_request_asked_while_the_stack_starts_is_served_and_one_nobody_waits_for_is_dropped(
        tmp_path: Path, clock: Clock) -> None:
    import json
    import subprocess
    import sys

    stack, sup = make(tmp_path, clock)
    control = Control(tmp_path)
    early = control.ask("registry")  # before the owner supervises (cso up still starting)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    (tmp_path / "control" / "orphan.request").write_text(json.dumps({"part": "nats", "pid": int(gone.stdout)}))
    (tmp_path / "control" / "stale.result").write_text("{}")
    sup.control.clear()
    sup.tick()
    assert (control.result(early) or {}).get("ok") is True
    assert stack.started == ["registry"]  # nats: its asker is gone
    assert list(tmp_path.joinpath("control").iterdir()) == []


def test_every_look_also_makes_again_the_streams_nats_lost(tmp_path: Path, clock: Clock) -> None:
    """The services may not create streams: `cso up`, the operator of its stack, does, on every
    tick (Stack.restore_streams decides how often it really asks NATS)."""
    stack, supervisor = make(tmp_path, clock)
    supervisor.tick()
    stack.dead["nats"] = 1
    supervisor.tick()
    assert stack.stream_checks == 2
