"""Routes between vnetworks (`routes: auto`): each vnode's route to every vnetwork it is
not on goes through the nearest forwarding vnode, via that gateway's address on a vnetwork
the vnode is on, never through itself; the platform file's mistakes name their place."""

from __future__ import annotations

import pytest

from omnibed.core.errors import PlatformError
from omnibed.emulator.model import load_platform
from omnibed.emulator.routing import Attachment, complete_routes

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
