"""The national benchmark, on two small counties of the demo edition: the whole run (local stack,
divisions, backfill, a steady rate with probes, sizes, recount, floor) and its correctness line.
Timings are not asserted: they depend on the machine and on whatever else runs on it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from bench.generator import Workload
from bench.run import Options, benchmark, render, write
from contracts import parse_event
from cso.divisions import DEMO_DIVISIONS

pytestmark = pytest.mark.integration

SCOPE = ["511113", "511111"]   # 金口河区 and 沙湾区: 5 + 9 townships, 122 communities


def test_workload_is_valid_deterministic_and_causal() -> None:
    items = [i for i in Workload(DEMO_DIVISIONS, SCOPE, seed=7).events() if not i.barrier]
    again = [i.event_id for i in Workload(DEMO_DIVISIONS, SCOPE, seed=7).events() if not i.barrier]
    assert [i.event_id for i in items] == again
    assert len(set(again)) == len(again)
    first_fact: dict[str, int] = {}
    for n, item in enumerate(items):
        envelope = parse_event(item.data)           # every event honours the contracts
        assert str(envelope.event_id) == item.event_id
        org = getattr(envelope.payload, "organization_id", None)
        if item.type in ("OrganizationFiled", "OrganizationRegistered"):
            first_fact.setdefault(str(org), n)
        elif org is not None:
            assert first_fact[str(org)] < n, f"{item.type} before its organization was created"
    # A county generated alone gives the same events as within a larger scope.
    alone = {i.event_id for i in Workload(DEMO_DIVISIONS, ["511113"], seed=7).events() if not i.barrier}
    assert alone <= set(again)


def test_small_benchmark_is_exact(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    opts = Options(scope=SCOPE, divisions=DEMO_DIVISIONS, seed=11, rates=(100.0,), fresh_seconds=2.0,
                   gap=500, output=tmp_path / "result.json", progress_seconds=0.2)
    result = benchmark(opts)
    said = capsys.readouterr().err   # bench.run says on stderr (its console)
    path = write(result, opts.output)
    with (tmp_path / "table.txt").open("w") as out:
        render(result, Console(file=out, width=160))
    assert "correctness" in (tmp_path / "table.txt").read_text()

    c = result["correctness"]
    assert c["equal"], (c["registry_difference_sample"], c["training_difference_sample"])
    assert c["tiers"] == [2, 4, 6, 9, 12]
    assert c["registry_rejected"] == 0 and c["dead_letters"] == 0
    assert c["counters_compared"] > 300
    w = result["workload"]
    assert w["counties"] == 2 and w["by_stream"]["intake"] > 800 and w["by_stream"]["training"] > 0
    assert result["freshness"][0]["probes_seen"] == result["freshness"][0]["probes"] > 0
    assert set(result["rss_peak_bytes"]) >= {"registry", "targets", "training", "nats-server", "postgres"}
    assert result["floor"]["copy"]["rows"] >= w["by_type"]["OrganizationFiled"]
    assert result["floor"]["jetstream"]["messages"] == w["events"]
    assert json.loads(path.read_text())["correctness"]["equal"] is True
    # The backfill said how far it had come while it ran, and kept those samples.
    progress = result["backfill"]["progress"]
    assert progress and "progress: registry applied" in said, said
    applied = [p["targets_applied"] for p in progress]
    assert applied == sorted(applied) and 0 <= applied[-1] <= result["backfill"]["targets"]["events"]
