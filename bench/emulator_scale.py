"""Up and down of N vnodes on one pnode: the agent vs `ip`/`tc` per object vs one batch each.

Run as root: `.venv/bin/python bench/emulator_scale.py [N ...]` (default 100 500 1000).
Each run gets a fresh throwaway namespace as the pnode. A vnode is a namespace, a veth pair
(peer inside it, host side on a bridge), an address, lo and the veth up, and a TBF rate on
the host side. All vnodes are in one vnetwork, on the chain of bridges the planner lays
out for it (planner.bridge_chain). Compared, side by side:

  agent      the omnibed agent (the bundle under the system python3 -I), one apply request
  per-object one `ip`/`tc` process per object, as Distem does
  batch      the floor: one `ip -batch` (netns add, veths, bridge ports) and one `tc -batch`.
             iproute2 cannot switch namespace inside a batch, so the floor leaves out the
             addresses and link-up inside the vnodes: it is a lower bound.

Prints seconds and ms per vnode for each, and the ratios. Not a test.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from omnibed.emulator.agent import ops
from omnibed.emulator.agent.state import PnodeState, Shaping, Viface
from omnibed.emulator.bundle import build
from omnibed.emulator.planner import bridge_chain, instance_tag
from omnibed.emulator.transport import LocalAgentSession

RATE_BPS = 100_000_000
TBF = "tbf rate 100mbit burst 50000 latency 50ms"
GROUP = 0x0B0E0000


@dataclass
class Result:
    up: float
    down: float


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
        t0 = time.perf_counter()
        session.call(ops.APPLY, state=state.to_json())
        t1 = time.perf_counter()
        session.call(ops.TEARDOWN, state=state.to_json())
        t2 = time.perf_counter()
    return Result(t1 - t0, t2 - t1)


def per_object(pnode: str, state: PnodeState) -> Result:
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
    for v in state.vifaces:
        _run(["ip", "-n", pnode, "link", "del", v.host_ifname])
        _run(["ip", "netns", "del", v.netns])
    for t in state.trunks:
        _run(["ip", "-n", pnode, "link", "del", t.name])
    for b in state.bridges:
        _run(["ip", "-n", pnode, "link", "del", b.name])
    t2 = time.perf_counter()
    return Result(t1 - t0, t2 - t1)


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
    t0 = time.perf_counter()
    # `ip -n` would create the namespaces in a private mount namespace: nsenter --net only
    _run(["nsenter", f"--net=/run/netns/{pnode}", "ip", "-batch", "-"], "\n".join(lines) + "\n")
    _run(["tc", "-n", pnode, "-batch", "-"], "\n".join(tc) + "\n")
    t1 = time.perf_counter()
    _run(["ip", "-n", pnode, "-batch", "-"], "\n".join(down) + "\n")
    t2 = time.perf_counter()
    return Result(t1 - t0, t2 - t1)


def measure(n: int, how: Callable[[str, PnodeState], Result]) -> Result:
    pnode = f"obench{uuid.uuid4().hex[:6]}"
    _run(["ip", "netns", "add", pnode])
    state = _state(pnode, n)
    try:
        return how(pnode, state)
    finally:
        for name in state.namespaces:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        _run(["ip", "netns", "del", pnode])
        time.sleep(1.0)  # let the kernel's async namespace cleanup finish between runs


def main(sizes: list[int]) -> None:
    build()  # not timed
    ways = {"agent": agent, "per-object": per_object, "batch": batch}
    print(f"{'N':>5} {'method':<11} {'up s':>7} {'ms/vnode':>9} {'down s':>7} {'ms/vnode':>9}")
    for n in sizes:
        results = {name: measure(n, how) for name, how in ways.items()}
        for name, r in results.items():
            print(f"{n:>5} {name:<11} {r.up:>7.2f} {r.up / n * 1000:>9.2f} "
                  f"{r.down:>7.2f} {r.down / n * 1000:>9.2f}")
        a, p, b = results["agent"], results["per-object"], results["batch"]
        print(f"{n:>5} ratios: up agent/batch {a.up / b.up:.2f}x, per-object/agent "
              f"{p.up / a.up:.1f}x; down agent/batch {a.down / b.down:.2f}x, per-object/agent "
              f"{p.down / a.down:.1f}x")
        sys.stdout.flush()


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [100, 500, 1000])
