"""Which addresses VXLAN runs over: addresses that reach each other, and the reason says which.

A CloudLab Xen VM on a forwarded port has no routable address of its own; its control NIC
carries a private address in the experiment's shared control subnet, and its experiment
links may be on a different subnet for each pair of VMs."""

from __future__ import annotations

from omnibed.core.types import Nic, NicRole, Tri
from omnibed.emulator.modes import PnodeFacts, Request, choose_modes


def nic(name: str, role: NicRole, *addresses: str) -> Nic:
    return Nic(name, "", role, 1500, addresses, None, Tri.NO, Tri.UNKNOWN)


def vxlan(*pnodes: PnodeFacts):
    request = Request("lan", "auto", tuple(p.id for p in pnodes))
    return choose_modes([request], pnodes)["lan"]


def test_the_control_address_in_the_shared_subnet_is_chosen_over_a_routed_one() -> None:
    """Each VM's control NIC has a public address on its own /30 first and a private one in
    the shared /12: VXLAN goes over the private ones, which reach each other directly."""
    pnodes = [
        PnodeFacts(f"p{i}", f"198.18.{i}.2", (
            nic("eth0", NicRole.CONTROL, f"198.18.{i}.2/30", f"172.17.{i}.9/12"),
        ))
        for i in range(3)
    ]
    choice = vxlan(*pnodes)
    assert dict(choice.addresses) == {"p0": "172.17.0.9", "p1": "172.17.1.9", "p2": "172.17.2.9"}
    assert "control NIC (p0, p1, p2: eth0), addresses in one subnet 172.16.0.0/12" in choice.reason


def test_experiment_links_on_different_subnets_are_not_an_underlay() -> None:
    """node0-node1 on 10.10.1.0/24 and node1-node2 on 10.10.2.0/24: no subnet is on every
    pnode, so the control NIC's shared subnet carries VXLAN."""
    links = {0: ("10.10.1.1/24",), 1: ("10.10.1.2/24", "10.10.2.1/24"), 2: ("10.10.2.2/24",)}
    pnodes = [
        PnodeFacts(f"p{i}", f"172.17.0.{i + 1}", (
            nic("eth0", NicRole.CONTROL, f"172.17.0.{i + 1}/12"),
            nic("eth1", NicRole.EXPERIMENT, *links[i]),
        ))
        for i in range(3)
    ]
    choice = vxlan(*pnodes)
    assert dict(choice.nics) == {"p0": "eth0", "p1": "eth0", "p2": "eth0"}
    assert "addresses in one subnet 172.16.0.0/12" in choice.reason


def test_addresses_that_share_no_subnet_are_said_to_be_routed_and_where_they_are() -> None:
    """No control address on the node, the experiment link's address taken instead: the
    reason no longer says 'over the control NIC' for an experiment NIC's address."""
    pnodes = [
        PnodeFacts(f"p{i}", f"10.10.{i + 1}.1", (
            nic("eth0", NicRole.CONTROL),
            nic("eth1", NicRole.EXPERIMENT, f"10.10.{i + 1}.1/24"),
        ))
        for i in range(2)
    ]
    choice = vxlan(*pnodes)
    assert dict(choice.addresses) == {"p0": "10.10.1.1", "p1": "10.10.2.1"}
    assert "over the control NIC" not in choice.reason
    assert "p0: 10.10.1.1 on the experiment NIC eth1" in choice.reason
    assert "share no subnet: VXLAN relies on the routers between them" in choice.reason


def test_bare_control_addresses_are_not_said_to_share_no_subnet() -> None:
    """A provider that gives addresses without a prefix length (Grid'5000's Reference API)
    leaves the subnet unknown: the reason says so instead of claiming different subnets."""
    pnodes = [
        PnodeFacts(f"p{i}", f"172.16.20.{i + 1}", (
            nic("eno1", NicRole.CONTROL, f"172.16.20.{i + 1}"),
        ))
        for i in range(2)
    ]
    choice = vxlan(*pnodes)
    assert dict(choice.addresses) == {"p0": "172.16.20.1", "p1": "172.16.20.2"}
    assert "share no subnet" not in choice.reason
    assert "whose subnets the provider does not say" in choice.reason
