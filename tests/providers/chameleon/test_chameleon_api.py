"""The Chameleon provider through the real openstacksdk against the fake OpenStack."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from omnibed.core.errors import (
    CredentialsError,
    NotSupported,
    ProviderError,
    ProviderTimeout,
    ReservationError,
    UsageError,
)
from omnibed.core.login import Login
from omnibed.core.types import ReservationState, Tri
from omnibed.providers.chameleon import ChameleonProvider, _convert
from tests.fakes.openstack import FakeOpenStack
from tests.providers.chameleon.support import request

NO_LOGIN = Login(Path("/nonexistent/id_ed25519"), "ssh-ed25519 AAAA", Path("/nonexistent/kh"))
NOTHING = {"leases": 0, "servers": 0, "keypairs": 0, "ports": 0, "floatingips": 0}


def posted(cloud: FakeOpenStack, path: str) -> list[dict]:
    return [body for method, p, body in cloud.state.requests if method == "POST" and p == path]


def test_bare_metal_reserve_wait_list_extend_release(provider, cloud):
    seen: list[str] = []
    reservation = provider.reserve(request("bm1"))
    assert reservation.state is ReservationState.WAITING
    ready = provider.wait(reservation, timeout=60, progress=seen.append)
    assert ready.state is ReservationState.READY
    assert any("lease bm1: PENDING" in line for line in seen)
    assert any("ACTIVE" in line and "%" in line for line in seen)

    lease_body = posted(cloud, "/reservation/v1/leases")[0]
    assert lease_body["reservations"][0]["resource_type"] == "physical:host"
    assert json.loads(lease_body["reservations"][0]["resource_properties"]) == [
        "==", "$node_type", "compute_skylake"]
    lease = next(iter(cloud.state.leases.values()))
    hint = lease["reservations"][0]["id"]
    servers = posted(cloud, "/compute/v2.1/servers")
    assert len(servers) == 2
    for body in servers:
        assert body["OS-SCH-HNT:scheduler_hints"] == {"reservation": hint}
        assert body["server"]["imageRef"] == "70a599e0-31e7-49b7-b260-868f441e862b"
        assert body["server"]["key_name"] in cloud.state.keypairs

    nodes = provider.list_nodes(ready)
    assert [n.hostname for n in nodes] == ["bm1-0", "bm1-1"]
    assert {(n.hardware, n.site) for n in nodes} == {("compute_skylake", "CHI@UC")}
    assert [n.id for n in nodes] == [n.id for n in provider.list_nodes(ready)]
    gateway, other = nodes
    fip = next(iter(cloud.state.floatingips.values()))
    assert fip["port_id"] is not None
    assert gateway.ssh.host == fip["floating_ip_address"] and gateway.ssh.jumps == ()
    assert other.ssh.user == "cc" and other.ssh.host == other.extra["fixed_ip"]
    assert other.ssh.jumps[0].host == fip["floating_ip_address"]

    new_end = ready.end + timedelta(hours=1)
    extended = provider.extend(ready, new_end)
    assert extended.end == new_end.replace(second=0, microsecond=0)
    assert lease["end_date"].startswith(new_end.strftime("%Y-%m-%dT%H:%M"))

    provider.release(extended)
    assert cloud.state.counts() == NOTHING
    provider.release(extended)  # idempotent
    assert provider.find("bm1") is None


def test_reserving_twice_finds_the_same_lease_and_servers(provider, cloud):
    first = provider.reserve(request("twice"))
    provider.wait(first, timeout=60)
    again = provider.reserve(request("twice"))
    assert again.id == first.id
    assert len(cloud.state.leases) == 1 and len(cloud.state.servers) == 2
    # a namesake made by someone else does not confuse it: ids are recorded
    cloud.state.servers["someone-else"] = {**next(iter(cloud.state.servers.values())),
                                            "id": "someone-else", "metadata": {}}
    assert len(provider.list_nodes(provider.find("twice"))) == 2
    del cloud.state.servers["someone-else"]
    provider.release(again)
    assert cloud.state.counts() == NOTHING


def test_a_new_provider_instance_finds_the_reservation(provider, home, cloud):
    reservation = provider.wait(provider.reserve(request("reload")), timeout=60)
    fresh = ChameleonProvider(home / "providers" / "chameleon")
    found = fresh.find("reload")
    assert found is not None and found.id == reservation.id
    assert found.state is ReservationState.READY
    fresh.release(found)
    assert cloud.state.counts() == NOTHING


@pytest.mark.parametrize("zone", ["America/Chicago", "Europe/Paris"])
def test_lease_times_are_utc_minutes_whatever_the_local_zone(provider, cloud, monkeypatch,
                                                              zone):
    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        start = datetime(2031, 3, 30, 0, 30, 15, tzinfo=UTC)  # a DST change day in Paris
        wanted = request("tz", nodes=1)
        wanted = type(wanted)(**{**{f: getattr(wanted, f) for f in wanted.__slots__},
                                 "start": start})
        reservation = provider.reserve(wanted)
        body = posted(cloud, "/reservation/v1/leases")[0]
        assert body["start_date"] == "2031-03-30 00:31"  # rounded up, never local
        assert body["end_date"] == "2031-03-30 02:30"
        assert reservation.start == datetime(2031, 3, 30, 0, 31, tzinfo=UTC)
        provider.release(reservation)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    assert cloud.state.counts() == NOTHING


def test_kvm_servers_with_a_flavor_gateway_snapshot_and_no_lease(provider, cloud):
    reservation = provider.wait(provider.reserve(request("kvm", site="KVM@TACC")), timeout=60)
    assert cloud.state.leases == {}
    bodies = posted(cloud, "/compute/v2.1/servers")
    assert {b["server"]["flavorRef"] for b in bodies} == {"2"}  # m1.small
    assert all("OS-SCH-HNT:scheduler_hints" not in b for b in bodies)
    nodes = provider.list_nodes(reservation)
    assert len(cloud.state.floatingips) == 1 and nodes[1].ssh.jumps
    image = provider.snapshot(reservation, nodes[0], "kvm-snap", NO_LOGIN)  # Nova images it
    assert cloud.state.images[image]["name"] == "kvm-snap"
    assert cloud.state.images[image]["instance_uuid"] == nodes[0].id
    with pytest.raises(NotSupported):
        provider.extend(reservation, reservation.end + timedelta(hours=1))
    provider.release(reservation)
    assert cloud.state.counts() == NOTHING
    # the snapshot is what -o image= accepts next time
    again = provider.wait(provider.reserve(request("kvm2", site="KVM@TACC", nodes=1,
                                                   image=image)), timeout=60)
    assert posted(cloud, "/compute/v2.1/servers")[-1]["server"]["imageRef"] == image
    provider.release(again)


def test_kvm_ports_say_foreign_macs_are_dropped():
    port = {"mac_address": "fa:16:3e:23:fd:d7", "port_security_enabled": True,
            "fixed_ips": [{"ip_address": "10.0.0.1"}]}
    assert _convert.nic_from_port(port, "ens3", kvm=True, control=True).foreign_mac is Tri.NO
    assert _convert.nic_from_port(port, "eno1", kvm=False, control=True).foreign_mac is (
        Tri.UNKNOWN)


def test_extra_nics_are_refused(provider, cloud):
    wanted = request("nics", site="KVM@TACC")
    wanted = type(wanted)(**{**{f: getattr(wanted, f) for f in wanted.__slots__},
                             "extra_nics": 1})
    with pytest.raises(UsageError, match="VXLAN"):
        provider.reserve(wanted)
    assert cloud.state.requests == []


# -- faults: a typed error, and nothing left -----------------------------------------------

def test_not_enough_hosts(provider, cloud):
    cloud.hosts = 1
    with pytest.raises(ReservationError, match="Not enough hosts available") as caught:
        provider.reserve(request("full", nodes=2))
    assert caught.value.testbed_message == "Not enough hosts available"
    assert cloud.state.counts() == NOTHING and provider.find("full") is None


def test_instance_quota_exceeded(provider, cloud):
    cloud.quota["instances"] = 1
    with pytest.raises(ReservationError, match="Quota exceeded for instances"):
        provider.wait(provider.reserve(request("quota", nodes=2)), timeout=60)
    assert cloud.state.counts() == NOTHING and provider.find("quota") is None


def test_floating_ip_quota_exceeded(provider, cloud):
    cloud.quota["floatingip"] = 0
    with pytest.raises(ReservationError, match="floatingip"):
        provider.wait(provider.reserve(request("fipquota")), timeout=60)
    assert cloud.state.counts() == NOTHING


def test_server_error_carries_the_fault_message(provider, cloud):
    cloud.server_fault = "No valid host was found. There are not enough hosts available."
    with pytest.raises(ProviderError, match="No valid host was found") as caught:
        provider.wait(provider.reserve(request("srverr")), timeout=60)
    assert caught.value.testbed_message == cloud.server_fault
    assert cloud.state.counts() == NOTHING


def test_lease_error(provider, cloud):
    cloud.lease_fault = True
    with pytest.raises(ReservationError, match="ERROR"):
        provider.wait(provider.reserve(request("leaseerr")), timeout=60)
    assert cloud.state.counts() == NOTHING


@pytest.mark.parametrize("path", [r"/reservation/v1/leases$", r"/compute/v2.1/servers$",
                                  r"/network/v2.0/floatingips$"])
def test_server_side_5xx(provider, cloud, path):
    cloud.faults.fail("POST", path, status=503, message="fake 503")
    with pytest.raises(ProviderError, match="fake 503"):
        provider.wait(provider.reserve(request("five")), timeout=60)
    assert cloud.state.counts() == NOTHING and provider.find("five") is None


def test_slow_answer_to_lease_create_times_out_and_the_lease_is_still_released(
        provider, cloud):
    cloud.faults.delay("POST", r"/reservation/v1/leases$", 3)
    with pytest.raises(ProviderTimeout):
        provider.reserve(request("slow", api_timeout="1"))
    # the fake made the lease but its answer came too late: found by name and deleted
    assert [m for m, p, _ in cloud.state.requests if p.startswith("/reservation/v1/leases/")
            ] == ["DELETE"]
    assert cloud.state.counts() == NOTHING and provider.find("slow") is None


def test_slow_server_create_is_released(provider, cloud):
    cloud.faults.delay("POST", r"/compute/v2.1/servers$", 3)
    with pytest.raises(ProviderTimeout):
        provider.wait(provider.reserve(request("slowsrv", api_timeout="1")), timeout=60)
    assert cloud.state.counts() == NOTHING  # found by its metadata tag


def test_wait_times_out(provider, cloud):
    cloud.ticks = 10_000
    with pytest.raises(ProviderTimeout, match="is still .* s: wait longer"):
        provider.wait(provider.reserve(request("never")), timeout=0.2)
    assert cloud.state.counts() == NOTHING


# -- credentials ----------------------------------------------------------------------------

def test_wrong_secret_is_a_credentials_error(provider, cloud):
    cloud.app_creds["appcred"] = "rotated"
    with pytest.raises(CredentialsError, match="refused the credentials"):
        provider.reserve(request("badcred"))
    assert cloud.state.counts() == NOTHING


def test_an_expired_token_is_renewed_mid_run(provider, cloud):
    reservation = provider.reserve(request("tokenexp"))
    cloud.tokens.clear()  # Keystone forgot every token (expired): the SDK logs in again
    assert provider.wait(reservation, timeout=60).state is ReservationState.READY
    provider.release(reservation)
    assert cloud.live() == []


def test_credentials_revoked_mid_run_are_a_credentials_error(provider, cloud):
    reservation = provider.reserve(request("revoked"))
    cloud.faults.revoke("GET", r"/reservation/v1/leases/")
    with pytest.raises(CredentialsError, match="expired or revoked"):
        provider.wait(reservation, timeout=60)
    assert cloud.live() != []  # nothing could be released with revoked credentials...
    cloud.faults.clear()
    provider.release(reservation)  # ...and the record still says what to release
    assert cloud.live() == []


@pytest.mark.parametrize(("method", "path"), [("POST", r"/reservation/v1/leases$"),
                                              ("POST", r"/compute/v2.1/servers$")])
def test_a_server_error_says_to_retry(provider, cloud, method, path):
    cloud.faults.fail(method, path, message="database down")
    with pytest.raises(ProviderError, match=r"HTTP 500.*database down.*retry"):
        provider.wait(provider.reserve(request("err500")), timeout=60)
    assert cloud.live() == []


def test_a_dropped_connection_says_to_check_the_network(provider, cloud):
    cloud.faults.drop("POST", r"/reservation/v1/leases$")
    with pytest.raises(ProviderError, match="could not reach.*network.*retry"):
        provider.reserve(request("dropped"))
    assert cloud.live() == []


def test_openrc_file_with_password_from_the_environment(provider, cloud, tmp_path,
                                                        monkeypatch):
    rc = tmp_path / "CH-000000-openrc.sh"
    rc.write_text(f"""#!/usr/bin/env bash
