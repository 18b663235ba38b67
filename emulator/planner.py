"""The planner: platform + pnode facts -> the desired state of every pnode (pure, no root).

`plan(platform, pnodes, instance)` expands the vnodes, places them, gives them addresses,
MACs and interface names, decides each vnetwork's mode (:mod:`omnibed.emulator.modes`)
and returns a :class:`Plan`: one :class:`~omnibed.emulator.agent.state.PnodeState` per pnode for
the agent, plus the vnode table and the per-vnetwork decisions for the user.

Naming, for an instance whose tag is the first 6 hex digits of sha256(instance):
netns `ob-<tag>-p<pnode index>-<vnode>` (unique on a machine shared by pnodes), host veth
`ob<tag>v<vnode index>i<iface index>`, bridge `ob<tag>b<net index>`, VXLAN
`ob<tag>x<net index>` (indexes in base 36; every link name fits IFNAMSIZ). MACs are
locally administered unicast, from sha256(instance, vnode, iface), unique in the plan.
VNI = per-instance base (a multiple of 256 from the instance hash) + vnetwork index.

A vnetwork's vifaces on a pnode are spread evenly over a chain of bridges (`bridge_chain`)
of at most BRIDGE_VIFACES each: `ob<tag>b<net>`, which also holds the uplink or VXLAN, then
`ob<tag>l<net>_<k>` for k = 1, 2, ..., each joined to the one before by a trunk (a veth
pair: `ob<tag>d<net>_<k>` on bridge k, `ob<tag>u<net>_<k>` on bridge k-1). A chain has no
loop, so it is one L2 segment; all its links are in the instance's link group. Why a chain
and so few vifaces per bridge: a bridge floods a broadcast to all its ports at once, and a
veth queues what it carries on the CPU's backlog, which drops beyond
net.core.netdev_max_backlog (1,000 by default, global, not settable from a pnode's
namespace). In a chain a broadcast reaches at most two more bridges at each step, so at
most 2 x (BRIDGE_VIFACES + 2) frames wait at once. A star queues the floods of all its
leaves together: with two leaves of 550 vifaces, the vnodes flooded last never saw a remote
vnode's ARP request (measured); one bridge of over 1,000 vifaces would lose frames the same way.

Container vnodes (those with an image) get a container named `<prefix>-<vnode>` (the
prefix is the reservation's id, so a testbed's release finds its containers), cores of
their pnode taken in turn (a vnode's own cores distinct; vnodes share cores only when there
are more of them than cores), and an SSH host key of their own when they run sshd.

`check_fits(platform, pnodes)` refuses, by counting alone, a platform that cannot fit the
pnodes (vnodes per pnode, vifaces per vnetwork and pnode, addresses per cidr, link names);
`plan` calls it before expanding anything, and the CLI calls it before reserving or building.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from omnibed.core.errors import PlatformError, UsageError
from omnibed.emulator.agent import nsutil
from omnibed.emulator.agent.containers import ContainerSpec, tarball_path
from omnibed.emulator.agent.state import Bridge, PnodeState, Route, Shaping, Trunk, Viface, Vxlan
from omnibed.emulator.image_refs import ImageRef
from omnibed.emulator.model import (
    IFNAME_MAX_BYTES,
    MAX_VNODES_PER_PNODE,
    NAME_RULE,
    Platform,
    VNodeSpec,
    reserved,
    show,
    valid_name,
)
from omnibed.emulator.modes import (
    Choice,
    PnodeFacts,
    ProbeResult,
    Request,
    choose_modes,
)
from omnibed.emulator.routing import Attachment, complete_routes

MAX_NETWORKS = 256  # VNIs per instance
MAX_VNODES = 100_000  # per emulation: the plan is held in the CLI's memory
FLOOD_BACKLOG = 1000  # net.core.netdev_max_backlog's default: frames a CPU queues from veths
BRIDGE_VIFACES = (FLOOD_BACKLOG - 40) // 2  # a broadcast floods two bridges at once, + margin
MAX_CHAIN = 36**2  # bridges of a vnetwork on a pnode: their index takes 2 base-36 digits
MAX_PORTS = MAX_CHAIN * BRIDGE_VIFACES  # vifaces of a vnetwork on a pnode
HOST_IFNAME_FIXED = len("ob") + 6 + len("v") + len("i")  # the rest: vnode and iface indexes
_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"


def _digest(*parts: str) -> bytes:
    return hashlib.sha256("\0".join(parts).encode()).digest()


def instance_tag(instance: str) -> str:
    """6 hex digits naming the instance's links and namespaces."""
    return _digest("omnibed-instance", instance).hex()[:6]


