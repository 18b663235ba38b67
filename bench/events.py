"""A timeline of 1,000 live changes spread over 10 s on 200 vnodes of one local pnode.

Side by side in the same run, on the same platform:

  omnibed   the path a user takes: a local reservation of 1 pnode, a platform of N vnodes
            (one shaped interface each) through `Emulator.up`, then `Emulator.schedule` of
            the events (half rate changes, half link down/up); the pnode's agent runs them
            from its own clock. Lateness = when the kernel acknowledged the change minus its
            planned time, as `emulate status --events` reports it; cost = the agent's time
            to apply one change (the runner's own measure).
  processes the same changes at the same relative times, one `tc qdisc replace` or
            `ip link set` process per change, run from this machine by a loop that sleeps
            until each one's time (how a script drives Distem-like changes without an
            agent). Lateness = the process's end minus its planned time; cost = its
            wall time.

Run as root: `.venv/bin/python bench/events.py [--vnodes 200] [--events 1000]
[--seconds 10]`. The reservation is released at the end. Prints figures, with the load
average (other work on the machine moves them). Not a test.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import time
from datetime import timedelta

from omnibed.api import Omnibed
from omnibed.emulator.coordinator import Emulator
from omnibed.emulator.model import load_platform
from omnibed.emulator.timeline import Event, Record

RATES = ("5mbit", "10mbit", "20mbit", "50mbit")


def _platform(n: int):
    return load_platform(f"""
networks:
  - {{name: lan, cidr: 10.96.0.0/16}}
nodes:
  - name: vnode-{{i}}
    per_pnode: {n}
    ifaces:
      - {{name: if0, network: lan, output: {{rate: 100mbit}}}}
""")


def _events(n_vnodes: int, n_events: int, seconds: float) -> list[Event]:
    """Half rate changes, half link toggles (each vnode's down before its up)."""
    rng = random.Random(17)
    events = []
    for _ in range(n_events // 2):
        vnode = rng.randrange(n_vnodes)
        events.append(Event(rng.uniform(0, seconds), "set", f"vnode-{vnode}.if0.output",
                            properties={"rate": rng.choice(RATES)}))  # fmt: skip
    for _ in range(n_events // 4):
        vnode = rng.randrange(n_vnodes)
        down, up = sorted((rng.uniform(0, seconds), rng.uniform(0, seconds)))
        events.append(Event(down, "link", f"vnode-{vnode}.if0", up=False))
        events.append(Event(up, "link", f"vnode-{vnode}.if0", up=True))
    return events


def _figures(label: str, lateness_ms: list[float], cost_ms: dict[str, list[float]]) -> None:
    late = sorted(lateness_ms)
    p99 = late[min(len(late) - 1, int(0.99 * len(late)))]
    costs = "  ".join(f"{kind} {statistics.median(ms):.3f} ms" for kind, ms in cost_ms.items())
    print(f"{label:<10} {len(late):>5} changes  lateness median {statistics.median(late):7.2f}"
          f" ms  p99 {p99:7.2f} ms  max {late[-1]:7.2f} ms   cost per change (median): {costs}")


def _omnibed(emulator: Emulator, events: list[Event], seconds: float) -> list[Record]:
    scheduled = emulator.schedule(events)
    time.sleep(max(scheduled.start + seconds + 1 - time.time(), 0))
    while True:
        records = [r for r in emulator.events() if r.timeline == scheduled.id]
        if all(r.outcome != "pending" for r in records):
            return records
        time.sleep(0.5)


def _processes(netns: dict[str, str], events: list[Event]) -> tuple[list[float], dict]:
    start = time.time() + 1
    lateness, cost = [], {"rate": [], "link": []}
    for event in sorted(events, key=lambda e: float(e.at)):  # type: ignore[arg-type]
        planned = start + float(event.at)  # type: ignore[arg-type]
        time.sleep(max(planned - time.time(), 0))
        if event.kind == "set":
            vnode = event.target.split(".")[0]
            argv = ["tc", "-n", netns[vnode], "qdisc", "replace", "dev", "if0", "root", "tbf",
                    "rate", str(event.properties["rate"]), "burst", "32kbit", "latency", "50ms"]
        else:
            vnode = event.target.split(".")[0]
            argv = ["ip", "-n", netns[vnode], "link", "set", "dev", "if0",
                    "up" if event.up else "down"]  # fmt: skip
        began = time.perf_counter()
        subprocess.run(argv, check=True)
        cost["rate" if event.kind == "set" else "link"].append(
            (time.perf_counter() - began) * 1000
        )
        lateness.append((time.time() - planned) * 1000)
    return lateness, cost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vnodes", type=int, default=200)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    api = Omnibed()
    request = api.make_request("local", nodes=1, walltime=timedelta(hours=1),
                               options={"profile": "baremetal"})  # fmt: skip
    api.reserve("local", request)
    try:
        api.wait(request.name)
        emulator = Emulator(api.access(request.name))
        the_plan = emulator.up(_platform(args.vnodes))
        try:
            events = _events(args.vnodes, args.events, args.seconds)
            print(f"{args.events} events over {args.seconds:g} s on {args.vnodes} vnodes of one"
                  f" local pnode; load average {os.getloadavg()}")  # fmt: skip
            records = _omnibed(emulator, events, args.seconds)
            ran = [r for r in records if r.outcome == "ok"]
            failed = [r for r in records if r.outcome != "ok"]
            if failed:
                print(f"omnibed: {len(failed)} changes failed, e.g. {failed[0].outcome}")
            _figures(
                "omnibed",
                [r.lateness_ms for r in ran if r.lateness_ms is not None],
                {
                    "rate": [r.took * 1000 for r in ran if r.took and "rate=" in r.what],
                    "link": [r.took * 1000 for r in ran if r.took and "rate=" not in r.what],
                },
            )
            netns = {v.name: v.netns for v in the_plan.vnodes}
            _figures("processes", *_processes(netns, events))
            print(f"load average {os.getloadavg()}")
        finally:
            emulator.down()
    finally:
        api.release(request.name)


if __name__ == "__main__":
    main()
