"""The built-in local testbed passes the conformance suite under every underlay profile."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from omnibed.conformance import ProviderConformance
from omnibed.core.types import ReservationRequest
from omnibed.providers.local import LocalProvider
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


@pytest.mark.root
class TestLocalConformance(ProviderConformance):
    pass
