"""The shaping requests the agent sends, decoded independently of omnibed's encoder.

This kernel has no sch_netem, so netem can only be checked as bytes: each request is read
back the way the kernel reads it (layouts of include/uapi/linux/pkt_sched.h, the parsing
of net/sched/sch_netem.c and sch_tbf.c, written out below), cross-read with pyroute2's own
tcmsg decoder, and compared with what iproute2's `tc` sends for the same link (captured
with strace: the kernel refuses it, the bytes still leave). TBF is in this kernel, so the
agent's TBF and tc's TBF are both installed in a throwaway namespace and read back.
"""

from __future__ import annotations

import errno
import json
import math
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import IPRoute
from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST
from pyroute2.netlink.rtnl import RTM_NEWQDISC, TC_H_ROOT
from pyroute2.netlink.rtnl.tcmsg import tcmsg

from omnibed.emulator.agent import nlbatch as nl
from omnibed.emulator.agent.preflight import kernel_missing
from omnibed.emulator.agent.shaping import netem_limit, qdisc_request, tbf_burst
from omnibed.emulator.agent.state import Shaping
from omnibed.emulator.model import LinkSpec
from tests.emulator.support import in_fresh_netns

U32 = 2**32 - 1
TICK_NS = 64  # PSCHED_SHIFT 6: the kernel's psched tick (/proc/net/psched: 000003e8 00000040)
HZ = 250  # CONFIG_HZ of the kernels omnibed targets (tc-tbf(8): burst >= rate / HZ)
ETH_HLEN = 14

# include/uapi/linux/netlink.h, rtnetlink.h, pkt_sched.h
NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
TCMSG = struct.Struct("=BBHiIII")  # family, pad1, pad2, ifindex, handle, parent, info
TCA_KIND, TCA_OPTIONS = 1, 2
RATESPEC = struct.Struct("=BBHhHI")  # cell_log, linklayer, overhead, cell_align, mpu, rate B/s
TC_LINKLAYER_ETHERNET = 1
TBF_QOPT = struct.Struct("=12s12sIII")  # rate, peakrate, limit (bytes), buffer, mtu (ticks)
TCA_TBF_PARMS, TCA_TBF_RATE64, TCA_TBF_BURST = 1, 4, 6
NETEM_QOPT = struct.Struct("=IIIIII")  # latency, limit (packets), loss, gap, duplicate, jitter
NETEM_RATE = struct.Struct("=IiIi")  # rate B/s, packet_overhead, cell_size, cell_overhead
TCA_NETEM_RATE, TCA_NETEM_RATE64, TCA_NETEM_LATENCY64, TCA_NETEM_JITTER64 = 6, 8, 10, 11
# attribute -> payload size the kernel's netlink policy accepts (netem_policy, tbf_policy)
NETEM_POLICY = {TCA_NETEM_RATE: NETEM_RATE.size, TCA_NETEM_RATE64: 8, TCA_NETEM_LATENCY64: 8,
                TCA_NETEM_JITTER64: 8}
TBF_POLICY = {TCA_TBF_PARMS: TBF_QOPT.size, TCA_TBF_RATE64: 8, TCA_TBF_BURST: 4}

REPLACE_FLAGS = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE  # `tc qdisc replace`
ROOT_HANDLE = 0x10000  # "1:"


# --- an independent reader: what the kernel takes from the bytes ----------------------------


def rtattrs(data: bytes, policy: dict[int, int] | None = None) -> dict[int, bytes]:
    """Attributes by type; every attribute must fit and the padding must add up; with a
    `policy`, only its attributes, each of its size."""
    found: dict[int, bytes] = {}
    offset = 0
    while offset < len(data):
        size, kind = struct.unpack_from("=HH", data, offset)
        assert 4 <= size <= len(data) - offset, f"attribute {kind} overruns the message"
        assert kind & 0x3FFF not in found, f"attribute {kind} twice"
        found[kind & 0x3FFF] = data[offset + 4 : offset + size]
        offset += (size + 3) & ~3
    assert offset == len(data)
    if policy is not None:
        assert {kind: len(value) for kind, value in found.items()} == {
            kind: policy[kind] for kind in found
        }, f"attributes {sorted(found)} against the policy {policy}"
    return found


