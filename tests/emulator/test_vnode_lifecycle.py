"""A namespace-only vnode stopped, started, frozen and thawed in place on the local testbed
(`omnibed emulate stop|start|freeze|thaw`): unreachable while stopped or frozen, reachable
again after, the other vnodes untouched; `emulate status`, run as a new process each time,
shows each vnode's run state, link state and shaping as changed; bad input exits 2 with
one line, nothing changed."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from omnibed.api import Omnibed
from omnibed.emulator.coordinator import Emulator
from omnibed.emulator.model import load_platform
from tests.emulator.test_emulate_local import reserved
from tests.emulator.test_live_changes import PLATFORM, Running

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    api = Omnibed(home=tmp_path_factory.mktemp("lifecycle") / "home")
    with reserved(api, 2, "baremetal") as name:
        emulator = Emulator(api.access(name))
        plan = emulator.up(load_platform(PLATFORM))
        try:
            yield Running(api, name, emulator, plan)
        finally:
            emulator.down()


def reaches_soon(running: Running, source: str, target: str, tries: int = 5) -> bool:
    """Whether `source` reaches `target` within `tries` pings of 1 s: a link just brought
    up may take a moment (its neighbour entry is resolved again)."""
    return any(running.reaches(source, target) for _ in range(tries))


def status(running: Running) -> dict:
    shown = running.cli("status", running.name, "--json")
    assert shown.returncode == 0, shown.stderr
    return {v["name"]: v for v in json.loads(shown.stdout)["vnodes"]}


def test_a_stopped_vnode_is_unreachable_until_started(running: Running) -> None:
    assert running.reaches("vnode-0", "vnode-2")
    stopped = running.cli("stop", running.name, "vnode-2")
    assert (stopped.returncode, stopped.stdout) == (0, "vnode-2: stopped\n"), stopped.stderr
    try:
        assert not running.reaches("vnode-0", "vnode-2")
        assert running.reaches("vnode-1", "vnode-3")  # the other vnodes untouched
        assert status(running)["vnode-2"]["run"] == "stopped"
        again = running.cli("stop", running.name, "vnode-2")  # already stopped: nothing to do
        assert (again.returncode, again.stdout) == (0, "vnode-2: stopped\n"), again.stderr
    finally:
        started = running.cli("start", running.name, "vnode-2")
    assert (started.returncode, started.stdout) == (0, "vnode-2: running\n"), started.stderr
    assert reaches_soon(running, "vnode-0", "vnode-2")
    assert status(running)["vnode-2"]["run"] == "running"


def test_a_link_taken_down_stays_down_across_stop_and_start(running: Running) -> None:
    running.emulator.link("vnode-3.if0", up=False)
    try:
        assert status(running)["vnode-3"]["ifaces"]["if0"]["link"] == "down"
        assert running.emulator.stop(["vnode-3"]) == {"vnode-3": "stopped"}
        assert running.emulator.start(["vnode-3"]) == {"vnode-3": "running"}
        assert not running.reaches("vnode-1", "vnode-3")  # its recorded link state is down
    finally:
        running.emulator.link("vnode-3.if0", up=True)
    assert reaches_soon(running, "vnode-1", "vnode-3")
    assert status(running)["vnode-3"]["ifaces"]["if0"]["link"] == "up"


def test_a_frozen_namespace_vnode_is_cut_off_until_thawed(running: Running) -> None:
    assert running.emulator.freeze(["vnode-0", "vnode-1"]) == {
        "vnode-0": "frozen",
        "vnode-1": "frozen",
    }
    try:
        assert not running.reaches("vnode-2", "vnode-0")
        assert not running.reaches("vnode-3", "vnode-1")
        assert {v: s["run"] for v, s in status(running).items()} == {
            "vnode-0": "frozen", "vnode-1": "frozen", "vnode-2": "running", "vnode-3": "running",
        }  # fmt: skip
    finally:
        thawed = running.cli("thaw", running.name, "vnode-0", "vnode-1")
    assert thawed.returncode == 0, thawed.stderr
    assert reaches_soon(running, "vnode-2", "vnode-0")
    assert reaches_soon(running, "vnode-3", "vnode-1")


def test_status_shows_a_changed_rate_link_and_run_state(running: Running) -> None:
    running.emulator.set("vnode-1.if0.output", {"rate": "7mbit", "delay": None})
    running.emulator.set("vnode-1.if0.input", {"rate": "3mbit"})
    running.emulator.link("vnode-1.if0", up=False)
    running.emulator.stop(["vnode-3"])
    try:
        vnode_1 = status(running)["vnode-1"]["ifaces"]["if0"]
        assert vnode_1["link"] == "down"
        assert vnode_1["output"]["rate_bps"] == 7_000_000
        assert vnode_1["input"]["rate_bps"] == 3_000_000
        shown = running.cli("status", running.name)
        assert shown.returncode == 0, shown.stderr
        rows = {line.split("│")[1].strip(): line for line in shown.stdout.splitlines()
                if line.count("│") > 2}  # fmt: skip
        assert "down" in rows["vnode-1.if0"] and "rate=7mbit" in rows["vnode-1.if0"]
        assert "rate=3mbit" in rows["vnode-1.if0"]
        assert "stopped" in rows["vnode-3"] and "running" in rows["vnode-2"]
        assert "down (stopped)" in rows["vnode-3.if0"]  # held down, whatever was set
        assert "up" in rows["vnode-0.if0"] and "rate=20mbit" in rows["vnode-0.if0"]
    finally:
        running.emulator.start(["vnode-3"])
        running.emulator.link("vnode-1.if0", up=True)
        running.emulator.set("vnode-1.if0.input", {"rate": None})


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("stop", "{name}", "nosuch"), "no vnode 'nosuch'"),
        (("start", "{name}", "vnode-0", "vnode-9"), "no vnode 'vnode-9'"),
        (("thaw", "{name}", "vnode-2"), "vnode vnode-2 is stopped"),
        (("freeze", "{name}", "vnode-2"), "vnode vnode-2 is stopped"),
        (("link", "{name}", "vnode-2.if0", "up"), "vnode vnode-2 is stopped"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_changes_nothing(
    running: Running, args: tuple[str, ...], says: str
) -> None:
    running.emulator.stop(["vnode-2"])
    try:
        plan = running.plan_bytes()
        refused = running.cli(*(arg.format(name=running.name) for arg in args))
        assert refused.returncode == 2, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert says in refused.stderr
        assert running.plan_bytes() == plan
        assert running.reaches("vnode-1", "vnode-0")  # vnode-0 was not stopped
        assert not running.reaches("vnode-0", "vnode-2")
    finally:
        running.emulator.start(["vnode-2"])
