"""The fault suite's fixtures and modes: every case runs at CI size by default; CSO_FAULT_FULL=1 runs
them at full size (100,000 events, 30 s outages, several kills per service) and adds the cases
marked `full`, which are skipped otherwise (see tests/faults/README.md)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from tests.faults.harness import FULL, Cluster, ClusterFactory


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "full: a long fault case, run only with CSO_FAULT_FULL=1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if FULL:
        return
    skip = pytest.mark.skip(reason="a full-size fault case: run with CSO_FAULT_FULL=1 (tests/faults/README.md)")
    for item in items:
        if item.get_closest_marker("full") is not None:
            item.add_marker(skip)


@pytest.fixture
def cluster_of() -> ClusterFactory:
    """`async with cluster_of(replicas=2, env={...}) as cluster:` a cluster of its own, torn down after.
    Its data dir is a fresh temporary dir (pytest's tmp_path is too long a path for some sockets,
    and the data of a failed case is worth keeping: its path is printed; CSO_FAULT_KEEP=1 keeps it
    for a case that passed too)."""

    @asynccontextmanager
    async def make(replicas: int = 1, env: dict[str, str] | None = None) -> AsyncIterator[Cluster]:
        root = Path(tempfile.mkdtemp(prefix="cso-faults-"))
        cluster = Cluster(root, replicas=replicas, env=env)
        ok = False
        try:
            await cluster.start()
            yield cluster
            ok = True
        finally:
            await cluster.close()
            if ok and not os.environ.get("CSO_FAULT_KEEP"):
                shutil.rmtree(root, ignore_errors=True)
            else:
                print(f"kept the case's data and logs in {root}")

    return make
