"""Make a pnode match a PnodeState, remove it, or report what of it exists.

`apply` is idempotent and in-process: bridges and VXLAN devices through pyroute2's IPRoute
(a handful per pnode); the trunks joining a vnetwork's bridges, namespaces and veths
through batched raw netlink (nlbatch), one socket per namespace opened while the thread is
inside it; a worker thread creates the namespaces' mount points ahead (nsutil.MountPoints).
Each vnode is finished (host side on its bridge, both ends carrying traffic) before the
next; bridge ports have IPv6 off. Nothing per object walks the pnode's other objects: no
dump, no lookup reply about a host side (each costs the kernel a walk over every namespace
id of the pnode). On failure it undoes what this call created, in reverse, and raises
ApplyFailure naming the object. `teardown` deletes every link of the state's group
(trunks included: both their ends are in it) in one request and unmounts the namespaces.
Python 3.9 compatible; needs only pyroute2 besides the standard library.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import ipaddress
import os
import socket
import struct
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from . import nlbatch as nl
from . import nsutil
from .shaping import SIOCETHTOOL, offloads_off, qdisc_request
from .state import Bridge, PnodeState, Trunk, Viface, Vxlan

ZERO_MAC = "00:00:00:00:00:00"
IPV6_CONF = "/proc/sys/net/ipv6/conf"
ETHTOOL_GLINK = 0x0A


class ApplyFailure(Exception):
    """Request `what` failed with `errno`; `rolled_back` says whether the undo completed."""

    def __init__(self, what: str, err: int, message: str, rolled_back: bool = True) -> None:
        super().__init__(message)
        self.what = what
        self.errno = err
        self.rolled_back = rolled_back


def check_group(group: int) -> None:
    """Group 0 is every link's default group: deleting it would wipe the pnode."""
    if not 0 < group < 2**32:
        raise ApplyFailure("link group", errno.EINVAL, f"link group {group} must be in 1..2^32-1")


def control_nics(ipr: IPRoute) -> dict[str, str]:
    """NICs that must never be enslaved: {ifname: why} (default route, the SSH session)."""
    names = {m["index"]: m.get("IFLA_IFNAME") for m in ipr.link("dump")}
    found: dict[str, str] = {}
    for family in (socket.AF_INET, socket.AF_INET6):
        for route in ipr.route("dump", family=family, table=254):
            if route["dst_len"] == 0 and route.get("RTA_OIF") in names:
                found[names[route.get("RTA_OIF")]] = "carries the default route"
    ssh = os.environ.get("SSH_CONNECTION", "").split()
    if len(ssh) == 4:
        server = ipaddress.ip_address(ssh[2])
        for addr in ipr.addr("dump"):
            if addr.get("IFA_ADDRESS") == str(server) and addr["index"] in names:
                found[names[addr["index"]]] = f"carries this SSH session ({server})"
    return found


def _link(ipr: IPRoute, name: str) -> Any:
    """The RTM_NEWLINK message of `name`, or None."""
    try:
        return ipr.link("get", ifname=name)[0]
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:
            return None
        raise


def _owned(msg: Any, kind: str, group: int, name: str) -> int:
    """Index of an existing link that must be a `kind` of this state's group."""
    have = msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")
    if have != kind or msg.get("IFLA_GROUP") != group:
        raise ApplyFailure(
            f"{kind} {name}",
            errno.EEXIST,
            f"{kind} {name}: a link of that name already exists (kind {have or 'unknown'}, "
            f"group {msg.get('IFLA_GROUP')}) and is not this instance's; remove or rename it",
        )
    return int(msg["index"])


