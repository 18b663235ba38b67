"""What a pnode lacks for a state, found without changing anything on it.

Each kernel feature is tried for real in a throwaway network namespace that lives only as
long as a short-lived thread (no mount, nothing left behind): a link of that kind is created,
a qdisc of that kind is put on the namespace's loopback. The kernel autoloads modules on
demand, so "missing" means the feature cannot be had. The state's vnodes must also fit the
pnode: about VNODE_MEMORY_KIB of MemAvailable each, and no more network namespaces than
the kernel allows. Python 3.9 compatible.
"""

from __future__ import annotations

import os
import struct
import sys
import threading

from pyroute2 import IPRoute

from . import MIN_PYTHON, nsutil
from . import nlbatch as nl
from .netlink_apply import control_nics
from .shaping import tbf_options
from .state import PnodeState

# feature -> (what it is for, how to get it)
FEATURES = {
    "veth": ("virtual node interfaces", "CONFIG_VETH"),
    "bridge": ("virtual networks", "CONFIG_BRIDGE"),
    "vxlan": ("the VXLAN overlay between pnodes", "CONFIG_VXLAN"),
    "ifb": ("ingress shaping", "CONFIG_IFB"),
    "sch_tbf": ("rate limits", "CONFIG_NET_SCH_TBF"),
    "sch_htb": ("rate limits", "CONFIG_NET_SCH_HTB"),
    "sch_netem": ("delay/jitter/loss", "CONFIG_NET_SCH_NETEM"),
}
VNODE_MEMORY_KIB = 340  # kernel and agent memory one vnode takes, measured: 250 to 340 KiB
MEMINFO = "/proc/meminfo"
MAX_NET_NAMESPACES = "/proc/sys/user/max_net_namespaces"


def _read_number(path: str, key: str = "") -> int | None:
    """The number in `path` (after `key:` when given), None when the kernel does not say."""
    try:
        with open(path) as file:
            for line in file:
                name, _, value = line.rpartition(":") if key else ("", "", line)
                if name == key:
                    return int(value.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return None


def capacity_problems(vnodes: int) -> list[str]:
    """Why `vnodes` vnodes do not fit this pnode's memory or namespace limit; [] if they do."""
    problems = []
    available = _read_number(MEMINFO, "MemAvailable")
    needed = vnodes * VNODE_MEMORY_KIB
    if available is not None and needed > available:
        problems.append(
            f"{vnodes} vnodes need about {needed >> 10} MiB of memory ({VNODE_MEMORY_KIB} KiB "
            f"each) but only {available >> 10} MiB is available: put fewer vnodes on each "
            "pnode or reserve more pnodes"
        )
    allowed = _read_number(MAX_NET_NAMESPACES)
    if allowed is not None and vnodes > allowed:
        problems.append(
            f"{vnodes} vnodes need as many network namespaces but this kernel allows "
            f"{allowed} ({MAX_NET_NAMESPACES}): put fewer vnodes on each pnode"
        )
    return problems


def _feature_request(feature: str) -> tuple[int, bytes]:
    if feature == "vxlan":
        return nl.RTM_NEWLINK, nl.link_body("pf0", kind="vxlan", info_data=nl.nla_u32(1, 42))
    if feature in ("veth", "bridge", "ifb"):
        return nl.RTM_NEWLINK, nl.link_body("pf0", kind=feature)
    kind = feature[len("sch_") :]
    if kind == "tbf":
        options = tbf_options(10**6, 1500)
    elif kind == "htb":
        options = nl.nla(2, struct.pack("=IIIII", 3, 10, 0, 0, 0))  # TCA_HTB_INIT
    else:
        options = struct.pack("=IIIIII", 0, 1000, 0, 0, 0, 0)  # tc_netem_qopt
    return nl.RTM_NEWQDISC, nl.qdisc_body(1, kind, options)


def kernel_missing(features: set[str]) -> dict[str, str]:
    """{feature: why it failed} for those of `features` this kernel cannot do."""
    missing: dict[str, str] = {}
    errors: list[BaseException] = []

    def probe() -> None:  # runs in its own thread: its namespace dies with it
        try:
            nsutil.unshare_net()
            batch = nl.Batch()
        except OSError as exc:
            errors.append(exc)
            return
        try:
            for feature in sorted(features):
                msg_type, body = _feature_request(feature)
                batch.add(msg_type, nl.CREATE, body, feature)
                try:
                    batch.flush()
                except nl.NetlinkFailure as exc:
                    missing[feature] = str(exc)
                if feature not in missing:  # undo, so the next probe starts clean
                    undo = nl.RTM_DELLINK if msg_type == nl.RTM_NEWLINK else nl.RTM_DELQDISC
                    batch.add(undo, nl.SET, body, f"undo {feature}")
                    batch.flush()
        finally:
            batch.close()

    thread = threading.Thread(target=probe, name="omnibed-preflight")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return missing


def explain(feature: str) -> str:
    use, config = FEATURES.get(feature, (feature, "the kernel option for " + feature))
    return (
        f"{feature} (needed for {use}) is not available in this kernel: "
        f"modprobe {feature} or use a kernel with {config}"
    )


def preflight(state: PnodeState) -> list[str]:
    """Everything that stops `state` from being applied here, as sentences; [] when none."""
    problems: list[str] = []
    if os.geteuid() != 0:
        return [f"the agent runs as uid {os.geteuid()}, not root: log in as root or use sudo"]
    if sys.version_info < MIN_PYTHON:
        oldest = "{}.{}".format(*MIN_PYTHON)
        problems.append(f"python {sys.version.split()[0]} is older than {oldest}")
    problems += capacity_problems(len(state.namespaces))
    problems += [explain(f) for f in sorted(kernel_missing(state.kernel_needs()))]
    try:
        os.makedirs(nsutil.NETNS_RUN_DIR, exist_ok=True)
    except OSError as exc:
        problems.append(f"cannot create {nsutil.NETNS_RUN_DIR}: {exc.strerror}")
    with IPRoute() as ipr:
        names = {m.get("IFLA_IFNAME") for m in ipr.link("dump")}
        control = control_nics(ipr)
    for bridge in state.bridges:
        if bridge.uplink and bridge.uplink not in names:
            problems.append(f"uplink {bridge.uplink} of {bridge.name} does not exist")
        elif bridge.uplink in control:
            problems.append(
                f"uplink {bridge.uplink} of {bridge.name} {control[bridge.uplink]}: "
                "refusing to bridge it; use an extra or experiment NIC"
            )
    for vx in state.vxlans:
        if vx.dev not in names:
            problems.append(f"underlay NIC {vx.dev} of {vx.name} does not exist")
    return problems
