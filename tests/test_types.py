"""The values crossing the provider interface refuse what omnibed must never carry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from omnibed.core.types import (
    Capabilities,
    Capability,
    Nic,
    NicRole,
    Reservation,
    ReservationRequest,
    ReservationState,
    SSHEndpoint,
    Tri,
)

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def test_reservation_refuses_naive_and_non_utc_times() -> None:
    with pytest.raises(ValueError, match="UTC"):
        Reservation("p", "1", "r", datetime(2026, 1, 1), NOW, ReservationState.READY)
    paris = timezone(timedelta(hours=1))
    with pytest.raises(ValueError, match="UTC"):
        Reservation("p", "1", "r", NOW, NOW.astimezone(paris), ReservationState.READY)


def test_request_validates_counts_and_duration() -> None:
    with pytest.raises(ValueError, match="at least one node"):
        ReservationRequest(name="r", nodes=0, duration=timedelta(hours=1))
    with pytest.raises(ValueError, match="positive"):
        ReservationRequest(name="r", nodes=1, duration=timedelta(0))
    with pytest.raises(ValueError, match="negative"):
        ReservationRequest(name="r", nodes=1, duration=timedelta(hours=1), extra_nics=-1)


def test_extra_mappings_are_frozen_copies() -> None:
    options = {"profile": "xen"}
    request = ReservationRequest(name="r", nodes=1, duration=timedelta(hours=1), extra=options)
    options["profile"] = "kvm"
    assert request.extra["profile"] == "xen"
    with pytest.raises(TypeError):
        request.extra["profile"] = "kvm"  # type: ignore[index]


def test_endpoint_port_range_and_label() -> None:
    jump = SSHEndpoint("access.example.org", user="alice")
    endpoint = SSHEndpoint("10.0.0.1", port=2222, jumps=(jump,))
    assert endpoint.label() == "root@10.0.0.1:2222"
    assert endpoint.jumps[0].label() == "alice@access.example.org:22"
    with pytest.raises(ValueError, match="port"):
        SSHEndpoint("h", port=70000)


def test_nic_defaults_to_unknown_facts() -> None:
    nic = Nic(name="eth0", mac="02:00:00:00:00:01", role=NicRole.CONTROL)
    assert nic.foreign_mac is Tri.UNKNOWN and nic.multicast is Tri.UNKNOWN


def test_capabilities_membership() -> None:
    caps = Capabilities({Capability.SNAPSHOT}, max_extra_nics=1)
    assert Capability.SNAPSHOT in caps
    assert Capability.EXTEND not in caps
