"""Pure conversions between Grid'5000 API payloads and omnibed values (no I/O, no SDK)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from omnibed.core.timeutil import (
    format_walltime,
    from_epoch,
    in_zone,
    to_utc,
    utcnow,
)
from omnibed.core.types import Nic, NicRole, Reservation, ReservationRequest, ReservationState, Tri
from omnibed.core.types import Source as S

PROVIDER = "grid5000"
OAR_ZONE = "Europe/Paris"
LIVE_STATES = "waiting,launching,running"
PASSIVE_COMMAND = "sleep 31536000"  # what enoslib runs: the job lives until released

STATE_MAP: Mapping[str, ReservationState] = {
    "waiting": ReservationState.WAITING,
    "hold": ReservationState.WAITING,
    "tolaunch": ReservationState.WAITING,
    "toackreservation": ReservationState.WAITING,
    "launching": ReservationState.WAITING,
    "suspended": ReservationState.WAITING,
    "resuming": ReservationState.WAITING,
    "running": ReservationState.READY,
    "finishing": ReservationState.RELEASED,
    "terminated": ReservationState.RELEASED,
    "toerror": ReservationState.ERROR,
    "error": ReservationState.ERROR,
}

_COULD_RUN_AT = re.compile(r"could run at (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)")
_VLAN_TYPES = ("kavlan-local", "kavlan", "kavlan-global")


def oar_date(moment: datetime) -> str:
    """A UTC instant as OAR wants a reservation date: Europe/Paris wall clock."""
    return in_zone(moment, OAR_ZONE).strftime("%Y-%m-%d %H:%M:%S")


def retry_at(message: str) -> datetime | None:
    """The UTC instant of OAR's "This reservation could run at ..." (Paris time), if any."""
    match = _COULD_RUN_AT.search(message)
    if match is None:
        return None
    return to_utc(datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S"), OAR_ZONE)


_JOB_TYPE = re.compile(r"^[A-Za-z0-9_=.*-]+$")


def job_types(request: ReservationRequest, options: Mapping[str, str], exotic: bool) -> list[str]:
    """OAR job types: `deploy` for an image, those of `-o types=`, `exotic` for a cluster the
    Reference API marks exotic (OAR gives its nodes only to such jobs)."""
    asked = [t.strip() for t in options.get("types", "").split(",") if t.strip()]
    bad = [t for t in asked if not _JOB_TYPE.match(t)]
    if bad:
        raise ValueError(f"-o types={options['types']}: {', '.join(bad)} is not an OAR job type"
                         " (comma-separated names such as night,allow_classic_ssh)")
    types = (["deploy"] if request.image else []) + asked
    if exotic:
        types.append("exotic")
    return list(dict.fromkeys(types))


def job_body(
    request: ReservationRequest, options: Mapping[str, str], exotic: bool = False
) -> dict[str, Any]:
    """The POST /sites/{site}/jobs body for `request` (`options` are the `-o` values, `exotic`
    whether the cluster asked is exotic)."""
    selector = f"{{cluster='{options['cluster']}'}}/" if options.get("cluster") else ""
    resources = f"{selector}nodes={request.nodes}"
    if request.extra_nics or options.get("vlan"):
        vlan_type = options.get("vlan") or "kavlan"
        if vlan_type not in _VLAN_TYPES:
            raise ValueError(f"-o vlan={vlan_type} is not one of {', '.join(_VLAN_TYPES)}")
        resources += f"+{{type='{vlan_type}'}}/vlan=1"
    body: dict[str, Any] = {
        "name": request.name,
        "resources": f"{resources},walltime={format_walltime(request.duration)}",
        "command": PASSIVE_COMMAND,
        "types": job_types(request, options, exotic),
    }
    if request.start is not None:
        body["reservation"] = oar_date(request.start)
    for key in ("queue", "project", "properties"):
        if options.get(key):
            body[key] = options[key]
    return body


def reservation(job: Mapping[str, Any], site: str) -> Reservation:
    """The omnibed view of an OAR job payload, in an item or a listing alike.

    g5k-api gives OAR's times: `started_at` (0 until the job starts; an advance
    reservation's start once OAR accepted it), `scheduled_at` (the scheduler's predicted
    start, absent until its first pass has placed the job: an advance reservation's start,
    or when a queued job's nodes will be free) and `stopped_at` (absent until it ends).
    The start is the first known of these, else now: a job not placed yet starts no
    earlier (never its submission, which would make a job that waits longer than its
    walltime look over). The end is `stopped_at`, else start + walltime."""
    known = job.get("started_at") or job.get("scheduled_at")
    start = from_epoch(known) if known else utcnow()
    stopped = job.get("stopped_at")
    return Reservation(
        provider=PROVIDER,
        id=str(job["uid"]),
        name=job.get("name") or "",
        start=start,
        end=from_epoch(stopped) if stopped
        else start + timedelta(seconds=int(job.get("walltime") or 0)),
        state=STATE_MAP.get(str(job.get("state", "")).lower(), ReservationState.UNKNOWN),
        site=site,
        extra={
            "oar_state": job.get("state"),
            "types": tuple(job.get("types") or ()),
            "assigned_nodes": tuple(job.get("assigned_nodes") or ()),
            "vlans": tuple(str(v) for v in (job.get("resources_by_type") or {}).get("vlans", ())),
            "message": job.get("message") or "",
        },
    )


def split_fqdn(fqdn: str) -> tuple[str, str, str]:
    """`gros-1.nancy.grid5000.fr` -> (`gros-1`, `gros`, `nancy`)."""
    host, site = fqdn.split(".")[:2]
    return host, host.rsplit("-", 1)[0], site


def usable_adapters(record: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Adapters an experiment may use: mountable Ethernet, not management (enoslib's filter).

    InfiniBand, Omni-Path and FPGA adapters are left out, even when mounted next to the
    Ethernet one: the emulator bridges and tunnels over Ethernet only."""
    return [
        a
        for a in record.get("network_adapters", ())
        if a.get("mountable") and a.get("interface") == "Ethernet" and not a.get("management")
    ]


def extra_adapters(record: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The usable adapters that are not the mounted (control) one, in reference order."""
    return [a for a in usable_adapters(record) if not a.get("mounted")]


def vlan_address(fqdn: str, device: str) -> str:
    """The name the KaVLAN API wants for a secondary NIC: `gros-1-eth1.nancy.grid5000.fr`."""
    host, rest = fqdn.split(".", 1)
    return f"{host}-{device}.{rest}"


def nics(
    record: Mapping[str, Any], in_vlan: Iterable[str] = (), vlan: str | None = None
) -> list[Nic]:
    """The node's NICs from its Reference API record.

    `in_vlan` lists the devices (`eth1`) put in the job's KaVLAN `vlan`: there frames from
    foreign MACs pass (full L2 isolation); elsewhere it is the shared production network,
    left UNKNOWN for the runtime probe. Only the mounted adapter and those in the KaVLAN
    have an address: the reference lists addresses for adapters a fresh node does not
    configure.
    """
    moved = set(in_vlan)
    result = []
    for adapter in usable_adapters(record):
        device = adapter.get("device", "")
        inside = device in moved and vlan is not None
        if adapter.get("mounted"):
            role = NicRole.CONTROL
        else:
            role = NicRole.EXTRA if inside else NicRole.EXPERIMENT
        if inside:
            address = (record.get("kavlan") or {}).get(device, {}).get(f"kavlan-{vlan}")
        elif adapter.get("mounted"):
            address = adapter.get("ip")
        else:
            address = None
        rate = adapter.get("rate")
        result.append(
            Nic(
                name=adapter.get("name") or device,
                mac=adapter.get("mac", ""),
                role=role,
                addresses=(address,) if address else (),
                rate_mbps=int(rate) // 1_000_000 if rate else None,
                foreign_mac=Tri.YES if inside else Tri.UNKNOWN,
                sources={
                    "name": S.API,
                    "mac": S.API,
                    "role": S.API,
                    "rate_mbps": S.API,
                    "foreign_mac": S.TABLE if inside else S.PROBE,
                },
            )
        )
    return result


def vlan_failures(answer: Mapping[str, Any]) -> dict[str, str]:
    """Addresses the KaVLAN API did not move (`{address: {"status", "message"}}` answer)."""
    failures = {}
    for address, outcome in answer.items():
        if isinstance(outcome, Mapping) and outcome.get("status") not in ("success", "unchanged"):
            failures[address] = str(outcome.get("message") or outcome.get("status"))
    return failures


def deployment_outcome(result: Mapping[str, Any]) -> tuple[list[str], dict[str, str]]:
    """(OK nodes, {KO node: why}) from a finished deployment's `result`."""
    ok, ko = [], {}
    for node, outcome in sorted(result.items()):
        if outcome.get("state") == "OK":
            ok.append(node)
        else:
            ko[node] = str(outcome.get("error") or outcome.get("state") or "no result")
    return ok, ko
