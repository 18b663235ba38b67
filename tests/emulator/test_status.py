"""The status of an emulation: typed for the CLI, the same JSON as `emulate status --json`."""

from __future__ import annotations

import json
from pathlib import Path

from omnibed.core.types import Nic, NicRole, Tri
from omnibed.emulator.coordinator import EmulationStatus, PnodeStatus
from omnibed.emulator.model import load_platform
from omnibed.emulator.modes import PnodeFacts
from omnibed.emulator.planner import plan

LISTING1 = Path(__file__).resolve().parents[2] / "examples" / "listing1.yaml"


def pnode(i: int) -> PnodeFacts:
    control = Nic("eth0", f"52:54:00:00:00:{i:02x}", NicRole.CONTROL,
                  addresses=(f"10.0.0.{i + 1}/24",), foreign_mac=Tri.NO, multicast=Tri.YES)
    return PnodeFacts(f"p{i}", f"10.0.0.{i + 1}", (control,))


def test_status_json_lists_networks_vnodes_and_pnodes() -> None:
    the_plan = plan(load_platform(LISTING1), [pnode(0), pnode(1)], "exp")
    status = EmulationStatus(
        reservation="exp",
        networks=the_plan.networks,
        vnodes=the_plan.vnodes,
        pnodes={"p0": PnodeStatus(complete=True), "p1": PnodeStatus(error="p1: ssh refused")},
        containers={},
    )
    data = json.loads(json.dumps(status.to_json()))
    (network,) = data["networks"]
    assert network["name"] == "vnetwork" and network["mode"] == "vxlan"
    assert set(network) == {"name", "cidr", "mode", "reason", "mtu", "vni", "port", "nics",
                            "unreachable_expected"}
    assert [(v["name"], v["pnode"]) for v in data["vnodes"]] == [
        ("vnode-0", "p0"), ("vnode-1", "p0"), ("vnode-2", "p1"), ("vnode-3", "p1")
    ]
    assert data["vnodes"][0]["ifaces"]["if0"]["address"] == "192.168.0.1/22"
    assert data["pnodes"] == {
        "p0": {"complete": True, "absent": False},
        "p1": {"error": "p1: ssh refused"},
    }


def test_a_pnode_without_its_platform_says_so_in_words() -> None:
    assert PnodeStatus(complete=True).problem() is None
    assert "missing" in PnodeStatus(absent=True).problem()
    assert "incomplete" in PnodeStatus().problem()
    assert PnodeStatus(error="p1: ssh refused").problem() == "p1: ssh refused"
