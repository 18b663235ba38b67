"""The Chameleon provider against Blazar's and Keystone's real rules (held by the fake):
lease updates refused (403, no hosts), leases that end, a lease name taken in the project,
password logins without a project scope."""

from __future__ import annotations

import dataclasses
import json
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from omnibed.core.errors import (
    CredentialsError,
    ProviderError,
    ProviderTimeout,
    ReservationError,
    UsageError,
)
from omnibed.core.types import ReservationState
from omnibed.providers.chameleon import ChameleonProvider
from tests.fakes.openstack import FakeOpenStack
from tests.providers.chameleon.support import request


def _lease_end(cloud: FakeOpenStack, name: str) -> str:
    return next(x["end_date"] for x in cloud.state.leases.values() if x["name"] == name)


def _blazar(cloud: FakeOpenStack, method: str, path: str, body: dict) -> int:
    """One raw call to the fake's Blazar with a fresh scoped token; its HTTP status."""
    auth = {"auth": {"identity": {"methods": ["application_credential"],
                                  "application_credential": {"id": "appcred",
                                                             "secret": "appsecret"}}}}
    login = urllib.request.Request(f"{cloud.auth_url}/auth/tokens", json.dumps(auth).encode(),
                                   {"Content-Type": "application/json"})
    token = urllib.request.urlopen(login).headers["X-Subject-Token"]
    call = urllib.request.Request(f"{cloud.url}/reservation/v1{path}", json.dumps(body).encode(),
                                  {"Content-Type": "application/json", "X-Auth-Token": token},
                                  method=method)
    try:
        return urllib.request.urlopen(call).status
    except urllib.error.HTTPError as error:
        return error.code


def _body(name: str, start: str = "now", end: str = "2099-01-01 00:00",
          low: int = 1, high: int = 1, kind: str = "physical:host") -> dict:
    return {"name": name, "start_date": start, "end_date": end, "events": [],
            "reservations": [{"resource_type": kind, "min": low, "max": high,
                              "hypervisor_properties": "", "resource_properties": ""}]}


def test_the_fake_validates_lease_creation_as_blazar_does(cloud: FakeOpenStack) -> None:
    past = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%d %H:%M")
    assert _blazar(cloud, "POST", "/leases", _body("a", start=past)) == 403
    assert _blazar(cloud, "POST", "/leases", _body("b", start="2098-01-01 00:00",
                                                   end="2097-01-01 00:00")) == 400
    assert _blazar(cloud, "POST", "/leases", _body("c", low=2, high=1)) == 400
    assert _blazar(cloud, "POST", "/leases", _body("d", kind="physical:unicorn")) == 500
    assert _blazar(cloud, "POST", "/leases", _body("e")) == 201
    assert _blazar(cloud, "POST", "/leases", _body("e")) == 409


def test_an_extension_over_hosts_taken_later_is_refused_and_changes_nothing(
    provider: ChameleonProvider, cloud: FakeOpenStack
) -> None:
    reservation = provider.wait(provider.reserve(request("ext-busy", nodes=1)), timeout=60)
    cloud.hosts_busy_from = reservation.end + timedelta(minutes=10)
    with pytest.raises(ReservationError, match="no room"):
        provider.extend(reservation, reservation.end + timedelta(minutes=30))
    assert provider.find("ext-busy").end == reservation.end
    provider.release(reservation)
    assert cloud.live() == []


def test_an_end_in_the_past_is_refused_before_asking_blazar(
    provider: ChameleonProvider, cloud: FakeOpenStack
) -> None:
    reservation = provider.wait(provider.reserve(request("ext-past", nodes=1)), timeout=60)
    before = _lease_end(cloud, "ext-past")
    with pytest.raises(UsageError, match="after now"):
        provider.extend(reservation, datetime.now(UTC) - timedelta(hours=1))
    assert not [p for m, p, _ in cloud.state.requests if m == "PUT" and "/leases/" in p]
    assert _lease_end(cloud, "ext-past") == before
    provider.release(reservation)


