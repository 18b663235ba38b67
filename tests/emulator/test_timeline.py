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
from omnibed.emulator.timeline import Event
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
# `send ADDRESS UNTIL`: a datagram every millisecond until epoch UNTIL;
# `receive UNTIL`: prints the silences longer than 200 ms as [last before, first after] pairs
PROBE = """
import json, socket, sys, time
role, until = sys.argv[1], float(sys.argv[-1])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
if role == "send":
    while time.time() < until:
        try:
            s.sendto(b"x", (sys.argv[2], 9000))
        except OSError:
            pass
        time.sleep(0.001)
    sys.exit(0)
s.bind(("0.0.0.0", 9000))
s.settimeout(0.05)
last, gaps = None, []
while time.time() < until:
    try:
        s.recv(16)
    except socket.timeout:
        continue
    now = time.time()
    if last is not None and now - last > 0.2:
        gaps.append([last, now])
    last = now
print(json.dumps(gaps))
"""
# `OBSERVER UNTIL ADDRESS...`: every 25 ms, a TCP connection attempt to port 9 of each
# address (a refusal is an answer); prints [[epoch, [addresses that answered]], ...]
OBSERVER = """
import errno, json, select, socket, sys, time
until, targets = float(sys.argv[1]), sys.argv[2:]
rounds = []
while time.time() < until:
    started = time.time()
    waiting = {}
    for address in targets:
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex((address, 9))
        waiting[s] = address
    answered = []
    deadline = started + 0.02
    while waiting and time.time() < deadline:
        _, ready, _ = select.select([], list(waiting), [], max(deadline - time.time(), 0))
        for s in ready:
            if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) in (0, errno.ECONNREFUSED):
                answered.append(waiting[s])
            s.close()
            del waiting[s]
    for s in waiting:
        s.close()
    rounds.append([started, answered])
    time.sleep(max(started + 0.025 - time.time(), 0))
print(json.dumps(rounds))
"""


class Running:
    def __init__(self, api: Omnibed, name: str, emulator: Emulator, plan: Plan) -> None:
        self.api, self.name, self.emulator, self.plan = api, name, emulator, plan

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "OMNIBED_HOME": str(self.api.home), "COLUMNS": "250"}
        return subprocess.run(
            [OMNIBED, "emulate", *args], env=env, capture_output=True, text=True, timeout=120
        )

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
    start = time.time() + 6  # the probes run from before it to after the last event
    until = str(start + 4)
    with ThreadPoolExecutor(1) as pool:
        probing = pool.submit(running.probes, {
            "vnode-0": [PROBE, "receive", until],
            "vnode-2": [PROBE, "send", to["vnode-0"], until],
            "vnode-3": [PROBE, "receive", until],
            "vnode-1": [PROBE, "send", to["vnode-3"], until],
        })  # fmt: skip
        from omnibed.emulator.timeline import load_events

        scheduled = running.emulator.schedule(load_events(timeline), start=start)
        assert scheduled.actions == {"pnode-1": 2, "pnode-2": 2}
        seen = probing.result()
    [vnode2_gap] = json.loads(seen["vnode-0"])  # vnode-2's datagrams stopped, then resumed
    [vnode1_gap] = json.loads(seen["vnode-3"])
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
        # the actual time reported is what the probe saw (within its 1 ms send period and
        # the scheduling noise of a loaded machine)
        assert abs(row["actual"] - probed[key]) * 1000 < 20, (key, seen, rows)
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
    downs = {f"vnode-{k}": (1.0 + 0.1 * k, 1.8 + 0.1 * k) for k in range(1, 20)}
    downs_again = {f"vnode-{k}": (3.0 + 0.02 * k, 3.5 + 0.02 * k) for k in range(1, 20, 3)}
    lines = ["time,vnode,state"]
    for table in (downs, downs_again):
        for vnode, (down, up) in table.items():
            lines += [f"{down:.2f},{vnode},down", f"{up:.2f},{vnode},up"]
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
            observed = Running(api, name, emulator, plan).probes(
                {"vnode-0": [OBSERVER, str(start + 4.5), *(to[f"vnode-{k}"] for k in range(1, 20))]}
            )
        finally:
            emulator.down()
    rounds = json.loads(observed["vnode-0"])
    assert rounds[0][0] < start and rounds[-1][0] > start + 4, "the probe missed the trace"
    margin = 0.06  # a round's 20 ms window and the scheduling noise of a loaded machine
    wrong = []
    for k in range(1, 20):
        vnode = f"vnode-{k}"
        intervals = [table[vnode] for table in (downs, downs_again) if vnode in table]
        for when, answered in rounds:
            t = when - start
            if any(abs(t - edge) < margin for interval in intervals for edge in interval):
                continue
            down = any(a <= t < b for a, b in intervals)
            if (to[vnode] in answered) == down:
                seen = "answered while down" if down else "silent while up"
                wrong.append((vnode, round(t, 3), seen))
    assert not wrong, wrong[:10]
