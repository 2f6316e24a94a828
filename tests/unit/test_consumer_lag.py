"""cso_consumer_lag is per durable: the partitions of a service (cso/partitions.py) each pull a
durable of their own over disjoint provinces, and each reports its own lag, which the alerts add
up (infra/prometheus/rules.yml). Labelled by service and stream only, the partitions of one
replica set overwrote each other's value."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from contracts import Topology
from cso.consumer import LAG, Consumer, Subscription
from cso.partitions import Partition


class _Bus:
    """consumer_info as JetStream answers it, per durable."""

    def __init__(self, pending: dict[str, int]) -> None:
        self.pending = pending

    def jetstream(self) -> _Bus:
        return self

    async def consumer_info(self, stream: str, durable: str) -> Any:
        return SimpleNamespace(num_pending=self.pending[durable], num_ack_pending=1,
                               delivered=SimpleNamespace(stream_seq=0))


async def test_each_partition_reports_the_lag_of_its_own_durable() -> None:
    intake = Subscription("CSO_INTAKE", "cso.intake.>", "registry-intake", partitionable=True)
    subs = [intake.partitioned(Partition(i, 2)) for i in range(2)]
    durables = [s.durable for s in subs]
    assert len(set(durables)) == 2
    bus = _Bus({durables[0]: 40, durables[1]: 7})
    consumers = [Consumer(nc=bus, engine=None, topology=Topology(""), schema="registry",  # type: ignore[arg-type]
                          service="registry", subscription=s, handler=None)  # type: ignore[arg-type]
                 for s in subs]
    for c in consumers:
        await c._record_lag()
    lag = {d: LAG.labels("registry", "CSO_INTAKE", d)._value.get() for d in durables}
    assert lag == {durables[0]: 41, durables[1]: 8}
