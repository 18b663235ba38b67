"""Timelines on the local testbed: link events land on time as probes inside the vnodes see
them, and `emulate status --events` reports the times the probes saw; a churn trace makes
vnodes unreachable exactly in their down intervals; a bad timeline exits 2 with one line
naming its place, nothing scheduled; `emulate events --cancel` stops the rest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from omnibed.api import Omnibed
from omnibed.emulator.coordinator import Emulator
from omnibed.emulator.model import load_platform
from omnibed.emulator.planner import Plan
from omnibed.emulator.timeline import Event, load_events
from tests.emulator.test_emulate_local import addresses, reserved

pytestmark = pytest.mark.root

OMNIBED = str(Path(sys.executable).with_name("omnibed"))
ON_TIME_MS = 50  # the bound between an event's planned time and what a probe sees
PLATFORM = """
networks:
  - {name: lan, cidr: 10.83.0.0/24}
nodes:
  - name: vnode-{i}
    per_pnode: 2
    ifaces:
      - {name: if0, network: lan}
"""
GAP = 0.1  # a silence longer than this is a link down (the senders send every 5 ms)
# the probes run at a real-time priority (below the runners'), so that a loaded machine
# does not pause them long enough to look like a link down
REAL_TIME = "import os; os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(5))\n"
# `UNTIL ADDRESS...`: a datagram to each address every 5 ms until epoch UNTIL
SENDER = REAL_TIME + """
import socket, sys, time
until, targets = float(sys.argv[1]), sys.argv[2:]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
while time.time() < until:
    for address in targets:
        try:
            s.sendto(b"x", (address, 9000))
        except OSError:
            pass
    time.sleep(0.005)
"""
# `UNTIL GAP NETNS...`: receives on UDP port 9000 in each named network namespace (`-`: its
# own) until epoch UNTIL; prints {netns: [[last datagram before, first after], ...]} for the
# silences longer than GAP seconds, timed by the kernel as datagrams arrive
RECEIVER = REAL_TIME + """
import ctypes, json, os, select, socket, struct, sys, time
until, gap, names = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
libc = ctypes.CDLL(None, use_errno=True)
home = os.open("/proc/self/ns/net", os.O_RDONLY)
sockets = {}
for name in names:
    if name != "-":
        fd = os.open("/run/netns/" + name, os.O_RDONLY)
        assert libc.setns(fd, 0x40000000) == 0, ctypes.get_errno()
        os.close(fd)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, 35, 1)  # SO_TIMESTAMPNS
    s.bind(("0.0.0.0", 9000))
    sockets[s] = name
    assert libc.setns(home, 0x40000000) == 0, ctypes.get_errno()
last = {name: None for name in names}
gaps = {name: [] for name in names}
while time.time() < until:
    for s in select.select(list(sockets), [], [], 0.05)[0]:
        _, ancillary, _, _ = s.recvmsg(16, socket.CMSG_SPACE(16))
        seconds, nanoseconds = struct.unpack("qq", ancillary[0][2][:16])
        arrived, name = seconds + nanoseconds / 1e9, sockets[s]
        if last[name] is not None and arrived - last[name] > gap:
            gaps[name].append([last[name], arrived])
        last[name] = arrived
print(json.dumps(gaps))
"""


def emulate(api: Omnibed, *args: str) -> subprocess.CompletedProcess[str]:
    """`omnibed emulate ARGS` with api's home."""
    env = {**os.environ, "OMNIBED_HOME": str(api.home), "COLUMNS": "250"}
    return subprocess.run(
        [OMNIBED, "emulate", *args], env=env, capture_output=True, text=True, timeout=120
    )


class Running:
    def __init__(self, api: Omnibed, name: str, emulator: Emulator, plan: Plan) -> None:
        self.api, self.name, self.emulator, self.plan = api, name, emulator, plan

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return emulate(self.api, *args)

    def probes(self, jobs: dict[str, list[str]]) -> dict[str, str]:
        """Run `python3 -c PROGRAM ARGS` in each vnode at once; their stdout."""
        with ThreadPoolExecutor(len(jobs)) as pool:
            futures = {
                vnode: pool.submit(self.emulator.exec, [vnode], ["python3", "-c", *argv])
                for vnode, argv in jobs.items()
            }
            outputs = {}
            for vnode, future in futures.items():
                result = future.result()[vnode]
                assert result.exit_status == 0, result.stderr
                outputs[vnode] = result.stdout.decode()
        return outputs


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    api = Omnibed(home=tmp_path_factory.mktemp("timeline") / "home")
    with reserved(api, 2, "baremetal") as name:
        emulator = Emulator(api.access(name))
        plan = emulator.up(load_platform(PLATFORM))
        try:
            assert [v.pnode for v in plan.vnodes] == ["pnode-1", "pnode-1", "pnode-2", "pnode-2"]
            yield Running(api, name, emulator, plan)
        finally:
            emulator.down()


