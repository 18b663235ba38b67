"""Pure conversions between Blazar/Nova/Neutron payloads and omnibed values (no I/O)."""

from __future__ import annotations

import ast
import json
from datetime import UTC, datetime, timedelta

from omnibed.core.timeutil import require_utc
from omnibed.core.types import Nic, NicRole, ReservationState, Source, SSHEndpoint, Tri

BLAZAR_FORMAT = "%Y-%m-%d %H:%M"  # UTC minutes, as python-chi and blazarclient send
LEASE_STATES = {
    "PENDING": ReservationState.WAITING,
    "CREATING": ReservationState.WAITING,
    "STARTING": ReservationState.WAITING,
    "UPDATING": ReservationState.WAITING,
    "ACTIVE": ReservationState.READY,
    "ERROR": ReservationState.ERROR,
    "TERMINATING": ReservationState.RELEASED,
    "TERMINATED": ReservationState.RELEASED,
    "DELETING": ReservationState.RELEASED,
}
CC_USER = "cc"  # the login user of Chameleon's CC-* images (passwordless sudo)


def blazar_date(moment: datetime, *, round_up: bool = False) -> str:
    """`moment` (tz-aware UTC) as Blazar's `YYYY-MM-DD HH:MM`, never local time."""
    moment = require_utc(moment).replace(second=0, microsecond=0) + (
        timedelta(minutes=1) if round_up and (moment.second or moment.microsecond) else
        timedelta(0))
    return moment.strftime(BLAZAR_FORMAT)


def parse_blazar_date(text: str) -> datetime:
    """A date Blazar sent (`2017-12-26T12:00:00.000000` or `2017-12-26 12:00`) as UTC."""
    for form in ("%Y-%m-%dT%H:%M:%S.%f", "%Y-%m-%dT%H:%M:%S", BLAZAR_FORMAT,
                 "%Y-%m-%d %H:%M:%S"):
        try:
            return datetime.strptime(text, form).replace(tzinfo=UTC)
        except ValueError:
            continue
    raise ValueError(f"Blazar sent a date omnibed does not understand: {text!r}")


def lease_body(name: str, nodes: int, node_type: str, start: datetime | None,
               end: datetime) -> dict:
    """The `POST /leases` body for `nodes` bare-metal hosts of `node_type` (start None: now)."""
    return {
        "name": name,
        "start_date": "now" if start is None else blazar_date(start, round_up=True),
        "end_date": blazar_date(end),
        "reservations": [{
            "resource_type": "physical:host",
            "min": nodes,
            "max": nodes,
            "hypervisor_properties": "",
            "resource_properties": json.dumps(["==", "$node_type", node_type]),
        }],
        "events": [],
    }


def host_reservation_id(lease: dict) -> str:
    """The id of the lease's physical:host reservation: the scheduler hint for Nova."""
    for reservation in lease.get("reservations", []):
        if reservation.get("resource_type") == "physical:host":
            return reservation["id"]
    raise ValueError(f"lease {lease.get('id')} has no physical:host reservation")


def host_arch(host: dict) -> str:
    """The CPU architecture of a Blazar host: Chameleon's `architecture.platform_type` extra
    capability (from its resource registry), else the `arch` of the Nova `cpu_info` Blazar
    copied (libvirt hosts; Ironic gives none); "" if neither says. Blazar stores `cpu_info`
    as `str()` of Nova's object (blazar/utils/openstack/nova.py), a Python literal such as
    `{'arch': 'x86_64', ...}`, or of an older Nova's JSON string."""
    arch = host.get("architecture.platform_type")
    if arch:
        return str(arch)
    text = str(host.get("cpu_info") or "{}")
    try:
        cpu_info = json.loads(text)
    except ValueError:
        try:
            cpu_info = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return ""
    return str(cpu_info.get("arch", "")) if isinstance(cpu_info, dict) else ""


def fixed_address(addresses: dict) -> tuple[str, str]:
    """(first fixed IPv4, its MAC) from a Nova server's `addresses`."""
    for entries in addresses.values():
        for entry in entries:
            if entry.get("OS-EXT-IPS:type", "fixed") == "fixed" and entry.get("version") == 4:
                return entry["addr"], entry.get("OS-EXT-IPS-MAC:mac_addr", "")
    raise ValueError("the server has no fixed IPv4 address yet")


def login(host: str, gateway: str | None, key_file: str | None, user: str = CC_USER
          ) -> SSHEndpoint:
    """The endpoint of a node at `host`, through the floating-IP `gateway` unless it is it."""
    jumps = () if gateway in (None, host) else (
        SSHEndpoint(host=gateway, user=CC_USER, key_file=key_file),)
    return SSHEndpoint(host=host, user=user, key_file=key_file, jumps=jumps)


def nic_from_port(port: dict, name: str, kvm: bool, control: bool) -> Nic:
    """A Neutron port as a Nic: on KVM, port security drops foreign MACs (NO)."""
    if kvm:
        secured = bool(port.get("port_security_enabled", True))
        foreign, source = (Tri.NO if secured else Tri.UNKNOWN), Source.API
    else:
        foreign, source = Tri.UNKNOWN, Source.PROBE  # bare metal: decided by the probe
    return Nic(
        name=name,
        mac=port["mac_address"],
        role=NicRole.CONTROL if control else NicRole.EXPERIMENT,
        addresses=tuple(ip["ip_address"] for ip in port.get("fixed_ips", [])),
        foreign_mac=foreign,
        sources={"foreign_mac": source, "mac": Source.API},
    )


def interface_names(ip_link_output: str) -> dict[str, str]:
    """MAC -> interface name from `ip -o link` output."""
    names = {}
    for line in ip_link_output.splitlines():
        parts = line.split()
        if len(parts) > 1 and "link/ether" in parts:
            name = parts[1].rstrip(":").split("@")[0]
            names[parts[parts.index("link/ether") + 1].lower()] = name
    return names
