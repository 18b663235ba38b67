"""A service or region missing from the Keystone catalogue is named, with what to pass."""

from __future__ import annotations

import pytest

from omnibed.core.errors import ProviderError, UsageError
from omnibed.providers.chameleon import ChameleonProvider
from tests.fakes.openstack import FakeOpenStack
from tests.providers.chameleon.support import request


def test_a_cloud_without_blazar_names_the_service_and_the_region(
    provider: ChameleonProvider, cloud: FakeOpenStack
) -> None:
    cloud.missing_services = {"reservation"}
    with pytest.raises(ProviderError) as raised:
        provider.reserve(request("no-blazar", site="CHI@UC"))
    message = str(raised.value)
    assert "reservation" in message and "Blazar" in message and "CHI@UC" in message
    assert "credentials are incomplete" not in message
    assert cloud.live() == []


def test_a_wrong_site_names_the_region_and_the_known_ones(
    provider: ChameleonProvider, cloud: FakeOpenStack
) -> None:
    with pytest.raises(UsageError) as raised:
        provider.reserve(request("bad-site", site="CHI@NOWHERE"))
    message = str(raised.value)
    assert "CHI@NOWHERE" in message
    assert all(site in message for site in ("CHI@UC", "CHI@TACC", "KVM@TACC"))
    assert "credentials are incomplete" not in message
    assert cloud.live() == []
