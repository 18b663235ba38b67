"""Requests the local testbed refuses before making anything (no root needed)."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from omnibed.core.errors import UsageError
from omnibed.core.timeutil import utcnow
from omnibed.core.types import Capability, ReservationRequest
from omnibed.providers.local import LocalProvider


@pytest.mark.parametrize(
    ("options", "extra_nics", "words"),
    [
        ({"profile": "kvm"}, 1, ["kvm profile", "cannot add a NIC", "xen or baremetal"]),
        ({"profile": "xen"}, 2, ["at most 1"]),
        ({"profile": "vmware"}, 0, ["baremetal", "xen", "kvm", "nomcast"]),
        ({"colour": "blue"}, 0, ["colour", "profile", "image"]),
    ],
)
def test_bad_requests_are_refused_with_nothing_made(
    provider: LocalProvider, options: dict[str, str], extra_nics: int, words: list[str]
) -> None:
    name = f"t-bad-{uuid.uuid4().hex[:6]}"
    with pytest.raises(UsageError) as refused:
        provider.reserve(
            ReservationRequest(name=name, nodes=3, duration=timedelta(hours=1),
                               extra_nics=extra_nics, extra=options)
        )
    for word in words:
        assert word in str(refused.value)
    assert provider.find(name) is None
    assert not provider.state_dir.exists() or not any(provider.state_dir.iterdir())


def test_too_many_nodes_and_advance_start_are_refused(provider: LocalProvider) -> None:
    with pytest.raises(UsageError, match="at most 253"):
        provider.reserve(ReservationRequest(name="x", nodes=254, duration=timedelta(hours=1)))
    later = utcnow() + timedelta(hours=1)
    with pytest.raises(UsageError, match="at once"):
        provider.reserve(
            ReservationRequest(name="x", nodes=1, duration=timedelta(hours=1), start=later)
        )
    assert not provider.state_dir.exists()


def test_capabilities_declare_what_the_provider_implements() -> None:
    caps = LocalProvider.capabilities
    assert {Capability.SNAPSHOT, Capability.EXTEND, Capability.EXTRA_NICS, Capability.ROOT} == set(
        caps.supported
    )
    assert caps.max_extra_nics == 1
    assert set(caps.options) == {"profile", "image"}