def test_link_events_land_on_time_as_the_vnodes_see_them(
    running: Running, tmp_path: Path
) -> None:
    to = addresses(running.plan)
    timeline = tmp_path / "timeline.yaml"
    timeline.write_text(
        "events:\n"
        "  - {at: 1s, link: 'vnode-[2].if0', state: down}\n"
        "  - {at: 2s, link: vnode-2.if0, state: up}\n"
        "  - {at: 1500ms, link: 'vnode-1.if*', state: down}\n"
        "  - {at: 2.5s, link: vnode-1.if0, state: up}\n"
    )
    start = time.time() + 12  # the probes run from before it to after the last event
    until = str(start + 4)
    with ThreadPoolExecutor(1) as pool:
        probing = pool.submit(running.probes, {
            "vnode-0": [SENDER, until, to["vnode-1"], to["vnode-2"]],
            "vnode-1": [RECEIVER, until, str(GAP), "-"],
            "vnode-2": [RECEIVER, until, str(GAP), "-"],
        })  # fmt: skip
        scheduled = running.emulator.schedule(load_events(timeline), start=start)
        assert scheduled.actions == {"pnode-1": 2, "pnode-2": 2}
        seen = probing.result()
    # the silence around the planned down time: its datagrams stopped, then came again
    # (a loaded machine may pause the sender elsewhere too)
    [vnode1_gap] = [g for g in json.loads(seen["vnode-1"])["-"] if g[0] < start + 2 < g[1]]
    [vnode2_gap] = [g for g in json.loads(seen["vnode-2"])["-"] if g[0] < start + 1.5 < g[1]]
    probed = {
        "vnode-2.if0 down": vnode2_gap[0], "vnode-2.if0 up": vnode2_gap[1],
        "vnode-1.if0 down": vnode1_gap[0], "vnode-1.if0 up": vnode1_gap[1],
    }  # fmt: skip
    planned = {
        "vnode-2.if0 down": start + 1, "vnode-2.if0 up": start + 2,
        "vnode-1.if0 down": start + 1.5, "vnode-1.if0 up": start + 2.5,
    }  # fmt: skip
    reported = running.cli("status", running.name, "--events", "--json")
    assert reported.returncode == 0, reported.stderr
    rows = [row for row in json.loads(reported.stdout) if row["timeline"] == scheduled.id]
    assert len(rows) == 4 and all(row["outcome"] == "ok" for row in rows), rows
    for row in rows:
        key = row["event"].replace("vnode-[2]", "vnode-2").replace("if*", "if0")
        assert abs(row["planned"] - planned[key]) < 1e-6
        assert abs(probed[key] - planned[key]) * 1000 < ON_TIME_MS, (key, seen, rows)
        # the actual time reported is what the probe saw: the last datagram before a down
        # arrived at most one send period earlier, the first after an up a little later
        assert -10 < (probed[key] - row["actual"]) * 1000 < 30, (key, seen, rows)
        assert 0 <= row["lateness_ms"] < ON_TIME_MS
    table = running.cli("status", running.name, "--events")
    assert table.returncode == 0, table.stderr
    assert "vnode-[2].if0 down" in table.stdout and "late (ms)" in table.stdout


def test_cancel_stops_the_rest_of_a_timeline(running: Running) -> None:
    scheduled = running.emulator.schedule([Event(30.0, "link", "vnode-0.if0", up=False)])
    cancelled = running.cli("events", running.name, "--cancel")
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.strip() == "cancelled 1 running timelines"
    rows = [r for r in running.emulator.events() if r.timeline == scheduled.id]
    assert [(r.what, r.outcome, r.actual) for r in rows] == [
        ("vnode-0.if0 down", "cancelled", None)
    ]
    again = running.cli("events", running.name, "--cancel")
    assert again.stdout.strip() == "no timeline was running"


