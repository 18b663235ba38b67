"""Pure functions from geni-lib manifest objects and status dicts to omnibed values.

They read attributes only (duck-typed on geni-lib's `Manifest`/`ManifestNode`), so they are
tested as data. A node's id is its `client_id` from the request, never a host name: on
CloudLab the manifest's host name, the login host and the node's own `hostname` disagree.
"""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import datetime
from typing import Any

from omnibed.core.errors import ProviderError
from omnibed.core.timeutil import to_utc
from omnibed.core.types import Nic, NicRole, Node, ReservationState, Source, SSHEndpoint, Tri
from omnibed.providers.cloudlab._errors import PROVIDER

XEN_SLIVER_TYPE = "emulab-xen"
# PCs and VMs running Linux that users log in to (geni-lib's RawPC, XenVM, DockerContainer,
# and InstaGENI's default VM); any other sliver type is not a node for omnibed
HOST_SLIVER_TYPES = frozenset(
    {"raw", "raw-pc", XEN_SLIVER_TYPE, "default-vm", "emulab-openvz", "emulab-docker"}
)
EXTRA_LAN_PREFIX = "omnibed-lan"

_STATE_MAP = {
    "ready": ReservationState.READY,
    "configuring": ReservationState.WAITING,
    "notready": ReservationState.WAITING,
    "changing": ReservationState.WAITING,
    "failed": ReservationState.ERROR,
    "unknown": ReservationState.UNKNOWN,
}


def state_of(status: dict[str, Any]) -> ReservationState:
    """The reservation state from an AM API v2 SliverStatus answer."""
    return _STATE_MAP.get(str(status.get("geni_status", "unknown")), ReservationState.UNKNOWN)


def status_errors(status: dict[str, Any]) -> str:
    """The aggregate's own error text for every failed resource of a SliverStatus answer."""
    errors = [
        f"{res.get('geni_urn', '?')}: {res.get('geni_error') or 'failed'}"
        for res in status.get("geni_resources", [])
        if res.get("geni_status") == "failed"
    ]
    return "; ".join(errors) or str(status.get("geni_error") or "the sliver failed")


def progress_line(status: dict[str, Any]) -> str:
    """`3/4 resources ready (configuring)` for the progress display."""
    resources = status.get("geni_resources", [])
    ready = sum(1 for res in resources if res.get("geni_status") == "ready")
    return f"{ready}/{len(resources)} resources ready ({status.get('geni_status', 'unknown')})"


def parse_geni_time(value: Any) -> datetime | None:
    """An RFC 3339 string (or naive UTC datetime from xmlrpc) as tz-aware UTC; None if absent."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return to_utc(value, "UTC")
    text = str(value).strip().replace("Z", "+00:00")
    return to_utc(datetime.fromisoformat(text), "UTC")


def expiration(status: dict[str, Any]) -> datetime | None:
    """The sliver's expiration from SliverStatus (`geni_expires`, else ProtoGENI's `pg_expires`)."""
    return parse_geni_time(status.get("geni_expires") or status.get("pg_expires"))


def normalize_mac(mac: str | None) -> str:
    """`0c42a18b3178` or `0C:42:...` -> `0c:42:a1:8b:31:78`; empty when unknown (absent,
    malformed, or the all-zero MAC some manifests give interfaces they have none for)."""
    digits = re.sub(r"[^0-9a-fA-F]", "", mac or "").lower()
    if len(digits) != 12 or digits == "0" * 12:
        return ""
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


def _child(node: Any, tag: str) -> Any:
    """The node element's first child named `tag`, whatever its namespace; None if absent."""
    return next((el for el in node._elem if str(el.tag).endswith("}" + tag)), None)


def sliver_type(node: Any) -> str:
    """The sliver type (`raw`, `raw-pc`, `emulab-xen`) from the manifest node element."""
    element = _child(node, "sliver_type")
    return element.get("name", "") if element is not None else ""


def hardware_type(node: Any) -> str:
    """The hardware type granted (`emulab:vnode`, e.g. `d430`, `pcvm`), else the one asked."""
    vnode, asked = _child(node, "vnode"), _child(node, "hardware_type")
    granted = vnode.get("hardware_type", "") if vnode is not None else ""
    return granted or (asked.get("name", "") if asked is not None else "")


