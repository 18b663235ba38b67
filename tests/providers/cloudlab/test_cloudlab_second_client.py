"""The fake ProtoGENI aggregate driven by geni-lib calls omnibed does not make: GetVersion, an
advertisement (all nodes, then only the available ones), the manifest as geni-lib parses it,
SliverStatus, geni-lib's own RenewSliver (without `geni_extend_alap`) and DeleteSliver. So the
fake is held to the AM API v2 as ProtoGENI serves it, not only to omnibed's use of it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from geni.aggregate.apis import RenewSliverError
from geni.aggregate.exceptions import AMError
from geni.aggregate.protogeni import PGCompute

from omnibed.core.timeutil import utcnow
from omnibed.core.types import ReservationRequest
from omnibed.providers.cloudlab import CloudLabProvider
from omnibed.providers.cloudlab._convert import parse_geni_time
from tests.fakes.protogeni import CMID, GENI, FakeProtoGENI

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBxjYLMc7WmNLp0Vq1Dn2bR2Gqv5cM2xZ3bJ0bXx8kq1 res"
SEARCHFAILED = 12  # ProtoGENI's code for "no such sliver"


@pytest.fixture
def aggregate(fake: FakeProtoGENI) -> PGCompute:
    """geni-lib's aggregate object for the fake, as a geni-lib script builds one."""
    return PGCompute("fake-utah", None, CMID, url=fake.am_url)


def test_getversion_says_api_2_and_the_rspec_versions(provider: CloudLabProvider,
                                                      aggregate: PGCompute) -> None:
    version = aggregate.getversion(provider.client.context())
    assert version["geni_api"] == 2
    for key in ("geni_request_rspec_versions", "geni_ad_rspec_versions"):
        (geni3,) = [v for v in version[key] if (v["type"], v["version"]) == ("GENI", "3")]
        assert geni3["namespace"] == GENI and geni3["schema"].startswith(GENI)


def test_the_advertisement_lists_the_nodes_and_which_are_free(
    provider: CloudLabProvider, fake: FakeProtoGENI, aggregate: PGCompute
) -> None:
    context = provider.client.context()
    nodes = list(aggregate.listresources(context).nodes)
    assert len(nodes) == fake.capacity and all(node.available for node in nodes)
    assert {hardware for node in nodes for hardware in node.hardware_types} == set(
        fake.hardware_types)
    assert all({"raw-pc", "emulab-xen"} <= node.sliver_types for node in nodes)
    assert all(node.component_manager_id == CMID for node in nodes)
    provider.wait(provider.reserve(ReservationRequest(
        name="adv", nodes=3, duration=timedelta(hours=2), public_key=KEY)), timeout=60)
    assert sum(not node.available for node in aggregate.listresources(context).nodes) == 3
    free = list(aggregate.listresources(context, available=True).nodes)
    assert len(free) == fake.capacity - 3 and all(node.available for node in free)


def test_manifest_status_renew_and_delete_through_geni_lib(
    provider: CloudLabProvider, fake: FakeProtoGENI, aggregate: PGCompute
) -> None:
    provider.wait(provider.reserve(ReservationRequest(
        name="glib", nodes=2, duration=timedelta(hours=2), public_key=KEY)), timeout=60)
    context = provider.client.context()
    manifest = aggregate.listresources(context, "glib")
    assert sorted(node.client_id for node in manifest.nodes) == ["node0", "node1"]
    assert all(node.logins for node in manifest.nodes)
    status = aggregate.sliverstatus(context, "glib")
    assert status["pg_status"] == "ready" and len(status["geni_resources"]) == 2
    expires = parse_geni_time(status["pg_expires"])
    later = (expires + timedelta(hours=1)).replace(microsecond=0)
    with pytest.raises(RenewSliverError):  # past the slice's expiration
        aggregate.renewsliver(context, "glib", later)
    context.cf.renewSlice(context, "glib", later)
    aggregate.renewsliver(context, "glib", later)
    assert parse_geni_time(aggregate.sliverstatus(context, "glib")["pg_expires"]) == later
    with pytest.raises(RenewSliverError):  # geni-lib asks no "as late as allowed"
        aggregate.renewsliver(context, "glib", utcnow() + fake.max_sliver_life * 2)
    aggregate.deletesliver(context, "glib")
    assert fake.live() == []
    with pytest.raises(AMError) as gone:
        aggregate.sliverstatus(context, "glib")
    assert gone.value.data["code"]["am_code"] == SEARCHFAILED