@pytest.mark.parametrize(
    ("lines", "trace", "says"),
    [
        ("  - {at: 5s, link: nosuch.if0, state: down}\n", "", "timeline.yaml:3:5: 'nosuch.if0'"
         " names no vnode's iface"),
        ("  - {at: 5s, link: vnode-0.eth9, state: down}\n", "", "timeline.yaml:3:5: 'vnode-0'"
         " has no iface 'eth9'"),
        ("  - {at: 5s, vnode: 'node-*', state: down}\n", "", "timeline.yaml:3:5: 'node-*' names"
         " no vnode"),
        ("  - {at: 5s, set: vnode-0.if0.output, speed: 1mbit}\n", "", "timeline.yaml:3:5:"
         " unknown key 'speed'"),
        ("  - {at: 5s, set: vnode-0.if0.output, rate: fast}\n", "", "timeline.yaml:3:5: rate"
         " 'fast' is not a number"),
        ("  - {at: 2020-01-01T00:00:00Z, link: vnode-0.if0, state: down}\n", "",
         "timeline.yaml:3:5: at 2020-01-01T00:00:00.000+00:00 is in the past"),
        ("  - {at: soon, link: vnode-0.if0, state: down}\n", "", "timeline.yaml:3:5: at 'soon'"
         " is not a time"),
        ("  - {trace: churn.csv}\n", "1,vnode-1,down\n2,vnode-1,up\n3,vnode-1,sideways\n",
         "churn.csv:3: expected time,vnode,up|down, got '3,vnode-1,sideways'"),
        ("  - {trace: churn.csv}\n", "1,vnode-7,down\n", "churn.csv:1: 'vnode-7' names no vnode"),
    ],
)
def test_a_bad_timeline_exits_2_with_its_place_and_schedules_nothing(
    running: Running, tmp_path: Path, lines: str, trace: str, says: str
) -> None:
    (tmp_path / "churn.csv").write_text(trace)
    timeline = tmp_path / "timeline.yaml"
    # a good first event: nothing of the file may be scheduled
    timeline.write_text("events:\n  - {at: 3s, link: vnode-0.if0, state: down}\n" + lines)
    before = running.emulator.events()
    refused = running.cli("events", running.name, str(timeline))
    assert refused.returncode == 2, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert says in refused.stderr
    assert running.emulator.events() == before


def test_a_churn_trace_makes_vnodes_unreachable_exactly_while_down(tmp_path: Path) -> None:
    api = Omnibed(home=tmp_path / "home")
    trace = tmp_path / "churn.csv"
    downs = {f"vnode-{k}": [(1.0 + 0.1 * k, 1.8 + 0.1 * k)] for k in range(1, 20)}
    for k in range(1, 20, 3):
        downs[f"vnode-{k}"].append((4.0 + 0.02 * k, 4.5 + 0.02 * k))
    lines = ["time,vnode,state"] + [
        f"{edge:.2f},{vnode},{state}"
        for vnode, intervals in downs.items()
        for interval in intervals
        for edge, state in zip(interval, ("down", "up"), strict=True)
    ]
    trace.write_text("\n".join(lines) + "\n")
    platform = tmp_path / "platform.yaml"
    platform.write_text(
        PLATFORM.replace("10.83", "10.84").replace("per_pnode: 2", "per_pnode: 10")
        + "events:\n  - {trace: churn.csv, at: 5s}\n"
    )
    with reserved(api, 2, "baremetal") as name:
        emulator = Emulator(api.access(name))
        plan = emulator.up(load_platform(platform))
        try:
            assert emulator.scheduled is not None
            start = emulator.scheduled.start + 5  # the trace's zero
            assert len({v.pnode for v in plan.vnodes}) == 2 and len(plan.vnodes) == 20
            to = addresses(plan)
            until = str(start + 5.5)
            # vnode-0 sends to every other vnode; one receiver per pnode listens inside each
            # churned vnode of its pnode
            jobs = {"vnode-0": [SENDER, until, *(to[v] for v in downs)]}
            by_netns = {v.netns: v.name for v in plan.vnodes}
            for pnode in ("pnode-1", "pnode-2"):
                churned = [v for v in plan.vnodes if v.pnode == pnode and v.name in downs]
                jobs[churned[0].name] = [RECEIVER, until, str(GAP), *(v.netns for v in churned)]
            seen = Running(api, name, emulator, plan).probes(jobs)
        finally:
            emulator.down()
    silent = {}  # vnode: its silences since the trace's zero, in seconds of the trace
    for vnode, output in seen.items():
        if vnode != "vnode-0":  # the sender prints nothing
            for netns, gaps in json.loads(output).items():
                silent[by_netns[netns]] = [(a - start, b - start) for a, b in gaps if b > start]
    assert set(silent) == set(downs)
    for vnode, intervals in downs.items():
        assert len(silent[vnode]) == len(intervals), (vnode, intervals, silent)
        for (down, up), (quiet, heard) in zip(intervals, silent[vnode], strict=True):
            assert abs(quiet - down) * 1000 < ON_TIME_MS, (vnode, silent[vnode], intervals)
            assert abs(heard - up) * 1000 < ON_TIME_MS, (vnode, silent[vnode], intervals)


