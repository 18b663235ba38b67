"""What a provider author writes to run omnibed's conformance suite: a few fixtures.

Point OMNIBED_STATICHOSTS_INVENTORY at an inventory of hosts to test on. Optional:
OMNIBED_STATICHOSTS_HOSTS (names the suite may claim), OMNIBED_STATICHOSTS_REFUSING (a
host whose inventory key is refused: its reservation ends in the error state) and
OMNIBED_STATICHOSTS_DOWN (a host that does not accept SSH: its reservation stays pending).
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest

from omnibed.core.types import ReservationRequest
from omnibed_statichosts import StaticHostsProvider


def _request(hosts: str | None) -> ReservationRequest:
    extra = {"hosts": hosts} if hosts else {}
    return ReservationRequest(name="conf", nodes=1, duration=timedelta(hours=1), extra=extra)


@pytest.fixture
def omnibed_provider(tmp_path: Path) -> StaticHostsProvider:
    inventory = os.environ.get("OMNIBED_STATICHOSTS_INVENTORY")
    if not inventory:
        pytest.skip(reason="set OMNIBED_STATICHOSTS_INVENTORY to an inventory to test on")
    return StaticHostsProvider(tmp_path / "state", inventory=Path(inventory))


@pytest.fixture
def omnibed_request() -> ReservationRequest:
    return _request(os.environ.get("OMNIBED_STATICHOSTS_HOSTS"))


@pytest.fixture
def omnibed_failing_request() -> ReservationRequest:
    host = os.environ.get("OMNIBED_STATICHOSTS_REFUSING")
    if not host:
        pytest.skip(reason="set OMNIBED_STATICHOSTS_REFUSING to a host that refuses the key")
    return _request(host)


@pytest.fixture
def omnibed_pending_request() -> ReservationRequest | None:
    host = os.environ.get("OMNIBED_STATICHOSTS_DOWN")
    return _request(host) if host else None
