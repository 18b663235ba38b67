"""Pure conversions on the api-ref samples, and the SDK error mapping."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from keystoneauth1 import exceptions as ksa
from openstack import exceptions as sdk

from omnibed.core.errors import CredentialsError, OmnibedError, ProviderTimeout
from omnibed.core.types import ReservationState, Tri
from omnibed.providers.chameleon import _convert
from omnibed.providers.chameleon._errors import translate

FIXTURES = Path(__file__).parents[2] / "fixtures" / "chameleon"


def load(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def test_lease_sample():
    lease = load("blazar_lease-create-resp.json")["lease"]
    assert _convert.host_reservation_id(lease) == "087bc740-6d2d-410b-9d47-c7b2b55a9d36"
    assert _convert.parse_blazar_date(lease["start_date"]) == datetime(2017, 12, 26, 12,
                                                                       tzinfo=UTC)
    assert _convert.LEASE_STATES[lease["status"]] is ReservationState.WAITING
    sent = load("blazar_lease-create-req.json")
    assert _convert.parse_blazar_date(sent["end_date"]) == datetime(2017, 12, 27, 12,
                                                                    tzinfo=UTC)


def test_lease_body_is_utc_minutes():
    body = _convert.lease_body("x", 3, "gpu_p100", datetime(2030, 1, 1, 10, 0, 1, tzinfo=UTC),
                               datetime(2030, 1, 1, 12, 0, 59, tzinfo=UTC))
    assert (body["start_date"], body["end_date"]) == ("2030-01-01 10:01", "2030-01-01 12:00")
    assert body["reservations"][0]["min"] == body["reservations"][0]["max"] == 3
    with pytest.raises(ValueError):
        _convert.blazar_date(datetime(2030, 1, 1))  # naive: refused, never taken as local


def test_server_and_port_samples():
    server = load("nova_server-get-resp.json")["server"]
    assert _convert.fixed_address(server["addresses"]) == ("192.168.1.30", "00:0c:29:0d:11:74")
    port = load("neutron_port-show-response.json")["port"]  # port security disabled
    nic = _convert.nic_from_port(port, "ens3", kvm=True, control=True)
    assert nic.foreign_mac is Tri.UNKNOWN and nic.addresses == ("10.0.0.1",)


def test_interface_names_from_ip_link():
    text = ("1: lo: <LOOPBACK,UP> mtu 65536 qdisc noqueue state UNKNOWN mode DEFAULT "
            "group default qlen 1000\\    link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00\n"
            "2: eno1@if5: <BROADCAST,MULTICAST,UP> mtu 1500 qdisc mq state UP\\    "
            "link/ether 24:6E:96:7e:2e:e2 brd ff:ff:ff:ff:ff:ff")
    assert _convert.interface_names(text) == {"24:6e:96:7e:2e:e2": "eno1"}


SDK_ERRORS = [c for c in vars(sdk).values()
              if isinstance(c, type) and issubclass(c, sdk.SDKException)]


@pytest.mark.parametrize("cls", SDK_ERRORS, ids=lambda c: c.__name__)
def test_every_sdk_exception_is_mapped_to_a_typed_error(cls):
    try:
        error = cls(message="boom")
    except TypeError:  # e.g. MethodNotSupported(resource, method)
        error = cls.__new__(cls)
        Exception.__init__(error, "boom")
    assert isinstance(translate(error, "do it"), OmnibedError)


def test_keystoneauth_errors():
    assert isinstance(translate(ksa.Unauthorized(), "x"), CredentialsError)
    assert isinstance(translate(ksa.ConnectTimeout(), "x"), ProviderTimeout)


@pytest.mark.parametrize(("host", "arch"), [
    # Chameleon: the registry's architecture as an extra capability wins
    ({"architecture.platform_type": "aarch64", "cpu_info": "{}"}, "aarch64"),
    # upstream Blazar on libvirt: `str()` of Nova's cpu_info object, as in Blazar's
    # doc/api_samples/hosts/host-list-resp.json
    ({"cpu_info": "{'arch': 'ppc64le', 'model': 'POWER8', 'vendor': 'IBM',"
                  " 'topology': {'cores': 1, 'cells': 1, 'threads': 1, 'sockets': 4}}"},
     "ppc64le"),
    ({"cpu_info": '{"arch": "x86_64", "model": "cpu64-rhel6"}'}, "x86_64"),  # Nova < 2.28
    ({"cpu_info": "{}"}, ""),  # Ironic: no cpu_info
    ({"cpu_info": "not a literal"}, ""),
])
def test_host_arch(host: dict, arch: str) -> None:
    assert _convert.host_arch(host) == arch
