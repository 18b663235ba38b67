"""The kernel's floor for N vnodes on one pnode, by L2 fabric: what a redesign could gain.

Run as root: `.venv/bin/python bench/fabric_floor.py [N ...]` (default 2000 10000). Each
fabric is built by one `ip -batch` and torn down by another, in a throwaway namespace as
the pnode, /run/netns on a private tmpfs. No addresses, no shaping, nothing done inside the
vnodes: the same leave-outs for every fabric, so only the fabrics differ.

  netns     the vnodes' namespaces alone, no link: the floor under every fabric
  veth      today's fabric: a veth pair per vnode, its peer in the vnode, the host side a
            port of a bridge (1,000 ports a bridge, as the planner chains them)
  macvlan   a macvlan (bridge mode) per vnode, made in the vnode, on one of N/1,000 parents;
            each parent is a veth whose peer is a port of one bridge, so the bridges have a
            port per parent instead of one per vnode

Down is what the agent's teardown does: `link del group` of the pnode's links, then `netns
del` of every vnode's namespace (the kernel frees the namespaces later, in the background;
the next run waits until memory settles). Prints seconds and ms per vnode. Not a test.
"""

from __future__ import annotations

import sys
import time
import uuid

from emulator_scale import _machine, _private_run_netns, _run, _settle_memory

GROUP = 0x0B0E0001
PORTS = 1000  # vnodes per bridge (veth) or per macvlan parent


def _links(kind: str, ns: list[str]) -> list[str]:
    """The `ip -batch` lines that give each namespace of `ns` its link in fabric `kind`."""
    lines = []
    if kind == "veth":
        for b in range(0, len(ns), PORTS):
            lines += [f"link add br{b} group {GROUP} type bridge", f"link set br{b} up"]
        for i, name in enumerate(ns):
            lines += [
                f"link add h{i} group {GROUP} type veth peer name if0 netns {name}",
                f"link set h{i} master br{i // PORTS * PORTS} up",
            ]
    elif kind == "macvlan":
        lines += [f"link add fabric group {GROUP} type bridge", "link set fabric up"]
        for p in range(0, len(ns), PORTS):
            lines += [
                f"link add up{p} group {GROUP} type veth peer name port{p} group {GROUP}",
                f"link set port{p} master fabric up",
                f"link set up{p} up",
            ]
        for i, name in enumerate(ns):
            lines.append(f"link add if{i} link up{i // PORTS * PORTS} netns {name} "
                         "type macvlan mode bridge")  # fmt: skip
    return lines


def measure(kind: str, n: int) -> tuple[float, float]:
    """Seconds to build and to tear down N vnodes in fabric `kind`."""
    _settle_memory()
    tag = uuid.uuid4().hex[:6]
    pnode, ns = f"ofab{tag}", [f"ofab{tag}v{i}" for i in range(n)]
    _run(["ip", "netns", "add", pnode])
    into = ["nsenter", f"--net=/run/netns/{pnode}", "ip", "-batch", "-"]
    try:
        up = [f"netns add {name}" for name in ns] + _links(kind, ns)
        down = [f"link del group {GROUP}"] if kind != "netns" else []
        down += [f"netns del {name}" for name in ns]
        t0 = time.perf_counter()
        _run(into, "\n".join(up) + "\n")
        t1 = time.perf_counter()
        _run(into, "\n".join(down) + "\n")
        t2 = time.perf_counter()
    finally:
        _run(["ip", "netns", "del", pnode])
    return t1 - t0, t2 - t1


def main(sizes: list[int]) -> None:
    _private_run_netns()
    print(_machine())
    print(f"{'N':>6} {'fabric':<8} {'up s':>7} {'ms/vnode':>9} {'down s':>7} {'ms/vnode':>9}")
    for n in sizes:
        for kind in ("netns", "veth", "macvlan"):
            up, down = measure(kind, n)
            print(f"{n:>6} {kind:<8} {up:>7.2f} {up / n * 1000:>9.2f} {down:>7.2f} "
                  f"{down / n * 1000:>9.2f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [2000, 10000])
