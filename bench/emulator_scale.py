"""Up and down of N vnodes on one pnode: the agent vs `ip`/`tc` per object vs one batch each.

Run as root: `.venv/bin/python bench/emulator_scale.py [N ...]` (default 1000 2000 5000
10000). Each run gets a fresh throwaway namespace as the pnode. A vnode is a namespace, a
veth pair (peer inside it, host side on a bridge), an address, lo and the veth up, and a TBF
rate on the host side. All vnodes are in one vnetwork, on the chain of bridges the planner
lays out for it (planner.bridge_chain). Compared, side by side:

  agent      the omnibed agent (the bundle under the system python3 -I), one apply request
  per-object one `ip`/`tc` process per object, as Distem does (only up to 1,000 vnodes)
  batch      the floor: one `ip -batch` (netns add, veths, bridge ports) and one `tc -batch`.
             iproute2 cannot switch namespace inside a batch, so the floor leaves out the
             addresses and link-up inside the vnodes: it is a lower bound.

Prints seconds and ms per vnode up and down, the CPU time our processes spent going up (the
agent's, or the `ip`/`tc` processes'; less sensitive to a loaded machine than wall time,
but blind to the kernel's background workers), the memory each vnode takes (MemAvailable
before and after up), the load average, and how ms per vnode grows from the first size.
The namespaces' mount points are on a tmpfs of the benchmark's own mount namespace, as
under a pnode's /run: on a journal-less ext4 (this machine's /run), creating a file right
after thousands were deleted scans past every recently deleted inode, which would charge
one run's teardown to the next run's up. Not a test.
"""

from __future__ import annotations

import ctypes
import os
import platform
import resource
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from omnibed.emulator.agent import nsutil, ops
from omnibed.emulator.agent.state import PnodeState, Shaping, Viface
from omnibed.emulator.bundle import build
from omnibed.emulator.planner import bridge_chain, instance_tag
from omnibed.emulator.transport import LocalAgentSession

RATE_BPS = 100_000_000
TBF = "tbf rate 100mbit burst 50000 latency 50ms"
GROUP = 0x0B0E0000
PER_OBJECT_MAX = 1000  # beyond, one process per object takes minutes and shows nothing new
CLONE_NEWNS = 0x00020000
MS_PRIVATE = 1 << 18


@dataclass
class Result:
    up: float
    down: float
    kib: float | None = None  # memory taken while up, in KiB (None: not measured)
    cpu: float = 0.0  # CPU seconds of our processes while going up (not the kernel's workers)


