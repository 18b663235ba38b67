"""How each vnetwork crosses pnodes: bridged onto a NIC, or a unicast VXLAN overlay.

A pure decision from the pnodes' NIC facts (`Nic.foreign_mac`, `Nic.role`) and, when it
was run, the runtime probe. Rules, in order:

- a vnetwork whose vnodes all sit on one pnode gets a local bridge, no uplink;
- `auto` bridges onto a NIC that passes foreign MACs on every pnode: extra NICs are tried
  before experiment NICs, one role for all pnodes (they must share an L2 segment); the
  control NIC is never a bridge uplink (the SSH session must not be re-parented); a NIC
  passes when the probe saw foreign source and destination MACs pass, or, not probed,
  when the provider says yes; unknown and not probed means no;
- otherwise unicast VXLAN with head-end replication (multicast is never needed), over
  addresses that reach each other: those of an extra, else experiment, else control NIC
  that has an address in one subnet on every pnode; failing that, over each pnode's
  control address, routed (the reason says so); MTU = underlay MTU - 50 (IPv4) or - 70;
- `bridge` forced also accepts unknown NICs, refuses NICs known to drop foreign MACs
  (PlatformError), or with `force` builds it anyway, flagged `unreachable_expected`;
- `vxlan` forced always works.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from omnibed.core.errors import EmulatorError, PlatformError
from omnibed.core.types import Nic, NicRole, Node, Tri

LOCAL_MTU = 1500
VXLAN_OVERHEAD = {4: 50, 6: 70}
_BRIDGE_ROLES = (NicRole.EXTRA, NicRole.EXPERIMENT)


@dataclass(frozen=True)
class PnodeFacts:
    """A pnode as the planner sees it: id, control address (VXLAN underlay), NICs."""

    id: str
    address: str
    nics: tuple[Nic, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "nics", tuple(self.nics))
        object.__setattr__(self, "address", _host(self.address))

    @classmethod
    def from_node(cls, node: Node, nics: Sequence[Nic]) -> PnodeFacts:
        """Facts from a provider's node and `nic_capabilities`: the control NIC's address,
        else the node's first address (never the SSH host, which may be a forwarded IP)."""
        control = [a for n in nics if n.role is NicRole.CONTROL for a in n.addresses]
        candidates = control or list(node.addresses)
        if not candidates:  # the provider's report falls short, not the user's platform
            raise EmulatorError(
                f"pnode {node.id} reports no address on its control NIC; the provider's "
                "nic_capabilities must give one for VXLAN"
            )
        return cls(node.id, candidates[0], tuple(nics))


@dataclass(frozen=True)
class ProbeResult:
    """What the runtime probe saw on pnode's `nic`: frames with a foreign source MAC and
    frames to a foreign destination MAC, each arrived (True) or not."""

    foreign_src_ok: bool
    foreign_dst_ok: bool
    nic: str

    @property
    def ok(self) -> bool:
        return self.foreign_src_ok and self.foreign_dst_ok

    def lost(self) -> str:
        parts = [
            n
            for n, ok in (("source", self.foreign_src_ok), ("destination", self.foreign_dst_ok))
            if not ok
        ]
        return " and ".join(parts)


@dataclass(frozen=True)
class Choice:
    """The decision for one vnetwork. `nics` maps each pnode holding its vnodes to the
    bridge uplink (None: local bridge) or the VXLAN underlay NIC; `addresses` the VXLAN
    underlay address of each pnode (empty in bridge mode)."""

    mode: str  # "bridge" | "vxlan"
    reason: str
    mtu: int
    nics: Mapping[str, str | None] = field(default_factory=dict)
    addresses: Mapping[str, str] = field(default_factory=dict)
    unreachable_expected: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "nics", MappingProxyType(dict(self.nics)))
        object.__setattr__(self, "addresses", MappingProxyType(dict(self.addresses)))


@dataclass(frozen=True)
class Request:
    """One vnetwork to decide: its name, requested mode, and the pnodes holding its vnodes."""

    network: str
    mode: str
    pnodes: tuple[str, ...]


