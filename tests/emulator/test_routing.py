"""Routes between vnetworks (`routes: auto`): each vnode's route to every vnetwork it is
not on goes through the nearest forwarding vnode, via that gateway's address on a vnetwork
the vnode is on, never through itself; a vnode's own routes replace those to the same
network; the platform file's mistakes name their place."""

from __future__ import annotations

import pytest

from omnibed.core.errors import PlatformError
from omnibed.emulator.model import load_platform
from omnibed.emulator.planner import plan
from omnibed.emulator.routing import Attachment, complete_routes
from tests.emulator.test_planner import facts

CIDRS = {"a": "10.0.1.0/24", "b": "10.0.2.0/24", "c": "10.0.3.0/24", "d": "10.0.4.0/24"}
# a - g1 - b - g2 - c; d is joined to nothing
VNODES = {
    "on-a": [Attachment("a", "10.0.1.10")],
    "on-c": [Attachment("c", "10.0.3.10")],
    "g1": [Attachment("a", "10.0.1.1"), Attachment("b", "10.0.2.1")],
    "g2": [Attachment("b", "10.0.2.2"), Attachment("c", "10.0.3.2")],
    "on-d": [Attachment("d", "10.0.4.10")],
}


def test_every_vnode_routes_through_its_nearest_gateway() -> None:
    routes = complete_routes(CIDRS, VNODES, ["g1", "g2"])
    assert routes == {
        "on-a": [("10.0.2.0/24", "10.0.1.1"), ("10.0.3.0/24", "10.0.1.1")],
        "on-c": [("10.0.1.0/24", "10.0.3.2"), ("10.0.2.0/24", "10.0.3.2")],
        "g1": [("10.0.3.0/24", "10.0.2.2")],
        "g2": [("10.0.1.0/24", "10.0.2.1")],
    }


def test_without_forwarding_vnodes_there_is_no_route() -> None:
    assert complete_routes(CIDRS, VNODES, []) == {}
    assert complete_routes(CIDRS, VNODES, ["g2"]) == {
        "g1": [("10.0.3.0/24", "10.0.2.2")],
        "on-c": [("10.0.2.0/24", "10.0.3.2")],
    }


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("routes: sideways\n", "2:9: routes: 'sideways' is not one of auto, none"),
        ("nodes: [{name: v, forward: maybe}]\n", "1:28: nodes[0].forward: vnode 'v'"),
    ],
)
def test_bad_routing_keys_name_their_place(text: str, says: str) -> None:
    base = "nodes: [{name: v}]\n" if text.startswith("routes") else ""
    with pytest.raises(PlatformError) as refused:
        load_platform(base + text)
    assert says in str(refused.value)


PLANNED = """
routes: auto
networks:
  - {name: a, cidr: 10.5.1.0/24}
  - {name: b, cidr: 10.5.2.0/24}
  - {name: c, cidr: 10.5.3.0/24}
nodes:
  - {name: x, pnode: 0, ifaces: [{name: if0, network: a, address: 10.5.1.10}]}
  - name: y
    pnode: 1
    ifaces: [{name: if0, network: a, address: 10.5.1.11}]
    routes: [{to: 10.5.2.0/24, via: 10.5.1.99}, {to: 10.9.0.0/16, via: 10.5.1.1}]
  - name: gw
    pnode: 1
    forward: true
    ifaces:
      - {name: if0, network: a, address: 10.5.1.1}
      - {name: if1, network: b, address: 10.5.2.1}
"""


def test_the_plan_holds_auto_and_own_routes_on_each_vnodes_pnode() -> None:
    planned = plan(load_platform(PLANNED), [facts(0), facts(1)], "routed")
    routes = {p: [(r.vnode, r.to, r.via) for r in planned.state(p).routes] for p in ("p0", "p1")}
    assert routes == {
        "p0": [("x", "10.5.2.0/24", "10.5.1.1")],
        "p1": [("y", "10.5.2.0/24", "10.5.1.99"), ("y", "10.9.0.0/16", "10.5.1.1")],
    }  # y's own route to b replaces the automatic one; c is reached by nobody
    assert planned.state("p1").forwarding == (planned.vnode("gw").netns,)
    assert planned.state("p0").forwarding == ()


@pytest.mark.parametrize(
    ("route", "says"),
    [
        ("{to: 10.5.2.0/33, via: 10.5.1.1}", "routes[0].to: '10.5.2.0/33' is not a network"),
        ("{to: 10.5.2.0/24, via: gw}", "routes[0].via: 'gw' is not an IP address"),
        ("{to: 10.5.2.0/24, via: 10.5.3.1}", "routes[0].via: vnode 'v': gateway 10.5.3.1 is on"),
        ("{to: 10.5.2.0/24}", "routes[0]: missing key 'via'"),
        ("{to: 10.5.2.0/24, via: 10.5.1.1, dev: if0}", "unknown key 'dev'"),
    ],
)
def test_bad_own_routes_name_their_place(route: str, says: str) -> None:
    text = (
        "networks: [{name: a, cidr: 10.5.1.0/24}]\n"
        f"nodes: [{{name: v, ifaces: [{{name: if0, network: a}}], routes: [{route}]}}]\n"
    )
    with pytest.raises(PlatformError) as refused:
        load_platform(text)
    assert says in str(refused.value)
