"""`omnibed emulate up` on CloudLab reservations made through the fake aggregate, whose
nodes are sshd-backed network namespaces (tests/fakes/protogeni_nodes.py).

Xen VMs are reached on forwarded ports of one shared host and have no host IPv4 in the
manifest: VXLAN must run over addresses that reach each other (the control addresses the
nodes themselves hold, in the experiment's control subnet), and an extra LAN must be used
through the device that exists on the node (`eth1`), never the manifest's `node0:if0`.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest

from omnibed.api import Omnibed
from omnibed.emulator.coordinator import Emulator
from omnibed.emulator.model import load_platform
from omnibed.emulator.planner import Plan
from tests.fakes.protogeni import FakeProtoGENI
from tests.fakes.protogeni_nodes import XEN_HOST, SSHNodes

pytestmark = pytest.mark.root

TWO_PER_PNODE = """
networks:
  - {name: lan, cidr: 10.77.0.0/24}
nodes:
  - name: vnode-{i}
    per_pnode: 2
    ifaces:
      - {name: if0, network: lan}
"""


@pytest.fixture
def nodes() -> Iterator[SSHNodes]:
    backend = SSHNodes()
    try:
        yield backend
    finally:
        backend.close()


@pytest.fixture
def api(pki, nodes: SSHNodes, tmp_path: Path, passphrase: str) -> Iterator[Omnibed]:
    with FakeProtoGENI(pki, backend=nodes) as live:
        home = tmp_path / "home"
        live.write_config(home / "providers" / "cloudlab")
        yield Omnibed(home=home)
        assert live.live() == []  # every sliver released


@contextmanager
def emulated(api: Omnibed, extra_nics: int, **options: str) -> Iterator[tuple[str, Plan, Emulator]]:
    request = api.make_request("cloudlab", nodes=2, walltime=timedelta(hours=1),
                               extra_nics=extra_nics, options=options)
    api.reserve("cloudlab", request)
    try:
        api.wait(request.name)
        emulator = Emulator(api.access(request.name))
        plan = emulator.up(load_platform(TWO_PER_PNODE))
        try:
            yield request.name, plan, emulator
        finally:
            emulator.down()
    finally:
        api.release(request.name)


def devices(nodes: SSHNodes, name: str, pnode: str) -> set[str]:
    netns = nodes.node(name, pnode).netns
    listing = subprocess.run(["ip", "-n", netns, "-j", "link", "show"], check=True,
                             capture_output=True, text=True).stdout
    return {link["ifname"] for link in json.loads(listing)}


def everyone_reaches_everyone(emulator: Emulator, plan: Plan) -> None:
    targets = " ".join(i.address.split("/")[0] for v in plan.vnodes for i in v.ifaces)
    script = f"for a in {targets}; do ping -c 1 -W 2 $a >/dev/null || exit 9; done"
    results = emulator.exec(None, ["sh", "-c", script])
    assert {v: r.exit_status for v, r in results.items()} == {v.name: 0 for v in plan.vnodes}


def test_xen_vms_on_forwarded_ports_get_vxlan_over_their_control_subnet(
    api: Omnibed, nodes: SSHNodes
) -> None:
    with emulated(api, 0, vm="xen") as (name, plan, emulator):
        assert {n.ssh.host for n in api.nodes(name)} == {XEN_HOST}
        assert all(not n.addresses for n in api.nodes(name))  # no host IPv4
        (network,) = plan.networks
        assert network.mode == "vxlan", plan.summary()
        assert network.nics == {"node0": "eth0", "node1": "eth0"}
        assert f"addresses in one subnet {nodes.bridges.subnet}" in network.reason
        locals_ = {s.pnode: s.vxlans[0].local for s in plan.states}
        assert locals_ == {"node0": nodes.node(name, "node0").address,
                           "node1": nodes.node(name, "node1").address}
        everyone_reaches_everyone(emulator, plan)


@pytest.mark.parametrize(("options", "mode"), [({"vm": "xen"}, "vxlan"), ({}, "bridge")])
def test_an_extra_lan_is_used_through_the_device_on_the_node(
    api: Omnibed, nodes: SSHNodes, options: dict[str, str], mode: str
) -> None:
    """Xen VMs' NICs drop foreign MACs: VXLAN over the extra LAN's subnet; raw PCs' pass
    them (the probe sees it): a bridge onto the extra NIC. Either way through `eth1`."""
    with emulated(api, 1, **options) as (name, plan, emulator):
        (network,) = plan.networks
        assert network.mode == mode, plan.summary()
        assert network.nics == {"node0": "eth1", "node1": "eth1"}
        assert all("eth1" in devices(nodes, name, p) for p in network.nics)
        if mode == "vxlan":
            assert "extra NIC (node0, node1: eth1), addresses in one subnet 10.10.1.0/24" in (
                network.reason)
        everyone_reaches_everyone(emulator, plan)