class Applier:
    """One apply of `state` on the pnode whose network namespace the caller is in."""

    def __init__(self, state: PnodeState) -> None:
        self.state = state
        self.created_links: list[str] = []  # host-side names, in creation order
        self.created_ns: list[str] = []
        self.preexisting = False
        self.bridge_index: dict[str, int] = {}
        self.by_netns: dict[str, list[Viface]] = {}
        for v in state.vifaces:
            self.by_netns.setdefault(v.netns, []).append(v)

    def run(self) -> dict[str, Any]:
        check_group(self.state.group)
        _check_references(self.state)
        nsutil.prepare_run_dir()
        home = nsutil.current_fd()
        try:
            with IPRoute() as ipr:
                for bridge in self.state.bridges:
                    self._bridge(ipr, bridge)
                for vxlan in self.state.vxlans:
                    self._vxlan(ipr, vxlan)
                self._trunks(ipr, self.state.trunks)
            host = nl.Batch()  # the host sides' requests and ethtool ioctls
            try:
                with nsutil.MountPoints(self.state.namespaces, self.created_ns) as points:
                    for name, reserved in points:
                        self._vnode(name, reserved, home, host)
            finally:
                host.close()
        except Exception as exc:  # any failure, even a bug, must leave the pnode as it was
            rolled_back = self._rollback()
            raise _failure(exc, rolled_back) from exc
        finally:
            os.close(home)
        return {
            "created_namespaces": len(self.created_ns),
            "created_links": len(self.created_links),
        }

    def _bridge(self, ipr: IPRoute, bridge: Bridge) -> None:
        msg = _link(ipr, bridge.name)
        if msg is None:
            ipr.link(
                "add", ifname=bridge.name, kind="bridge", mtu=bridge.mtu, group=self.state.group
            )
            self.created_links.append(bridge.name)
            msg = _link(ipr, bridge.name)
        else:
            self.preexisting = True
        index = _owned(msg, "bridge", self.state.group, bridge.name)
        self.bridge_index[bridge.name] = index
        if bridge.uplink:
            why = control_nics(ipr).get(bridge.uplink)
            if why:
                raise ApplyFailure(
                    f"uplink {bridge.uplink}",
                    errno.EPERM,
                    f"refusing to enslave {bridge.uplink} to {bridge.name}: it {why}; "
                    "bridge onto an extra or experiment NIC instead",
                )
            uplink = _link(ipr, bridge.uplink)
            if uplink is None:
                raise ApplyFailure(
                    f"uplink {bridge.uplink}", errno.ENODEV, f"uplink {bridge.uplink} not found"
                )
            ipr.link("set", index=uplink["index"], master=index, state="up")
        ipr.link("set", index=index, state="up")

    def _vxlan(self, ipr: IPRoute, vx: Vxlan) -> None:
        msg = _link(ipr, vx.name)
        if msg is None:
            dev = _link(ipr, vx.dev)
            if dev is None:
                raise ApplyFailure(
                    f"vxlan {vx.name}", errno.ENODEV, f"underlay NIC {vx.dev} not found"
                )
            ipr.link(
                "add",
                ifname=vx.name,
                kind="vxlan",
                vxlan_id=vx.vni,
                vxlan_port=vx.port,
                vxlan_link=dev["index"],
                vxlan_local=vx.local,
                vxlan_learning=0,
                mtu=vx.mtu,
                group=self.state.group,
            )
            self.created_links.append(vx.name)
            msg = _link(ipr, vx.name)
        else:
            self.preexisting = True
        index = _owned(msg, "vxlan", self.state.group, vx.name)
        ipr.link("set", index=index, master=self.bridge_index[vx.bridge], state="up")
        for remote in vx.remotes:  # head-end replication: all-zeros entry per remote
            ipr.fdb("append", ifindex=index, lladdr=ZERO_MAC, dst=remote)

    def _trunks(self, ipr: IPRoute, trunks: tuple[Trunk, ...]) -> None:
        """Create the missing trunks in one send, then put both ends of each on their
        bridges, up, with IPv6 off (they are ports)."""
        batch = nl.Batch()
        try:
            for t in trunks:
                msg = _link(ipr, t.name)
                if msg is None:
                    body = nl.veth_pair_body(t.name, t.peer, t.mtu, self.state.group)
                    batch.add(nl.RTM_NEWLINK, nl.CREATE, body, f"trunk {t.name}")
                    self.created_links.append(t.name)
                else:
                    self.preexisting = True
                    _owned(msg, "veth", self.state.group, t.name)
            batch.flush()
            for t in trunks:
                for end, bridge in ((t.name, t.bridge), (t.peer, t.parent)):
                    ipv6_off(end)
                    body = nl.link_body(end, up=True, master=self.bridge_index[bridge])
                    batch.add(nl.RTM_NEWLINK, nl.SET, body, f"attach {end} to {bridge}")
            batch.flush()
        finally:
            batch.close()

    def _vnode(self, name: str, reserved: bool, home: int, host: nl.Batch) -> None:
        """Namespace `name` and its vifaces, each host side on its bridge, both ends able to
        carry traffic when this returns."""
        vifaces = self.by_netns.get(name, [])
        with nsutil.inside(name, home, reserved) as created:
            if not created:
                self.preexisting = True
            elif not reserved:  # its mount point vanished after the worker saw it
                self.created_ns.append(name)
            batch = nl.Batch()
        try:
            index = {} if created else _lookup(batch, [v.ifname for v in vifaces], name)
            fresh = 2  # lo is 1 in a new namespace: give the veths known indexes
            for v in vifaces:
                if v.ifname in index:
                    continue
                wanted = fresh if created else 0
                body = nl.veth_body(
                    v.ifname, wanted, v.mac, v.mtu, v.host_ifname, self.state.group, home
                )
                batch.add(nl.RTM_NEWLINK, nl.CREATE, body, f"veth {v.ifname}@{name}")
                self.created_links.append(v.host_ifname)
                if created:
                    index[v.ifname] = fresh
                    fresh += 1
            batch.add(nl.RTM_NEWLINK, nl.SET, nl.link_body(index=1, up=True), f"lo@{name} up")
            if not created:  # in a new namespace the indexes are known: one send for all
                batch.flush()
                missing = [v.ifname for v in vifaces if v.ifname not in index]
                index.update(_lookup(batch, missing, name))
            for v in vifaces:
                i = index[v.ifname]
                where = f"{v.ifname}@{name}"
                batch.add(nl.RTM_NEWLINK, nl.SET, nl.link_body(index=i, no_ipv6_lladdr=True),
                          f"no IPv6 link-local on {where}")
                batch.add(nl.RTM_NEWLINK, nl.SET, nl.link_body(index=i, up=True), f"{where} up")
                batch.add(nl.RTM_NEWADDR, nl.REPLACE, nl.addr_body(i, v.address),
                          f"address {v.address} on {v.ifname}@{name}")
                if not v.output.is_empty():
                    batch.add(nl.RTM_NEWQDISC, nl.REPLACE, qdisc_request(i, v.output, v.mtu),
                              f"output shaping on {v.ifname}@{name}")
            batch.flush()
            for v in vifaces:  # back in the pnode's namespace: the host side, still down
                host_index = socket.if_nametoindex(v.host_ifname)
                ipv6_off(v.host_ifname)
                if _shaped(v):  # before it joins the bridge: no feature recompute
                    offloads_off(batch.fileno(), v.ifname)
                    offloads_off(host.fileno(), v.host_ifname)
                body = nl.link_body(index=host_index, up=True, master=self.bridge_index[v.bridge])
                host.add(nl.RTM_NEWLINK, nl.SET, body, f"attach {v.host_ifname} to {v.bridge}")
                if not v.input.is_empty():
                    body = qdisc_request(host_index, v.input, v.mtu)
                    host.add(nl.RTM_NEWQDISC, nl.REPLACE, body, f"input shaping on {v.host_ifname}")
            host.flush()
            for v in vifaces:
                settle(host.fileno(), v.host_ifname)
                settle(batch.fileno(), v.ifname)
        finally:
            batch.close()

    def _rollback(self) -> bool:
        """Undo this call's creations; True when everything undone succeeded."""
        try:
            if not self.preexisting:
                teardown(self.state)
                return True
            with IPRoute() as ipr:  # by name, but only links of our group
                for name in reversed(self.created_links):
                    msg = _link(ipr, name)
                    if msg is not None and msg.get("IFLA_GROUP") == self.state.group:
                        ipr.link("del", index=msg["index"])
            for name in reversed(self.created_ns):
                nsutil.remove(name)
            return True
        except (nl.NetlinkFailure, NetlinkError, OSError):
            return False