def _timeline_holders() -> set[int]:
    """The processes of this machine holding a file of a timeline open (its runners)."""
    holders = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            targets = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in fds]
        except OSError:  # gone, or a file closed meanwhile
            continue
        if any("/run/omnibed/timelines/" in target for target in targets):
            holders.add(int(pid))
    return holders


def test_down_stops_the_runners_of_a_platform(tmp_path: Path) -> None:
    api = Omnibed(home=tmp_path / "home")
    before = _timeline_holders()
    with reserved(api, 1, "baremetal") as name:
        emulator = Emulator(api.access(name))
        emulator.up(load_platform(PLATFORM.replace("10.83", "10.85")))
        try:
            emulator.schedule([Event(60.0, "vnode", "vnode-1", up=False)])
            assert len(_timeline_holders() - before) == 1
        finally:
            emulator.down()
        assert _timeline_holders() - before == set()


def test_up_with_a_bad_timeline_exits_2_and_builds_nothing(tmp_path: Path) -> None:
    api = Omnibed(home=tmp_path / "home")
    platform = tmp_path / "platform.yaml"
    platform.write_text(
        PLATFORM.replace("10.83", "10.86")
        + "events:\n  - {at: 1s, link: vnode-0.if0, state: down}\n"
        + "  - {at: 2s, link: vnode-9.if0, state: down}\n"
    )
    with reserved(api, 1, "baremetal") as name:
        refused = emulate(api, "up", name, str(platform))
        assert refused.returncode == 2, refused.stderr
        assert refused.stderr.strip().splitlines() == [
            f"error: {platform}:11:5: 'vnode-9.if0' names no vnode's iface (VNODE.IFACE): "
            "the vnodes are vnode-0, vnode-1"
        ]
        assert Emulator(api.access(name)).load() is None


def _ifaces(api: Omnibed, name: str) -> dict[str, dict]:
    """{VNODE.IFACE: its link state and shaping} as `emulate status --json` shows them."""
    shown = emulate(api, "status", name, "--json")
    assert shown.returncode == 0, shown.stderr
    return {
        f"{vnode['name']}.{iface}": report
        for vnode in json.loads(shown.stdout)["vnodes"]
        for iface, report in vnode["ifaces"].items()
    }


def _kernel_up(emulator: Emulator, vnode: str, iface: str) -> bool:
    """Whether the kernel has `iface` of `vnode` administratively up."""
    shown = emulator.exec([vnode], ["ip", "-o", "link", "show", "dev", iface])[vnode]
    assert shown.exit_status == 0, shown.stderr
    flags = shown.stdout.decode().split("<", 1)[1].split(">", 1)[0].split(",")
    return "UP" in flags


