"""The underlay of a local reservation: a switch namespace with bridges, one namespace per pnode.

Layout for reservation `oblXXXXXX` on subnet 10.231.S.0/24:

- namespace `oblXXXXXX-s` holds bridge `br0` (the underlay switch) and, with an extra NIC,
  bridge `br1` (a plain-L2 extra link);
- pnode i lives in namespace `oblXXXXXX-i`; its `eth0` (10.231.S.i/24) is a veth whose peer
  is port `pI` of `br0`; its `eth1` (no address) is a veth whose peer is port `qI` of `br1`;
- the host reaches the pnodes through veth `oblXXXXXXh` (10.231.S.254/24) whose peer is
  port `host` of `br0`.

A profile without foreign MACs locks every `br0` port down to the one MAC registered on it:
learning off, unicast flooding off, `locked on` (frames from an unknown source MAC are
dropped) and a static FDB entry per port; broadcast still floods so ARP works. A profile
without multicast also turns multicast flooding off. Multicast snooping is off on every
bridge so multicast delivery depends on the profile alone.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import signal
import time
from pathlib import Path

from omnibed.core.errors import ProviderError, ReservationError
from omnibed.providers.local.profiles import Profile
from omnibed.providers.local.shell import run
from omnibed.providers.local.state import NodeRecord, Record

UNDERLAY = ipaddress.IPv4Network("10.231.0.0/16")
HOST_OCTET = 254
MAX_NODES = HOST_OCTET - 1
PREFIX = "obl"
OUR_NAME = re.compile(rf"^{PREFIX}[0-9a-f]{{6}}(-[0-9a-z]+|h)$")
NETNS_DIR = Path("/run/netns")


def new_reservation_id() -> str:
    """A short id no namespace on this machine uses yet (`obl` + 6 hex digits)."""
    existing = set(list_netns())
    while True:
        candidate = PREFIX + secrets.token_hex(3)
        if not any(name.startswith(candidate) for name in existing):
            return candidate


def list_netns() -> list[str]:
    return [path.name for path in NETNS_DIR.iterdir()] if NETNS_DIR.is_dir() else []


def netns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def free_subnet(also_taken: set[str]) -> ipaddress.IPv4Network:
    """A /24 of 10.231.0.0/16 that no address or route of the root namespace overlaps."""
    taken = [ipaddress.ip_network(net) for net in also_taken]
    for entry in json.loads(run("ip", "-j", "-4", "addr", "show") or "[]"):
        for info in entry.get("addr_info", []):
            taken.append(ipaddress.ip_network(f"{info['local']}/{info['prefixlen']}", False))
    for route in json.loads(run("ip", "-j", "-4", "route", "show", "table", "all") or "[]"):
        destination = route.get("dst", "")
        if destination and destination != "default" and destination[0].isdigit():
            taken.append(ipaddress.ip_network(destination, strict=False))
    for subnet in UNDERLAY.subnets(new_prefix=24):
        if not any(subnet.overlaps(net) for net in taken):
            return subnet
    raise ReservationError(
        f"every /24 of {UNDERLAY} is in use; release local reservations (omnibed gc)",
        provider="local",
    )


def mac_for(reservation_id: str, nic: int, index: int) -> str:
    """A locally administered MAC unique to (reservation, nic, index)."""
    digits = reservation_id[len(PREFIX) :]
    octets = ["02", digits[0:2], digits[2:4], digits[4:6], f"{nic:02x}", f"{index:02x}"]
    return ":".join(octets)


def plan(
    reservation_id: str, subnet: ipaddress.IPv4Network, count: int, extra_nics: int, root: Path
) -> tuple[dict[str, str], list[NodeRecord]]:
    """The names, addresses and MACs of a reservation, decided before anything is made."""
    hosts = list(subnet.hosts())
    switch = {
        "switch_netns": f"{reservation_id}-s",
        "host_link": f"{reservation_id}h",
        "host_address": str(hosts[HOST_OCTET - 1]),
        "host_mac": mac_for(reservation_id, 0xFE, 0),
    }
    nodes = [
        NodeRecord(
            id=f"pnode-{i}",
            netns=f"{reservation_id}-{i}",
            address=str(hosts[i - 1]),
            mac=mac_for(reservation_id, 0, i),
            port=f"p{i}",
            dir=str(root / f"pnode-{i}"),
            extra_mac=mac_for(reservation_id, 1, i) if extra_nics else None,
            extra_port=f"q{i}" if extra_nics else None,
        )
        for i in range(1, count + 1)
    ]
    return switch, nodes


def build_switch(record: Record, profile: Profile) -> None:
    """Make the switch namespace, its bridges and the host's port with address .254."""
    switch = record.switch_netns
    prefix = ipaddress.ip_network(record.subnet).prefixlen
    run("ip", "netns", "add", switch)
    run("ip", "-n", switch, "link", "set", "lo", "up")
    bridges = ["br0", "br1"] if record.extra_nics else ["br0"]
    for bridge in bridges:
        run("ip", "-n", switch, "link", "add", bridge, "type", "bridge",
            "stp_state", "0", "mcast_snooping", "0")
        run("ip", "-n", switch, "link", "set", bridge, "up")
    run("ip", "link", "add", record.host_link, "address", record.host_mac, "type", "veth",
        "peer", "name", "host", "netns", switch)
    _attach(switch, "host", "br0", record.host_mac, profile)
    run("ip", "addr", "add", f"{record.host_address}/{prefix}", "dev", record.host_link)
    run("ip", "link", "set", record.host_link, "up")


