"""Each bare-metal node's CPU architecture, read from the Blazar host it runs on.

The fake's hosts carry the extra capabilities Chameleon gives its Blazar hosts, taken from
the resource registry records in tests/fixtures/chameleon (nc61, compute_skylake, x86_64;
c10-arm64-00, compute_arm64, aarch64).
"""

from __future__ import annotations

from omnibed.core.types import ReservationState
from tests.fakes.openstack import registry_record
from tests.providers.chameleon.support import request


def test_skylake_nodes_are_x86_64(provider, cloud):
    ready = provider.wait(provider.reserve(request("x86")), timeout=60)
    nodes = provider.list_nodes(ready)
    assert [(n.arch, n.hardware) for n in nodes] == [("x86_64", "compute_skylake")] * 2


def test_arm64_nodes_are_aarch64(provider, cloud):
    cloud.add_hosts(registry_record("compute_arm64"), 2)
    ready = provider.wait(provider.reserve(request("arm", node_type="compute_arm64")),
                          timeout=60)
    assert ready.state is ReservationState.READY
    nodes = provider.list_nodes(ready)
    assert [(n.arch, n.hardware) for n in nodes] == [("aarch64", "compute_arm64")] * 2


def test_arch_from_the_lease_hosts_when_nova_hides_the_hypervisor(provider, cloud):
    """Upstream Nova shows `OS-EXT-SRV-ATTR:hypervisor_hostname` to admins only; the lease's
    allocated hosts still say the architecture when they all agree."""
    cloud.add_hosts(registry_record("compute_arm64"), 1)
    cloud.hide_hypervisor = True
    ready = provider.wait(provider.reserve(request("hid", nodes=1,
                                                   node_type="compute_arm64")), timeout=60)
    assert [n.arch for n in provider.list_nodes(ready)] == ["aarch64"]


def test_no_architecture_when_blazar_refuses_the_host_list(provider, cloud):
    """Upstream Blazar's policy lets only admins list hosts (Chameleon lets projects):
    the architecture is then unknown, not an error."""
    ready = provider.wait(provider.reserve(request("deny", nodes=1)), timeout=60)
    cloud.hosts_forbidden = True
    assert [n.arch for n in provider.list_nodes(ready)] == [""]


def test_more_hosts_of_a_type_than_the_site_has_is_refused(provider, cloud):
    """Blazar matches `$node_type` against its hosts: asking for ARM nodes where there are
    none gets its 'Not enough hosts available'."""
    import pytest

    from omnibed.core.errors import OmnibedError

    with pytest.raises(OmnibedError, match="Not enough hosts"):
        provider.reserve(request("none", node_type="compute_arm64"))
    assert cloud.state.counts()["leases"] == 0