def _host(address: str) -> str:
    try:
        return str(ipaddress.ip_interface(address).ip)
    except ValueError:
        raise PlatformError(f"{address!r} is not an IP address") from None


def _prefixed(nic: Nic, address: str) -> bool:
    """Whether `nic` gives `address` with its subnet (a prefix shorter than the address)."""
    ifaces = (ipaddress.ip_interface(a) for a in nic.addresses if "/" in a)
    return any(str(i.ip) == address and i.network.prefixlen < i.max_prefixlen for i in ifaces)


def _verdict(nic: Nic, probe: ProbeResult | None) -> tuple[bool | None, str]:
    """Whether `nic` passes foreign MACs: True, False (known to drop), None (unknown)."""
    said = f"the provider said {nic.foreign_mac.value}"
    if nic.role is NicRole.CONTROL:
        return False, f"{nic.name} is the control NIC, never a bridge uplink"
    if probe is not None and probe.nic == nic.name:
        if probe.ok:
            return True, f"{nic.name} passes foreign MACs (runtime probe; {said})"
        return False, f"the runtime probe saw {nic.name} drop foreign {probe.lost()} MACs ({said})"
    if nic.foreign_mac is Tri.YES:
        return True, f"{nic.name} passes foreign MACs (provider, not probed)"
    if nic.foreign_mac is Tri.NO:
        source = nic.sources.get("foreign_mac")
        origin = f" ({source.value})" if source is not None else ""
        return False, f"{nic.name} drops foreign MACs{origin}"
    return None, f"{nic.name}: foreign-MAC support unknown and not probed"


def probe_targets(pnodes: Sequence[PnodeFacts]) -> dict[str, str]:
    """The NIC to probe on each pnode: the first extra, else experiment NIC not known to
    drop foreign MACs. Pnodes with none are left out (nothing to probe there)."""
    out: dict[str, str] = {}
    for p in pnodes:
        for role in _BRIDGE_ROLES:
            nic = next((n for n in p.nics if n.role is role and n.foreign_mac is not Tri.NO), None)
            if nic is not None:
                out[p.id] = nic.name
                break
    return out


def _group(why: Mapping[str, str]) -> str:
    """'p0, p1: text; p2: other text' from {pnode: text}."""
    by_text: dict[str, list[str]] = {}
    for pnode, text in why.items():
        by_text.setdefault(text, []).append(pnode)
    return "; ".join(f"{', '.join(ps)}: {text}" for text, ps in by_text.items())


