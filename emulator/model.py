"""The platform description: vnetworks, vnodes, their interfaces and link properties.

Built from Python (`Platform(networks=[Network(...)], nodes=[VNodeSpec(...)])`) or loaded
from YAML (`load_platform(path_or_text)`). Every object validates itself when built and
raises :class:`~omnibed.core.errors.PlatformError` naming the culprit and its place
(`nodes[0].ifaces[1].output.rate`); the YAML loader adds the file, line and column.

The loader is YAML's safe loader and more: only plain mappings, lists and scalars (no tags),
no duplicate keys, at most MAX_YAML_NODES nodes once aliases are expanded (alias bombs are
refused before they are built) and MAX_YAML_DEPTH levels, a file of at most MAX_FILE_BYTES.

Units: rates are bit/s (`100mbit`, `1gbit`, `512kbit`, or a number of bit/s), times are
milliseconds (`10ms`, `1s`, `500us`, or a number of ms), loss is a percentage (`1%` or 1),
sizes are bytes (`512MiB`, `1GiB`, `64MB`, or a number of bytes).

A vnode with `image` is a container vnode (docs/containers.md): `images:` maps a name to a
`source` (a rootfs tarball, `file:///...` or a path); a name not listed there is an image of
`omnibed image ls`. Which images exist is checked by :mod:`omnibed.emulator.image_refs`.

Between vnetworks: a vnode with `forward: true` forwards packets between its vnetworks;
`routes: auto` on the platform gives every vnode a route to each vnetwork it is not on
through such gateways (:mod:`omnibed.emulator.routing`), and a vnode's own
`routes: [{to: CIDR, via: ADDRESS}]` are added to (or replace) those.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
import reprlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from omnibed.core.errors import PlatformError
from omnibed.emulator.agent.containers import MIN_MEMORY
from omnibed.emulator.agent.state import Shaping

if TYPE_CHECKING:
    from omnibed.emulator.timeline import Event

MODES = ("auto", "bridge", "vxlan")
ROUTES = ("auto", "none")
DEFAULT_VXLAN_PORT = 4789
IFNAME_MAX_BYTES = 15  # IFNAMSIZ (16 bytes) less the terminating NUL
MAX_VNODES_PER_PNODE = 10_000  # each takes a network namespace and ~340 KiB of memory
MAX_RATE_BPS = 10**13  # 10 tbit/s
MAX_TIME_MS = 3_600_000.0  # one hour of delay or jitter
MAX_FILE_BYTES = 8 << 20
MAX_YAML_NODES = 200_000  # counting every alias as a copy of what it names
MAX_YAML_DEPTH = 16  # a platform file needs 7

NAME_RULE = "use up to 63 letters, digits, '.', '_' or '-', starting with a letter or digit"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_NUMBER = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([A-Za-z%]*)\s*")
_RATE_UNITS = {
    "": 1,
    "bit": 1,
    "kbit": 10**3,
    "mbit": 10**6,
    "gbit": 10**9,
    "tbit": 10**12,
    "kibit": 2**10,
    "mibit": 2**20,
    "gibit": 2**30,
    "tibit": 2**40,
}
_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 2**10, "kib": 2**10, "kb": 10**3,
    "m": 2**20, "mib": 2**20, "mb": 10**6,
    "g": 2**30, "gib": 2**30, "gb": 10**9,
    "t": 2**40, "tib": 2**40, "tb": 10**12,
}  # fmt: skip
_TIME_UNITS = {"": 1.0, "ms": 1.0, "msec": 1.0, "us": 1e-3, "usec": 1e-3, "s": 1e3, "sec": 1e3}
_SHOW = reprlib.Repr()
_SHOW.maxstring = _SHOW.maxother = 40
_SHOW.maxlevel = 2


def show(value: object) -> str:
    """A short repr of what the user wrote, for one-line messages (long values elided)."""
    return _SHOW.repr(value)


def _number(value: object, what: str) -> tuple[float, str]:
    """Split `value` (a number or a string like '100mbit') into a finite non-negative number
    and a unit."""
    if isinstance(value, bool):
        raise PlatformError(f"{what} {value!r} is not a number")
    if isinstance(value, int | float):
        number, unit = float(value), ""
    elif isinstance(value, str) and (m := _NUMBER.fullmatch(value)):
        number, unit = float(m.group(1)), m.group(2).lower()
    else:
        raise PlatformError(f"{what} {show(value)} is not a number with an optional unit")
    if not math.isfinite(number):
        raise PlatformError(f"{what} {show(value)} must be a finite number")
    if number < 0:
        raise PlatformError(f"{what} {show(value)} cannot be negative")
    return number, unit


def parse_rate(value: object) -> int:
    """Bits per second from `100mbit`, `1gbit`, `512kbit`, `2mibit` or a number of bit/s."""
    number, unit = _number(value, "rate")
    if unit.endswith("bps"):
        raise PlatformError(
            f"rate {value!r} is ambiguous (tc reads '{unit}' as bytes per second); "
            f"write bits per second, e.g. '{number:g}{unit[:-3]}bit'"
        )
    if unit not in _RATE_UNITS:
        raise PlatformError(
            f"rate {show(value)} has an unknown unit {show(unit)}; use one of "
            + ", ".join(u for u in _RATE_UNITS if u)
        )
    if number * _RATE_UNITS[unit] > MAX_RATE_BPS:
        raise PlatformError(f"rate {show(value)} is too fast: at most 10tbit")
    bps = round(number * _RATE_UNITS[unit])
    if bps <= 0:
        raise PlatformError(f"rate {show(value)} must be at least 1 bit/s")
    return bps


def parse_time(value: object, what: str = "delay") -> float:
    """Milliseconds from `10ms`, `1s`, `500us` or a number of ms."""
    number, unit = _number(value, what)
    if unit not in _TIME_UNITS:
        raise PlatformError(
            f"{what} {show(value)} has an unknown unit {show(unit)}; use ms, s or us"
        )
    if number * _TIME_UNITS[unit] > MAX_TIME_MS:
        raise PlatformError(f"{what} {show(value)} is too long: at most 3600s")
    return number * _TIME_UNITS[unit]


def parse_size(value: object, what: str = "memory") -> int:
    """Bytes from `512MiB`, `1GiB`, `64MB`, `128M` (binary, as the kernel counts) or a number
    of bytes."""
    number, unit = _number(value, what)
    if unit not in _SIZE_UNITS:
        raise PlatformError(
            f"{what} {show(value)} has an unknown unit {show(unit)}; use e.g. 512MiB or 1GiB"
        )
    size = round(number * _SIZE_UNITS[unit])
    if size < 1:
        raise PlatformError(f"{what} {show(value)} must be at least 1 byte")
    return size


def parse_loss(value: object) -> float:
    """A percentage from `1%`, `0.5%` or a number (already a percentage)."""
    number, unit = _number(value, "loss")
    if unit not in ("", "%"):
        raise PlatformError(f"loss {show(value)} must be a percentage such as '1%'")
    if number > 100:
        raise PlatformError(f"loss {show(value)} is more than 100%")
    return number


@dataclass(frozen=True)
class LinkSpec:
    """Link properties of one direction; strings are parsed and stored in base units
    (rate in bit/s, delay and jitter in ms, loss in %)."""

    rate: int | str | None = None
    delay: float | str | None = None
    jitter: float | str | None = None
    loss: float | str | None = None

    def __post_init__(self) -> None:
        for key, parse in (
            ("rate", parse_rate),
            ("delay", lambda v: parse_time(v, "delay")),
            ("jitter", lambda v: parse_time(v, "jitter")),
            ("loss", parse_loss),
        ):
            if getattr(self, key) is not None:
                object.__setattr__(self, key, _at(key, parse, getattr(self, key)))

    def shaping(self) -> Shaping:
        return Shaping(
            rate_bps=self.rate,  # type: ignore[arg-type]
            delay_ms=self.delay,  # type: ignore[arg-type]
            jitter_ms=self.jitter,  # type: ignore[arg-type]
            loss_pct=self.loss,  # type: ignore[arg-type]
        )


def valid_name(name: object) -> bool:
    """Whether `name` may name a vnode or a vnetwork (see NAME_RULE)."""
    return isinstance(name, str) and _NAME.fullmatch(name) is not None


def _check_name(name: object, what: str) -> str:
    if not valid_name(name):
        raise PlatformError(f"{what} name {show(name)} is not valid: {NAME_RULE}", where="name")
    return name  # type: ignore[return-value]


def _check_ifname(name: object) -> None:
    """Refuse what Linux refuses as an interface name, measured in bytes as the kernel does."""
    text = name if isinstance(name, str) else ""
    try:
        size = len(text.encode())
    except UnicodeEncodeError:  # a lone surrogate
        size = 0
    if (
        not 0 < size <= IFNAME_MAX_BYTES
        or text in (".", "..", "lo")
        or any(c in "/:" or c.isspace() or not c.isprintable() for c in text)
    ):
        raise PlatformError(
            f"iface name {show(name)} is not a valid Linux interface name: 1 to "
            f"{IFNAME_MAX_BYTES} bytes in UTF-8, no '/', ':', space or control character, "
            "not '.', '..' or 'lo'",
            where="name",
        )


@dataclass(frozen=True)
class Network:
    """A vnetwork: one IP subnet; `mode` is auto (decided by the planner), bridge or vxlan."""

    name: str
    cidr: str
    mode: str = "auto"

    def __post_init__(self) -> None:
        _check_name(self.name, "vnetwork")
        try:
            net = ipaddress.ip_network(self.cidr, strict=True)
        except ValueError as exc:
            hint = ""
            if isinstance(self.cidr, str):
                try:
                    hint = f"; did you mean {ipaddress.ip_network(self.cidr, strict=False)}?"
                except ValueError:
                    pass
            raise PlatformError(
                f"vnetwork {self.name!r}: cidr {show(self.cidr)} is not a network ({exc}){hint}",
                where="cidr",
            ) from None
        object.__setattr__(self, "cidr", str(net))
        if self.mode not in MODES:
            raise PlatformError(
                f"vnetwork {self.name!r}: mode {show(self.mode)} is not one of {', '.join(MODES)}",
                where="mode",
            )

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return ipaddress.ip_network(self.cidr)


def reserved(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> set[Any]:
    """Addresses of `net` no vnode may take: the network address, and broadcast in IPv4."""
    if net.prefixlen >= net.max_prefixlen - 1:  # /31, /32, /127, /128: every address usable
        return set()
    out = {net.network_address}
    if net.version == 4:
        out.add(net.broadcast_address)
    return out


@dataclass(frozen=True)
class IfaceSpec:
    """A viface: its name inside the vnode, its vnetwork, its address ('auto' or an IP)."""

    name: str
    network: str
    address: str = "auto"
    output: LinkSpec | None = None  # vnode -> network
    input: LinkSpec | None = None  # network -> vnode

    def __post_init__(self) -> None:
        name = self.name
        _check_ifname(name)
        if not isinstance(self.network, str):
            raise PlatformError(f"iface {name!r}: network must be a vnetwork name", where="network")
        if self.address != "auto":
            if not isinstance(self.address, str) or "/" in self.address:
                raise PlatformError(
                    f"iface {name!r}: address {show(self.address)} must be 'auto' or an IP "
                    "address without prefix (the prefix comes from the vnetwork's cidr)",
                    where="address",
                )
            try:
                object.__setattr__(self, "address", str(ipaddress.ip_address(self.address)))
            except ValueError:
                raise PlatformError(
                    f"iface {name!r}: address {show(self.address)} is not an IP address",
                    where="address",
                ) from None
        for direction in ("output", "input"):
            spec = getattr(self, direction)
            if spec is not None and not isinstance(spec, LinkSpec):
                raise PlatformError(
                    f"iface {name!r}: {direction} must be a LinkSpec", where=direction
                )


@dataclass(frozen=True)
class CpuSpec:
    """A container vnode's CPU: `cores` pinned from its pnode (cpuset), `share` of them
    (a CFS quota, 0 < share <= 1; of one core when `cores` is not given)."""

    cores: int | None = None
    share: float | None = None

    def __post_init__(self) -> None:
        if self.cores is not None and (
            isinstance(self.cores, bool) or not isinstance(self.cores, int) or self.cores < 1
        ):
            raise PlatformError(
                f"cores {show(self.cores)} must be a whole number of at least 1", where="cores"
            )
        if self.share is not None:
            if isinstance(self.share, bool) or not isinstance(self.share, int | float):
                raise PlatformError(
                    f"share {show(self.share)} must be a number in (0, 1]", where="share"
                )
            if not 0 < self.share <= 1:
                raise PlatformError(
                    f"share {show(self.share)} must be more than 0 and at most 1 "
                    "(a fraction of the pinned cores)",
                    where="share",
                )


@dataclass(frozen=True)
class RouteSpec:
    """A vnode's own route: to network `to` (a CIDR) through the gateway address `via`,
    which lies in one of the vnode's vnetworks."""

    to: str
    via: str

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "to", str(ipaddress.ip_network(str(self.to))))
        except ValueError:
            raise PlatformError(
                f"{show(self.to)} is not a network in CIDR notation (e.g. 10.2.0.0/24)",
                where="to",
            ) from None
        try:
            object.__setattr__(self, "via", str(ipaddress.ip_address(str(self.via))))
        except ValueError:
            raise PlatformError(
                f"{show(self.via)} is not an IP address (the gateway's, without prefix)",
                where="via",
            ) from None


