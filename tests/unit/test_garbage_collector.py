"""The services' collector settings (cso.service.tune_garbage_collector)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from cso import service


@pytest.fixture
def collector(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    threshold, tuned = gc.get_threshold(), service._collector_tuned
    service._collector_tuned = False
    monkeypatch.setenv("CSO_TUNE_GC", "1")
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)
    service._collector_tuned = tuned


def test_start_freezes_what_exists_and_collects_the_young_less_often(collector: None) -> None:
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    service.tune_garbage_collector()
    assert gc.get_threshold() == (service.YOUNG_COLLECTION_EVERY, 10, 10)
    frozen = gc.get_freeze_count()
    assert frozen > 1000  # at least the modules' objects
    # Once a process: a second service start does not freeze what the first left alive.
    gc.set_threshold(700, 10, 10)
    service.tune_garbage_collector()
    assert gc.get_threshold() == (700, 10, 10)
    assert gc.get_freeze_count() == frozen


def test_cyclic_garbage_is_still_collected(collector: None) -> None:
    service.tune_garbage_collector()

    class Node:
        other: object = None

    a, b = Node(), Node()
    a.other, b.other = b, a
    del a, b
    assert gc.collect() >= 2


def test_the_test_suite_turns_it_off(collector: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CSO_TUNE_GC", "0")
    gc.set_threshold(700, 10, 10)
    service.tune_garbage_collector()
    assert gc.get_threshold() == (700, 10, 10)
