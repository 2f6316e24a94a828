"""Consumer.stop ends a pulling task even when a cancellation is lost on the way (as inside nats-py's
fetch after a wiped store): BusWatch restarts consumers while it repairs a gap, and a stop that
waited for ever hung every later check of the bus."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from contracts import Topology
from cso import consumer as consumer_module
from cso.consumer import Consumer, Subscription


class _NoNats:
    def jetstream(self) -> None:
        return None


def _consumer() -> Consumer:
    return Consumer(nc=_NoNats(), engine=None, topology=Topology(""), schema="registry",  # type: ignore[arg-type]
                    service="registry", subscription=Subscription("CSO_INTAKE", "cso.intake.>", "registry-intake"),
                    handler=None)  # type: ignore[arg-type]


async def test_a_lost_cancellation_does_not_hold_the_stop(monkeypatch: Any) -> None:
    monkeypatch.setattr(consumer_module, "STOP_WAIT_SECONDS", 0.2)
    swallowed = 0

    async def pulling() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                swallowed += 1
                if swallowed == 1:
                    continue  # the first cancellation is lost, as the fetch lost it
                raise

    c = _consumer()
    task = c._task = asyncio.create_task(pulling())
    await asyncio.sleep(0)
    # Waited for, not cancelled: a cancelled stop would hand its own cancellation on to the task.
    stopping = asyncio.ensure_future(c.stop())
    done, _ = await asyncio.wait({stopping}, timeout=5)
    if not done:
        task.cancel()
        await asyncio.wait({stopping}, timeout=5)
    assert done, "the stop still waits for a task whose cancellation was lost"
    assert task.done() and swallowed == 2


async def test_a_task_that_never_stops_is_left_behind_with_its_stack(monkeypatch: Any, caplog: Any) -> None:
    monkeypatch.setattr(consumer_module, "STOP_WAIT_SECONDS", 0.05)

    released = False

    async def deaf() -> None:
        while not released:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(3600)

    c = _consumer()
    c._task = asyncio.create_task(deaf())
    await asyncio.sleep(0)
    stopping = asyncio.ensure_future(c.stop())
    done, _ = await asyncio.wait({stopping}, timeout=5)
    released = not done or released
    assert done, "the stop still waits for a task that never ends"
    assert "did not stop after 5 cancellations" in caplog.text and "deaf" in caplog.text
    released = True
    c._task.cancel()
    await asyncio.wait_for(c._task, 5)