def ipv6_off(ifname: str) -> None:
    """Turn IPv6 off on `ifname`, a bridge port, in the calling thread's namespace, before
    it goes up: no link-local address, no solicitations flooded to every port, and no
    multicast route per port, which every later link change on the pnode would walk
    (measured: apply and teardown grew with the square of the vnode count)."""
    try:
        fd = os.open(f"{IPV6_CONF}/{ifname}/disable_ipv6", os.O_WRONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        if os.path.isdir(IPV6_CONF):
            raise
        return  # a kernel without IPv6
    try:
        os.write(fd, b"1")
    finally:
        os.close(fd)


def settle(sock_fd: int, ifname: str) -> None:
    """Have the kernel apply `ifname`'s pending carrier change now (its qdisc, its bridge
    port's forwarding), in the namespace of socket `sock_fd`, so that the vnode carries
    traffic when apply returns instead of when the kernel's link watcher gets to it.
    ETHTOOL_GLINK does it (seen in a profile on Linux 6.18; older kernels leave it to the
    link watcher) without building a netlink message about the link, which for a host
    side costs a walk over every namespace id of the pnode."""
    value = ctypes.create_string_buffer(struct.pack("=II", ETHTOOL_GLINK, 0))
    ifreq = struct.pack("16sP", ifname.encode(), ctypes.addressof(value)) + b"\0" * 16
    fcntl.ioctl(sock_fd, SIOCETHTOOL, ifreq)


def _shaped(v: Viface) -> bool:
    return not (v.input.is_empty() and v.output.is_empty())


def _lookup(batch: nl.Batch, names: list[str], netns: str) -> dict[str, int]:
    """{ifname: index} of those of `names` that exist in the batch's namespace."""
    seqs = {name: batch.get_link(name, f"lookup {name}@{netns}") for name in names}
    replies = batch.flush() if seqs else {}
    return {
        name: nl.link_index(reply)
        for name, seq in seqs.items()
        if (reply := replies.get(seq)) is not None
    }


def _check_references(state: PnodeState) -> None:
    bridges = {b.name for b in state.bridges}
    namespaces = set(state.namespaces)
    for v in state.vifaces:
        if v.bridge not in bridges or v.netns not in namespaces:
            raise ApplyFailure(
                f"viface {v.ifname}@{v.netns}",
                errno.EINVAL,
                f"viface {v.ifname}@{v.netns} refers to bridge {v.bridge} or namespace "
                f"{v.netns}, which the state does not declare (planner bug)",
            )
    for vx in state.vxlans:
        if vx.bridge not in bridges:
            raise ApplyFailure(f"vxlan {vx.name}", errno.EINVAL,
                               f"vxlan {vx.name} refers to undeclared bridge {vx.bridge}")
    for t in state.trunks:
        if not {t.bridge, t.parent} <= bridges:
            raise ApplyFailure(f"trunk {t.name}", errno.EINVAL,
                               f"trunk {t.name} joins {t.bridge} and {t.parent}, which the "
                               "state does not both declare (planner bug)")


def _failure(exc: BaseException, rolled_back: bool) -> ApplyFailure:
    tail = "rolled back what this apply created" if rolled_back else "ROLLBACK INCOMPLETE"
    if isinstance(exc, ApplyFailure):
        what, err, text = exc.what, exc.errno, str(exc)
    elif isinstance(exc, nl.NetlinkFailure):
        what, err, text = exc.what, exc.errno, str(exc)
    elif isinstance(exc, NetlinkError):
        what, err, text = "netlink request", exc.code, f"netlink: {exc}"
    else:
        err = getattr(exc, "errno", None) or errno.EIO
        what, text = "system call", str(exc)
    return ApplyFailure(what, err, f"{text} ({tail})", rolled_back)


def teardown(state: PnodeState) -> dict[str, Any]:
    """Delete every link of the state's group (one request) and its namespaces; idempotent.

    The namespaces are unmounted by a worker thread while the kernel deletes the links (the
    unmounts do not need RTNL; the kernel frees each namespace later, asynchronously).
    """
    check_group(state.group)
    with ThreadPoolExecutor(1) as pool:
        removing = pool.submit(lambda: sum(nsutil.remove(name) for name in state.namespaces))
        batch = nl.Batch()
        try:
            body = nl.ifinfo() + nl.nla_u32(nl.IFLA_GROUP, state.group)
            batch.add(nl.RTM_DELLINK, nl.SET, body, f"delete link group {state.group}",
                      (errno.ENODEV,))
            batch.flush()
        finally:
            batch.close()
        return {"removed_namespaces": removing.result()}


def status(state: PnodeState) -> dict[str, Any]:
    """Which of the state's namespaces and host-side links exist now."""
    present_ns = nsutil.existing()
    with IPRoute() as ipr:
        links = {
            m.get("IFLA_IFNAME"): m.get("IFLA_GROUP") for m in ipr.link("dump")
        }
    wanted = [b.name for b in state.bridges] + [v.name for v in state.vxlans]
    wanted += [end for t in state.trunks for end in (t.name, t.peer)]
    wanted += [v.host_ifname for v in state.vifaces]
    ns = {name: name in present_ns for name in state.namespaces}
    link = {name: name in links for name in wanted}
    in_group = sorted(n for n, g in links.items() if g == state.group)
    return {
        "namespaces": ns,
        "links": link,
        "group_links": in_group,
        "complete": all(ns.values()) and all(link.values()),
        "absent": not any(ns.values()) and not in_group,
    }