class _Decider:
    def __init__(
        self,
        pnodes: Sequence[PnodeFacts],
        probe: Mapping[str, ProbeResult] | None,
        force: bool,
    ) -> None:
        self.facts = {p.id: p for p in pnodes}
        self.probe = dict(probe or {})
        self.force = force
        self.taken: set[tuple[str, str]] = set()  # (pnode, nic) enslaved to a bridge

    def free(self, pnode: str, role: NicRole) -> list[Nic]:
        return [
            n
            for n in self.facts[pnode].nics
            if n.role is role and (pnode, n.name) not in self.taken
        ]

    def bridge_uplinks(
        self, pnodes: tuple[str, ...], accept_unknown: bool
    ) -> dict[str, Nic] | None:
        """One NIC per pnode, all of one role, each passing (or unknown if accepted)."""
        for role in _BRIDGE_ROLES:
            picked: dict[str, Nic] = {}
            for p in pnodes:
                verdicts = [(n, _verdict(n, self.probe.get(p))[0]) for n in self.free(p, role)]
                good = [n for n, v in verdicts if v] or [
                    n for n, v in verdicts if accept_unknown and v is None
                ]
                if not good:
                    break
                picked[p] = good[0]
            else:
                return picked
        return None

    def why_not(self, pnodes: tuple[str, ...]) -> str:
        why: dict[str, str] = {}
        for p in pnodes:
            texts = []
            for n in self.facts[p].nics:
                if (p, n.name) in self.taken:
                    texts.append(f"{n.name} is already the uplink of another vnetwork")
                elif n.role is not NicRole.CONTROL:
                    texts.append(_verdict(n, self.probe.get(p))[1])
            if not texts:
                control = [n.name for n in self.facts[p].nics if n.role is NicRole.CONTROL]
                name = control[0] if control else "the control NIC"
                texts.append(
                    f"no NIC besides the control NIC {name}, which is never a bridge uplink"
                )
            why[p] = ", ".join(texts)
        return _group(why)

    def bridge(self, req: Request) -> Choice | None:
        """A bridge choice, None when auto must fall back to VXLAN; raises for forced bridge."""
        if len(req.pnodes) == 1:
            return Choice(
                "bridge",
                f"local bridge, no uplink needed: only pnode {req.pnodes[0]} holds vnodes of "
                "this vnetwork",
                LOCAL_MTU,
                {p: None for p in req.pnodes},
            )
        forced = req.mode == "bridge"
        uplinks = self.bridge_uplinks(req.pnodes, accept_unknown=forced)
        if uplinks is not None:
            unknown = [
                f"{p}: {n.name}"
                for p, n in uplinks.items()
                if _verdict(n, self.probe.get(p))[0] is None
            ]
            role = next(iter(uplinks.values())).role.value
            names = _group({p: n.name for p, n in uplinks.items()})
            verdicts = _group({p: _verdict(n, self.probe.get(p))[1] for p, n in uplinks.items()})
            reason = (
                f"bridge onto the {role} NIC, it passes foreign MACs on every pnode ({verdicts})"
            )
            if unknown:
                reason = (
                    f"bridge onto the {role} NIC ({names}) as the platform file asks; "
                    f"foreign-MAC support not known for {', '.join(unknown)}"
                )
            return self._take(req, uplinks, reason)
        if not forced:
            return None
        why = self.why_not(req.pnodes)
        if not self.force:
            raise PlatformError(
                f"vnetwork {req.network!r} asks for mode: bridge, but not every pnode has a NIC "
                f"that passes foreign MACs ({why}); use mode: auto or vxlan, or --force to build "
                "it anyway (vnodes on different pnodes will not reach each other)"
            )
        best: dict[str, Nic | None] = {}
        for p in req.pnodes:
            free = [n for role in _BRIDGE_ROLES for n in self.free(p, role)]
            free.sort(key=lambda n: _verdict(n, self.probe.get(p))[0] is not True)
            best[p] = free[0] if free else None
        reason = (
            f"bridge forced with --force although not every pnode passes foreign MACs ({why}); "
            "vnodes on different pnodes are expected not to reach each other"
        )
        return self._take(req, best, reason, unreachable=True)

    def _take(
        self,
        req: Request,
        uplinks: Mapping[str, Nic | None],
        reason: str,
        unreachable: bool = False,
    ) -> Choice:
        for p, nic in uplinks.items():
            if nic is not None:
                self.taken.add((p, nic.name))
        mtus = [n.mtu for n in uplinks.values() if n is not None]
        return Choice(
            "bridge",
            reason,
            min(mtus, default=LOCAL_MTU),
            {p: (n.name if n else None) for p, n in uplinks.items()},
            unreachable_expected=unreachable,
        )

    def underlay(self, pnodes: tuple[str, ...]) -> tuple[dict[str, tuple[Nic, str]], str]:
        """(pnode -> (NIC, address)) for VXLAN, and in words which NIC and why its addresses
        reach each other: the first role (extra, experiment, control) whose NICs have an
        address in one subnet on every pnode (one segment: they reach each other directly).
        Failing that, each pnode's control address, and the words say that they share no
        subnet (or that the provider does not give it), so that VXLAN relies on routers."""
        for role in (*_BRIDGE_ROLES, NicRole.CONTROL):
            found = self._one_subnet(pnodes, role)
            if found is not None:
                picked, subnet = found
                names = _group({p: n.name for p, (n, _) in picked.items()})
                return picked, f"the {role.value} NIC ({names}), addresses in one subnet {subnet}"
        out: dict[str, tuple[Nic, str]] = {}
        for p in pnodes:
            facts = self.facts[p]
            holder = next(
                (n for n in facts.nics if facts.address in {_host(a) for a in n.addresses}),
                None,
            ) or next((n for n in facts.nics if n.role is NicRole.CONTROL), None)
            if holder is None:  # the provider's report falls short, not the user's platform
                raise EmulatorError(
                    f"pnode {p} lists no control NIC and no NIC holding {facts.address}; "
                    "its provider's nic_capabilities must report the control NIC"
                )
            out[p] = (holder, facts.address)
        where = _group({p: f"{a} on the {n.role.value} NIC {n.name}" for p, (n, a) in out.items()})
        if all(_prefixed(nic, address) for nic, address in out.values()):
            return out, (
                f"the pnodes' addresses ({where}), which share no subnet: VXLAN relies on "
                "the routers between them"
            )
        return out, (
            f"the pnodes' addresses ({where}), whose subnets the provider does not say: "
            "VXLAN relies on them reaching each other"
        )

    def _one_subnet(
        self, pnodes: tuple[str, ...], role: NicRole
    ) -> tuple[dict[str, tuple[Nic, str]], str] | None:
        """A NIC of `role` and its address on each pnode, all addresses in one subnet (the
        first pnode's subnets tried in order); None when no subnet is on every pnode."""
        ifaces = {
            p: [
                (nic, iface)
                for nic in self.free(p, role)
                for iface in map(ipaddress.ip_interface, nic.addresses)
                if iface.network.prefixlen < iface.max_prefixlen
            ]
            for p in pnodes
        }
        for _, first in ifaces[pnodes[0]]:
            picked = {
                p: next(((n, str(i.ip)) for n, i in ifaces[p] if i.network == first.network),
                        None)
                for p in pnodes
            }
            if all(picked.values()):
                return {p: pick for p, pick in picked.items() if pick}, str(first.network)
        return None

    def vxlan(self, req: Request, why_not_bridge: str) -> Choice:
        underlay, which = self.underlay(req.pnodes)
        versions = {ipaddress.ip_address(a).version for _, a in underlay.values()}
        if len(versions) > 1:
            raise PlatformError(
                f"vnetwork {req.network!r}: the pnodes' underlay addresses mix IPv4 and IPv6 "
                f"({_group({p: a for p, (_, a) in underlay.items()})}); VXLAN needs one family"
            )
        overhead = VXLAN_OVERHEAD[versions.pop()] if versions else VXLAN_OVERHEAD[4]
        mtu = min(n.mtu for n, _ in underlay.values()) - overhead
        reason = f"unicast VXLAN over {which}, MTU {mtu}: {why_not_bridge}"
        return Choice(
            "vxlan",
            reason,
            mtu,
            {p: n.name for p, (n, _) in underlay.items()},
            {p: a for p, (_, a) in underlay.items()},
        )


def choose_modes(
    requests: Sequence[Request],
    pnodes: Sequence[PnodeFacts],
    probe: Mapping[str, ProbeResult] | None = None,
    *,
    force: bool = False,
) -> dict[str, Choice]:
    """Decide every vnetwork, in order: bridges first (a NIC is the uplink of at most one
    vnetwork), then VXLAN over what no bridge took."""
    decider = _Decider(pnodes, probe, force)
    out: dict[str, Choice | None] = {}
    for req in requests:
        if not req.pnodes:
            mode = "bridge" if req.mode == "auto" else req.mode
            out[req.network] = Choice(
                mode, "no vnode uses this vnetwork: nothing to build", LOCAL_MTU
            )
        else:
            out[req.network] = None if req.mode == "vxlan" else decider.bridge(req)
    for req in requests:
        if out[req.network] is None:
            if req.mode == "vxlan":
                why = "the platform file asks for mode: vxlan"
            else:
                why = (
                    "no extra or experiment NIC passes foreign MACs on every pnode "
                    f"({decider.why_not(req.pnodes)})"
                )
            out[req.network] = decider.vxlan(req, why)
    return {k: v for k, v in out.items() if v is not None}
