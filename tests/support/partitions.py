"""What the deployment files' partitions need of NATS: for a replica that runs `service` as NATS user
`user` with CSO_PARTITIONS=N and CSO_PARTITION=i, the JetStream API subjects its consumers use on
their durables (`<durable>-p<i>of<N>-<assignment>` for the partitionable ones, cso/partitions.py),
checked against the publish permissions the committed infra/nats/auth.conf gives that user: the file
nats-server enforces under compose (nats-auth.conf includes it) and on Kubernetes (the Secret
cso-nats-auth that infra/nats/helm-values.yaml mounts is made from it)."""

from __future__ import annotations

import re
from pathlib import Path

from contracts import Topology
from cso import natsauth
from cso.partitions import Partition

AUTH_CONF = Path(__file__).resolve().parents[2] / "infra" / "nats" / "auth.conf"


def auth_conf_publish(user: str, text: str | None = None) -> list[str]:
    """The publish allow list of `user` in auth.conf (cso nats-config's layout: one block a user)."""
    text = AUTH_CONF.read_text(encoding="utf-8") if text is None else text
    blocks = re.split(r'\n\s*user: "', text)[1:]
    for block in blocks:
        name, _, rest = block.partition('"')
        if name == user:
            allow = re.search(r"publish: \{ allow: \[(.*?)\] \}", rest, re.S)
            return re.findall(r'"((?:[^"\\]|\\.)*)"', allow[1]) if allow else []
    raise AssertionError(f"auth.conf has no user {user!r}")


def partition_subjects(service: str, partition: Partition, topology: Topology | None = None) -> list[str]:
    """The JetStream API subjects a replica of `service` in `partition` publishes on its durables:
    info, create (with several filter subjects nats-py names none in the subject), delete, pull, ack."""
    topology = topology or Topology()
    subjects = []
    for base, durable, _ in natsauth.SERVICE_CONSUMERS[service]:
        name = partition.durable(durable) if durable in natsauth.PARTITIONABLE else durable
        stream = topology.stream(base)
        subjects += [f"$JS.API.CONSUMER.INFO.{stream}.{name}", f"$JS.API.CONSUMER.CREATE.{stream}.{name}",
                     f"$JS.API.CONSUMER.DELETE.{stream}.{name}", f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}",
                     f"$JS.ACK.{stream}.{name}.1.7.1042.1042.0.1733300000000000000.0"]
    return subjects


def refused(user: str, service: str, partition: Partition, text: str | None = None) -> list[str]:
    """The subjects of `partition_subjects` that auth.conf does not let `user` publish."""
    allow = auth_conf_publish(user, text)
    return [s for s in partition_subjects(service, partition) if not any(natsauth.matches(p, s) for p in allow)]