# The CPU architecture of hardware types the CloudLab, Apt and Emulab manuals' Hardware
# chapters describe (docs.cloudlab.us/hardware.html), as `uname -m` names it. A type not
# listed is left unknown ("") rather than guessed, and so are VMs (`pcvm`: the manifest
# does not name their host's type).
ARCH_BY_HARDWARE = {
    "m400": "aarch64",  # Utah: APM X-Gene, 64-bit ARMv8
    "ibm8335": "ppc64le",  # Clemson: IBM POWER8NVL
    **dict.fromkeys((
        "m510", "xl170", "c6525-25g", "c6525-100g",  # Utah: Xeon-D, Xeon E5, AMD EPYC
        "c220g1", "c240g1", "c220g2", "c240g2", "c220g5",  # Wisconsin: Intel Xeon
        "c8220", "c6320", "c4130", "dss7500", "c6420", "r7515",  # Clemson: Xeon, EPYC
        "r320", "c6220",  # Apt: Intel Xeon
        "d430",  # Emulab: Intel Xeon
    ), "x86_64"),
}


def ssh_logins(node: Any) -> list[Any]:
    """The node's SSH logins (`authentication="ssh-keys"` or unspecified)."""
    return [login for login in node.logins if login.auth in (None, "ssh-keys")]


def is_host(node: Any) -> bool:
    """Whether omnibed can log in to the node and run Linux there: a PC or VM sliver type
    with an SSH login, and not a switch. Blockstores (reached on their storage host's
    forwarded port), delay nodes, switches and anything without a login are left out."""
    if sliver_type(node) not in HOST_SLIVER_TYPES or not ssh_logins(node):
        return False
    return "switch" not in hardware_type(node).lower()


def _login(node: Any, username: str) -> Any:
    """The user's own login, matched case-insensitively (manifests list every project
    member, with mixed-case names); never another member's."""
    logins = ssh_logins(node)
    for login in logins:
        if (login.username or "").lower() == username.lower():
            return login
    names = ", ".join(sorted({login.username for login in logins})) or "none"
    raise ProviderError(
        f"node {node.client_id} has no SSH login for {username!r} (its logins: {names}): "
        "the portal certificate (pem) must be that of the CloudLab user who holds the"
        " reservation, a member of its project",
        provider=PROVIDER,
    )


def to_node(node: Any, username: str, site: str = "") -> Node:
    """One manifest node as an omnibed Node logging in as the CloudLab user (not yet root).

    `extra` holds the sliver's ids and type; `hardware` is the granted hardware type,
    `arch` that type's CPU architecture (`ARCH_BY_HARDWARE`: the manifest does not say it)
    and `site` the aggregate it runs at."""
    login = _login(node, username)
    addresses = tuple(
        iface.address_info[0] for iface in node.interfaces if iface.address_info
    )
    if node.hostipv4:
        addresses = (node.hostipv4, *addresses)
    return Node(
        id=node.client_id,
        hostname=node.hostfqdn or login.hostname,
        ssh=SSHEndpoint(host=login.hostname, port=login.port, user=login.username),
        addresses=addresses,
        extra={
            "component_id": node.component_id,
            "sliver_id": node.sliver_id,
            "sliver_type": sliver_type(node),
        },
        hardware=hardware_type(node),
        site=site,
        arch=ARCH_BY_HARDWARE.get(hardware_type(node), ""),
    )


def to_nodes(manifest: Any, username: str, site: str = "") -> list[Node]:
    """Every node of the manifest omnibed can log in to (see `is_host`), sorted by
    client_id (a stable order)."""
    nodes = (to_node(node, username, site) for node in manifest.nodes if is_host(node))
    return sorted(nodes, key=lambda n: n.id)


def _extra_interfaces(manifest: Any) -> set[str]:
    """Sliver ids and client ids of the interfaces on the LANs omnibed made for
    --extra-nics (multi-site manifests give only client ids in `interface_ref`)."""
    found: set[str] = set()
    for link in manifest.links:
        if (link.client_id or "").startswith(EXTRA_LAN_PREFIX):
            for ref in link._elem:
                if str(ref.tag).endswith("}interface_ref"):
                    found.update(i for i in (ref.get("sliver_id"), ref.get("client_id")) if i)
    return found


