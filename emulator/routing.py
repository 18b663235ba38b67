"""Routes between vnetworks through the vnodes that forward (`routes: auto`).

Distem's complete vroutes: every vnode gets, for every vnetwork it is not on but can reach
through forwarding vnodes, one route through the nearest such gateway (fewest vnetworks
crossed; ties go to the first vnetwork and gateway in platform order), via the gateway's
address on a vnetwork the vnode is on. A vnode never routes through itself.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Attachment:
    """A vnode's interface on a vnetwork, with its address (no prefix)."""

    network: str
    address: str


def complete_routes(
    cidrs: Mapping[str, str],
    vnodes: Mapping[str, Sequence[Attachment]],
    forwarders: Sequence[str],
) -> dict[str, list[tuple[str, str]]]:
    """{vnode: [(cidr, via address), ...]} for every vnode of `vnodes` (attachments in
    platform order) and vnetwork of `cidrs` it is not on but reaches through the vnodes
    named in `forwarders`; a vnode reaching nothing it is not on is left out."""
    gateways: dict[str, list[str]] = {network: [] for network in cidrs}  # network -> vnodes
    for gateway in forwarders:
        for attachment in vnodes[gateway]:
            gateways[attachment.network].append(gateway)
    routes: dict[str, list[tuple[str, str]]] = {}
    for vnode, attachments in vnodes.items():
        first_hop: dict[str, str] = {a.network: "" for a in attachments}  # network -> via
        queue = deque(a.network for a in attachments)
        while queue:
            network = queue.popleft()
            for gateway in gateways[network]:
                if gateway == vnode:
                    continue
                via = first_hop[network] or _address(vnodes[gateway], network)
                for beyond in vnodes[gateway]:
                    if beyond.network not in first_hop:
                        first_hop[beyond.network] = via
                        queue.append(beyond.network)
        found = [(cidr, first_hop[n]) for n, cidr in cidrs.items() if first_hop.get(n)]
        if found:
            routes[vnode] = found
    return routes


def _address(attachments: Sequence[Attachment], network: str) -> str:
    return next(a.address for a in attachments if a.network == network)
