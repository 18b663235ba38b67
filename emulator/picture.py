"""A picture of a virtual platform: Graphviz DOT (and SVG through Graphviz) or Mermaid text.

`of_plan(plan)` draws a built platform: one cluster per pnode holding its vnodes, one node
per vnetwork labelled with its cidr and the mode the planner chose (bridge over which NIC,
or VXLAN over which underlay NIC), and one edge per viface labelled with its name, address
and shaping (rate, delay, jitter, loss; `out` is vnode -> vnetwork, `in` the reverse). A
vnode that forwards between its vnetworks is drawn bold (DOT) or as a hexagon (Mermaid),
saying so; each vnode lists its routes to other vnetworks (`route CIDR via ADDRESS`).
`of_platform(platform)` draws a platform file before it is built: no pnodes and no modes,
since those come from the reserved pnodes' NICs; a `per_pnode` vnode is one box saying so;
its title says `routes: auto` when the platform asks for them.

`dot(picture)` and `mermaid(picture)` are pure text; `svg(picture)` runs Graphviz's `dot`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import graphviz

from omnibed.core.errors import UsageError
from omnibed.emulator.agent.state import Shaping
from omnibed.emulator.model import IfaceSpec, Platform
from omnibed.emulator.planner import NetworkPlan, Plan

FORWARDS = "forwards between its vnetworks"


@dataclass(frozen=True)
class Vnode:
    """A vnode's box: its name and the lines under it, inside its pnode's cluster (None:
    not placed yet); `forward`: it forwards between its vnetworks."""

    name: str
    pnode: str | None
    details: tuple[str, ...] = ()
    forward: bool = False


@dataclass(frozen=True)
class Vnetwork:
    name: str
    details: tuple[str, ...]


@dataclass(frozen=True)
class Wire:
    """A viface: vnode `vnode` joined to vnetwork `network`, labelled with `details`."""

    vnode: str
    network: str
    details: tuple[str, ...]


@dataclass(frozen=True)
class Picture:
    title: str
    pnodes: tuple[str, ...]
    vnodes: tuple[Vnode, ...]
    networks: tuple[Vnetwork, ...]
    wires: tuple[Wire, ...]


def _rate(bps: int) -> str:
    for unit, size in (("Gbit/s", 10**9), ("Mbit/s", 10**6), ("kbit/s", 10**3)):
        if bps >= size:
            return f"{bps / size:g} {unit}"
    return f"{bps} bit/s"


def _shaping(direction: str, shaping: Shaping) -> tuple[str, ...]:
    """One line for a direction's shaping, none when it is unconstrained."""
    parts = []
    if shaping.rate_bps is not None:
        parts.append(_rate(shaping.rate_bps))
    if shaping.delay_ms is not None:
        jitter = f" ±{shaping.jitter_ms:g} ms" if shaping.jitter_ms is not None else ""
        parts.append(f"{shaping.delay_ms:g} ms{jitter}")
    if shaping.loss_pct is not None:
        parts.append(f"{shaping.loss_pct:g}% loss")
    return (f"{direction} {', '.join(parts)}",) if parts else ()


def _over(nics: Mapping[str, str | None]) -> str:
    """`eth1` when every pnode uses the same NIC, else `p0: eth1, p1: eth2`."""
    names = set(nics.values())
    if len(names) == 1:
        return str(names.pop())
    return ", ".join(f"{pnode}: {nic}" for pnode, nic in nics.items())


def mode_line(network: NetworkPlan) -> str:
    """How a built vnetwork carries its frames, e.g. `bridge over eth1`, `VXLAN 256 over eth0`."""
    if network.mode == "vxlan":
        return f"VXLAN {network.vni} over {_over(network.nics)}"
    uplinks = {pnode: nic for pnode, nic in network.nics.items() if nic is not None}
    if not uplinks:
        return "bridge, on one pnode"
    return f"bridge over {_over(uplinks)}"


def of_plan(plan: Plan) -> Picture:
    """The picture of a built platform, from the plan the coordinator saved."""
    shaping = {
        (viface.vnode, viface.ifname): viface for state in plan.states for viface in state.vifaces
    }
    routes: dict[str, list[str]] = {}
    for state in plan.states:
        for route in state.routes:
            routes.setdefault(route.vnode, []).append(f"route {route.to} via {route.via}")
    vnodes, wires = [], []
    for vnode in plan.vnodes:
        forward = vnode.netns in plan.state(vnode.pnode).forwarding
        details = (
            *((f"image {vnode.image}",) if vnode.image else ()),
            *((FORWARDS,) if forward else ()),
            *routes.get(vnode.name, ()),
        )
        vnodes.append(Vnode(vnode.name, vnode.pnode, details, forward))
        for iface in vnode.ifaces:
            viface = shaping[(vnode.name, iface.name)]
            wires.append(
                Wire(
                    vnode.name,
                    iface.network,
                    (
                        f"{iface.name} {iface.address}",
                        *_shaping("out", viface.output),
                        *_shaping("in", viface.input),
                    ),
                )
            )
    networks = tuple(
        Vnetwork(n.name, (n.cidr, mode_line(n), f"MTU {n.mtu}")) for n in plan.networks
    )
    return Picture(plan.instance, plan.pnodes, tuple(vnodes), networks, tuple(wires))