export OS_AUTH_URL={cloud.auth_url}
export OS_IDENTITY_API_VERSION=3
export OS_USERNAME="demo"
export OS_PROJECT_NAME="CH-000000"
export OS_USER_DOMAIN_NAME="Default"
export OS_PROJECT_DOMAIN_NAME="Default"
echo "Please enter your Chameleon CLI password: "
read -sr OS_PASSWORD_INPUT
export OS_PASSWORD=$OS_PASSWORD_INPUT
export OS_REGION_NAME="CHI@UC"
""")
    with pytest.raises(CredentialsError, match="OS_PASSWORD"):
        provider.reserve(request("rc", openrc=str(rc), cloud=""))
    monkeypatch.setenv("OS_PASSWORD", "secret")
    reservation = provider.reserve(request("rc", openrc=str(rc), cloud=""))
    provider.release(reservation)
    assert cloud.state.counts() == NOTHING


def test_os_environment_variables(provider, cloud, monkeypatch):
    monkeypatch.delenv("OS_CLIENT_CONFIG_FILE")
    for key, value in {"OS_AUTH_URL": cloud.auth_url, "OS_AUTH_TYPE":
                       "v3applicationcredential", "OS_APPLICATION_CREDENTIAL_ID": "appcred",
                       "OS_APPLICATION_CREDENTIAL_SECRET": "appsecret"}.items():
        monkeypatch.setenv(key, value)
    reservation = provider.reserve(request("env", cloud=""))
    provider.release(reservation)
    assert cloud.state.counts() == NOTHING
    assert any(c.what == "credentials" and c.ok and "OS_*" in c.detail
               for c in ChameleonProvider.doctor(Path("/nonexistent")))


def test_doctor_says_what_is_missing(monkeypatch, tmp_path):
    for name in [n for n in os.environ if n.startswith("OS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    checks = {c.what: c for c in ChameleonProvider.doctor(tmp_path)}
    assert checks["openstacksdk"].ok
    assert not checks["credentials"].ok and "application credential" in checks[
        "credentials"].fix


def test_doctor_prefers_application_credentials(monkeypatch):
    monkeypatch.setenv("OS_AUTH_URL", "https://chi.uc.chameleoncloud.org:5000/v3")
    monkeypatch.setenv("OS_USERNAME", "someone")
    monkeypatch.delenv("OS_CLOUD", raising=False)
    checks = {c.what: c for c in ChameleonProvider.doctor(Path("/nonexistent"))}
    assert checks["credentials"].ok and not checks["application credential"].ok
