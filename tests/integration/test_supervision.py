"""`cso up` heals its stack (cso_local.supervisor): a service killed with SIGKILL, and nats-server killed,
are started again on their ports while the rest keeps answering; `cso restart` restarts one part
(registry, nats, postgres) through the running `cso up`; `cso status` follows the new pids and
counts the restarts. Everything on real servers, `cso up` a process of its own."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import nats
import pytest

from contracts import Topology
from cso import natsauth
from cso.connect import connect_nats
from cso_local import localnats
from tests.support import GUANGHAN, CsoUp, HealthWatch, http_json, publish_divisions

pytestmark = pytest.mark.integration

BACK_WITHIN = 30.0  # issue 18: a dead part is back within 30 s
COMMUNITY = "510681001014"  # 西城社区居民委员会, in support.GUANGHAN


def status_row(output: str, part: str) -> list[str]:
    """The cells of `cso status`'s row for part: state, pid, restarts, url."""
    for line in output.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃]", line)[1:-1]]
        if cells and cells[0] == part:
            return cells[1:]
    raise AssertionError(f"no row for {part} in:\n{output}")


def import_guanghan(nats_url: str, data_dir: Path) -> None:
    login = localnats.credentials(data_dir, natsauth.DIVISIONS)  # the stack's NATS has users
    assert login is not None

    async def run() -> None:
        nc = await connect_nats(nats_url, "test-supervision", user=login[0], password=login[1])
        try:
            await publish_divisions(nc, Topology(), GUANGHAN)
        finally:
            await nc.close()

    # A nats-server just started after a kill -9 may be slow to acknowledge the first publish: send
    # again, as any publisher does (applying the same divisions twice changes nothing).
    deadline = time.monotonic() + 60
    while True:
        try:
            return asyncio.run(run())
        except (OSError, nats.errors.Error) as e:
            if time.monotonic() > deadline:
                raise AssertionError(f"publishing the divisions after nats came back: {e!r}") from e
            time.sleep(1)


def region_known(up: CsoUp) -> bool:
    return http_json(f"{up.url('registry')}/regions/510681/organizations?limit=1")[0] == 200


def until(check: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout:.0f}s")
        time.sleep(0.2)


