"""What a provider author writes to run omnibed's conformance suite: a few fixtures.

Point OMNIBED_STATICHOSTS_INVENTORY at an inventory of hosts to test on. Optional:
OMNIBED_STATICHOSTS_HOSTS (names the suite may claim), OMNIBED_STATICHOSTS_REFUSING (a
host whose inventory key is refused: its reservation ends in the error state) and
OMNIBED_STATICHOSTS_DOWN (a host that does not accept SSH: its reservation stays pending).
omnibed_live_resources asks the hosts themselves whether a reservation's key is still there.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from omnibed.core.errors import SSHError
from omnibed.core.ssh import run
from omnibed.core.types import Reservation, ReservationRequest
from omnibed_statichosts import StaticHostsProvider
from omnibed_statichosts.inventory import load_inventory
from omnibed_statichosts.provider import MARK


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


@pytest.fixture
def omnibed_live_resources(
    omnibed_provider: StaticHostsProvider, tmp_path: Path
) -> Callable[[Reservation], list[str]]:
    """The hosts whose root authorized_keys still hold the reservation's key, read on each
    host over SSH with its inventory key, not from the provider's claim book. A host the
    inventory key cannot log in to cannot have received the key."""

    def live(reservation: Reservation) -> list[str]:
        held = []
        for host in load_inventory(omnibed_provider.inventory).values():
            path = host.authorized_keys or "$HOME/.ssh/authorized_keys"
            command = f'grep -qsF " {MARK}:{reservation.id}" "{path}"'
            try:
                found = run(host.admin(), command, tmp_path / "live-known_hosts", timeout=60)
            except SSHError:
                continue
            if found.exit_status == 0:
                held.append(f"{host.name}: the key of {reservation.name} logs in as root")
        return held

    return live