@dataclass(frozen=True)
class ImageSource:
    """An image a platform names: `source` is a rootfs tarball (`file:///path` or a path)."""

    name: str
    source: str

    def __post_init__(self) -> None:
        _check_name(self.name, "image")
        if not isinstance(self.source, str) or not self.source:
            raise PlatformError(
                f"image {self.name!r}: source {show(self.source)} must be a file path or a "
                "file:// URL of a rootfs tarball",
                where="source",
            )
        if "://" in self.source and not self.source.startswith("file://"):
            raise PlatformError(
                f"image {self.name!r}: source {show(self.source)} is not a file: only "
                "file:// URLs and paths are read (copy the tarball here first)",
                where="source",
            )

    @property
    def path(self) -> Path:
        return Path(self.source.removeprefix("file://"))


@dataclass(frozen=True)
class VNodeSpec:
    """One vnode, or `per_pnode` vnodes on every pnode (`{i}` in the name is their index).

    Placement: `per_pnode=N` puts N on each pnode; `pnode=` an index or a node id puts one
    there; neither puts one on the pnode holding the fewest vnodes so far.

    With `image`, each vnode is a container started from that image: `shared` (an overlay
    on one copy per pnode; else a private copy), `cpu`, `memory` (bytes, or a size such as
    '512MiB'), `ssh` (an sshd inside, the reservation's key authorised for root).

    `forward`: the vnode forwards packets between its vnetworks (a gateway, for the
    platform's `routes: auto`); `routes`: its own routes, which replace those `routes: auto`
    gives it to the same networks.
    """

    name: str
    per_pnode: int | None = None
    pnode: int | str | None = None
    ifaces: Sequence[IfaceSpec] = ()
    image: str | None = None
    shared: bool = True
    cpu: CpuSpec | None = None
    memory: int | str | None = None
    ssh: bool = False
    forward: bool = False
    routes: Sequence[RouteSpec] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise PlatformError(f"vnode name {show(self.name)} must be a string", where="name")
        _check_name(self.expand(0), "vnode")
        if self.per_pnode is not None:
            if isinstance(self.per_pnode, bool) or not isinstance(self.per_pnode, int):
                raise PlatformError(
                    f"vnode {self.name!r}: per_pnode {show(self.per_pnode)} must be a whole number",
                    where="per_pnode",
                )
            if self.per_pnode < 1:
                raise PlatformError(
                    f"vnode {self.name!r}: per_pnode must be at least 1", where="per_pnode"
                )
            if self.per_pnode > MAX_VNODES_PER_PNODE:
                raise PlatformError(
                    f"vnode {self.name!r}: per_pnode {self.per_pnode} is more than a pnode "
                    f"holds: at most {MAX_VNODES_PER_PNODE} (each vnode takes a network "
                    "namespace and about 340 KiB of memory); reserve more pnodes",
                    where="per_pnode",
                )
            if self.pnode is not None:
                raise PlatformError(
                    f"vnode {self.name!r}: give per_pnode or pnode, not both", where="pnode"
                )
            if self.per_pnode > 1 and "{i}" not in self.name:
                raise PlatformError(
                    f"vnode {self.name!r}: per_pnode {self.per_pnode} needs '{{i}}' in the name "
                    "so the vnodes get distinct names",
                    where="name",
                )
        elif "{i}" in self.name:
            raise PlatformError(
                f"vnode {self.name!r}: '{{i}}' only expands with per_pnode", where="name"
            )
        if self.pnode is not None and (
            isinstance(self.pnode, bool)
            or not isinstance(self.pnode, int | str)
            or (isinstance(self.pnode, int) and self.pnode < 0)
        ):
            raise PlatformError(
                f"vnode {self.name!r}: pnode {show(self.pnode)} must be an index (0, 1, ...) "
                "or a node id",
                where="pnode",
            )
        if not isinstance(self.forward, bool):
            raise PlatformError(
                f"vnode {self.name!r}: forward {show(self.forward)} must be true or false",
                where="forward",
            )
        object.__setattr__(self, "ifaces", tuple(self.ifaces))
        object.__setattr__(self, "routes", tuple(self.routes))
        if not all(isinstance(route, RouteSpec) for route in self.routes):
            raise PlatformError(
                f"vnode {self.name!r}: routes must be RouteSpec objects", where="routes"
            )
        seen: set[str] = set()
        for k, iface in enumerate(self.ifaces):
            where = f"ifaces[{k}]"
            if not isinstance(iface, IfaceSpec):
                raise PlatformError(
                    f"vnode {self.name!r}: ifaces must be IfaceSpec objects", where=where
                )
            if iface.name in seen:
                raise PlatformError(
                    f"vnode {self.name!r}: two ifaces are called {iface.name!r}",
                    where=f"{where}.name",
                )
            seen.add(iface.name)
            if self.per_pnode and self.per_pnode > 1 and iface.address != "auto":
                raise PlatformError(
                    f"vnode {self.name!r} iface {iface.name!r}: address {iface.address} would be "
                    f"given to {self.per_pnode} vnodes per pnode; use 'auto' or one vnode",
                    where=f"{where}.address",
                )
        self._check_container()

    def _check_container(self) -> None:
        if self.image is not None and not valid_name(self.image):
            raise PlatformError(
                f"vnode {show(self.name)}: image {show(self.image)} is not an image name: "
                f"{NAME_RULE}",
                where="image",
            )
        for key in ("shared", "ssh"):
            if not isinstance(getattr(self, key), bool):
                raise PlatformError(
                    f"vnode {show(self.name)}: {key} {show(getattr(self, key))} must be true "
                    "or false",
                    where=key,
                )
        if self.cpu is not None and not isinstance(self.cpu, CpuSpec):
            raise PlatformError(f"vnode {show(self.name)}: cpu must be a CpuSpec", where="cpu")
        if self.memory is not None:
            memory = _at("memory", parse_size, self.memory)
            if memory < MIN_MEMORY:
                raise PlatformError(
                    f"vnode {show(self.name)}: memory {show(self.memory)} is below the "
                    f"{MIN_MEMORY >> 20}MiB a container needs to start",
                    where="memory",
                )
            object.__setattr__(self, "memory", memory)
        wants = [key for key in ("cpu", "memory") if getattr(self, key) is not None]
        wants += ["ssh"] if self.ssh else []
        wants += ["shared"] if not self.shared else []
        if self.image is None and wants:
            raise PlatformError(
                f"vnode {show(self.name)}: {wants[0]} needs a container vnode: give it an "
                "image (`omnibed image build NAME`, then `image: NAME`)",
                where=wants[0],
            )

    def expand(self, i: int) -> str:
        return self.name.replace("{i}", str(i))


