"""The local servers never take a port promised to a service that starts after them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cso_local import servers


@pytest.fixture
def offered(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Ports the kernel 'offers', in order; every port reads as free."""
    ports: list[int] = []
    monkeypatch.setattr(servers, "free_port", lambda: ports.pop(0))
    monkeypatch.setattr(servers, "port_is_free", lambda port: True)
    yield ports


def test_a_fresh_port_promised_to_a_service_is_passed_over(offered: list[int]) -> None:
    offered += [8001, 8002, 40000]
    assert servers._pick_port(None, None, avoid={8001, 8002}) == 40000


def test_the_last_runs_port_is_kept_unless_a_service_now_has_it(offered: list[int]) -> None:
    offered += [40001]
    assert servers._pick_port(None, 33000, avoid={8001}) == 33000
    assert servers._pick_port(None, 8001, avoid={8001}) == 40001


def test_a_port_asked_for_is_taken_as_it_is(offered: list[int]) -> None:
    assert servers._pick_port(8001, None, avoid={8001}) == 8001
