"""The platform description: vnetworks, vnodes, their interfaces and link properties.

Built from Python (`Platform(networks=[Network(...)], nodes=[VNodeSpec(...)])`) or loaded
from YAML (`load_platform(path_or_text)`). Every object validates itself when built and
raises :class:`~omnibed.core.errors.PlatformError` with a message naming the culprit; the
YAML loader prefixes it with where in the file (`nodes[0].ifaces[1].output.rate`).

Units: rates are bit/s (`100mbit`, `1gbit`, `512kbit`, or a number of bit/s), times are
milliseconds (`10ms`, `1s`, `500us`, or a number of ms), loss is a percentage (`1%` or 1).
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from omnibed.core.errors import PlatformError
from omnibed.emulator.state import Shaping

MODES = ("auto", "bridge", "vxlan")
DEFAULT_VXLAN_PORT = 4789
IFNAMSIZ = 15  # usable characters of a Linux interface name

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
_TIME_UNITS = {"": 1.0, "ms": 1.0, "msec": 1.0, "us": 1e-3, "usec": 1e-3, "s": 1e3, "sec": 1e3}


def _number(value: object, what: str) -> tuple[float, str]:
    """Split `value` (a number or a string like '100mbit') into a non-negative number and unit."""
    if isinstance(value, bool):
        raise PlatformError(f"{what} {value!r} is not a number")
    if isinstance(value, int | float):
        if value < 0:
            raise PlatformError(f"{what} {value!r} cannot be negative")
        return float(value), ""
    if isinstance(value, str) and (m := _NUMBER.fullmatch(value)):
        return float(m.group(1)), m.group(2).lower()
    raise PlatformError(f"{what} {value!r} is not a number with an optional unit")


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
            f"rate {value!r} has an unknown unit {unit!r}; use one of "
            + ", ".join(u for u in _RATE_UNITS if u)
        )
    bps = round(number * _RATE_UNITS[unit])
    if bps <= 0:
        raise PlatformError(f"rate {value!r} must be at least 1 bit/s")
    return bps


def parse_time(value: object, what: str = "delay") -> float:
    """Milliseconds from `10ms`, `1s`, `500us` or a number of ms."""
    number, unit = _number(value, what)
    if unit not in _TIME_UNITS:
        raise PlatformError(f"{what} {value!r} has an unknown unit {unit!r}; use ms, s or us")
    return number * _TIME_UNITS[unit]


def parse_loss(value: object) -> float:
    """A percentage from `1%`, `0.5%` or a number (already a percentage)."""
    number, unit = _number(value, "loss")
    if unit not in ("", "%"):
        raise PlatformError(f"loss {value!r} must be a percentage such as '1%'")
    if number > 100:
        raise PlatformError(f"loss {value!r} is more than 100%")
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
        if self.rate is not None:
            object.__setattr__(self, "rate", parse_rate(self.rate))
        if self.delay is not None:
            object.__setattr__(self, "delay", parse_time(self.delay, "delay"))
        if self.jitter is not None:
            object.__setattr__(self, "jitter", parse_time(self.jitter, "jitter"))
        if self.loss is not None:
            object.__setattr__(self, "loss", parse_loss(self.loss))

    def shaping(self) -> Shaping:
        return Shaping(
            rate_bps=self.rate,  # type: ignore[arg-type]
            delay_ms=self.delay,  # type: ignore[arg-type]
            jitter_ms=self.jitter,  # type: ignore[arg-type]
            loss_pct=self.loss,  # type: ignore[arg-type]
        )


def _check_name(name: object, what: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise PlatformError(
            f"{what} name {name!r} is not valid: use up to 63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


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
                f"vnetwork {self.name!r}: cidr {self.cidr!r} is not a network ({exc}){hint}"
            ) from None
        object.__setattr__(self, "cidr", str(net))
        if self.mode not in MODES:
            raise PlatformError(
                f"vnetwork {self.name!r}: mode {self.mode!r} is not one of {', '.join(MODES)}"
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
        if (
            not isinstance(name, str)
            or not 0 < len(name) <= IFNAMSIZ
            or any(c in name for c in "/: \t\n")
            or name in (".", "..", "lo")
        ):
            raise PlatformError(
                f"iface name {name!r} is not a valid Linux interface name "
                f"(1 to {IFNAMSIZ} characters, no '/', ':' or space, not 'lo')"
            )
        if not isinstance(self.network, str):
            raise PlatformError(f"iface {name!r}: network must be a vnetwork name")
        if self.address != "auto":
            if not isinstance(self.address, str) or "/" in self.address:
                raise PlatformError(
                    f"iface {name!r}: address {self.address!r} must be 'auto' or an IP address "
                    "without prefix (the prefix comes from the vnetwork's cidr)"
                )
            try:
                object.__setattr__(self, "address", str(ipaddress.ip_address(self.address)))
            except ValueError:
                raise PlatformError(
                    f"iface {name!r}: address {self.address!r} is not an IP address"
                ) from None
        for direction in ("output", "input"):
            spec = getattr(self, direction)
            if spec is not None and not isinstance(spec, LinkSpec):
                raise PlatformError(f"iface {name!r}: {direction} must be a LinkSpec")


@dataclass(frozen=True)
class VNodeSpec:
    """One vnode, or `per_pnode` vnodes on every pnode (`{i}` in the name is their index).

    Placement: `per_pnode=N` puts N on each pnode; `pnode=` an index or a node id puts one
    there; neither puts one on the pnode holding the fewest vnodes so far.
    """

    name: str
    per_pnode: int | None = None
    pnode: int | str | None = None
    ifaces: Sequence[IfaceSpec] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise PlatformError(f"vnode name {self.name!r} must be a string")
        if self.per_pnode is not None:
            if isinstance(self.per_pnode, bool) or not isinstance(self.per_pnode, int):
                raise PlatformError(f"vnode {self.name!r}: per_pnode must be a whole number")
            if self.per_pnode < 1:
                raise PlatformError(f"vnode {self.name!r}: per_pnode must be at least 1")
            if self.pnode is not None:
                raise PlatformError(f"vnode {self.name!r}: give per_pnode or pnode, not both")
            if self.per_pnode > 1 and "{i}" not in self.name:
                raise PlatformError(
                    f"vnode {self.name!r}: per_pnode {self.per_pnode} needs '{{i}}' in the name "
                    "so the vnodes get distinct names"
                )
        elif "{i}" in self.name:
            raise PlatformError(f"vnode {self.name!r}: '{{i}}' only expands with per_pnode")
        if self.pnode is not None and (
            isinstance(self.pnode, bool)
            or not isinstance(self.pnode, int | str)
            or (isinstance(self.pnode, int) and self.pnode < 0)
        ):
            raise PlatformError(
                f"vnode {self.name!r}: pnode {self.pnode!r} must be an index (0, 1, ...) "
                "or a node id"
            )
        _check_name(self.expand(0), "vnode")
        object.__setattr__(self, "ifaces", tuple(self.ifaces))
        seen: set[str] = set()
        for iface in self.ifaces:
            if not isinstance(iface, IfaceSpec):
                raise PlatformError(f"vnode {self.name!r}: ifaces must be IfaceSpec objects")
            if iface.name in seen:
                raise PlatformError(f"vnode {self.name!r}: two ifaces are called {iface.name!r}")
            seen.add(iface.name)
            if self.per_pnode and self.per_pnode > 1 and iface.address != "auto":
                raise PlatformError(
                    f"vnode {self.name!r} iface {iface.name!r}: address {iface.address} would be "
                    f"given to {self.per_pnode} vnodes per pnode; use 'auto' or one vnode"
                )

    def expand(self, i: int) -> str:
        return self.name.replace("{i}", str(i))


@dataclass(frozen=True)
class Platform:
    """A whole virtual platform; cross-references are checked here."""

    networks: Sequence[Network] = ()
    nodes: Sequence[VNodeSpec] = ()
    vxlan_port: int = DEFAULT_VXLAN_PORT

    def __post_init__(self) -> None:
        object.__setattr__(self, "networks", tuple(self.networks))
        object.__setattr__(self, "nodes", tuple(self.nodes))
        if (
            isinstance(self.vxlan_port, bool)
            or not isinstance(self.vxlan_port, int)
            or not 0 < self.vxlan_port < 65536
        ):
            raise PlatformError(f"vxlan_port {self.vxlan_port!r} must be a UDP port (1..65535)")
        if not self.nodes:
            raise PlatformError("the platform has no vnodes; add at least one under 'nodes'")
        by_name: dict[str, Network] = {}
        for net in self.networks:
            if not isinstance(net, Network):
                raise PlatformError("networks must be Network objects")
            if net.name in by_name:
                raise PlatformError(f"two vnetworks are called {net.name!r}")
            for other in by_name.values():
                if net.network.version == other.network.version and net.network.overlaps(
                    other.network
                ):
                    raise PlatformError(
                        f"vnetworks {other.name!r} ({other.cidr}) and {net.name!r} ({net.cidr}) "
                        "overlap; give them disjoint cidrs"
                    )
            by_name[net.name] = net
        templates: set[str] = set()
        addresses: dict[str, str] = {}
        for node in self.nodes:
            if not isinstance(node, VNodeSpec):
                raise PlatformError("nodes must be VNodeSpec objects")
            if node.name in templates:
                raise PlatformError(f"two vnodes are called {node.name!r}")
            templates.add(node.name)
            for iface in node.ifaces:
                where = f"vnode {node.name!r} iface {iface.name!r}"
                net = by_name.get(iface.network)
                if net is None:
                    known = ", ".join(repr(n) for n in by_name) or "none defined"
                    raise PlatformError(
                        f"{where}: unknown vnetwork {iface.network!r} (known: {known})"
                    )
                if iface.address == "auto":
                    continue
                ip = ipaddress.ip_address(iface.address)
                if ip not in net.network:
                    raise PlatformError(
                        f"{where}: address {ip} is outside vnetwork {net.name!r} ({net.cidr})"
                    )
                if ip in reserved(net.network):
                    raise PlatformError(
                        f"{where}: address {ip} is the network or broadcast address of {net.cidr}"
                    )
                if str(ip) in addresses:
                    raise PlatformError(
                        f"{where}: address {ip} is already given to {addresses[str(ip)]}"
                    )
                addresses[str(ip)] = where


# --- YAML / mapping loader -------------------------------------------------------------

_TOP_KEYS = ("networks", "nodes", "vxlan_port")
_NETWORK_KEYS = ("name", "cidr", "mode")
_NODE_KEYS = ("name", "per_pnode", "pnode", "ifaces")
_IFACE_KEYS = ("name", "network", "address", "output", "input")
_LINK_KEYS = ("rate", "delay", "jitter", "loss")


def _fields(
    data: object, where: str, allowed: Sequence[str], required: Sequence[str] = ()
) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise PlatformError(f"{where}: expected a mapping of {', '.join(allowed)}, got {data!r}")
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise PlatformError(
                f"{where}: unknown key {key!r} (allowed: {', '.join(allowed)}){hint}"
            )
    for key in required:
        if key not in data:
            raise PlatformError(f"{where}: missing key {key!r}")
    return dict(data)


def _list(data: object, where: str) -> list[Any]:
    if data is None:
        return []
    if not isinstance(data, list):
        raise PlatformError(f"{where}: expected a list, got {data!r}")
    return data


def _at(where: str, build: Any, *args: Any, **kwargs: Any) -> Any:
    """Call `build`, prefixing a PlatformError with the location in the file."""
    try:
        return build(*args, **kwargs)
    except PlatformError as exc:
        raise PlatformError(f"{where}: {exc}") from None


def _link(data: object, where: str) -> LinkSpec | None:
    if data is None:
        return None
    fields = _fields(data, where, _LINK_KEYS)
    return _at(where, LinkSpec, **fields) if fields else None


def platform_from_dict(data: object) -> Platform:
    """Build a Platform from the parsed YAML structure (see examples/listing1.yaml)."""
    top = _fields(data, "platform", _TOP_KEYS, ("nodes",))
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
        nodes.append(_at(where, VNodeSpec, ifaces=ifaces, **fields))
    port = top.get("vxlan_port", DEFAULT_VXLAN_PORT)
    return Platform(networks=networks, nodes=nodes, vxlan_port=port)


def _is_path(text: str) -> bool:
    """A one-line string naming a .yaml file or an existing file (else it is YAML text)."""
    if "\n" in text:
        return False
    if text.endswith((".yaml", ".yml")):
        return True
    try:
        return Path(text).is_file()
    except OSError:  # e.g. a long one-line YAML text is not a file name
        return False


def load_platform(source: str | Path | Mapping[str, Any]) -> Platform:
    """A Platform from a YAML file path, YAML text, or an already parsed mapping."""
    if not isinstance(source, str | Path):
        return platform_from_dict(source)
    if isinstance(source, str) and not _is_path(source):
        text, origin = source, "platform"
    else:
        path = Path(source)
        try:
            text = path.read_text()
        except OSError as exc:
            raise PlatformError(f"cannot read platform file {path}: {exc.strerror}") from None
        origin = str(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PlatformError(f"{origin} is not valid YAML: {exc}") from None
    try:
        return platform_from_dict(data)
    except PlatformError as exc:
        if origin == "platform":
            raise
        raise PlatformError(f"{origin}: {exc}") from None