@dataclass(frozen=True)
class Platform:
    """A whole virtual platform; cross-references are checked here. `routes`: 'auto'
    installs in every vnode a route to every vnetwork it is not on, through the vnodes
    that forward (Distem's complete vroutes); 'none' installs none."""

    networks: Sequence[Network] = ()
    nodes: Sequence[VNodeSpec] = ()
    vxlan_port: int = DEFAULT_VXLAN_PORT
    images: Sequence[ImageSource] = ()
    routes: str = "none"
    events: Sequence[Event] = ()  # its timeline, started once it is built (emulator.timeline)

    def __post_init__(self) -> None:
        if self.routes not in ROUTES:
            raise PlatformError(
                f"{show(self.routes)} is not one of {', '.join(ROUTES)}", where="routes"
            )
        object.__setattr__(self, "events", tuple(self.events))
        object.__setattr__(self, "networks", tuple(self.networks))
        object.__setattr__(self, "nodes", tuple(self.nodes))
        object.__setattr__(self, "images", tuple(self.images))
        named: set[str] = set()
        for n, source in enumerate(self.images):
            if not isinstance(source, ImageSource):
                raise PlatformError("images must be ImageSource objects", where=f"images[{n}]")
            if source.name in named:
                raise PlatformError(f"two images are called {source.name!r}", where="images")
            named.add(source.name)
        if (
            isinstance(self.vxlan_port, bool)
            or not isinstance(self.vxlan_port, int)
            or not 0 < self.vxlan_port < 65536
        ):
            raise PlatformError(
                f"vxlan_port {show(self.vxlan_port)} must be a UDP port (1..65535)",
                where="vxlan_port",
            )
        if not self.nodes:
            raise PlatformError(
                "the platform has no vnodes; add at least one under 'nodes'", where="nodes"
            )
        by_name: dict[str, Network] = {}
        for n, net in enumerate(self.networks):
            where = f"networks[{n}]"
            if not isinstance(net, Network):
                raise PlatformError("networks must be Network objects", where=where)
            if net.name in by_name:
                raise PlatformError(f"two vnetworks are called {net.name!r}", where=f"{where}.name")
            for other in by_name.values():
                if net.network.version == other.network.version and net.network.overlaps(
                    other.network
                ):
                    raise PlatformError(
                        f"vnetworks {other.name!r} ({other.cidr}) and {net.name!r} ({net.cidr}) "
                        "overlap; give them disjoint cidrs",
                        where=f"{where}.cidr",
                    )
            by_name[net.name] = net
        templates: set[str] = set()
        addresses: dict[str, str] = {}
        for n, node in enumerate(self.nodes):
            if not isinstance(node, VNodeSpec):
                raise PlatformError("nodes must be VNodeSpec objects", where=f"nodes[{n}]")
            if node.name in templates:
                raise PlatformError(
                    f"two vnodes are called {node.name!r}", where=f"nodes[{n}].name"
                )
            templates.add(node.name)
            on = [by_name[i.network].network for i in node.ifaces if i.network in by_name]
            for r, route in enumerate(node.routes):
                if not any(ipaddress.ip_address(route.via) in net for net in on):
                    raise PlatformError(
                        f"vnode {node.name!r}: gateway {route.via} is on none of its "
                        f"vnetworks ({', '.join(str(net) for net in on) or 'it has no iface'})",
                        where=f"nodes[{n}].routes[{r}].via",
                    )
            for k, iface in enumerate(node.ifaces):
                place = f"nodes[{n}].ifaces[{k}]"
                where = f"vnode {node.name!r} iface {iface.name!r}"
                joined = by_name.get(iface.network)
                if joined is None:
                    known = ", ".join(repr(n) for n in by_name) or "none defined"
                    raise PlatformError(
                        f"{where}: unknown vnetwork {show(iface.network)} (known: {known})",
                        where=f"{place}.network",
                    )
                if iface.address == "auto":
                    continue
                ip = ipaddress.ip_address(iface.address)
                if ip not in joined.network:
                    raise PlatformError(
                        f"{where}: address {ip} is outside vnetwork {joined.name!r}"
                        f" ({joined.cidr})",
                        where=f"{place}.address",
                    )
                if ip in reserved(joined.network):
                    raise PlatformError(
                        f"{where}: address {ip} is the network or broadcast address of"
                        f" {joined.cidr}",
                        where=f"{place}.address",
                    )
                if str(ip) in addresses:
                    raise PlatformError(
                        f"{where}: address {ip} is already given to {addresses[str(ip)]}",
                        where=f"{place}.address",
                    )
                addresses[str(ip)] = where