def test_a_lease_that_ended_is_released_and_cannot_be_extended(
    provider: ChameleonProvider, cloud: FakeOpenStack
) -> None:
    reservation = provider.wait(provider.reserve(request("ended", nodes=1)), timeout=60)
    cloud.expire("ended")
    assert provider.find("ended").state is ReservationState.RELEASED
    with pytest.raises(ProviderError, match="ended"):
        provider.extend(reservation, reservation.end + timedelta(hours=1))
    provider.release(reservation)
    assert cloud.live() == []
    assert provider.find("ended") is None


def test_a_lease_name_taken_in_the_project_is_refused_and_left_alone(
    provider: ChameleonProvider, cloud: FakeOpenStack
) -> None:
    assert _blazar(cloud, "POST", "/leases", _body("teammates")) == 201  # a teammate's, now
    with pytest.raises(UsageError, match="already exists"):
        provider.reserve(request("teammates", nodes=1))
    assert [x["name"] for x in cloud.state.leases.values()] == ["teammates"]
    assert provider.find("teammates") is None


def _openrc(tmp_path: Path, cloud: FakeOpenStack, project: str | None) -> str:
    lines = [f"export OS_AUTH_URL={cloud.auth_url}", "export OS_IDENTITY_API_VERSION=3",
             'export OS_USERNAME="demo"', 'export OS_USER_DOMAIN_NAME="Default"',
             'export OS_PASSWORD="secret"', 'export OS_REGION_NAME="CHI@UC"']
    if project is not None:
        lines += [f'export OS_PROJECT_NAME="{project}"', 'export OS_PROJECT_DOMAIN_NAME="Default"']
    path = tmp_path / "openrc.sh"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_a_password_login_without_a_project_says_to_set_one(
    provider: ChameleonProvider, cloud: FakeOpenStack, tmp_path: Path
) -> None:
    with pytest.raises(CredentialsError, match="OS_PROJECT_NAME"):
        provider.reserve(request("noscope", openrc=_openrc(tmp_path, cloud, None), cloud=""))
    assert cloud.live() == []


def test_a_password_login_to_an_unknown_project_is_refused(
    provider: ChameleonProvider, cloud: FakeOpenStack, tmp_path: Path
) -> None:
    with pytest.raises(CredentialsError):
        provider.reserve(request("badscope", openrc=_openrc(tmp_path, cloud, "CH-999999"),
                                 cloud=""))
    assert cloud.live() == []


def test_a_teammates_lease_of_the_same_name_is_never_taken_for_a_lost_one(
    provider: ChameleonProvider, cloud: FakeOpenStack
) -> None:
    """Our create's answer is lost (Blazar refused it: the name is a teammate's lease) and
    the clean-up cannot list leases: later, find and release must leave the teammate's
    lease alone (it was made before ours could have been)."""
    assert _blazar(cloud, "POST", "/leases", _body("shared")) == 201  # a teammate's
    [theirs] = cloud.state.leases.values()
    theirs["created_at"] = (datetime.now(UTC) - timedelta(hours=1)).strftime(
        "%Y-%m-%d %H:%M:%S")
    cloud.faults.delay("POST", r"/reservation/v1/leases$", 3)
    cloud.faults.fail("GET", r"/reservation/v1/leases$", status=503, times=None)
    with pytest.raises(ProviderTimeout):
        provider.reserve(request("shared", nodes=1, api_timeout="1"))
    cloud.faults.clear()
    found = provider.find("shared")
    if found is not None:
        assert found.extra["lease_id"] != theirs["id"]
        provider.release(found)
    assert cloud.state.leases[theirs["id"]]["status"] != "TERMINATED"
    assert provider.find("shared") is None


def test_a_lost_answer_to_an_advance_reservation_leaves_no_lease(
    provider: ChameleonProvider, cloud: FakeOpenStack
) -> None:
    """The lease Blazar made for a later start is found by when it was asked for, not by its
    start, and released."""
    later = dataclasses.replace(request("later", nodes=1, api_timeout="1"),
                                start=datetime.now(UTC) + timedelta(hours=3))
    cloud.faults.delay("POST", r"/reservation/v1/leases$", 3)
    with pytest.raises(ProviderTimeout):
        provider.reserve(later)
    assert cloud.live() == [] and provider.find("later") is None
