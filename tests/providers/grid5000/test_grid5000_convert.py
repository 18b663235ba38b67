"""Reference API records (tests/fixtures/grid5000) to NICs, and OAR payloads, as pure data."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from omnibed.core.types import ReservationState, Tri
from omnibed.providers.grid5000 import _convert

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "grid5000"


def record(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def test_gros_production_network():
    nics = _convert.nics(record("gros-1.json"))
    assert [(n.name, n.role.value, n.mac, n.rate_mbps, n.foreign_mac) for n in nics] == [
        ("eno1", "control", "98:03:9b:b0:bb:36", 25000, Tri.UNKNOWN),
        ("eno2", "experiment", "98:03:9b:b0:bb:37", 25000, Tri.UNKNOWN),
    ]  # the bmc (management) is left out
    assert nics[0].addresses == ("172.16.66.1",)


def test_gros_secondary_nic_in_a_kavlan():
    nics = _convert.nics(record("gros-1.json"), in_vlan=["eth1"], vlan="5")
    assert (nics[1].role.value, nics[1].foreign_mac, nics[1].addresses) == (
        "extra", Tri.YES, ("10.16.65.1",))
    assert nics[0].foreign_mac is Tri.UNKNOWN


def test_paradoxe_has_only_its_control_nic():
    nics = _convert.nics(record("paradoxe-1.json"))
    assert [(n.name, n.role.value) for n in nics] == [("ens10f0np0", "control")]
    assert _convert.extra_adapters(record("paradoxe-1.json")) == []


def test_job_payload_to_reservation():
    job = record("job-rennes-384886.json")
    reservation = _convert.reservation({**job, "walltime": 3600}, "rennes")
    assert (reservation.id, reservation.state, reservation.site) == (
        "384886", ReservationState.WAITING, "rennes")
    assert reservation.start == datetime(2011, 5, 27, 17, 30, tzinfo=UTC)
    assert reservation.end - reservation.start == timedelta(hours=1)
    assert _convert.STATE_MAP.get("hold") is ReservationState.WAITING


def test_retry_at_reads_paris_time():
    message = "Reservation not valid --> KO (This reservation could run at 2030-07-01 12:00:00)"
    assert _convert.retry_at(message) == datetime(2030, 7, 1, 10, 0, tzinfo=UTC)
    assert _convert.retry_at("Reservation not valid --> KO (Reservation too old)") is None


def test_deployment_outcome_splits_ok_and_ko():
    ok, ko = _convert.deployment_outcome({"a": {"state": "OK"}, "b": {"state": "KO"}})
    assert (ok, ko) == (["a"], {"b": "KO"})