def read_request(data: bytes) -> dict[str, Any]:
    """Header, tcmsg, kind and raw options of one RTM_NEWQDISC request."""
    length, msg_type, flags, _seq, _pid = NLMSGHDR.unpack_from(data)
    assert length == len(data)
    family, _, _, ifindex, handle, parent, info = TCMSG.unpack_from(data, NLMSGHDR.size)
    attrs = rtattrs(data[NLMSGHDR.size + TCMSG.size :])
    kind = attrs[TCA_KIND]
    assert kind.endswith(b"\0")
    return {
        "type": msg_type, "flags": flags, "family": family, "ifindex": ifindex,
        "handle": handle, "parent": parent, "info": info,
        "kind": kind[:-1].decode(), "options": attrs[TCA_OPTIONS],
    }


def netem_view(options: bytes) -> dict[str, Any]:
    """sch_netem.c netem_change(): legacy tick fields, overridden by the 64-bit ns ones."""
    latency, limit, loss, gap, duplicate, jitter = NETEM_QOPT.unpack_from(options)
    attrs = rtattrs(options[NETEM_QOPT.size :], NETEM_POLICY)  # after NLA_ALIGN(sizeof qopt)
    view = {
        "latency_ns": latency * TICK_NS, "jitter_ns": jitter * TICK_NS, "limit": limit,
        "loss": loss, "gap": gap, "duplicate": duplicate, "rate": 0,
        "legacy_latency": latency, "legacy_jitter": jitter,
    }
    if TCA_NETEM_LATENCY64 in attrs:
        view["latency_ns"] = struct.unpack("=q", attrs[TCA_NETEM_LATENCY64])[0]
    if TCA_NETEM_JITTER64 in attrs:
        view["jitter_ns"] = struct.unpack("=q", attrs[TCA_NETEM_JITTER64])[0]
    if TCA_NETEM_RATE in attrs:
        view["rate"], view["packet_overhead"], _, _ = NETEM_RATE.unpack(attrs[TCA_NETEM_RATE])
    if TCA_NETEM_RATE64 in attrs:
        view["rate"] = max(view["rate"], struct.unpack("=Q", attrs[TCA_NETEM_RATE64])[0])
    view["attrs"] = sorted(attrs)
    return view


def tbf_view(options: bytes) -> dict[str, Any]:
    """sch_tbf.c tbf_change(): rate = max(u32 rate, RATE64), bucket = TCA_TBF_BURST bytes."""
    attrs = rtattrs(options, TBF_POLICY)
    rate_spec, peak_spec, limit, buffer, mtu = TBF_QOPT.unpack(attrs[TCA_TBF_PARMS])
    _, linklayer, overhead, _, mpu, rate = RATESPEC.unpack(rate_spec)
    if TCA_TBF_RATE64 in attrs:
        rate = max(rate, struct.unpack("=Q", attrs[TCA_TBF_RATE64])[0])
    burst = struct.unpack("=I", attrs[TCA_TBF_BURST])[0] if TCA_TBF_BURST in attrs else None
    return {
        "rate": rate, "linklayer": linklayer, "overhead": overhead, "mpu": mpu,
        "peakrate": RATESPEC.unpack(peak_spec)[5], "limit": limit, "buffer_ticks": buffer,
        "mtu_ticks": mtu, "burst": burst, "rate64_attr": TCA_TBF_RATE64 in attrs,
    }


def agent_request(shaping: Shaping, index: int = 7, mtu: int = 1500) -> bytes:
    """The request as netlink_apply queues it: RTM_NEWQDISC with REPLACE flags."""
    batch = nl.Batch()
    try:
        batch.add(nl.RTM_NEWQDISC, nl.REPLACE, qdisc_request(index, shaping, mtu), "shaping")
        return batch.queue[0][1]
    finally:
        batch.close()


