"""The desired state of one pnode: the contract between the planner and the agent.

Plain data, JSON round-trippable (the agent receives it over SSH). The planner fills it;
the agent makes the pnode match it, idempotently, and removes it by deleting the
namespaces and every link in `group`. Rates are bits per second, times milliseconds,
loss a percentage.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .containers import ContainerSpec

# a vnode's run state (lifecycle.py), and the action that leads to each
RUNNING, STOPPED, FROZEN = "running", "stopped", "frozen"
ACTIONS = {"stop": STOPPED, "start": RUNNING, "freeze": FROZEN, "thaw": RUNNING}


@dataclass(frozen=True)
class Shaping:
    """Link properties in one direction of a viface; None means unconstrained."""

    rate_bps: int | None = None
    delay_ms: float | None = None
    jitter_ms: float | None = None
    loss_pct: float | None = None

    def needs_netem(self) -> bool:
        return any(v is not None for v in (self.delay_ms, self.jitter_ms, self.loss_pct))

    def is_empty(self) -> bool:
        return self.rate_bps is None and not self.needs_netem()


@dataclass(frozen=True)
class Bridge:
    """A bridge of a vnetwork on the pnode; `uplink` is a physical NIC to enslave (bridge mode)."""

    name: str
    network: str
    mtu: int
    uplink: str | None = None


@dataclass(frozen=True)
class Trunk:
    """A veth pair joining two bridges of one vnetwork on the pnode, both ends in the host's
    namespace and in the state's link group: `name` is a port of `bridge`, `peer` of
    `parent`. A vnetwork too wide for one bridge is a chain of bridges joined by trunks."""

    name: str
    peer: str
    bridge: str
    parent: str
    mtu: int


@dataclass(frozen=True)
class Vxlan:
    """A unicast VXLAN device enslaved to `bridge`, with static FDB entries to `remotes`."""

    name: str
    network: str
    vni: int
    port: int
    dev: str  # underlay NIC
    local: str  # underlay address of this pnode
    remotes: tuple[str, ...]
    bridge: str
    mtu: int


@dataclass(frozen=True)
class Viface:
    """A veth pair: `host_ifname` on the bridge, `ifname` inside the vnode's namespace.
    `up`: its link state as the user last set it (`emulate link`); a stopped vnode has
    every link down whatever this says, and gets this state back when started."""

    vnode: str
    netns: str
    ifname: str
    host_ifname: str
    mac: str
    address: str  # CIDR notation, e.g. 192.168.0.5/22
    bridge: str
    mtu: int
    output: Shaping = field(default_factory=Shaping)  # vnode -> network: egress of `ifname`
    input: Shaping = field(default_factory=Shaping)  # network -> vnode: egress of `host_ifname`
    up: bool = True

    @classmethod
    def from_json(cls, item: dict[str, Any]) -> Viface:
        return cls(
            **{**item, "output": Shaping(**item["output"]), "input": Shaping(**item["input"])}
        )


@dataclass(frozen=True)
class Route:
    """A route in vnode `vnode`'s namespace `netns`: to network `to` (CIDR) through the
    gateway address `via`, on the vnetwork the vnode shares with it."""

    vnode: str
    netns: str
    to: str
    via: str


@dataclass(frozen=True)
class PnodeState:
    """Everything omnibed builds on one pnode for one emulation instance."""

    instance: str
    pnode: str
    group: int  # link group of every host-side link, for batched teardown
    namespaces: tuple[str, ...] = ()
    bridges: tuple[Bridge, ...] = ()
    vxlans: tuple[Vxlan, ...] = ()
    vifaces: tuple[Viface, ...] = ()
    trunks: tuple[Trunk, ...] = ()  # after the bridges: what joins them
    containers: tuple[ContainerSpec, ...] = ()  # container vnodes, started after the network
    forwarding: tuple[str, ...] = ()  # namespaces that forward between their vnetworks
    routes: tuple[Route, ...] = ()  # after the addresses: what they go through
    # vnode -> STOPPED or FROZEN for those not running (absent: RUNNING)
    run: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PnodeState:
        return cls(
            instance=data["instance"],
            pnode=data["pnode"],
            group=data["group"],
            namespaces=tuple(data["namespaces"]),
            bridges=tuple(Bridge(**b) for b in data["bridges"]),
            vxlans=tuple(Vxlan(**{**v, "remotes": tuple(v["remotes"])}) for v in data["vxlans"]),
            vifaces=tuple(Viface.from_json(v) for v in data["vifaces"]),
            trunks=tuple(Trunk(**t) for t in data.get("trunks", ())),
            containers=tuple(ContainerSpec.from_json(c) for c in data.get("containers", ())),
            forwarding=tuple(data.get("forwarding", ())),
            routes=tuple(Route(**r) for r in data.get("routes", ())),
            run=dict(data.get("run", {})),
        )

    def kernel_needs(self) -> set[str]:
        """Kernel features this state uses, as the preflight names them."""
        needs = {"veth", "bridge"} if self.vifaces or self.bridges else set()
        if self.vxlans:
            needs.add("vxlan")
        for v in self.vifaces:
            for shaping in (v.output, v.input):
                if shaping.rate_bps is not None:
                    needs.add("sch_tbf")
                if shaping.needs_netem():
                    needs.add("sch_netem")
        return needs
