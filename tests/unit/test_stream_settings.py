"""The operator's stream settings (cso/streams.py): replicas from the environment, the configuration
each stream is kept at, and what counts as drift the migrate step puts back."""

from __future__ import annotations

import dataclasses

import pytest
from nats.js.api import StorageType

from contracts import Topology
from contracts.subjects import STREAMS, intake_stream_subjects
from cso.streams import (
    Replicas,
    StreamChange,
    StreamMigrationError,
    base_streams,
    clustered,
    drift,
    replicas_env,
    stream_config,
)


def test_replicas_default_to_auto_three_on_a_cluster_one_on_a_single_server() -> None:
    replicas = Replicas.from_env({})
    assert [replicas.of(s.name, clustered=True) for s in STREAMS] == [3] * len(STREAMS)
    assert [replicas.of(s.name, clustered=False) for s in STREAMS] == [1] * len(STREAMS)


def test_one_stream_overrides_the_default() -> None:
    replicas = Replicas.from_env({"CSO_STREAM_REPLICAS": "1", "CSO_INTAKE_REPLICAS": "5",
                                  "CSO_DEADLETTER_REPLICAS": "auto"})
    assert replicas.of("CSO_INTAKE", clustered=True) == 5
    assert replicas.of("CSO_REGISTRY", clustered=True) == 1
    assert replicas.of("CSO_DEADLETTER", clustered=True) == 1   # auto: the default decides
    assert replicas_env("CSO_INTAKE") == "CSO_INTAKE_REPLICAS"


@pytest.mark.parametrize("value", ["0", "6", "three", "-1", "2.5"])
def test_a_bad_value_is_refused_naming_the_variable(value: str) -> None:
    with pytest.raises(ValueError, match=f"CSO_INTAKE_REPLICAS='{value}'"):
        Replicas.from_env({"CSO_INTAKE_REPLICAS": value})
    with pytest.raises(ValueError, match="CSO_STREAM_REPLICAS"):
        Replicas.from_env({"CSO_STREAM_REPLICAS": value})


def test_more_than_one_replica_on_a_single_server_is_refused_naming_the_setting() -> None:
    replicas = Replicas.from_env({"CSO_INTAKE_REPLICAS": "3"})
    with pytest.raises(StreamMigrationError, match="CSO_INTAKE: CSO_INTAKE_REPLICAS=3, but the NATS server is a"):
        replicas.of("CSO_INTAKE", clustered=False)
    assert replicas.of("CSO_REGISTRY", clustered=False) == 1


def test_a_cluster_is_known_by_the_servers_greeting() -> None:
    class Greeted:
        def __init__(self, info: dict[str, object]) -> None:
            self._server_info = info

    assert clustered(Greeted({"server_id": "x", "cluster": "cso"}))  # type: ignore[arg-type]
    assert not clustered(Greeted({"server_id": "x"}))  # type: ignore[arg-type]


def test_the_configuration_a_stream_is_kept_at() -> None:
    specs = dict(base_streams(Topology("ns")))
    intake = stream_config(specs["CSO_INTAKE"], replicas=3)
    assert intake.name == "NS_CSO_INTAKE" and intake.subjects == intake_stream_subjects("ns.cso.intake.")
    # A fact's two shapes for each two-digit province token, and the four other shapes.
    assert len(intake.subjects) == 204 and "ns.cso.intake.*.*.51.*.*" in intake.subjects
    assert intake.num_replicas == 3 and intake.storage == StorageType.FILE
    assert intake.duplicate_window == 120.0 and intake.max_age == 0
    # No limit lets JetStream drop a message cso did not ask it to drop.
    assert (intake.max_msgs, intake.max_bytes, intake.max_msgs_per_subject, intake.max_msg_size) == (-1, -1, -1, -1)
    assert stream_config(specs["CSO_DEADLETTER"]).max_age == 90 * 86400
    as_sent = stream_config(specs["CSO_INTAKE"], replicas=3).as_dict()
    assert as_sent["num_replicas"] == 3 and as_sent["max_msgs"] == -1


def test_drift_names_what_was_changed_behind_the_operators_back() -> None:
    spec = dict(base_streams(Topology()))["CSO_INTAKE"]
    want = stream_config(spec, replicas=3)
    assert drift(want, want) == {}
    shrunk = dataclasses.replace(want, max_msgs=1, num_replicas=1, duplicate_window=2.0)
    assert drift(shrunk, want) == {"max_msgs": (1, -1), "num_replicas": (1, 3), "duplicate_window": (2.0, 120.0)}
    # What the server reports for "no limit" is no drift.
    reported = dataclasses.replace(want, max_msgs=None, max_age=None, max_consumers=None)
    assert drift(reported, want) == {}
    moved = dataclasses.replace(want, storage=StorageType.MEMORY)
    assert drift(moved, want) == {"storage": ("memory", "file")}


def test_a_subjects_change_logs_what_it_adds_and_removes_not_both_lists() -> None:
    """CSO_INTAKE has 204 subjects: a change of two of them is said as counts, the two added and the
    one removed, in a line that names none of the subjects that stay."""
    spec = dict(base_streams(Topology("ns")))["CSO_INTAKE"]
    want = stream_config(spec, 1)
    subjects = sorted(want.subjects or [])
    kept, added = subjects[2:], subjects[:2]
    have = dataclasses.replace(want, subjects=[*kept, "ns.cso.intake.old.>"], max_msgs=1)
    line = str(StreamChange(str(want.name), "updated", 1, drift(have, want)))
    assert f"subjects {len(kept) + 1} -> {len(subjects)} (+2: {added[0]}, {added[1]}; -1: ns.cso.intake.old.>)" in line
    assert "max_msgs 1 -> -1" in line
    assert kept[0] not in line and len(line) < 400, line
    # A whole new list (from one wildcard) names its first ten and counts the rest.
    first = str(StreamChange("S", "updated", 1, drift(dataclasses.replace(want, subjects=["ns.cso.intake.>"]), want)))
    assert f"+{len(subjects)}: " in first and f"and {len(subjects) - 10} more; -1: ns.cso.intake.>" in first, first
    assert subjects[9] in first and subjects[10] not in first and len(first) < 1000, first