def link(**spec: Any) -> Shaping:
    """Shaping parsed from the platform file's strings, as the planner gets it."""
    return LinkSpec(**spec).shaping()


# --- the message header -------------------------------------------------------------------


@pytest.mark.parametrize("spec", [{"rate": "10mbit"}, {"rate": "10mbit", "delay": "10ms"}])
def test_header_is_a_root_qdisc_replace_on_the_interface(spec: dict[str, str]) -> None:
    data = agent_request(link(**spec), index=42)
    msg = tcmsg(data)  # pyroute2's decoder, as a second reader
    msg.decode()
    assert msg["header"]["type"] == RTM_NEWQDISC
    assert msg["header"]["flags"] == REPLACE_FLAGS
    assert (msg["index"], msg["parent"], msg["handle"]) == (42, TC_H_ROOT, ROOT_HANDLE)
    assert msg.get_attr("TCA_KIND") == ("netem" if "delay" in spec else "tbf")
    mine = read_request(data)
    assert (mine["type"], mine["flags"], mine["ifindex"]) == (RTM_NEWQDISC, REPLACE_FLAGS, 42)
    assert (mine["family"], mine["parent"], mine["handle"], mine["info"]) == (
        0, TC_H_ROOT, ROOT_HANDLE, 0,
    )


def test_rate_alone_is_tbf_and_any_of_delay_jitter_loss_is_netem() -> None:
    assert read_request(agent_request(link(rate="1gbit")))["kind"] == "tbf"
    for spec in ({"delay": "1ms"}, {"jitter": "1ms"}, {"loss": "0.1%"}, {"loss": 0}):
        assert read_request(agent_request(link(rate="1gbit", **spec)))["kind"] == "netem", spec


# --- netem: delay, jitter, loss, limit, rate ----------------------------------------------


