"""The built-in local testbed passes the conformance suite under every underlay profile."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from omnibed.conformance import ProviderConformance
from omnibed.core.types import Reservation, ReservationRequest
from omnibed.providers.local import LocalProvider
from omnibed.providers.local.cgroups import path_for
from omnibed.providers.local.profiles import PROFILES


@pytest.fixture(params=sorted(PROFILES))
def profile(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def omnibed_provider(tmp_path: Path) -> LocalProvider:
    return LocalProvider(tmp_path / "state")


@pytest.fixture
def omnibed_request(profile: str) -> ReservationRequest:
    return ReservationRequest(
        name="conf", nodes=2, duration=timedelta(hours=1), extra={"profile": profile}
    )


def _ip(*args: str) -> list[dict]:
    return json.loads(subprocess.run(["ip", "-j", *args], capture_output=True, text=True,
                                     check=True).stdout or "[]")


@pytest.fixture
def omnibed_live_resources() -> Callable[[Reservation], list[str]]:
    """The reservation's namespaces, host link and processes, as the kernel lists them
    (every local object's name starts with the reservation id)."""

    def live(reservation: Reservation) -> list[str]:
        ours = reservation.id
        namespaces = [ns["name"] for ns in _ip("netns", "list") if ns["name"].startswith(ours)]
        links = [link["ifname"] for link in _ip("link", "show")
                 if link["ifname"].startswith(ours)]
        cgroup = path_for(ours)
        procs = cgroup / "cgroup.procs" if cgroup else None
        pids = procs.read_text().split() if procs and procs.exists() else []
        return [*(f"netns {name}" for name in namespaces), *(f"link {name}" for name in links),
                *(f"process {pid}" for pid in pids)]

    return live


@pytest.mark.root
class TestLocalConformance(ProviderConformance):
    pass
