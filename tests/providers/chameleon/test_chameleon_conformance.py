"""The Chameleon provider (bare metal, CHI@UC) passes the conformance suite on real nodes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from omnibed.conformance import ProviderConformance
from omnibed.core.types import ReservationRequest
from omnibed.providers.chameleon import ChameleonProvider
from tests.fakes.openstack import FakeOpenStack
from tests.providers.chameleon.support import cloud_with_nodes


@pytest.fixture
def conformance_cloud(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                      ) -> Iterator[FakeOpenStack]:
    with cloud_with_nodes(tmp_path, monkeypatch) as (cloud, _):
        yield cloud


@pytest.fixture
def omnibed_provider(tmp_path: Path, conformance_cloud: FakeOpenStack) -> ChameleonProvider:
    return ChameleonProvider(tmp_path / "home" / "providers" / "chameleon")


@pytest.fixture
def omnibed_live_resources(conformance_cloud: FakeOpenStack):
    """The lease, servers, key pair and floating IP the fake cloud still holds that are named
    after the reservation or tagged with its id."""
    return lambda reservation: [
        line for line in conformance_cloud.live()
        if reservation.name in line or reservation.id in line]


@pytest.fixture
def omnibed_request() -> ReservationRequest:
    return ReservationRequest(name="chconf", nodes=2, duration=timedelta(hours=1),
                              extra={"cloud": "fake-chameleon", "site": "CHI@UC",
                                     "poll": "0.05"})


@pytest.fixture
def omnibed_failing_request(conformance_cloud, omnibed_request) -> ReservationRequest:
    conformance_cloud.server_fault = "No valid host was found."
    return omnibed_request


@pytest.fixture
def omnibed_wait_timeout() -> float:
    return 120.0


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
class TestChameleonConformance(ProviderConformance):
    pass