# --- YAML / mapping loader -------------------------------------------------------------

_TOP_KEYS = ("images", "networks", "nodes", "vxlan_port", "routes", "events")
_NETWORK_KEYS = ("name", "cidr", "mode")
_NODE_KEYS = (
    "name", "per_pnode", "pnode", "ifaces", "image", "shared", "cpu", "memory", "ssh", "forward",
    "routes",
)  # fmt: skip
_ROUTE_KEYS = ("to", "via")
_CPU_KEYS = ("cores", "share")
_IMAGE_KEYS = ("source",)
_IFACE_KEYS = ("name", "network", "address", "output", "input")
_LINK_KEYS = ("rate", "delay", "jitter", "loss")
_YAML_TAGS = {  # what plain YAML resolves to; any other tag is refused
    f"tag:yaml.org,2002:{kind}"
    for kind in ("str", "int", "float", "bool", "null", "seq", "map", "merge", "timestamp")
}


def _fields(
    data: object, where: str, allowed: Sequence[str], required: Sequence[str] = ()
) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise PlatformError(
            f"expected a mapping of {', '.join(allowed)}, got {show(data)}", where=where
        )
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise PlatformError(
                f"unknown key {show(key)} (allowed: {', '.join(allowed)}){hint}",
                where=where,
            )
    for key in required:
        if key not in data:
            raise PlatformError(f"missing key {key!r}", where=where)
    return dict(data)