def test_a_dead_part_comes_back_and_cso_restart_restarts_one(tmp_path: Path) -> None:
    with CsoUp(tmp_path / "stack") as up:
        first = {name: up.part(name)["pid"] for name in (*CsoUp.SERVICES, "nats", "postgres")}

        # kill -9 of registry: the others keep answering, registry is back on its port.
        others = {name: up.url(name) for name in CsoUp.SERVICES if name != "registry"}
        with HealthWatch(others) as watch:
            os.kill(first["registry"], signal.SIGKILL)
            took = up.back("registry", first["registry"], BACK_WITHIN)
        assert not watch.failures, watch.failures
        assert watch.answers > 0
        print(f"registry back in {took:.1f}s")
        said = up.text()
        assert f"registry (pid {first['registry']}) was killed by SIGKILL; the end of" in said, said
        assert re.search(r"restarted registry after it died \(pid \d+, restart 1\)", said), said
        status = up.cso("status")
        assert status.returncode == 0, status.stdout + status.stderr
        registry = up.part("registry")
        assert status_row(status.stdout, "registry")[:3] == ["ready", str(registry["pid"]), "1"]
        assert "last died: was killed by SIGKILL at" in status.stdout, status.stdout
        assert registry["restarts"] == 1 and "was killed by SIGKILL" in registry["last_exit"]
        assert all(up.part(name)["pid"] == first[name] for name in first if name != "registry")

        # kill -9 of nats-server: back on the same port, the services reconnect and consume.
        nats = up.part("nats")
        os.kill(nats["pid"], signal.SIGKILL)
        up.back("nats", nats["pid"], BACK_WITHIN)
        assert up.part("nats")["url"] == nats["url"] and up.part("nats")["restarts"] == 1
        assert f"nats (pid {nats['pid']}) was killed by SIGKILL" in up.text()
        import_guanghan(nats["url"], up.data_dir)
        until(lambda: region_known(up), 60, "registry applying divisions after nats came back")

        # cso restart registry: the running cso up does it, once; status follows.
        before = up.part("registry")["pid"]
        result = up.cso("restart", "registry")
        assert result.returncode == 0, result.stdout + result.stderr
        after = up.part("registry")
        assert after["pid"] != before and after["restarts"] == 2
        assert f"restarted registry: pid {after['pid']}, 2 restart(s)" in result.stdout
        assert re.search(r"restarted registry as asked by cso restart \(pid \d+, restart 2\)", up.text())
        assert "restarting registry in" not in up.text().split("asked by cso restart")[-1]  # not twice
        assert status_row(up.cso("status").stdout, "registry")[:3] == ["ready", str(after["pid"]), "2"]

        # cso restart nats, then postgres: same URLs, new pids, and the stack still works end to end.
        for server in ("nats", "postgres"):
            before_server = up.part(server)
            result = up.cso("restart", server)
            assert result.returncode == 0, result.stdout + result.stderr
            now = up.part(server)
            assert now["pid"] != before_server["pid"] and now["url"] == before_server["url"]
            status = up.cso("status")
            assert status_row(status.stdout, server)[:2] == ["ready", str(now["pid"])], status.stdout
        # kill -9 of the postmaster alone (its backends notice and quit): started again on its data.
        postgres = up.part("postgres")
        os.kill(postgres["pid"], signal.SIGKILL)
        up.back("postgres", postgres["pid"], BACK_WITHIN)
        assert up.part("postgres")["url"] == postgres["url"] and up.part("postgres")["restarts"] == 2
        assert f"postgres (pid {postgres['pid']}) was killed by SIGKILL" in up.text()
        body = {"name": "西城社区书画协会", "community_code": COMMUNITY, "category": "culture_sports",
                "filed_on": "2024-03-01"}
        until(lambda: http_json(f"{up.url('registry')}/commands/file", body)[0] == 200, 60,
              "a filing after nats and postgres were restarted")
        until(lambda: (http_json(f"{up.url('targets')}/coverage/510681")[1] or {})
              .get("counters", {}).get("orgs") == 1, 60, "targets counting it")

        # What cso up does not run cannot be restarted, and says why.
        result = up.cso("restart", "nowhere")
        assert result.returncode == 2 and "nowhere" in result.stderr
        assert up.proc is not None and up.proc.poll() is None  # nothing above stopped the stack

    result = up.cso("restart", "registry")
    assert result.returncode == 1 and "no stack is running" in result.stderr, result.stderr


def test_cso_up_makes_again_the_streams_nats_lost(tmp_path: Path) -> None:
    """Streams are the operator's: under `cso up` the services may not create them, so `cso up`
    does, at start and whenever NATS lost one (a wiped store) or someone changed it."""
    import dataclasses

    from cso.streams import migrate_at

    with CsoUp(tmp_path / "stack") as up:
        nats_url = up.part("nats")["url"]
        login = localnats.credentials(up.data_dir, natsauth.ADMIN)
        assert login is not None
        said = up.text()
        assert "stream CSO_INTAKE: created, 1 replica" in said, said

        async def lose() -> None:
            nc = await connect_nats(nats_url, "test-streams", user=login[0], password=login[1])
            try:
                js = nc.jetstream()
                await js.delete_stream("CSO_INTAKE")
                info = await js.stream_info("CSO_REGISTRY")
                await js.update_stream(dataclasses.replace(info.config, max_msgs=1))
            finally:
                await nc.close()

        asyncio.run(lose())

        def restored() -> bool:
            text = up.text()
            return ("stream CSO_INTAKE: created, 1 replica (the NATS store had lost or changed it)" in text
                    and "stream CSO_REGISTRY: updated (max_msgs 1 -> -1)" in text)

        until(restored, BACK_WITHIN, "cso up making the streams again")
        # Nothing left to do: the operator's step finds every stream as specified.
        again = asyncio.run(migrate_at(nats_url, "", login=login))
        assert {c.action for c in again} == {"unchanged"}, again
        until(lambda: http_json(f"{up.url('registry')}/readyz")[0] == 200, BACK_WITHIN, "registry ready")