def _agent_cpu(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _available_kib() -> int:
    with open("/proc/meminfo") as meminfo:
        return next(int(line.split()[1]) for line in meminfo if line.startswith("MemAvailable"))


def _settle_memory(limit: float = 20.0) -> None:
    """Wait until the kernel has freed the last run's namespaces (it does so in the
    background): MemAvailable steady within 4 MiB over a second, or `limit` seconds."""
    end = time.monotonic() + limit
    before = _available_kib()
    while time.monotonic() < end:
        time.sleep(1.0)
        now = _available_kib()
        if abs(now - before) < 4096:
            return
        before = now


def _private_run_netns() -> None:
    """This process (and what it starts) in its own mount namespace, /run/netns a tmpfs."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
    nsutil.mount("none", "/", "none", nsutil.MS_REC | MS_PRIVATE)
    os.makedirs(nsutil.NETNS_RUN_DIR, exist_ok=True)
    nsutil.mount("tmpfs", nsutil.NETNS_RUN_DIR, "tmpfs", 0, "mode=0755")


def _run(argv: list[str], stdin: str | None = None) -> None:
    done = subprocess.run(argv, input=stdin, text=True, capture_output=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(argv[:5])}: {done.stderr.strip()[:500]}")


def _state(pnode: str, n: int) -> PnodeState:
    chain = bridge_chain(instance_tag(pnode), 0, "net", 1500, None, n)
    vifaces = tuple(
        Viface(vnode=f"{pnode}v{i}", netns=f"{pnode}v{i}", ifname="if0", host_ifname=f"h{i}",
               mac=f"02:01:{i >> 24 & 255:02x}:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:"
                   f"{i & 255:02x}",
               address=f"10.{100 + (i >> 16)}.{i >> 8 & 255}.{i & 255}/8",
               bridge=chain.bridge_of(i - 1),
               mtu=1500, input=Shaping(rate_bps=RATE_BPS))
        for i in range(1, n + 1)
    )
    return PnodeState(instance="bench", pnode=pnode, group=GROUP,
                      namespaces=tuple(v.netns for v in vifaces),
                      bridges=chain.bridges, trunks=chain.trunks, vifaces=vifaces)


def _bridges(state: PnodeState) -> list[str]:
    """`ip` commands building the state's bridges and the trunks joining them, up."""
    lines = []
    for b in state.bridges:
        lines += [f"link add {b.name} group {GROUP} type bridge", f"link set {b.name} up"]
    for t in state.trunks:
        lines += [
            f"link add {t.name} group {GROUP} type veth peer name {t.peer} group {GROUP}",
            f"link set {t.name} master {t.bridge} up",
            f"link set {t.peer} master {t.parent} up",
        ]
    return lines


def agent(pnode: str, state: PnodeState) -> Result:
    with LocalAgentSession(netns=pnode, python="/usr/bin/python3", bundle=build()) as session:
        session.call(ops.HELLO)
        free, cpu = _available_kib(), _agent_cpu(session.proc.pid)
        t0 = time.perf_counter()
        session.call(ops.APPLY, state=state.to_json())
        t1 = time.perf_counter()
        used, cpu = free - _available_kib(), _agent_cpu(session.proc.pid) - cpu
        session.call(ops.TEARDOWN, state=state.to_json())
        t2 = time.perf_counter()
    return Result(t1 - t0, t2 - t1, used, cpu)


def per_object(pnode: str, state: PnodeState) -> Result:
    cpu = _children_cpu()
    t0 = time.perf_counter()
    for line in _bridges(state):
        _run(["ip", "-n", pnode, *line.split()])
    for v in state.vifaces:
        _run(["ip", "netns", "add", v.netns])
        _run(["ip", "-n", pnode, "link", "add", v.host_ifname, "group", str(GROUP), "type",
              "veth", "peer", "name", v.ifname, "netns", v.netns])
        _run(["ip", "-n", v.netns, "addr", "add", v.address, "dev", v.ifname])
        _run(["ip", "-n", v.netns, "link", "set", v.ifname, "up"])
        _run(["ip", "-n", v.netns, "link", "set", "lo", "up"])
        _run(["ip", "-n", pnode, "link", "set", v.host_ifname, "master", v.bridge, "up"])
        _run(["tc", "-n", pnode, "qdisc", "add", "dev", v.host_ifname, "root", *TBF.split()])
    t1 = time.perf_counter()
    cpu = _children_cpu() - cpu
    for v in state.vifaces:
        _run(["ip", "-n", pnode, "link", "del", v.host_ifname])
        _run(["ip", "netns", "del", v.netns])
    for t in state.trunks:
        _run(["ip", "-n", pnode, "link", "del", t.name])
    for b in state.bridges:
        _run(["ip", "-n", pnode, "link", "del", b.name])
    t2 = time.perf_counter()
    return Result(t1 - t0, t2 - t1, cpu=cpu)


def batch(pnode: str, state: PnodeState) -> Result:
    lines = _bridges(state)
    for v in state.vifaces:
        lines += [
            f"netns add {v.netns}",
            f"link add {v.host_ifname} group {GROUP} type veth peer name {v.ifname} "
            f"netns {v.netns}",
            f"link set {v.host_ifname} master {v.bridge} up",
        ]
    tc = [f"qdisc add dev {v.host_ifname} root {TBF}" for v in state.vifaces]
    down = [f"link del group {GROUP}"] + [f"netns del {v.netns}" for v in state.vifaces]
    free, cpu = _available_kib(), _children_cpu()
    t0 = time.perf_counter()
    # `ip -n` would create the namespaces in a private mount namespace: nsenter --net only
    _run(["nsenter", f"--net=/run/netns/{pnode}", "ip", "-batch", "-"], "\n".join(lines) + "\n")
    _run(["tc", "-n", pnode, "-batch", "-"], "\n".join(tc) + "\n")
    t1 = time.perf_counter()
    used, cpu = free - _available_kib(), _children_cpu() - cpu
    _run(["ip", "-n", pnode, "-batch", "-"], "\n".join(down) + "\n")
    t2 = time.perf_counter()
    return Result(t1 - t0, t2 - t1, used, cpu)


def measure(n: int, how: Callable[[str, PnodeState], Result]) -> Result:
    _settle_memory()
    pnode = f"obench{uuid.uuid4().hex[:6]}"
    _run(["ip", "netns", "add", pnode])
    state = _state(pnode, n)
    try:
        return how(pnode, state)
    finally:
        for name in state.namespaces:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        _run(["ip", "netns", "del", pnode])


def _machine() -> str:
    with open("/proc/cpuinfo") as cpuinfo:
        model = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")),
                     platform.machine())
    with open("/proc/meminfo") as meminfo:
        total = int(meminfo.readline().split()[1])
    return (f"Linux {platform.release()}, {os.cpu_count()} CPUs ({model}), "
            f"{total / 2**20:.1f} GiB; /run/netns on a private tmpfs")


def main(sizes: list[int]) -> None:
    _private_run_netns()
    build()  # not timed
    print(_machine())
    print(f"{'N':>6} {'method':<11} {'up s':>7} {'ms/vnode':>9} {'cpu ms/v':>9} {'down s':>7} "
          f"{'ms/vnode':>9} {'KiB/vnode':>10} {'load 1m':>8}")
    per_vnode: dict[str, list[tuple[int, Result]]] = {}
    for n in sizes:
        ways = {"agent": agent, "batch": batch}
        if n <= PER_OBJECT_MAX:
            ways["per-object"] = per_object
        results = {}
        for name, how in ways.items():
            r = results[name] = measure(n, how)
            per_vnode.setdefault(name, []).append((n, r))
            kib = f"{r.kib / n:.0f}" if r.kib is not None else "-"
            print(f"{n:>6} {name:<11} {r.up:>7.2f} {r.up / n * 1000:>9.2f} "
                  f"{r.cpu / n * 1000:>9.2f} {r.down:>7.2f} {r.down / n * 1000:>9.2f} {kib:>10} "
                  f"{os.getloadavg()[0]:>8.1f}")
            sys.stdout.flush()
        a, b = results["agent"], results["batch"]
        line = f"up agent/batch {a.up / b.up:.2f}x, down agent/batch {a.down / b.down:.2f}x"
        if "per-object" in results:
            line += f", up per-object/agent {results['per-object'].up / a.up:.1f}x"
        print(f"{n:>6} ratios: {line}")
    for name in ("agent", "batch"):
        (n0, r0), rest = per_vnode[name][0], per_vnode[name][1:]
        growth = ", ".join(
            f"{n}: up {r.up / n / (r0.up / n0):.2f}x (cpu {r.cpu / n / (r0.cpu / n0):.2f}x) "
            f"down {r.down / n / (r0.down / n0):.2f}x"
            for n, r in rest
        )
        print(f"{name} ms/vnode against {n0} vnodes: {growth}")


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [1000, 2000, 5000, 10000])