def build_pnode(record: Record, node: NodeRecord, profile: Profile) -> None:
    """Make pnode `node`: its namespace, `eth0` on br0 (and `eth1` on br1 when reserved)."""
    switch = record.switch_netns
    prefix = ipaddress.ip_network(record.subnet).prefixlen
    run("ip", "netns", "add", node.netns)
    run("ip", "-n", node.netns, "link", "set", "lo", "up")
    run("ip", "-n", switch, "link", "add", node.port, "type", "veth",
        "peer", "name", "eth0", "address", node.mac, "netns", node.netns)
    _attach(switch, node.port, "br0", node.mac, profile)
    run("ip", "-n", node.netns, "addr", "add", f"{node.address}/{prefix}", "dev", "eth0")
    run("ip", "-n", node.netns, "link", "set", "eth0", "up")
    if node.extra_port and node.extra_mac:
        run("ip", "-n", switch, "link", "add", node.extra_port, "type", "veth",
            "peer", "name", "eth1", "address", node.extra_mac, "netns", node.netns)
        run("ip", "-n", switch, "link", "set", node.extra_port, "master", "br1", "up")
        run("ip", "-n", node.netns, "link", "set", "eth1", "up")


def _attach(switch: str, port: str, bridge: str, mac: str, profile: Profile) -> None:
    """Plug `port` into `bridge`, locked down to `mac` unless the profile passes foreign MACs."""
    run("ip", "-n", switch, "link", "set", port, "master", bridge)
    if not profile.foreign_mac:
        run("bridge", "-n", switch, "link", "set", "dev", port,
            "learning", "off", "flood", "off", "bcast_flood", "on",
            "mcast_flood", "on" if profile.multicast else "off", "locked", "on")
        run("bridge", "-n", switch, "fdb", "add", mac, "dev", port, "master", "static")
    elif not profile.multicast:
        run("bridge", "-n", switch, "link", "set", "dev", port, "mcast_flood", "off")
    run("ip", "-n", switch, "link", "set", port, "up")


def teardown(namespaces: list[str], host_link: str) -> None:
    """Kill every process in `namespaces`, delete the host link and the namespaces.

    Only names of the local testbed's own pattern are taken from `namespaces`; missing ones
    are skipped. A named namespace one of their links leads to (made from a pnode, e.g. an
    emulator vnode with a veth into the pnode) goes with them: a pnode's /run/netns is the
    host's, so it would outlive the reservation.
    """
    ours = [name for name in namespaces if OUR_NAME.match(name) and netns_exists(name)]
    doomed = [*attached(ours), *ours]
    for name in doomed:
        kill_processes(name)
    if OUR_NAME.match(host_link) and link_exists(host_link):
        run("ip", "link", "del", host_link)
    for name in doomed:
        try:
            run("ip", "netns", "del", name)
        except ProviderError:
            if netns_exists(name):  # else gone meanwhile, e.g. removed by a dying vnode agent
                raise


def attached(namespaces: list[str]) -> list[str]:
    """The named namespaces, other than `namespaces`, that a link of `namespaces` leads to."""
    found: list[str] = []
    for name in namespaces:
        links = json.loads(run("ip", "-n", name, "-j", "link", "show") or "[]")  # gives nsids
        peers = {link["link_netnsid"] for link in links if "link_netnsid" in link}
        for entry in json.loads(run("ip", "-n", name, "-j", "netns", "list-id") or "[]"):
            other = entry.get("name")
            if entry["nsid"] in peers and other and other not in namespaces + found:
                found.append(other)
    return found


def kill_processes(netns: str, grace: float = 5.0) -> None:
    """SIGTERM every process in `netns`, then SIGKILL those still there after `grace` s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = _pids(netns)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                continue
        deadline = time.monotonic() + grace
        while pids and time.monotonic() < deadline:
            time.sleep(0.05)
            pids = _pids(netns)
        if not pids:
            return


def _pids(netns: str) -> list[int]:
    return [int(pid) for pid in run("ip", "netns", "pids", netns).split()]