def _list(data: object, where: str) -> list[Any]:
    if data is None:
        return []
    if not isinstance(data, list):
        raise PlatformError(f"expected a list, got {show(data)}", where=where)
    return data


def _at(where: str, build: Any, *args: Any, **kwargs: Any) -> Any:
    """Call `build`, placing a PlatformError it raises inside `where`."""
    try:
        return build(*args, **kwargs)
    except PlatformError as exc:
        raise exc.within(where) from None


def _link(data: object, where: str) -> LinkSpec | None:
    if data is None:
        return None
    fields = _fields(data, where, _LINK_KEYS)
    return _at(where, LinkSpec, **fields) if fields else None


def platform_from_dict(
    data: object,
    *,
    base: Path | None = None,
    locate: Callable[[str], str] = lambda where: where,
) -> Platform:
    """Build a Platform from the parsed YAML structure (see examples/listing1.yaml); its
    events' traces are read from `base`, `locate` names an event's place in the file."""
    from omnibed.emulator.timeline import events_from_list  # it reads rates as this module

    top = _fields(data, "", _TOP_KEYS, ("nodes",))
    networks = []
    for n, item in enumerate(_list(top.get("networks"), "networks")):
        where = f"networks[{n}]"
        networks.append(
            _at(where, Network, **_fields(item, where, _NETWORK_KEYS, ("name", "cidr")))
        )
    nodes = []
    for n, item in enumerate(_list(top.get("nodes"), "nodes")):
        where = f"nodes[{n}]"
        fields = _fields(item, where, _NODE_KEYS, ("name",))
        ifaces = []
        for k, raw in enumerate(_list(fields.pop("ifaces", None), f"{where}.ifaces")):
            iw = f"{where}.ifaces[{k}]"
            ifields = _fields(raw, iw, _IFACE_KEYS, ("name", "network"))
            for direction in ("output", "input"):
                ifields[direction] = _link(ifields.get(direction), f"{iw}.{direction}")
            ifaces.append(_at(iw, IfaceSpec, **ifields))
        if fields.get("cpu") is not None:
            cw = f"{where}.cpu"
            fields["cpu"] = _at(cw, CpuSpec, **_fields(fields["cpu"], cw, _CPU_KEYS))
        routes = []
        for r, raw in enumerate(_list(fields.pop("routes", None), f"{where}.routes")):
            rw = f"{where}.routes[{r}]"
            routes.append(_at(rw, RouteSpec, **_fields(raw, rw, _ROUTE_KEYS, _ROUTE_KEYS)))
        nodes.append(_at(where, VNodeSpec, ifaces=ifaces, routes=routes, **fields))
    images = []
    raw_images = top.get("images") or {}
    if not isinstance(raw_images, Mapping):
        raise PlatformError(
            f"expected a mapping of image names to {{source: FILE}}, got {show(raw_images)}",
            where="images",
        )
    for name, item in raw_images.items():
        where = f"images.{name}"
        fields = _fields(item, where, _IMAGE_KEYS, ("source",))
        images.append(_at(where, ImageSource, name=name, **fields))
    port = top.get("vxlan_port", DEFAULT_VXLAN_PORT)
    routes = top.get("routes", "none")
    events = events_from_list(top.get("events"), base=base, locate=locate)
    return Platform(
        networks=networks, nodes=nodes, vxlan_port=port, images=images, routes=routes,
        events=events,
    )