def link_group(instance: str) -> int:
    """The link group (IFLA_GROUP, nonzero, < 2^31) of every host-side link of the instance."""
    return 1 + int.from_bytes(_digest("omnibed-group", instance)[:4], "big") % (2**31 - 2)


def vni_base(instance: str) -> int:
    """First VNI of the instance: a multiple of 256 in [256, 2^24 - 256]."""
    return 256 * (1 + int.from_bytes(_digest("omnibed-vni", instance)[:4], "big") % (2**16 - 1))


def _b36(n: int) -> str:
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = _B36[r] + out
        if not n:
            return out


@dataclass(frozen=True)
class BridgeChain:
    """The bridges of one vnetwork on one pnode, in chain order: `bridges[0]` holds the
    uplink or VXLAN; the `ports` vifaces fill the bridges in order, evenly."""

    bridges: tuple[Bridge, ...]
    trunks: tuple[Trunk, ...]
    ports: int

    @property
    def root(self) -> str:
        return self.bridges[0].name

    def bridge_of(self, port: int) -> str:
        """The bridge of the vnetwork's `port`-th viface on the pnode, counted from 0."""
        return self.bridges[port * len(self.bridges) // self.ports].name


def bridge_chain(
    tag: str, net_index: int, network: str, mtu: int, uplink: str | None, ports: int
) -> BridgeChain:
    """The fewest bridges of at most BRIDGE_VIFACES vifaces that hold `ports` vifaces of
    vnetwork number `net_index` on one pnode, filled evenly, each trunked to the one
    before. Call check_fits first."""
    root = Bridge(f"ob{tag}b{_b36(net_index)}", network, mtu, uplink)
    bridges, trunks = [root], []
    count = max(1, -(-ports // BRIDGE_VIFACES))
    for k in range(1, count):
        suffix = f"{_b36(net_index)}_{_b36(k)}"
        bridge = Bridge(f"ob{tag}l{suffix}", network, mtu)
        trunks.append(
            Trunk(f"ob{tag}d{suffix}", f"ob{tag}u{suffix}", bridge.name, bridges[-1].name, mtu)
        )
        bridges.append(bridge)
    return BridgeChain(tuple(bridges), tuple(trunks), ports)


@dataclass(frozen=True)
class VifacePlan:
    name: str
    network: str
    address: str  # CIDR notation
    mac: str
    host_ifname: str


@dataclass(frozen=True)
class VnodePlan:
    name: str
    pnode: str
    netns: str
    ifaces: tuple[VifacePlan, ...] = ()
    container: str | None = None  # the container's name on its pnode; None: a netns only
    image: str | None = None
    cpus: tuple[int, ...] = ()
    share: float | None = None
    memory: int | None = None
    ssh: bool = False


@dataclass(frozen=True)
class NetworkPlan:
    """The decision for one vnetwork, as reported to the user."""

    name: str
    cidr: str
    requested: str
    mode: str
    reason: str
    mtu: int
    vni: int | None
    port: int | None
    nics: dict[str, str | None] = field(default_factory=dict)  # pnode -> uplink/underlay NIC
    unreachable_expected: bool = False


@dataclass(frozen=True)
class Plan:
    """Everything one emulation instance builds, per pnode, plus what to tell the user."""

    instance: str
    group: int
    vxlan_port: int
    pnodes: tuple[str, ...]
    networks: tuple[NetworkPlan, ...]
    vnodes: tuple[VnodePlan, ...]
    states: tuple[PnodeState, ...]

    def state(self, pnode: str) -> PnodeState:
        return next(s for s in self.states if s.pnode == pnode)

    def vnode(self, name: str) -> VnodePlan:
        for v in self.vnodes:
            if v.name == name:
                return v
        some = ", ".join(v.name for v in self.vnodes[:5]) + (
            ", ..." if len(self.vnodes) > 5 else ""
        )
        raise UsageError(
            f"no vnode {show(name)} in emulation {self.instance}: its vnodes are {some} "
            f"(`omnibed emulate status {self.instance}`)"
        )

    def reasons(self) -> dict[str, str]:
        return {n.name: f"{n.mode}: {n.reason}" for n in self.networks}

    @property
    def unreachable_expected(self) -> tuple[str, ...]:
        """Vnetworks forced with --force onto an underlay that drops foreign MACs."""
        return tuple(n.name for n in self.networks if n.unreachable_expected)

    def summary(self) -> str:
        """Plain text for the CLI: the chosen mode of every vnetwork, why, and placement."""
        lines = [
            f"emulation {self.instance}: {len(self.vnodes)} vnodes on {len(self.pnodes)} pnodes"
        ]
        for n in self.networks:
            extra = f", VNI {n.vni}, UDP port {n.port}" if n.mode == "vxlan" else ""
            lines.append(f"vnetwork {n.name} ({n.cidr}): {n.mode}{extra}, MTU {n.mtu}")
            lines.append(f"  why: {n.reason}")
            if n.unreachable_expected:
                lines.append("  warning: vnodes on different pnodes are expected not to reach")
        for p in self.pnodes:
            count = sum(1 for v in self.vnodes if v.pnode == p)
            lines.append(f"pnode {p}: {count} vnode{'' if count == 1 else 's'}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "instance": self.instance,
            "group": self.group,
            "vxlan_port": self.vxlan_port,
            "pnodes": list(self.pnodes),
            "networks": [asdict(n) for n in self.networks],
            "vnodes": [asdict(v) for v in self.vnodes],
            "states": [s.to_json() for s in self.states],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Plan:
        return cls(
            instance=data["instance"],
            group=data["group"],
            vxlan_port=data["vxlan_port"],
            pnodes=tuple(data["pnodes"]),
            networks=tuple(NetworkPlan(**n) for n in data["networks"]),
            vnodes=tuple(
                VnodePlan(
                    **{
                        **v,
                        "ifaces": tuple(VifacePlan(**i) for i in v["ifaces"]),
                        "cpus": tuple(v.get("cpus", ())),
                    },
                )
                for v in data["vnodes"]
            ),
            states=tuple(PnodeState.from_json(s) for s in data["states"]),
        )


def _pnode_index(spec: VNodeSpec, ids: Sequence[str] | None, count: int) -> int | None:
    """The pnode index `spec.pnode` names; None for a node id when the ids are not known yet."""
    ref = spec.pnode
    if isinstance(ref, str) and ids is not None and ref in ids:
        return ids.index(ref)
    if isinstance(ref, str) and not ref.isdigit():
        if ids is None:
            return None
        raise PlatformError(
            f"vnode {spec.name!r}: pnode {show(ref)} is not one of the reserved pnodes "
            f"({', '.join(ids)})"
        )
    index = int(ref)  # type: ignore[arg-type]
    if index >= count:
        raise PlatformError(
            f"vnode {spec.name!r}: pnode {index} does not exist; the reservation has "
            f"{count} pnodes (0..{count - 1})"
        )
    return index


def _place(platform: Platform, pnodes: Sequence[str] | int) -> tuple[list[int | None], list[int]]:
    """By counting alone: the pnode index of each single vnode (None for per_pnode specs) and
    how many vnodes each pnode gets. `pnodes` is the pnode ids, or how many there will be."""
    ids = None if isinstance(pnodes, int) else list(pnodes)
    count = pnodes if isinstance(pnodes, int) else len(pnodes)
    load = [0] * count
    placed: list[int | None] = []
    for n, spec in enumerate(platform.nodes):
        if spec.per_pnode is not None:
            load = [held + spec.per_pnode for held in load]
            placed.append(None)
            continue
        p = None if spec.pnode is None else _at(f"nodes[{n}].pnode", _pnode_index, spec, ids, count)
        if p is None:
            p = load.index(min(load))
        load[p] += 1
        placed.append(p)
    return placed, load


def _at(where: str, build: Any, *args: Any) -> Any:
    try:
        return build(*args)
    except PlatformError as exc:
        raise exc.within(where) from None


def check_fits(platform: Platform, pnodes: Sequence[str] | int) -> None:
    """Refuse, by counting alone, a platform that cannot fit `pnodes` (the pnode ids, or how
    many there will be): PlatformError naming the limit, before anything is expanded."""
    count = pnodes if isinstance(pnodes, int) else len(pnodes)
    if count < 1:
        raise PlatformError("no pnode to build the platform on; reserve at least one")
    if len(platform.networks) > MAX_NETWORKS:
        raise PlatformError(f"at most {MAX_NETWORKS} vnetworks per emulation", where="networks")
    placed, load = _place(platform, pnodes)
    busiest = max(load)
    if busiest > MAX_VNODES_PER_PNODE:
        raise PlatformError(
            f"{busiest} vnodes on one pnode is more than a pnode holds: at most "
            f"{MAX_VNODES_PER_PNODE}; reserve more pnodes",
            where="nodes",
        )
    total = sum(load)
    if total > MAX_VNODES:
        raise PlatformError(
            f"{total} vnodes is more than one emulation holds: at most {MAX_VNODES}",
            where="nodes",
        )
    widest = max(len(spec.ifaces) for spec in platform.nodes)
    if (
        widest
        and HOST_IFNAME_FIXED + len(_b36(total - 1)) + len(_b36(widest - 1)) > IFNAME_MAX_BYTES
    ):
        raise PlatformError(
            f"{total} vnodes with up to {widest} ifaces each do not fit Linux interface names "
            f"({IFNAME_MAX_BYTES} bytes); use fewer ifaces per vnode or fewer vnodes",
            where="nodes",
        )
    for n, spec in enumerate(platform.nodes):
        if spec.per_pnode is not None:
            last = spec.expand(count * spec.per_pnode - 1)
            if not valid_name(last):
                raise PlatformError(
                    f"vnode {show(spec.name)} names its last vnode {show(last)}, which is not "
                    f"valid: {NAME_RULE}",
                    where=f"nodes[{n}].name",
                )
    for k, net in enumerate(platform.networks):
        ports = [0] * count  # vifaces on the vnetwork's bridges, per pnode
        given = 0
        for spec, p in zip(platform.nodes, placed, strict=True):
            ifaces = [i for i in spec.ifaces if i.network == net.name]
            given += sum(1 for i in ifaces if i.address != "auto")
            if p is None:
                ports = [held + len(ifaces) * spec.per_pnode for held in ports]  # type: ignore[operator]
            else:
                ports[p] += len(ifaces)
        if max(ports) > MAX_PORTS:
            raise PlatformError(
                f"vnetwork {net.name!r} would put {max(ports)} vnode interfaces on one pnode, "
                f"but its chain of bridges there holds at most {MAX_PORTS} ({MAX_CHAIN} "
                f"bridges of {BRIDGE_VIFACES}); put fewer of its vnodes on each pnode or "
                "split the vnetwork",
                where=f"networks[{k}]",
            )
        needed = sum(ports)
        usable = net.network.num_addresses - len(reserved(net.network))
        if needed > usable:
            raise PlatformError(
                f"vnetwork {net.name!r} ({net.cidr}) needs {needed} addresses "
                f"({needed - given} automatic, {given} given) but has only {usable} usable; "
                "use a larger cidr",
                where=f"networks[{k}].cidr",
            )


def expand(platform: Platform, ids: Sequence[str]) -> list[tuple[str, int, VNodeSpec]]:
    """(vnode name, pnode index, spec) in order: by spec, then pnode, then i. With
    `per_pnode: N`, `{i}` runs 0..N*P-1 across the P pnodes. Call check_fits first."""
    out: list[tuple[str, int, VNodeSpec]] = []
    placed, _ = _place(platform, ids)
    for spec, p in zip(platform.nodes, placed, strict=True):
        if p is not None:
            out.append((spec.name, p, spec))
            continue
        for q in range(len(ids)):
            for k in range(spec.per_pnode):  # type: ignore[arg-type]
                out.append((spec.expand(q * spec.per_pnode + k), q, spec))  # type: ignore[operator]
    seen: set[str] = set()
    for name, _, spec in out:
        if name in seen:
            raise PlatformError(
                f"two vnodes are called {name!r} (from {spec.name!r}); rename one of them"
            )
        seen.add(name)
    return out


def _addresses(platform: Platform, vnodes: list[tuple[str, int, VNodeSpec]]) -> dict:
    """(vnode, iface) -> 'address/prefix', automatic ones in order, skipping reserved ones."""
    out: dict[tuple[str, str], str] = {}
    for net in platform.networks:
        network = net.network
        wanted = [
            (name, i) for name, _, spec in vnodes for i in spec.ifaces if i.network == net.name
        ]
        given: dict[Any, str] = {}
        for name, iface in wanted:
            if iface.address == "auto":
                continue
            ip = ipaddress.ip_address(iface.address)
            if ip in given:
                raise PlatformError(
                    f"address {ip} is given to both {given[ip]} and {name}; "
                    "an address with per_pnode must stay on one pnode"
                )
            given[ip] = name
            out[(name, iface.name)] = f"{ip}/{network.prefixlen}"
        auto = [(name, iface) for name, iface in wanted if iface.address == "auto"]
        skip = reserved(network) | set(given)
        offset = 0
        for name, iface in auto:
            while network.network_address + offset in skip:
                offset += 1
            out[(name, iface.name)] = f"{network.network_address + offset}/{network.prefixlen}"
            offset += 1
    return out


def _mac(instance: str, vnode: str, iface: str, used: set[str]) -> str:
    salt = 0
    while True:
        h = _digest("omnibed-mac", instance, vnode, iface, str(salt))
        first = (h[0] & 0xFC) | 0x02  # locally administered, unicast
        mac = ":".join(f"{b:02x}" for b in (first, *h[1:6]))
        if mac not in used:
            used.add(mac)
            return mac
        salt += 1


@dataclass(frozen=True)
class Containers:
    """What the planner needs for container vnodes: the images (`image_refs.resolve`),
    each pnode's core count, the container name prefix (the reservation's id), the
    authorised keys of root and a maker of SSH host keys (OpenSSH private key text)."""

    images: Mapping[str, ImageRef]
    cores: Mapping[str, int]
    prefix: str
    authorized_keys: str
    new_host_key: Callable[[], str]


def container_prefix(reservation_id: str) -> str:
    """A container name prefix from a reservation id: its safe characters, at most 40."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "_", reservation_id)[:40]
    return cleaned if cleaned[:1].isalnum() else f"r{cleaned}"[:40]


def _containers(
    vnodes: list[tuple[str, int, VNodeSpec]], ids: Sequence[str], netns_of: list[str],
    given: Containers | None,
) -> dict[int, ContainerSpec]:
    """{vnode index: its ContainerSpec} of the vnodes with an image."""
    out: dict[int, ContainerSpec] = {}
    if not any(spec.image for _, _, spec in vnodes):
        return out
    if given is None:
        raise PlatformError("container vnodes need their images resolved (image_refs.resolve)")
    next_core = {p: 0 for p in ids}
    for k, (name, p_index, spec) in enumerate(vnodes):
        if spec.image is None:
            continue
        pnode, image = ids[p_index], given.images[spec.image]
        cores = given.cores.get(pnode, 1)
        cpus: tuple[int, ...] = ()
        wanted = spec.cpu.cores if spec.cpu and spec.cpu.cores else 0
        if wanted > cores:
            raise PlatformError(
                f"vnode {name!r} wants {wanted} cores but pnode {pnode} has {cores}: "
                f"ask for at most {cores}"
            )
        if wanted:
            cpus = tuple(sorted((next_core[pnode] + j) % cores for j in range(wanted)))
            next_core[pnode] = (next_core[pnode] + wanted) % cores
        out[k] = ContainerSpec(
            name=f"{given.prefix}-{name}",
            hostname=name,
            netns=nsutil.path(netns_of[k]),
            image=tarball_path(image.sha256),
            sha256=image.sha256,
            arch=image.arch,
            shared=spec.shared,
            cpus=cpus,
            share=spec.cpu.share if spec.cpu else None,
            memory=spec.memory,  # type: ignore[arg-type]  # parsed to bytes by the model
            ssh=spec.ssh,
            host_key=given.new_host_key() if spec.ssh else "",
            authorized_keys=given.authorized_keys if spec.ssh else "",
        )
    return out


def _routes(
    platform: Platform,
    vnodes: list[tuple[str, int, VNodeSpec]],
    ids: Sequence[str],
    netns_of: list[str],
    addresses: Mapping[tuple[str, str], str],
) -> dict[str, list[Route]]:
    """Each pnode's routes: each vnode's own, and those `routes: auto` gives it to other
    networks."""
    by_pnode: dict[str, list[Route]] = {p: [] for p in ids}
    found: dict[str, list[tuple[str, str]]] = {}
    if platform.routes == "auto":
        found = complete_routes(
            {net.name: str(net.network) for net in platform.networks},
            {
                name: [
                    Attachment(i.network, addresses[(name, i.name)].split("/")[0])
                    for i in spec.ifaces
                ]
                for name, _, spec in vnodes
            },
            [name for name, _, spec in vnodes if spec.forward],
        )
    for k, (name, p_index, spec) in enumerate(vnodes):
        own = {route.to: route.via for route in spec.routes}
        auto = [(to, via) for to, via in found.get(name, ()) if to not in own]
        for to, via in [*auto, *own.items()]:
            by_pnode[ids[p_index]].append(Route(name, netns_of[k], to, via))
    return by_pnode


def plan(
    platform: Platform,
    pnodes: Sequence[PnodeFacts],
    instance: str,
    *,
    probe: Mapping[str, ProbeResult] | None = None,
    force: bool = False,
    containers: Containers | None = None,
) -> Plan:
    """The desired state of every pnode; PlatformError (nothing changed) when impossible."""
    if not instance or not isinstance(instance, str):
        raise PlatformError("an emulation needs a name")
    ids = [p.id for p in pnodes]
    if len(set(ids)) != len(ids):
        raise PlatformError(f"pnode ids are not unique: {', '.join(ids)}")
    check_fits(platform, ids)
    tag, group, port = instance_tag(instance), link_group(instance), platform.vxlan_port
    vnodes = expand(platform, ids)
    addresses = _addresses(platform, vnodes)

    requests = []
    for net in platform.networks:
        holders = {p for _, p, spec in vnodes if any(i.network == net.name for i in spec.ifaces)}
        requests.append(Request(net.name, net.mode, tuple(ids[p] for p in sorted(holders))))
    choices: dict[str, Choice] = choose_modes(requests, pnodes, probe, force=force)

    used_macs = {n.mac.lower() for p in pnodes for n in p.nics}
    ports: dict[tuple[str, str], int] = {}  # (pnode, network) -> vifaces
    for _, p_index, spec in vnodes:
        for iface in spec.ifaces:
            key = (ids[p_index], iface.network)
            ports[key] = ports.get(key, 0) + 1
    chains: dict[tuple[str, str], BridgeChain] = {}
    bridges: dict[str, list[Bridge]] = {p: [] for p in ids}
    trunks: dict[str, list[Trunk]] = {p: [] for p in ids}
    vxlans: dict[str, list[Vxlan]] = {p: [] for p in ids}
    network_plans = []
    for n, (net, req) in enumerate(zip(platform.networks, requests, strict=True)):
        choice = choices[net.name]
        vni = vni_base(instance) + n if choice.mode == "vxlan" else None
        for p in req.pnodes:
            uplink = choice.nics.get(p) if choice.mode == "bridge" else None
            chain = bridge_chain(tag, n, net.name, choice.mtu, uplink, ports[(p, net.name)])
            chains[(p, net.name)] = chain
            bridges[p] += chain.bridges
            trunks[p] += chain.trunks
            if vni is not None:
                remotes = tuple(choice.addresses[q] for q in req.pnodes if q != p)
                vxlans[p].append(
                    Vxlan(
                        name=f"ob{tag}x{_b36(n)}",
                        network=net.name,
                        vni=vni,
                        port=port,
                        dev=str(choice.nics[p]),
                        local=choice.addresses[p],
                        remotes=remotes,
                        bridge=chain.root,
                        mtu=choice.mtu,
                    )
                )
        network_plans.append(
            NetworkPlan(
                name=net.name,
                cidr=net.cidr,
                requested=net.mode,
                mode=choice.mode,
                reason=choice.reason,
                mtu=choice.mtu,
                vni=vni,
                port=port if vni is not None else None,
                nics=dict(choice.nics),
                unreachable_expected=choice.unreachable_expected,
            )
        )

    mtu_of = {net.name: choices[net.name].mtu for net in platform.networks}
    netns_of = [f"ob-{tag}-p{p_index}-{name}" for name, p_index, _ in vnodes]
    container_of = _containers(vnodes, ids, netns_of, containers)
    container_specs: dict[str, list[ContainerSpec]] = {p: [] for p in ids}
    vnode_plans = []
    namespaces: dict[str, list[str]] = {p: [] for p in ids}
    vifaces: dict[str, list[Viface]] = {p: [] for p in ids}
    placed: dict[tuple[str, str], int] = {}  # (pnode, network) -> vifaces given a bridge
    for k, (name, p_index, spec) in enumerate(vnodes):
        p = ids[p_index]
        netns = netns_of[k]
        namespaces[p].append(netns)
        iface_plans = []
        for j, iface in enumerate(spec.ifaces):
            host = f"ob{tag}v{_b36(k)}i{_b36(j)}"
            mac = _mac(instance, name, iface.name, used_macs)
            address = addresses[(name, iface.name)]
            iface_plans.append(VifacePlan(iface.name, iface.network, address, mac, host))
            port = placed.get((p, iface.network), 0)
            placed[(p, iface.network)] = port + 1
            vifaces[p].append(
                Viface(
                    vnode=name,
                    netns=netns,
                    ifname=iface.name,
                    host_ifname=host,
                    mac=mac,
                    address=address,
                    bridge=chains[(p, iface.network)].bridge_of(port),
                    mtu=mtu_of[iface.network],
                    output=iface.output.shaping() if iface.output else Shaping(),
                    input=iface.input.shaping() if iface.input else Shaping(),
                )
            )
        box = container_of.get(k)
        if box is not None:
            container_specs[p].append(box)
        vnode_plans.append(
            VnodePlan(
                name, p, netns, tuple(iface_plans),
                container=box.name if box else None,
                image=spec.image,
                cpus=box.cpus if box else (),
                share=box.share if box else None,
                memory=box.memory if box else None,
                ssh=spec.ssh,
            )
        )  # fmt: skip

    forwarding: dict[str, list[str]] = {p: [] for p in ids}
    for k, (_, p_index, spec) in enumerate(vnodes):
        if spec.forward:
            forwarding[ids[p_index]].append(netns_of[k])
    routes = _routes(platform, vnodes, ids, netns_of, addresses)
    states = tuple(
        PnodeState(
            instance=instance,
            pnode=p,
            group=group,
            namespaces=tuple(namespaces[p]),
            bridges=tuple(bridges[p]),
            vxlans=tuple(vxlans[p]),
            vifaces=tuple(vifaces[p]),
            trunks=tuple(trunks[p]),
            containers=tuple(container_specs[p]),
            forwarding=tuple(forwarding[p]),
            routes=tuple(routes[p]),
        )
        for p in ids
    )
    return Plan(
        instance=instance,
        group=group,
        vxlan_port=port,
        pnodes=tuple(ids),
        networks=tuple(network_plans),
        vnodes=tuple(vnode_plans),
        states=states,
    )