@pytest.mark.parametrize(
    ("delay", "jitter", "delay_ns", "jitter_ns"),
    [
        ("10ms", "2ms", 10_000_000, 2_000_000),
        ("30us", "0.03ms", 30_000, 30_000),  # not a multiple of 64 ns, nor exact in binary
        ("0.29ms", None, 290_000, 0),
        ("1s", "100ms", 10**9, 10**8),
        ("300s", None, 300 * 10**9, 0),  # more ticks than a u32 holds
    ],
)
def test_netem_delay_and_jitter_units(
    delay: str, jitter: str | None, delay_ns: int, jitter_ns: int
) -> None:
    options = read_request(agent_request(link(delay=delay, jitter=jitter)))["options"]
    view = netem_view(options)
    assert (view["latency_ns"], view["jitter_ns"]) == (delay_ns, jitter_ns)
    # kernels before TCA_NETEM_LATENCY64 (4.15) read the u32 fields, in 64 ns ticks
    assert view["legacy_latency"] == min(delay_ns // TICK_NS, U32)
    assert view["legacy_jitter"] == min(jitter_ns // TICK_NS, U32)
    assert {TCA_NETEM_LATENCY64, TCA_NETEM_JITTER64} <= set(view["attrs"])
    decoded = tcmsg(agent_request(link(delay=delay, jitter=jitter)))
    decoded.decode()
    assert decoded.get_attr("TCA_OPTIONS")["delay"] == view["legacy_latency"]
    assert decoded.get_attr("TCA_OPTIONS")["jitter"] == view["legacy_jitter"]


@pytest.mark.parametrize(
    ("loss", "probability"),
    [
        ("100%", U32),  # the kernel drops when loss >= a random u32: ~0U is always
        ("50%", 2**31),  # rint(0.5 * (2^32 - 1)), as tc computes it
        ("1%", 42_949_673),  # rint(42949672.95)
        ("0.001%", 42_950),
        (0, 0),
    ],
)
def test_netem_loss_is_a_u32_probability(loss: str | int, probability: int) -> None:
    view = netem_view(read_request(agent_request(link(loss=loss)))["options"])
    assert view["loss"] == probability
    assert (view["gap"], view["duplicate"], view["latency_ns"]) == (0, 0, 0)


@pytest.mark.parametrize(
    ("spec", "mtu", "packets"),
    [
        # twice the bandwidth-delay product in MTU-sized packets, delay + 3 jitter, >= 1000
        ({"rate": "1gbit", "delay": "100ms"}, 1500, 2 * math.ceil(125e6 * 0.1 / 1500)),
        (
            {"rate": "1gbit", "delay": "100ms", "jitter": "10ms"},
            1500,
            2 * math.ceil(125e6 * 0.13 / 1500),
        ),
        ({"rate": "10gbit", "delay": "20ms"}, 9000, 2 * math.ceil(1.25e9 * 0.02 / 9000)),
        ({"delay": "50ms"}, 1500, 2 * math.ceil(125e6 * 0.05 / 1500)),  # no rate: 1 Gbit/s
        ({"rate": "10mbit", "delay": "10ms"}, 1500, 1000),  # 18 packets: netem's default
        ({"loss": "1%"}, 1500, 1000),
        ({"rate": "1tbit", "delay": "1000s"}, 1500, U32),  # a u32 field: saturates
    ],
)
def test_netem_limit_is_the_bandwidth_delay_product(
    spec: dict[str, str], mtu: int, packets: int
) -> None:
    shaping = link(**spec)
    assert netem_limit(shaping, mtu) == packets
    view = netem_view(read_request(agent_request(shaping, mtu=mtu))["options"])
    assert view["limit"] == packets


@pytest.mark.parametrize(
    ("rate", "bytes_per_s", "rate64"),
    [
        ("10mbit", 1_250_000, False),
        ("10gbit", 1_250_000_000, False),  # tc_netem_rate.rate is bytes/s: fits a u32
        (f"{8 * U32}bit", U32, False),
        (f"{8 * (U32 + 1)}bit", U32 + 1, True),  # the first rate past a u32 of bytes/s
        ("40gbit", 5_000_000_000, True),
    ],
)
def test_netem_rate_in_bytes_and_64_bit_past_u32(
    rate: str, bytes_per_s: int, rate64: bool
) -> None:
    view = netem_view(read_request(agent_request(link(rate=rate, delay="1ms")))["options"])
    assert view["rate"] == bytes_per_s
    assert view["packet_overhead"] == 0
    assert (TCA_NETEM_RATE64 in view["attrs"]) is rate64
    decoded = tcmsg(agent_request(link(rate=rate, delay="1ms")))
    decoded.decode()
    assert decoded.get_nested("TCA_OPTIONS", "TCA_NETEM_RATE")["rate"] == min(bytes_per_s, U32)


def test_netem_without_rate_has_no_rate_attribute() -> None:
    view = netem_view(read_request(agent_request(link(delay="5ms")))["options"])
    assert view["rate"] == 0
    assert TCA_NETEM_RATE not in view["attrs"] and TCA_NETEM_RATE64 not in view["attrs"]


# --- TBF ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate_bps", "mtu", "burst"),
    [
        (10**7, 1500, 10**7 // 8 // HZ),  # 5000 B: a tick's worth (>= 2 frames of 1514)
        (10**10, 1500, 10**10 // 8 // HZ),  # 5 MB at 10 Gbit/s
        (10**6, 1500, 2 * (1500 + ETH_HLEN)),  # 500 B a tick: two full frames instead
        (10**7, 9000, 2 * (9000 + ETH_HLEN)),  # jumbo frames
        (4 * 10**10, 1500, 4 * 10**10 // 8 // HZ),
    ],
)
def test_tbf_rate_burst_and_limit(rate_bps: int, mtu: int, burst: int) -> None:
    view = tbf_view(read_request(agent_request(Shaping(rate_bps=rate_bps), mtu=mtu))["options"])
    rate = rate_bps // 8
    assert view["rate"] == rate
    assert view["rate64_attr"] is (rate > U32)  # tc_ratespec.rate is bytes/s, a u32
    assert (view["linklayer"], view["overhead"], view["mpu"]) == (TC_LINKLAYER_ETHERNET, 0, 0)
    assert view["peakrate"] == 0 and view["mtu_ticks"] == 0
    assert view["burst"] == burst == tbf_burst(rate_bps, mtu)
    assert view["burst"] >= mtu + ETH_HLEN  # the kernel warns below one frame (psched_mtu)
    # tc's `latency 50ms`: the queue holds 50 ms at the rate, plus the bucket
    assert view["limit"] == rate * 50 // 1000 + burst
    # buffer: the bucket's drain time in 64 ns ticks (read when TCA_TBF_BURST is absent)
    assert view["buffer_ticks"] == burst * 10**9 // rate // TICK_NS
    parms = tcmsg(agent_request(Shaping(rate_bps=rate_bps), mtu=mtu))
    parms.decode()
    legacy = parms.get_nested("TCA_OPTIONS", "TCA_TBF_PARMS")
    assert (legacy["rate"], legacy["limit"]) == (min(rate, U32), view["limit"])


def test_tbf_fields_saturate_instead_of_overflowing() -> None:
    view = tbf_view(read_request(agent_request(link(rate="1tbit")))["options"])
    assert view["rate"] == 10**12 // 8
    assert view["limit"] == U32  # 6.75 GB: more than the u32 byte limit holds
    assert view["burst"] == 10**12 // 8 // HZ


# --- the same links as iproute2 builds them -----------------------------------------------


def _run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def tc_sent(tmp_path: Path, *tc_args: str) -> bytes:
    """The RTM_NEWQDISC request `tc` sends (in a fresh namespace, whatever the kernel says)."""
    assert shutil.which("strace"), "strace is missing: scripts/setup installs it"
    trace = tmp_path / "tc.strace"
    subprocess.run(
        ["unshare", "-n", "strace", "-qq", "-o", str(trace), "-e", "trace=sendmsg",
         "-e", "write=all", "tc", *tc_args],
        check=False, capture_output=True,
    )
    messages: list[bytes] = []
    for line in trace.read_text().splitlines():
        if "sendmsg(" in line:
            messages.append(b"")
        elif line.startswith(" | ") and messages:
            messages[-1] += bytes.fromhex(line[10:59])
    requests = [m for m in messages if NLMSGHDR.unpack_from(m)[1] == RTM_NEWQDISC]
    assert len(requests) == 1, f"tc sent {len(messages)} messages: {trace.read_text()}"
    return requests[0]


NETEM_CASES = [
    {"delay": "10ms", "jitter": "2ms", "loss": "1%", "rate": "10mbit"},
    {"delay": "30us", "loss": "100%"},
    {"delay": "1ms", "jitter": "500us", "loss": "0.001%", "rate": "40gbit"},
    {"loss": "50%"},
]


@pytest.mark.root
@pytest.mark.parametrize("spec", NETEM_CASES, ids=lambda s: "-".join(s.values()))
def test_netem_request_matches_what_tc_sends(tmp_path: Path, spec: dict[str, str]) -> None:
    shaping = link(**spec)
    argv = ["qdisc", "replace", "dev", "lo", "root", "handle", "1:", "netem"]
    if "delay" in spec:
        argv += ["delay", spec["delay"]] + ([spec["jitter"]] if "jitter" in spec else [])
    argv += ["loss", spec["loss"]]
    if "rate" in spec:
        argv += ["rate", spec["rate"]]
    argv += ["limit", str(netem_limit(shaping, 1500))]
    theirs = read_request(tc_sent(tmp_path, *argv))
    ours = read_request(agent_request(shaping, index=1))  # lo is 1 in a new namespace
    header = ("type", "flags", "family", "ifindex", "handle", "parent", "info", "kind")
    assert {k: ours[k] for k in header} == {k: theirs[k] for k in header}
    mine, tcs = netem_view(ours["options"]), netem_view(theirs["options"])
    same = ("legacy_latency", "legacy_jitter", "limit", "loss", "gap", "duplicate", "rate")
    assert {k: mine[k] for k in same} == {k: tcs[k] for k in same}
    # tc 6.1 sends ticks only (64 ns steps); the agent also sends the exact nanoseconds
    for key in ("latency_ns", "jitter_ns"):
        assert 0 <= mine[key] - tcs[key] < TICK_NS


@pytest.mark.root
@pytest.mark.parametrize("rate_bps", [10**7, 10**10, 4 * 10**10])
def test_tbf_in_the_kernel_is_what_tc_builds(rate_bps: int) -> None:
    burst = tbf_burst(rate_bps, 1500)

    def build() -> tuple[list[Any], list[dict[str, Any]]]:
        _run("ip", "link", "add", "shp0", "type", "veth", "peer", "name", "shp1")
        _run("tc", "qdisc", "replace", "dev", "shp0", "root", "handle", "1:", "tbf",
             "rate", f"{rate_bps}bit", "burst", str(burst), "latency", "50ms")
        with IPRoute() as ipr:
            index = ipr.link_lookup(ifname="shp1")[0]
            batch = nl.Batch()
            try:  # twice: REPLACE makes it idempotent
                for _ in range(2):
                    body = qdisc_request(index, Shaping(rate_bps=rate_bps), 1500)
                    batch.add(nl.RTM_NEWQDISC, nl.REPLACE, body, "tbf on shp1")
                    batch.flush()
            finally:
                batch.close()
            dumps = []
            for name in ("shp0", "shp1"):
                qdiscs = ipr.get_qdiscs(index=ipr.link_lookup(ifname=name)[0])
                roots = [q for q in qdiscs if q["parent"] == TC_H_ROOT]
                assert len(roots) == 1
                dumps.append(
                    (roots[0]["handle"], roots[0].get_attr("TCA_KIND"),
                     roots[0].get_nested("TCA_OPTIONS", "TCA_TBF_PARMS"))
                )
        shown = [json.loads(_run("tc", "-j", "-d", "qdisc", "show", "dev", name))
                 for name in ("shp0", "shp1")]
        return dumps, shown

    (by_tc, by_agent), (tc_shows_tc, tc_shows_agent) = in_fresh_netns(build)
    assert by_agent[:2] == (ROOT_HANDLE, "tbf")
    assert by_agent == by_tc
    assert tc_shows_agent == tc_shows_tc
    assert tc_shows_agent[0]["options"]["rate"] == rate_bps // 8
    assert by_agent[2]["rate"] == min(rate_bps // 8, U32)


@pytest.mark.root
def test_netem_request_passes_every_check_but_the_missing_kind() -> None:
    if Path("/sys/module/sch_netem").exists():
        pytest.skip("this kernel has sch_netem: the refusal cannot be shown here")

    def send() -> nl.NetlinkFailure:
        batch = nl.Batch()
        try:
            batch.add(nl.RTM_NEWQDISC, nl.REPLACE,
                      qdisc_request(1, link(rate="10mbit", delay="10ms", loss="1%"), 1500),
                      "netem on lo")
            with pytest.raises(nl.NetlinkFailure) as refused:
                batch.flush()
            return refused.value
        finally:
            batch.close()

    failure = in_fresh_netns(send)
    # the device, parent and handle were accepted: only the qdisc kind lookup failed
    assert failure.errno == errno.ENOENT
    assert "qdisc kind is unknown" in str(failure)
    missing = kernel_missing({"sch_netem", "sch_tbf"})
    assert set(missing) == {"sch_netem"}
