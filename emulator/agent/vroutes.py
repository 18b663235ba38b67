"""Forwarding and routes between vnetworks inside the vnodes' namespaces (after `apply`
gave them their addresses): a forwarding vnode's namespace gets IPv4 and IPv6 forwarding
on, each route is added (replacing one to the same network) to its namespace's main
table. Python 3.9 compatible; stdlib only.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct

from . import nlbatch as nl
from . import nsutil
from .live import _batch_in, _flush
from .netlink_apply import ApplyFailure
from .state import PnodeState, Route

RTM_NEWROUTE = 24
RTA_DST, RTA_GATEWAY = 1, 5
RT_TABLE_MAIN, RTPROT_STATIC, RT_SCOPE_UNIVERSE, RTN_UNICAST = 254, 4, 0, 1
_RTMSG = struct.Struct("=BBBBBBBBI")
FORWARDING = ("/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding")


def apply(state: PnodeState) -> None:
    """Turn forwarding on in `state.forwarding` and add `state.routes`; ApplyFailure names
    the first that failed."""
    for netns in state.forwarding:
        forward(netns)
    by_netns: dict[str, list[Route]] = {}
    for route in state.routes:
        by_netns.setdefault(route.netns, []).append(route)
    for netns, routes in by_netns.items():
        batch = _batch_in(netns)
        try:
            for route in routes:
                batch.add(RTM_NEWROUTE, nl.REPLACE, route_body(route.to, route.via),
                          f"route to {route.to} via {route.via} in {route.vnode}")  # fmt: skip
            _flush(batch)
        finally:
            batch.close()


def forward(netns: str) -> None:
    """Forwarding on in namespace `netns` (the sysctls of /proc/sys/net are those of the
    namespace of whoever opens them)."""
    fd = os.open(nsutil.path(netns), os.O_RDONLY | os.O_CLOEXEC)
    home = nsutil.current_fd()
    try:
        nsutil.setns(fd)
        try:
            for knob in FORWARDING:
                if os.path.exists(knob):
                    with open(knob, "w") as sysctl:
                        sysctl.write("1")
        except OSError as exc:
            raise ApplyFailure(f"forwarding in {netns}", exc.errno or errno.EIO, str(exc)) from None
        finally:
            nsutil.setns(home)
    finally:
        os.close(fd)
        os.close(home)


def route_body(to: str, via: str) -> bytes:
    """An rtmsg and its attributes: unicast route to network `to` through address `via`."""
    network, gateway = ipaddress.ip_network(to), ipaddress.ip_address(via)
    family = socket.AF_INET if network.version == 4 else socket.AF_INET6
    head = _RTMSG.pack(family, network.prefixlen, 0, 0, RT_TABLE_MAIN, RTPROT_STATIC,
                       RT_SCOPE_UNIVERSE, RTN_UNICAST, 0)  # fmt: skip
    return (
        head + nl.nla(RTA_DST, network.network_address.packed) + nl.nla(RTA_GATEWAY, gateway.packed)
    )
