"""The Grid'5000 provider passes the conformance suite against the fake API and sshd nodes."""

from __future__ import annotations

from datetime import timedelta

import pytest

from omnibed.conformance import ProviderConformance
from omnibed.core.types import ReservationRequest

OPTIONS = {"site": "nancy", "cluster": "gros", "poll": "0.05", "image": "debian12-min"}


@pytest.fixture
def omnibed_provider(provider, testbed):
    return provider


@pytest.fixture
def omnibed_request() -> ReservationRequest:
    return ReservationRequest(name="g5kconf", nodes=1, duration=timedelta(hours=1),
                              image="debian12-min", extra=OPTIONS)


@pytest.fixture
def omnibed_failing_request(fake, omnibed_request) -> ReservationRequest:
    fake.error_next_job("[ADMISSION RULE] cannot launch on gros")
    return omnibed_request


@pytest.fixture
def omnibed_wait_timeout() -> float:
    return 60.0


@pytest.mark.root
class TestGrid5000Conformance(ProviderConformance):
    pass