def test_a_vnode_a_pending_timeline_brings_up_is_not_stopped(tmp_path: Path) -> None:
    """Stopping (or freezing, for a namespace-only vnode) takes the vnode's interfaces down;
    a timeline scheduled before would bring them up again behind the user's back. Refused,
    nothing changed, until the timeline is cancelled."""
    api = Omnibed(home=tmp_path / "home")
    with reserved(api, 1, "baremetal") as name:
        emulator = Emulator(api.access(name))
        emulator.up(load_platform(PLATFORM.replace("10.83", "10.87")))
        try:
            emulator.schedule([Event(120.0, "link", "vnode-1.if0", up=True),
                               Event(120.0, "link", "vnode-0.if0", up=False)])  # fmt: skip
            for action in ("stop", "freeze"):
                refused = emulate(api, action, name, "vnode-1")
                assert refused.returncode == 2, refused.stderr
                assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
                assert "vnode-1.if0" in refused.stderr and "--cancel" in refused.stderr
            assert _kernel_up(emulator, "vnode-1", "if0")
            shown = emulate(api, "status", name, "--json")
            runs = {v["name"]: v["run"] for v in json.loads(shown.stdout)["vnodes"]}
            assert runs == {"vnode-0": "running", "vnode-1": "running"}, shown.stderr
            # taking a link down is all the timeline does to vnode-0: it may stop
            assert emulator.stop(["vnode-0"]) == {"vnode-0": "stopped"}
            assert emulator.cancel_events() == 1
            assert emulator.stop(["vnode-1"]) == {"vnode-1": "stopped"}
        finally:
            emulator.down()


def test_what_a_timeline_did_is_saved_and_later_changes_build_on_it(tmp_path: Path) -> None:
    api = Omnibed(home=tmp_path / "home")
    with reserved(api, 1, "baremetal") as name:
        emulator = Emulator(api.access(name))
        emulator.up(load_platform(PLATFORM.replace("10.83", "10.87")))
        try:
            emulator.schedule([
                Event(0.2, "set", "vnode-0.if0.output", properties={"rate": "10mbit"}),
                Event(0.2, "link", "vnode-1.if0", up=False),
            ])  # fmt: skip
            deadline = time.time() + 20
            while any(r.outcome == "pending" for r in emulator.events()):
                assert time.time() < deadline
                time.sleep(0.2)
            shown = _ifaces(api, name)
            assert shown["vnode-0.if0"]["output"]["rate_bps"] == 10e6
            assert shown["vnode-1.if0"]["link"] == "down"
            assert shown["vnode-0.if0"]["link"] == "up"
            # a vnode started again gets back the link state the timeline left
            for action in ("stop", "start"):
                done = emulate(api, action, name, "vnode-1")
                assert done.returncode == 0, done.stderr
            assert not _kernel_up(emulator, "vnode-1", "if0")
            # a later change starts from what the timeline left, once: the timeline's
            # record does not take the link down again
            brought = emulate(api, "link", name, "vnode-1.if0", "up")
            assert brought.returncode == 0, brought.stderr
            assert _ifaces(api, name)["vnode-1.if0"]["link"] == "up"
            assert _kernel_up(emulator, "vnode-1", "if0")
            assert _ifaces(api, name)["vnode-0.if0"]["output"]["rate_bps"] == 10e6
        finally:
            emulator.down()


def test_a_timeline_does_not_bring_up_a_stopped_vnode(tmp_path: Path) -> None:
    api = Omnibed(home=tmp_path / "home")
    timeline = tmp_path / "timeline.yaml"
    with reserved(api, 1, "baremetal") as name:
        emulator = Emulator(api.access(name))
        emulator.up(load_platform(PLATFORM.replace("10.83", "10.88")))
        try:
            assert emulator.stop(["vnode-1"]) == {"vnode-1": "stopped"}
            for line, says in [
                ("  - {at: 5s, link: 'vnode-*.if0', state: up}\n", "timeline.yaml:3:5: vnode "
                 "vnode-1 is stopped"),
                ("  - {at: 5s, vnode: vnode-1, state: up}\n", "timeline.yaml:3:5: vnode "
                 "vnode-1 is stopped"),
            ]:  # fmt: skip
                timeline.write_text("events:\n  - {at: 3s, link: vnode-0.if0, state: down}\n"
                                    + line)  # fmt: skip
                refused = emulate(api, "events", name, str(timeline))
                assert refused.returncode == 2, refused.stderr
                assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
                assert says in refused.stderr
                assert emulator.events() == []
            # taking a stopped vnode's link down changes nothing it would not be: allowed
            emulator.schedule([Event(60.0, "link", "vnode-1.if0", up=False)])
        finally:
            emulator.down()
