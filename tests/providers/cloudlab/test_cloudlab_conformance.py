"""The CloudLab provider passes the conformance suite: fake aggregate, sshd-backed nodes."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from omnibed.conformance import ProviderConformance
from omnibed.core.types import ReservationRequest
from omnibed.providers.cloudlab import CloudLabProvider
from tests.fakes.protogeni import FakeProtoGENI
from tests.fakes.protogeni_nodes import SSHNodes


@pytest.fixture
def conformance_fake(pki) -> Iterator[FakeProtoGENI]:
    backend = SSHNodes()
    try:
        with FakeProtoGENI(pki, backend=backend) as server:
            yield server
    finally:
        backend.close()


@pytest.fixture
def omnibed_provider(
    tmp_path: Path, conformance_fake: FakeProtoGENI, passphrase: str
) -> CloudLabProvider:
    conformance_fake.write_config(tmp_path / "cloudlab")
    return CloudLabProvider(tmp_path / "cloudlab")


@pytest.fixture
def omnibed_live_resources(conformance_fake: FakeProtoGENI):
    """The slivers the fake aggregate still holds in the reservation's slice."""
    return lambda reservation: [
        line for line in conformance_fake.live() if repr(reservation.name) in line]


@pytest.fixture
def omnibed_request() -> ReservationRequest:
    return ReservationRequest(name="clconf", nodes=1, duration=timedelta(hours=1),
                              extra={"hardware_type": "d430"})


@pytest.fixture
def omnibed_failing_request(conformance_fake, omnibed_request) -> ReservationRequest:
    conformance_fake.fail_next_sliver("pc500: node failed to boot its image")
    return omnibed_request


@pytest.fixture
def omnibed_wait_timeout() -> float:
    return 60.0


@pytest.mark.root
class TestCloudLabConformance(ProviderConformance):
    pass
