"""The Grid'5000 provider passes the conformance suite against the fake API and sshd nodes."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from omnibed.conformance import ProviderConformance
from omnibed.conformance.suite import check_released
from omnibed.core.types import Reservation, ReservationRequest
from omnibed.providers.grid5000 import Grid5000Provider

OPTIONS = {"site": "nancy", "cluster": "gros", "poll": "0.05", "image": "debian12-min"}


@pytest.fixture
def omnibed_provider(provider, testbed):
    return provider


@pytest.fixture
def omnibed_live_resources(fake):
    """The OAR jobs the fake Grid'5000 still runs under the reservation's name."""
    return lambda reservation: [line for line in fake.live() if repr(reservation.name) in line]


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


class ForgetsTheJob(Grid5000Provider):
    """Release forgets the reservation and leaves its OAR job running."""

    def release(self, reservation: Reservation) -> None:
        self.records.delete(reservation.name)


@pytest.mark.root
def test_release_rule_sees_the_job_a_forgetful_provider_leaves(
    provider, testbed, omnibed_request, omnibed_live_resources
) -> None:
    leaky = ForgetsTheJob(provider.state_dir)
    request = replace(omnibed_request, name="g5kleak", public_key=testbed.user_key.public_openssh)
    ready = leaky.wait(leaky.reserve(request), timeout=60)
    leaky.release(ready)
    assert leaky.find("g5kleak") is None
    left = r"the testbed still holds ..job \d+ 'g5kleak' \(running\)"
    with pytest.raises(AssertionError, match=left):
        check_released(leaky, ready, omnibed_live_resources, "after release")
    provider.release(ready)