def to_nics(manifest: Any, client_id: str) -> list[Nic]:
    """The NICs of node `client_id`: its control NIC plus the experiment/extra interfaces.

    A Xen VM's virtual NICs sit behind dom0 bridges that drop frames to and from MACs that
    are not the VM's own (the Distem-on-CloudLab report's finding); a raw PC's NICs on its
    experiment VLANs pass them. Both facts come from that static knowledge, not the API.
    """
    node = next((n for n in manifest.nodes if n.client_id == client_id), None)
    if node is None:
        raise KeyError(client_id)
    xen = sliver_type(node) == XEN_SLIVER_TYPE
    data_plane = Tri.NO if xen else Tri.YES
    sources = {"role": Source.API, "foreign_mac": Source.TABLE}
    nics = [
        Nic(
            name="control",
            mac="",
            role=NicRole.CONTROL,
            addresses=(node.hostipv4,) if node.hostipv4 else (),
            foreign_mac=Tri.NO if xen else Tri.UNKNOWN,
            sources=sources,
        )
    ]
    extra = _extra_interfaces(manifest)
    for iface in sorted(node.interfaces, key=lambda i: i.client_id or ""):
        address: tuple[str, ...] = ()
        if iface.address_info and iface.address_info[0]:
            address = (_with_prefix(*iface.address_info),)
        nics.append(
            Nic(
                name=iface.client_id,
                mac=normalize_mac(iface.mac_address),
                role=NicRole.EXTRA if {iface.sliver_id, iface.client_id} & extra
                else NicRole.EXPERIMENT,
                addresses=address,
                foreign_mac=data_plane,
                sources={**sources, "mac": Source.API},
            )
        )
    return nics


def _with_prefix(address: str, netmask: str | None) -> str:
    if not netmask:
        return address
    bits = sum(bin(int(part)).count("1") for part in netmask.split("."))
    return f"{address}/{bits}"


def on_node(nics: list[Nic], links: list[dict[str, Any]], routes: list[dict[str, Any]]
            ) -> list[Nic]:
    """The manifest's NICs named as the node names them, from its `ip -j addr` (`links`)
    and `ip -j route show default` (`routes`).

    The control NIC is the device carrying the default route, with the addresses the node
    gives it (a Xen VM on a forwarded port often has no host IPv4 in the manifest);
    failing a default route, the device holding the manifest's control address. Every
    other NIC is the device with its MAC; a NIC whose MAC the node does not have (or the
    manifest does not give) is left out, so that only names that exist are handed on.
    """
    by_mac = {str(link.get("address", "")).lower(): link for link in links}
    by_name = {link.get("ifname"): link for link in links}
    control, *others = nics
    device = next((by_name[r["dev"]] for r in routes if r.get("dev") in by_name), None)
    source = Source.PROBE
    if device is None:
        device = next((link for link in links
                       if set(control.addresses) & set(_addresses(link, bare=True))), None)
        source = Source.API
    if device is None:
        raise ProviderError(
            "the node has no default route and no device holding its control address"
            f" {', '.join(control.addresses) or '(none in the manifest)'}: check its network"
            " configuration", provider=PROVIDER)
    found = [replace(control, name=device["ifname"], mac=str(device.get("address", "")),
                     mtu=int(device.get("mtu", control.mtu)), addresses=_addresses(device),
                     sources={**control.sources, "role": source, "mac": Source.PROBE})]
    for nic in others:
        link = by_mac.get(nic.mac) if nic.mac else None
        if link is None or link is device:
            continue
        found.append(replace(nic, name=link["ifname"], mtu=int(link.get("mtu", nic.mtu)),
                             addresses=_addresses(link) or nic.addresses))
    return found


def _addresses(link: dict[str, Any], bare: bool = False) -> tuple[str, ...]:
    """The global addresses of one `ip -j addr` device, `a.b.c.d/len` (or bare)."""
    return tuple(
        info["local"] if bare else f"{info['local']}/{info['prefixlen']}"
        for info in link.get("addr_info", [])
        if info.get("scope") == "global" and info.get("local")
    )
