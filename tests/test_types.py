"""The values crossing the provider interface refuse what omnibed must never carry."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from omnibed.core.types import (
    Capabilities,
    Capability,
    Nic,
    NicRole,
    Node,
    Reservation,
    ReservationRequest,
    ReservationState,
    Source,
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


def test_reservation_json_round_trips_through_text() -> None:
    made = Reservation(
        "local", "42", "r", NOW, NOW + timedelta(hours=1), ReservationState.READY,
        site="rennes", extra={"netns": ["a", "b"]},
    )
    assert Reservation.from_json(json.loads(json.dumps(made.to_json()))) == made


def test_a_reservation_recorded_by_an_earlier_omnibed_still_loads() -> None:
    """The ledger keeps `to_json`; this is a row as omnibed 0.1 wrote it."""
    recorded = {"provider": "grid5000", "id": "384886", "name": "exp", "state": "ready",
                "start": "2026-11-25T12:00:00+00:00", "end": "2026-11-25T13:00:00+00:00",
                "site": "rennes", "extra": {"site": "rennes"}}
    loaded = Reservation.from_json(recorded)
    assert (loaded.end - loaded.start, loaded.state) == (timedelta(hours=1), ReservationState.READY)
    assert loaded.to_json() == recorded


def test_node_json_names_its_endpoint_and_jumps() -> None:
    gateway = SSHEndpoint("access.grid5000.fr", user="alice", key_file="/home/alice/.ssh/id")
    node = Node("n1", "paradoxe-1.rennes", SSHEndpoint("10.0.0.1", jumps=(gateway,)),
                addresses=("10.0.0.1",), extra={"cluster": "paradoxe"},
                host_keys=["ssh-ed25519 AAAAC3Nza"], arch="x86_64", hardware="paradoxe",
                site="rennes")
    data = json.loads(json.dumps(node.to_json()))
    assert data == {
        "id": "n1",
        "hostname": "paradoxe-1.rennes",
        "addresses": ["10.0.0.1"],
        "ssh": "root@10.0.0.1:22",
        "jumps": ["alice@access.grid5000.fr:22"],
        "endpoint": {
            "host": "10.0.0.1", "port": 22, "user": "root", "key_file": None,
            "jumps": [{"host": "access.grid5000.fr", "port": 22, "user": "alice",
                       "key_file": "/home/alice/.ssh/id", "jumps": []}],
        },
        "host_keys": ["ssh-ed25519 AAAAC3Nza"],
        "arch": "x86_64",
        "hardware": "paradoxe",
        "site": "rennes",
    }
    assert node.host_keys == ("ssh-ed25519 AAAAC3Nza",)  # a tuple, so the node stays frozen


def test_a_node_host_key_is_type_and_base64_only() -> None:
    with pytest.raises(ValueError, match="type base64"):
        Node("n1", "h", SSHEndpoint("10.0.0.1"), host_keys=("10.0.0.1 ssh-ed25519 AAAA",))


def test_nic_json_gives_enums_as_their_values() -> None:
    nic = Nic("eth1", "02:00:00:00:00:01", NicRole.EXTRA, mtu=9000, addresses=("10.1.0.1/24",),
              foreign_mac=Tri.YES, sources={"foreign_mac": Source.PROBE, "mac": Source.API})
    assert json.loads(json.dumps(nic.to_json())) == {
        "name": "eth1", "role": "extra", "mac": "02:00:00:00:00:01", "mtu": 9000,
        "addresses": ["10.1.0.1/24"], "rate_mbps": None, "foreign_mac": "yes",
        "multicast": "unknown", "sources": {"foreign_mac": "runtime-probe", "mac": "testbed-api"},
    }