def _spec_wire(vnode: str, iface: IfaceSpec) -> Wire:
    lines = [f"{iface.name} {iface.address}"]
    for direction, spec in (("out", iface.output), ("in", iface.input)):
        if spec is not None:
            lines += _shaping(direction, spec.shaping())
    return Wire(vnode, iface.network, tuple(lines))


def of_platform(platform: Platform, title: str) -> Picture:
    """The picture of a platform description, not built: no pnodes, modes as requested."""
    vnodes, wires = [], []
    for spec in platform.nodes:
        details = []
        if spec.per_pnode is not None:
            details.append(f"{spec.per_pnode} per pnode")
        elif spec.pnode is not None:
            details.append(f"on pnode {spec.pnode}")
        if spec.image:
            details.append(f"image {spec.image}")
        if spec.forward:
            details.append(FORWARDS)
        details += [f"route {route.to} via {route.via}" for route in spec.routes]
        vnodes.append(Vnode(spec.name, None, tuple(details), spec.forward))
        wires += [_spec_wire(spec.name, iface) for iface in spec.ifaces]
    networks = tuple(
        Vnetwork(
            n.name,
            (n.cidr, "mode chosen at build" if n.mode == "auto" else f"mode {n.mode} (asked)"),
        )
        for n in platform.networks
    )
    if platform.routes == "auto":
        title += " (routes: auto, through the vnodes that forward)"
    return Picture(title, (), tuple(vnodes), networks, tuple(wires))


def _ids(picture: Picture) -> tuple[dict[str, str], dict[str, str]]:
    """Plain node ids for the vnodes and vnetworks (their names may hold '.' or '-')."""
    return (
        {v.name: f"v{k}" for k, v in enumerate(picture.vnodes)},
        {n.name: f"n{k}" for k, n in enumerate(picture.networks)},
    )


def _dot_label(head: str, lines: Sequence[str]) -> str:
    """A DOT label: each line escaped, joined by DOT's centred line break."""
    return "\\n".join(graphviz.escape(line) for line in (head, *lines) if line)


def to_graph(picture: Picture) -> graphviz.Graph:
    vnode_ids, network_ids = _ids(picture)
    graph = graphviz.Graph(
        picture.title,
        graph_attr={"rankdir": "LR", "label": picture.title, "fontname": "Helvetica"},
    )
    graph.attr("node", fontname="Helvetica", fontsize="11")
    graph.attr("edge", fontname="Helvetica", fontsize="9")
    for k, pnode in enumerate((*picture.pnodes, None)):
        boxes = [v for v in picture.vnodes if v.pnode == pnode]
        if pnode is None:
            target = graph
        else:
            target = graphviz.Graph(f"cluster_p{k}")
            target.attr(label=graphviz.escape(f"pnode {pnode}"), style="rounded")
        for vnode in boxes:
            target.node(
                vnode_ids[vnode.name],
                _dot_label(vnode.name, vnode.details),
                shape="box",
                **({"style": "bold"} if vnode.forward else {}),
            )
        if pnode is not None:
            graph.subgraph(target)
    for network in picture.networks:
        graph.node(
            network_ids[network.name],
            _dot_label(network.name, network.details),
            shape="ellipse",
            style="filled",
            fillcolor="lightblue",
        )
    for wire in picture.wires:
        graph.edge(vnode_ids[wire.vnode], network_ids[wire.network], _dot_label("", wire.details))
    return graph


def dot(picture: Picture) -> str:
    """Graphviz DOT text."""
    return to_graph(picture).source


def svg(picture: Picture) -> bytes:
    """SVG drawn by Graphviz's `dot`; UsageError when Graphviz is not installed."""
    try:
        return to_graph(picture).pipe(format="svg")
    except graphviz.ExecutableNotFound:
        raise UsageError(
            "drawing SVG needs Graphviz's `dot`: install it (Debian: apt install graphviz) "
            "or ask for --format mermaid or dot"
        ) from None


def _mermaid_label(head: str, lines: Sequence[str]) -> str:
    """A quoted Mermaid label; quotes and angle brackets as entity codes, lines by <br>."""
    escaped = [
        line.replace("#", "#35;").replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")
        for line in (head, *lines)
        if line
    ]
    return '"' + "<br>".join(escaped) + '"'


def mermaid(picture: Picture) -> str:
    """Mermaid flowchart text, for Markdown and notebooks."""
    vnode_ids, network_ids = _ids(picture)
    lines = ["---", f"title: {json.dumps(picture.title)}", "---", "flowchart LR"]
    for k, pnode in enumerate((*picture.pnodes, None)):
        boxes = [v for v in picture.vnodes if v.pnode == pnode]
        indent = "  " if pnode is None else "    "
        if pnode is not None:
            lines.append(f"  subgraph p{k}[{_mermaid_label(f'pnode {pnode}', ())}]")
        lines += [
            f"{indent}{vnode_ids[v.name]}{'{{' if v.forward else '['}"
            f"{_mermaid_label(v.name, v.details)}{'}}' if v.forward else ']'}"
            for v in boxes
        ]
        if pnode is not None:
            lines.append("  end")
    lines += [
        f"  {network_ids[n.name]}([{_mermaid_label(n.name, n.details)}])" for n in picture.networks
    ]
    lines += [
        f"  {vnode_ids[w.vnode]} ---|{_mermaid_label('', w.details)}| {network_ids[w.network]}"
        for w in picture.wires
    ]
    return "\n".join(lines) + "\n"
