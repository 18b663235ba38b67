"""The fake Chameleon held to clients omnibed does not use: python-blazarclient, the
`openstack` command (python-openstackclient) and raw calls as other clients send them.

omnibed's own tests only prove the fake answers what omnibed asks. These drive it the way a
user's other tools do, so that an answer shaped for omnibed alone (a date format, a missing
read endpoint, a filter the fake ignores) fails here instead of on the real testbed.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import openstack
import pytest
from blazarclient import client as blazar_client
from blazarclient import exception as blazar_exception
from keystoneauth1 import session as ks_session
from keystoneauth1.identity import v3
from openstackclient import shell as openstack_shell

from tests.fakes.openstack import (
    BASE_IMAGES,
    FLAVORS,
    NETWORKS,
    PROJECT_NAME,
    SECURITY_GROUP,
    SUBNETS,
    FakeOpenStack,
    registry_record,
)

SITE = "CHI@UC"


@pytest.fixture
def session(cloud: FakeOpenStack) -> ks_session.Session:
    """A keystoneauth session logged in with a password, as openstackclient does."""
    auth = v3.Password(auth_url=cloud.auth_url, username="demo", password="secret",
                       project_name=PROJECT_NAME, user_domain_name="Default",
                       project_domain_name="Default")
    return ks_session.Session(auth=auth)


@pytest.fixture
def blazar(session: ks_session.Session):
    return blazar_client.Client(session=session, service_type="reservation", region_name=SITE)


@pytest.fixture
def sdk(session: ks_session.Session) -> Iterator[openstack.connection.Connection]:
    connection = openstack.connection.Connection(session=session, region_name=SITE)
    yield connection
    connection.close()


def _later(hours: float) -> str:
    """A Blazar request date `hours` from now (`YYYY-MM-DD HH:MM`, UTC)."""
    return (datetime.now(UTC) + timedelta(hours=hours)).strftime("%Y-%m-%d %H:%M")


def _hosts(count: int = 1) -> list[dict]:
    return [{"resource_type": "physical:host", "min": count, "max": count,
             "hypervisor_properties": "", "resource_properties": ""}]


# -- python-blazarclient ---------------------------------------------------------------------


def test_blazarclient_lists_hosts_and_a_node_type_lease_holds_the_matching_ones(
        blazar, session: ks_session.Session, cloud: FakeOpenStack) -> None:
    """Hosts as python-chi reads them (`host.list()`, filtered on the registry's fields),
    and a `$node_type` lease allocated hosts of that type only (`GET
    /os-hosts/allocations?lease_id=`, as blazarclient's `host.list_allocations` sends)."""
    cloud.add_hosts(registry_record("compute_arm64"), 1)
    hosts = blazar.host.list()
    arm = [h for h in hosts if h["node_type"] == "compute_arm64"]
    assert len(hosts) == 9 and len(arm) == 1
    assert arm[0]["architecture.platform_type"] == "aarch64"
    assert blazar.host.get(arm[0]["id"])["hypervisor_hostname"] == arm[0]["uid"]
    wanted = [{**_hosts()[0], "resource_properties": json.dumps(
        ["==", "$node_type", "compute_arm64"])}]
    lease = blazar.lease.create("arm-lease", _later(2), _later(4), wanted, [])
    answer = session.get("/os-hosts/allocations", params={"lease_id": lease["id"]},
                         endpoint_filter={"service_type": "reservation", "region_name": SITE})
    held = [x["resource_id"] for x in answer.json()["allocations"] if x["reservations"]]
    assert held == [arm[0]["id"]]
    with pytest.raises(blazar_exception.BlazarClientException, match="Not enough hosts"):
        blazar.lease.create("arm-again", _later(2), _later(4), wanted, [])


def test_blazarclient_creates_shows_lists_prolongs_and_deletes_a_lease(blazar) -> None:
    start, end = _later(2), _later(4)
    lease = blazar.lease.create("second-client", start, end, _hosts(), [])
    assert lease["name"] == "second-client" and lease["status"] == "PENDING"
    assert blazar.lease.get(lease["id"])["end_date"] == f"{end.replace(' ', 'T')}:00.000000"
    assert [x["id"] for x in blazar.lease.list()] == [lease["id"]]
    # blazarclient computes `prolong_for` from the end date the lease shows, parsed with
    # Blazar's own format (blazarclient/utils.py LEASE_DATE_FORMAT)
    prolonged = blazar.lease.update(lease["id"], prolong_for="1h")
    longer = datetime.strptime(end, "%Y-%m-%d %H:%M") + timedelta(hours=1)
    assert prolonged["end_date"] == longer.strftime("%Y-%m-%dT%H:%M:%S.%f")
    deferred = blazar.lease.update(lease["id"], defer_by="30m")
    later = datetime.strptime(start, "%Y-%m-%d %H:%M") + timedelta(minutes=30)
    assert deferred["start_date"] == later.strftime("%Y-%m-%dT%H:%M:%S.%f")
    blazar.lease.delete(lease["id"])
    with pytest.raises(blazar_exception.BlazarClientException) as gone:
        blazar.lease.get(lease["id"])
    assert gone.value.kwargs["code"] == 404


def test_blazarclient_is_refused_as_blazar_refuses(blazar) -> None:
    lease = blazar.lease.create("refused", _later(1), _later(3), _hosts(), [])
    with pytest.raises(blazar_exception.BlazarClientException) as past:
        blazar.lease.update(lease["id"], end_date=_later(-1))
    assert past.value.kwargs["code"] == 403
    with pytest.raises(blazar_exception.BlazarClientException) as twice:
        blazar.lease.create("refused", _later(1), _later(3), _hosts(), [])
    assert twice.value.kwargs["code"] == 409


def test_blazarclient_cannot_defer_a_lease_that_has_started(blazar, cloud: FakeOpenStack
                                                           ) -> None:
    lease = blazar.lease.create("started", _later(1), _later(3), _hosts(), [])
    an_hour_ago = datetime.now(UTC).replace(tzinfo=None, microsecond=0) - timedelta(hours=1)
    cloud.state.leases[lease["id"]]["start_date"] = an_hour_ago.isoformat(timespec="microseconds")
    with pytest.raises(blazar_exception.BlazarClientException) as deferred:
        blazar.lease.update(lease["id"], defer_by="1h")
    assert deferred.value.kwargs["code"] == 403
    longer = blazar.lease.update(lease["id"], prolong_for="1h")  # its end may still move
    assert datetime.fromisoformat(longer["end_date"]) - datetime.fromisoformat(
        lease["end_date"]) == timedelta(hours=1)
    blazar.lease.delete(lease["id"])


def test_lease_bodies_are_shaped_as_blazar_writes_them(blazar, cloud: FakeOpenStack) -> None:
    start, end = _later(2), _later(5)
    made = blazar.lease.create("shaped", start, end, _hosts(), [])
    for lease in (made, blazar.lease.get(made["id"]), *blazar.lease.list()):
        # no bookkeeping of the fake in what a client sees
        assert [key for key in lease if key.startswith("_")] == []
        # blazar/db/sqlalchemy/model_base.py: created_at is the DB's whole-second datetime
        # written with isoformat(' '); python-chi parses it with exactly this format
        datetime.strptime(lease["created_at"], "%Y-%m-%d %H:%M:%S")
        for reservation in lease["reservations"]:
            datetime.strptime(reservation["created_at"], "%Y-%m-%d %H:%M:%S")
            assert reservation["lease_id"] == made["id"] and reservation["resource_id"]
        # blazar/manager/service.py create_lease: start, end and before-end events
        events = {e["event_type"]: e for e in lease["events"]}
        assert events["start_lease"]["time"] == lease["start_date"]
        assert events["end_lease"]["time"] == lease["end_date"]
        before = datetime.strptime(end, "%Y-%m-%d %H:%M") - timedelta(minutes=60)
        assert events["before_end_lease"]["time"] == before.strftime("%Y-%m-%dT%H:%M:%S.%f")
        assert {e["status"] for e in events.values()} == {"UNDONE"}
    updated = blazar.lease.update(made["id"], name="renamed", prolong_for="1h")
    datetime.strptime(updated["updated_at"], "%Y-%m-%d %H:%M:%S")
    assert {e["event_type"]: e["time"] for e in updated["events"]}["end_lease"] == (
        updated["end_date"])


def test_a_lease_started_now_is_dated_to_the_minute(blazar) -> None:
    """service.py _parse_lease_dates: `now` is the current minute, seconds dropped."""
    lease = blazar.lease.create("now", "now", _later(2), _hosts(), [])
    assert lease["start_date"].endswith(":00.000000")


# -- Nova: scheduler hints under either spelling ---------------------------------------------


@pytest.mark.parametrize("spelling", ["os:scheduler_hints", "OS-SCH-HNT:scheduler_hints"])
def test_a_bare_metal_server_takes_its_reservation_from_either_hint_spelling(
    blazar, session: ks_session.Session, cloud: FakeOpenStack, spelling: str
) -> None:
    """novaclient (python-chi) sends `os:scheduler_hints`, openstacksdk the other one."""
    lease = blazar.lease.create("hinted", "now", _later(2), _hosts(), [])
    while blazar.lease.get(lease["id"])["status"] != "ACTIVE":
        pass
    server = {"name": "hinted", "imageRef": BASE_IMAGES["CC-Ubuntu22.04"],
              "flavorRef": FLAVORS["baremetal"], "networks": [{"uuid": NETWORKS["sharednet1"]}]}
    nova = {"service_type": "compute", "region_name": SITE}
    refused = session.post("/servers", json={"server": server}, endpoint_filter=nova,
                           raise_exc=False)
    assert refused.status_code == 400  # no reservation: no valid host
    hint = {"reservation": lease["reservations"][0]["id"]}
    made = session.post("/servers", json={"server": server, spelling: hint},
                        endpoint_filter=nova, raise_exc=False)
    assert made.status_code == 202, made.text


# -- Neutron and Glance list filters -----------------------------------------------------------


def _get(session: ks_session.Session, service: str, path: str) -> dict:
    answer = session.get(path, endpoint_filter={"service_type": service, "region_name": SITE})
    return answer.json()


def test_neutron_lists_honour_fields_limit_marker_and_encoded_filters(
    session: ks_session.Session,
) -> None:
    narrow = _get(session, "network", "/v2.0/networks?fields=id&fields=name")["networks"]
    assert sorted(narrow, key=lambda n: n["name"]) == [
        {"id": NETWORKS["public"], "name": "public"},
        {"id": NETWORKS["sharednet1"], "name": "sharednet1"}]
    external = _get(session, "network", "/v2.0/networks?router%3Aexternal=True")["networks"]
    assert [n["name"] for n in external] == ["public"]
    either = _get(session, "network",
                  f"/v2.0/networks?id={NETWORKS['public']}&id={NETWORKS['sharednet1']}")
    assert len(either["networks"]) == 2
    first = _get(session, "network", "/v2.0/networks?limit=1")
    assert len(first["networks"]) == 1
    following = [link["href"] for link in first["networks_links"] if link["rel"] == "next"]
    second = session.get(following[0]).json()
    assert [*first["networks"], *second["networks"]] != [] and (
        {n["id"] for n in first["networks"] + second["networks"]} == set(NETWORKS.values()))


def test_openstacksdk_pages_through_neutron_and_glance(
    sdk: openstack.connection.Connection, cloud: FakeOpenStack
) -> None:
    """openstacksdk follows `networks_links` and Glance's `next` while pages are full."""
    assert {n.name for n in sdk.network.networks(limit=1)} == set(NETWORKS)
    cloud._add_image("second image")
    assert {i.name for i in sdk.image.images(limit=1)} == {*BASE_IMAGES, "second image"}
    assert [i.name for i in sdk.image.images(name="second image")] == ["second image"]


def test_common_read_endpoints_answer(session: ks_session.Session) -> None:
    """Reads every OpenStack client makes at start-up or on `openstack ... list`."""
    subnet = _get(session, "network", f"/v2.0/subnets/{SUBNETS[NETWORKS['sharednet1']]}")
    assert subnet["subnet"]["network_id"] == NETWORKS["sharednet1"]
    group = _get(session, "network", f"/v2.0/security-groups/{SECURITY_GROUP}")
    assert group["security_group"]["name"] == "default"
    schema = _get(session, "image", "/v2/schemas/image")
    assert schema["name"] == "image" and "visibility" in schema["properties"]
    assert _get(session, "image", "/v2/schemas/images")["name"] == "images"


def test_version_documents_answer_without_a_token(session: ks_session.Session) -> None:
    """keystoneauth asks each endpoint's versions without a token first; services answer."""
    for service in ("compute", "image", "network"):
        answer = session.get("", authenticated=False, raise_exc=False, endpoint_filter={
            "service_type": service, "region_name": SITE})
        assert answer.status_code == 200, (service, answer.text)


# -- the openstack command -------------------------------------------------------------------


@pytest.fixture(scope="module")
def osc_cloud() -> Iterator[FakeOpenStack]:
    """One cloud for every `openstack` run of this module: the command keeps clients and
    the endpoints it discovered for the whole process (osc-lib's ClientCache, openstacksdk),
    so in one process it can only ever talk to one cloud, as in a real session."""
    with FakeOpenStack() as fake, pytest.MonkeyPatch.context() as env:
        for name in [n for n in os.environ if n.startswith("OS_")]:
            env.delenv(name)
        for name, value in {"OS_AUTH_URL": fake.auth_url, "OS_USERNAME": "demo",
                            "OS_PASSWORD": "secret", "OS_PROJECT_NAME": PROJECT_NAME,
                            "OS_USER_DOMAIN_NAME": "Default",
                            "OS_PROJECT_DOMAIN_NAME": "Default", "OS_REGION_NAME": SITE,
                            "OS_IDENTITY_API_VERSION": "3"}.items():
            env.setenv(name, value)
        yield fake


@pytest.fixture
def openstack_cli(osc_cloud: FakeOpenStack, capsys: pytest.CaptureFixture[str]):
    """Runs `openstack ARGS -f json` in this process against `osc_cloud`; returns its JSON
    (`... set ...` commands print nothing and return None)."""

    def run(*args: str) -> Any:
        root = logging.getLogger()
        handlers, level = list(root.handlers), root.level
        capsys.readouterr()
        try:
            quiet = "set" in args  # `... set` prints nothing
            status = openstack_shell.main([*args] if quiet else [*args, "-f", "json"])
        finally:  # the command logs to this test's captured stderr: not past the test
            root.handlers[:], root.level = handlers, level
        out, err = capsys.readouterr()
        assert not status, err  # 0, or None from blazarclient's `lease set`
        if quiet:
            return None
        # blazarclient's create says "Created a new lease:" on a line before the JSON
        return json.loads(out[min(i for i in (out.find("{"), out.find("[")) if i >= 0):])

    return run


@pytest.fixture
def osc_session(osc_cloud: FakeOpenStack) -> ks_session.Session:
    auth = v3.Password(auth_url=osc_cloud.auth_url, username="demo", password="secret",
                       project_name=PROJECT_NAME, user_domain_name="Default",
                       project_domain_name="Default")
    return ks_session.Session(auth=auth)


def test_openstack_command_reads_images_networks_and_quotas(openstack_cli, osc_session) -> None:
    assert "CC-Ubuntu22.04" in [i["Name"] for i in openstack_cli("image", "list")]
    assert openstack_cli("image", "show", "CC-Ubuntu22.04")["visibility"] == "public"
    assert {n["Name"] for n in openstack_cli("network", "list")} == set(NETWORKS)
    assert [n["Name"] for n in openstack_cli("network", "list", "--external")] == ["public"]
    assert openstack_cli("network", "show", "sharednet1")["subnets"] == [
        SUBNETS[NETWORKS["sharednet1"]]]
    assert {s["Subnet"] for s in openstack_cli("subnet", "list")} == {
        "10.140.80.0/22", "192.5.87.0/24"}
    assert [g["Name"] for g in openstack_cli("security", "group", "list")] == ["default"]
    assert {f["Name"] for f in openstack_cli("flavor", "list")} == set(FLAVORS)
    osc_session.post("/os-keypairs", json={"keypair": {
        "name": "laptop", "public_key": "ssh-ed25519 AAAA user@laptop"}},
        endpoint_filter={"service_type": "compute", "region_name": SITE})
    assert "laptop" in [k["Name"] for k in openstack_cli("keypair", "list")]
    limits = {q["Resource"]: q["Limit"] for q in openstack_cli("quota", "show")}
    assert limits["instances"] == 100 and limits["floating_ips"] == 100


def test_openstack_command_manages_a_lease(openstack_cli) -> None:
    made = openstack_cli("reservation", "lease", "create", "--reservation",
                         "min=1,max=1,resource_type=physical:host", "--start-date", _later(2),
                         "--end-date", _later(3), "cli-lease")
    assert made["name"] == "cli-lease"
    assert "cli-lease" in [x["name"] for x in openstack_cli("reservation", "lease", "list")]
    assert openstack_cli("reservation", "lease", "show", "cli-lease")["id"] == made["id"]
    openstack_cli("reservation", "lease", "set", "--prolong-for", "1h", "cli-lease")
    longer = openstack_cli("reservation", "lease", "show", "cli-lease")["end_date"]
    assert datetime.fromisoformat(longer) - datetime.fromisoformat(made["end_date"]) == (
        timedelta(hours=1))


def test_openstack_command_shows_a_server_on_a_lease(openstack_cli, osc_session) -> None:
    made = openstack_cli("reservation", "lease", "create", "--reservation",
                         "min=1,max=1,resource_type=physical:host", "--start-date", "now",
                         "--end-date", _later(2), "served")
    while openstack_cli("reservation", "lease", "show", "served")["status"] != "ACTIVE":
        pass
    reservation = json.loads(made["reservations"])["id"]  # the command shows it as JSON text
    server = {"name": "node-1", "imageRef": BASE_IMAGES["CC-Ubuntu22.04"],
              "flavorRef": FLAVORS["baremetal"], "networks": [{"uuid": NETWORKS["sharednet1"]}]}
    osc_session.post("/servers", json={"server": server,
                                       "os:scheduler_hints": {"reservation": reservation}},
                     endpoint_filter={"service_type": "compute", "region_name": SITE})
    while openstack_cli("server", "show", "node-1")["status"] != "ACTIVE":
        pass
    listed = openstack_cli("server", "list", "--name", "node-1")
    assert [(s["Name"], s["Status"], s["Flavor"]) for s in listed] == [
        ("node-1", "ACTIVE", "baremetal")]
    address = openstack_cli("server", "show", "node-1")["addresses"]["sharednet1"][0]
    ports = openstack_cli("port", "list", "--server", "node-1")
    assert [p["Fixed IP Addresses"][0]["ip_address"] for p in ports] == [address]
    assert ports[0]["Fixed IP Addresses"][0]["subnet_id"] == SUBNETS[NETWORKS["sharednet1"]]
