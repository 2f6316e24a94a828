"""Stream replicas on a real three-node JetStream cluster, as compose's cluster profile runs one
(infra/nats/cluster.conf): the migrate step's `auto` gives every stream, CSO_INTAKE included, three
copies; a stream left at one copy is raised to three; CSO_INTAKE_REPLICAS overrides."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest

from contracts import Topology
from cso.streams import Replicas, migrate_at, migrate_streams, stream_config
from cso_local import servers

pytestmark = pytest.mark.integration


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[list[servers.ServerHandle]]:
    """Three nats-servers routed to each other, started together (each is healthy only once the
    cluster has a leader)."""
    routes = [servers.free_port() for _ in range(3)]
    configs = []
    for i, port in enumerate(routes):
        config = tmp_path / f"n{i}.conf"
        config.write_text(
            f"server_name: n{i}\n"
            f"cluster {{\n  name: cso-test\n  listen: 127.0.0.1:{port}\n"
            f"  routes: [{', '.join(f'nats-route://127.0.0.1:{p}' for p in routes)}]\n}}\n")
        configs.append(config)
    handles = await asyncio.gather(*(asyncio.to_thread(servers.start_nats, tmp_path / f"n{i}", config=c,
                                                       timeout=90)
                                     for i, c in enumerate(configs)), return_exceptions=True)
    started = [h for h in handles if isinstance(h, servers.ServerHandle)]
    try:
        if len(started) < 3:
            raise next(h for h in handles if isinstance(h, BaseException))
        yield started
    finally:
        for handle in started:
            await asyncio.to_thread(servers.stop, handle)


async def test_auto_gives_three_copies_on_a_cluster(cluster: list[servers.ServerHandle]) -> None:
    t = Topology(f"r{uuid.uuid4().hex[:8]}")
    nc = await nats.connect(cluster[0].url)
    js = nc.jetstream()
    try:
        # A stream made earlier with one copy (cso's services did that before): raised to three.
        registry = dict(zip([s.name for s in t.streams], t.streams, strict=True))[t.stream("CSO_REGISTRY")]
        await js.add_stream(dataclasses.replace(stream_config(registry), num_replicas=1))
        changes = {c.stream: c for c in await migrate_at(cluster[0].url, t.namespace, Replicas.from_env({}),
                                                          wait=60)}
        assert changes[t.stream("CSO_INTAKE")].action == "created"
        assert changes[t.stream("CSO_REGISTRY")].fields == {"num_replicas": (1, 3)}
        for spec in t.streams:
            info = await js.stream_info(spec.name)
            assert info.config.num_replicas == 3, spec.name
            assert info.cluster is not None and len(info.cluster.replicas or []) == 2, spec.name
        # One stream set apart from the rest, as CSO_INTAKE_REPLICAS does.
        fewer = await migrate_streams(nc, t, Replicas.from_env({"CSO_STREAM_REPLICAS": "1",
                                                                "CSO_INTAKE_REPLICAS": "3"}))
        assert {c.stream for c in fewer if c.action == "updated"} == {s.name for s in t.streams} - {
            t.stream("CSO_INTAKE")}
        assert (await js.stream_info(t.stream("CSO_INTAKE"))).config.num_replicas == 3
        assert (await js.stream_info(t.stream("CSO_OPS"))).config.num_replicas == 1
    finally:
        await nc.close()
