"""Routing between vnetworks on the local testbed: two vnetworks joined by a forwarding
vnode on another pnode; with `routes: auto` a vnode on one reaches a vnode on the other,
and not while the gateway is stopped; `emulate status` shows the routes."""

from __future__ import annotations

import json

import pytest

from omnibed.api import Omnibed
from omnibed.emulator.coordinator import Emulator
from omnibed.emulator.model import load_platform
from tests.emulator.test_emulate_local import reserved
from tests.emulator.test_live_changes import Running
from tests.emulator.test_vnode_lifecycle import reaches_soon

pytestmark = pytest.mark.root

PLATFORM = """
routes: auto
networks:
  - {name: lan-a, cidr: 10.84.1.0/24}
  - {name: lan-b, cidr: 10.84.2.0/24}
nodes:
  - {name: a, pnode: 0, ifaces: [{name: if0, network: lan-a}]}
  - {name: b, pnode: 0, ifaces: [{name: if0, network: lan-b}]}
  - name: gw
    pnode: 1
    forward: true
    ifaces: [{name: if0, network: lan-a}, {name: if1, network: lan-b}]
"""


def test_a_gateway_on_another_pnode_joins_two_vnetworks(tmp_path) -> None:
    api = Omnibed(home=tmp_path / "home")
    with reserved(api, 2, "baremetal") as name:
        emulator = Emulator(api.access(name))
        plan = emulator.up(load_platform(PLATFORM))
        running = Running(api, name, emulator, plan)
        try:
            assert plan.vnode("gw").pnode != plan.vnode("a").pnode
            gateway = {i.network: i.address.split("/")[0] for i in plan.vnode("gw").ifaces}
            shown = running.cli("status", name, "--json")
            assert shown.returncode == 0, shown.stderr
            vnodes = {v["name"]: v for v in json.loads(shown.stdout)["vnodes"]}
            assert vnodes["a"]["routes"] == [{"to": "10.84.2.0/24", "via": gateway["lan-a"]}]
            assert vnodes["b"]["routes"] == [{"to": "10.84.1.0/24", "via": gateway["lan-b"]}]
            assert vnodes["gw"]["forward"] and vnodes["gw"]["routes"] == []
            assert running.reaches("a", "b") and running.reaches("b", "a")
            emulator.stop(["gw"])
            assert not running.reaches("a", "b")
            emulator.start(["gw"])
            assert reaches_soon(running, "a", "b")
        finally:
            emulator.down()
