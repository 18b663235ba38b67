"""Link shaping requests: TBF for rate alone, netem (with its own rate) for delay/jitter/loss.

Also turns GSO/TSO off on shaped interfaces so qdiscs see wire-sized packets (SIOCETHTOOL
ioctl on any socket of the interface's namespace). Python 3.9 compatible; stdlib only.
"""

from __future__ import annotations

import ctypes
import fcntl
import math
import struct

from . import nlbatch as nl
from .state import Shaping

HZ = 250  # assumed timer frequency: a TBF bucket must hold at least rate/HZ
TBF_LATENCY_S = 0.05  # how long a packet may wait in TBF before being dropped
ASSUMED_LINE_BPS = 10**9  # for netem's queue when no rate is given
TC_LINKLAYER_ETHERNET = 1
TCA_TBF_PARMS, TCA_TBF_RATE64, TCA_TBF_BURST = 1, 4, 6
TCA_NETEM_RATE, TCA_NETEM_RATE64, TCA_NETEM_LATENCY64, TCA_NETEM_JITTER64 = 6, 8, 10, 11
U32 = 0xFFFFFFFF

SIOCETHTOOL = 0x8946
ETHTOOL_STSO, ETHTOOL_SGSO = 0x1F, 0x24


def _ns(ms: float | None) -> int:
    """Nanoseconds from milliseconds, rounded (truncating made 0.03 ms 29999 ns)."""
    return round((ms or 0) * 1e6)


def _ticks(ns: int) -> int:
    """Kernel psched ticks (64 ns), saturated to the u32 fields that hold them."""
    return min(ns >> 6, U32)


def _ratespec(rate_bytes: int) -> bytes:
    # cell_log, linklayer, overhead, cell_align, mpu, rate (bytes/s, u32)
    return struct.pack("=BBHhHI", 0, TC_LINKLAYER_ETHERNET, 0, 0, 0, min(rate_bytes, U32))


def tbf_burst(rate_bps: int, mtu: int) -> int:
    """Bucket size in bytes: a timer tick's worth of traffic, never under two frames."""
    return min(max(rate_bps // 8 // HZ, 2 * (mtu + 14)), U32)


def tbf_options(rate_bps: int, mtu: int) -> bytes:
    rate = rate_bps // 8
    burst = tbf_burst(rate_bps, mtu)
    limit = min(int(rate * TBF_LATENCY_S) + burst, U32)
    buffer = _ticks(round(burst * 1e9 / rate))
    qopt = _ratespec(rate) + _ratespec(0) + struct.pack("=III", limit, buffer, 0)
    opts = nl.nla(TCA_TBF_PARMS, qopt) + nl.nla_u32(TCA_TBF_BURST, burst)
    if rate > U32:
        opts += nl.nla(TCA_TBF_RATE64, struct.pack("=Q", rate))
    return opts


def netem_limit(shaping: Shaping, mtu: int) -> int:
    """Queue length in packets: twice the bandwidth-delay product (delay + 3 jitter, in
    MTU-sized packets), at least netem's 1000, at most a u32."""
    rate = shaping.rate_bps or ASSUMED_LINE_BPS
    delay_s = ((shaping.delay_ms or 0) + 3 * (shaping.jitter_ms or 0)) / 1000
    return min(max(1000, 2 * math.ceil(rate / 8 * delay_s / mtu)), U32)


def netem_options(shaping: Shaping, mtu: int) -> bytes:
    """tc_netem_qopt (times in 64 ns ticks, loss as a u32 probability rounded as tc does),
    then the exact times in ns (kernels >= 4.15 prefer them) and the rate in bytes/s."""
    delay, jitter = _ns(shaping.delay_ms), _ns(shaping.jitter_ms)
    loss = min(round((shaping.loss_pct or 0) / 100 * U32), U32)
    # struct tc_netem_qopt: latency, limit, loss, gap, duplicate, jitter
    opts = struct.pack(
        "=IIIIII", _ticks(delay), netem_limit(shaping, mtu), loss, 0, 0, _ticks(jitter)
    )
    opts += nl.nla(TCA_NETEM_LATENCY64, struct.pack("=q", delay))
    opts += nl.nla(TCA_NETEM_JITTER64, struct.pack("=q", jitter))
    if shaping.rate_bps:
        rate = shaping.rate_bps // 8
        opts += nl.nla(TCA_NETEM_RATE, struct.pack("=IiIi", min(rate, U32), 0, 0, 0))
        if rate > U32:
            opts += nl.nla(TCA_NETEM_RATE64, struct.pack("=Q", rate))
    return opts


def qdisc_request(index: int, shaping: Shaping, mtu: int) -> bytes:
    """The root qdisc body for `shaping` on interface `index` (use with nl.REPLACE)."""
    if shaping.needs_netem():
        return nl.qdisc_body(index, "netem", netem_options(shaping, mtu))
    assert shaping.rate_bps is not None
    return nl.qdisc_body(index, "tbf", tbf_options(shaping.rate_bps, mtu))


def offloads_off(sock_fd: int, ifname: str) -> None:
    """GSO and TSO off on `ifname` in the namespace of socket `sock_fd`."""
    for cmd in (ETHTOOL_STSO, ETHTOOL_SGSO):
        value = ctypes.create_string_buffer(struct.pack("=II", cmd, 0))
        ifreq = struct.pack("16sP", ifname.encode(), ctypes.addressof(value)) + b"\0" * 16
        fcntl.ioctl(sock_fd, SIOCETHTOOL, ifreq)