def _is_path(text: str) -> bool:
    """A one-line string naming a .yaml file or an existing file (else it is YAML text)."""
    if "\n" in text:
        return False
    if text.endswith((".yaml", ".yml")):
        return True
    try:
        return Path(text).is_file()
    except (OSError, ValueError):  # a long one-line YAML text, or one with a NUL
        return False


def _mark(origin: str, mark: yaml.Mark | None) -> str:
    return f"{origin}:{mark.line + 1}:{mark.column + 1}" if mark else origin


def _tag(tag: str) -> str:
    return tag.replace("tag:yaml.org,2002:", "!!")


def _check_tree(root: yaml.Node, origin: str) -> None:
    """Refuse tags, duplicate keys, nesting deeper than MAX_YAML_DEPTH and documents larger
    than MAX_YAML_NODES once aliases are expanded; counted on the composed nodes, in which an
    alias is the very node it names, so nothing is expanded."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def refuse(node: yaml.Node, message: str) -> PlatformError:
        return PlatformError(message, origin=_mark(origin, node.start_mark))

    def size(node: yaml.Node, depth: int) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in open_nodes:
            raise refuse(node, "an alias names a node it is nested in")
        if depth > MAX_YAML_DEPTH:
            raise refuse(node, f"nested more than {MAX_YAML_DEPTH} levels deep")
        if node.tag not in _YAML_TAGS:
            raise refuse(
                node,
                f"YAML tag {show(_tag(node.tag))} is not allowed: a platform file holds only "
                "mappings, lists, strings and numbers",
            )
        open_nodes.add(id(node))
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(child, depth + 1) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            keys = set()
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                    if key.value in keys:
                        raise refuse(key, f"duplicate key {show(key.value)}")
                    keys.add(key.value)
                total += size(key, depth + 1) + size(value, depth + 1)
        if total > MAX_YAML_NODES:
            raise refuse(
                node,
                f"its aliases expand to more than {MAX_YAML_NODES} YAML nodes; "
                "write the platform with per_pnode instead",
            )
        open_nodes.discard(id(node))
        sizes[id(node)] = total
        return total

    size(root, 0)


def _compose(raw: str | bytes, origin: str) -> tuple[object, yaml.Node | None]:
    loader = yaml.SafeLoader(raw)
    try:
        root = loader.get_single_node()
        if root is None:
            return None, None
        _check_tree(root, origin)
        return loader.construct_document(root), root
    finally:
        loader.dispose()


def _parse(raw: str | bytes, origin: str) -> tuple[object, yaml.Node | None]:
    """The document in `raw` (safe loader, checked by _check_tree) and its composed nodes;
    a YAML error becomes one line with the line and column."""
    try:
        return _compose(raw, origin)
    except yaml.MarkedYAMLError as exc:
        what = ", ".join(part for part in (exc.context, exc.problem) if part)
        where = _mark(origin, exc.problem_mark or exc.context_mark)
        raise PlatformError(f"not valid YAML: {what}", origin=where) from None
    except yaml.reader.ReaderError as exc:
        first = str(exc).splitlines()[0]
        raise PlatformError(
            f"not valid YAML: {first} at character {exc.position}", origin=origin
        ) from None
    except RecursionError:
        raise PlatformError("not valid YAML: nested too deeply", origin=origin) from None


def _locate(root: yaml.Node | None, where: str) -> yaml.Mark | None:
    """The start of the deepest node of `root` on the path `where` (`nodes[0].ifaces[1]`)."""
    node, mark = root, root.start_mark if root else None
    for key, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", where):
        if isinstance(node, yaml.MappingNode) and key:
            found = [v for k, v in node.value if getattr(k, "value", None) == key]
            node = found[-1] if found else None
        elif isinstance(node, yaml.SequenceNode) and index and int(index) < len(node.value):
            node = node.value[int(index)]
        else:
            node = None
        if node is None:
            break
        mark = node.start_mark
    return mark


def read_capped(path: Path, what: str, hint: str = "") -> bytes:
    """The bytes of `path` (a `what`, as errors name it), at most MAX_FILE_BYTES;
    PlatformError when it cannot be read or is larger (`hint` ends that message)."""
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise PlatformError(f"cannot read {what} {path}: {exc.strerror}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise PlatformError(f"{what} {path} is larger than {MAX_FILE_BYTES >> 20} MiB{hint}")
    return raw


def load_platform(source: str | Path | Mapping[str, Any]) -> Platform:
    """A Platform from a YAML file path, YAML text, or an already parsed mapping."""
    if not isinstance(source, str | Path):
        return platform_from_dict(source)
    base = None
    if isinstance(source, str) and not _is_path(source):
        raw: str | bytes = source
        origin = "platform"
    else:
        path = Path(source)
        raw = read_capped(path, "platform file", "; write many vnodes with per_pnode")
        origin = str(path)
        base = path.parent
    data, root = _parse(raw, origin)
    try:
        return platform_from_dict(
            data, base=base, locate=lambda where: _mark(origin, _locate(root, where))
        )
    except PlatformError as exc:
        if exc.origin:  # an event's error, already placed
            raise
        raise exc.located(_mark(origin, _locate(root, exc.where))) from None
