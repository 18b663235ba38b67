"""Live changes on a running platform of the local testbed: `omnibed emulate set` changes one
interface's shaping in place (measured with iperf3, the other vnode pair's rate unchanged),
`emulate link` takes an interface down and up (its peer unreachable, then reachable), and
bad input exits 2 with one line, nothing changed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from omnibed.api import Omnibed
from omnibed.core.errors import PreflightError, UsageError
from omnibed.emulator.coordinator import PLAN_FILE, Emulator
from omnibed.emulator.model import load_platform
from omnibed.emulator.planner import Plan
from tests.emulator.test_emulate_local import _iperf_mbps, addresses, netem_available, reserved

pytestmark = pytest.mark.root

RATE_MBIT = 20
PLATFORM = f"""
networks:
  - {{name: lan, cidr: 10.81.0.0/24}}
nodes:
  - name: vnode-{{i}}
    per_pnode: 2
    ifaces:
      - name: if0
        network: lan
        output: {{rate: {RATE_MBIT}mbit}}
"""
OMNIBED = str(Path(sys.executable).with_name("omnibed"))


class Running:
    """A platform of 4 vnodes on 2 pnodes, vnode-0 and vnode-1 on the first."""

    def __init__(self, api: Omnibed, name: str, emulator: Emulator, plan: Plan) -> None:
        self.api, self.name, self.emulator, self.plan = api, name, emulator, plan

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "OMNIBED_HOME": str(self.api.home), "COLUMNS": "200"}
        return subprocess.run(
            [OMNIBED, "emulate", *args], env=env, capture_output=True, text=True, timeout=120
        )

    def plan_bytes(self) -> bytes:
        return (self.api.reservation_dir(self.name) / PLAN_FILE).read_bytes()

    def root_rate(self, vnode: str, direction: str = "output") -> int | None:
        """The rate (bit/s) of the root TBF qdisc shaping `direction` of vnode's if0, as the
        kernel reports it; None when there is none."""
        target = self.plan.vnode(vnode)
        if direction == "output":
            netns, dev = target.netns, "if0"
        else:
            netns = next(n.hostname for n in self.api.nodes(self.name) if n.id == target.pnode)
            dev = target.ifaces[0].host_ifname
        shown = subprocess.run(
            ["ip", "netns", "exec", netns, "tc", "-j", "qdisc", "show", "dev", dev],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        for qdisc in json.loads(shown.stdout or "[]"):
            if qdisc.get("root") and qdisc["kind"] == "tbf":
                return int(qdisc["options"]["rate"]) * 8
        return None

    def reaches(self, source: str, target: str) -> bool:
        address = addresses(self.plan)[target]
        ping = self.emulator.exec([source], ["ping", "-c", "1", "-W", "1", address])
        return ping[source].exit_status == 0


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    api = Omnibed(home=tmp_path_factory.mktemp("live") / "home")
    with reserved(api, 2, "baremetal") as name:
        emulator = Emulator(api.access(name))
        plan = emulator.up(load_platform(PLATFORM))
        try:
            assert [v.pnode for v in plan.vnodes] == ["pnode-1", "pnode-1", "pnode-2", "pnode-2"]
            yield Running(api, name, emulator, plan)
        finally:
            emulator.down()


def test_a_rate_change_applies_in_place_and_leaves_the_other_pair_alone(
    running: Running,
) -> None:
    to = addresses(running.plan)
    before = _iperf_mbps(running.emulator, "vnode-0", "vnode-2", to["vnode-2"])
    changed = running.cli("set", running.name, "vnode-0.if0.output", "rate=5mbit")
    assert changed.returncode == 0, changed.stderr
    assert changed.stdout.strip() == "vnode-0.if0.output: rate=5mbit"
    after = _iperf_mbps(running.emulator, "vnode-0", "vnode-2", to["vnode-2"])
    other = _iperf_mbps(running.emulator, "vnode-1", "vnode-3", to["vnode-3"])
    assert abs(before - RATE_MBIT) <= 0.1 * RATE_MBIT, f"before: {before:.1f} Mbit/s"
    assert abs(after - 5) <= 0.1 * 5, f"after: {after:.1f} Mbit/s"
    assert abs(other - RATE_MBIT) <= 0.1 * RATE_MBIT, f"other pair: {other:.1f} Mbit/s"
    assert running.root_rate("vnode-0") == 5_000_000
    assert running.root_rate("vnode-1") == RATE_MBIT * 10**6
    saved = running.emulator.load()
    assert saved is not None
    shaped = {v.vnode: v.output.rate_bps for s in saved.states for v in s.vifaces}
    assert shaped == {"vnode-0": 5_000_000, "vnode-1": 20_000_000, "vnode-2": 20_000_000,
                      "vnode-3": 20_000_000}  # fmt: skip


def test_the_input_direction_is_shaped_and_lifted_on_the_pnode_side(running: Running) -> None:
    assert running.root_rate("vnode-3", "input") is None
    running.emulator.set("vnode-3.if0.input", {"rate": "8mbit"})
    assert running.root_rate("vnode-3", "input") == 8_000_000
    assert running.root_rate("vnode-3") == RATE_MBIT * 10**6  # its output kept its rate
    running.emulator.set("vnode-3.if0.input", {"rate": None})
    assert running.root_rate("vnode-3", "input") is None
    saved = running.emulator.load()
    assert saved is not None and saved.state("pnode-2").vifaces[1].input.is_empty()


def test_link_down_makes_the_vnode_unreachable_and_up_restores_it(running: Running) -> None:
    assert running.reaches("vnode-0", "vnode-2")
    down = running.cli("link", running.name, "vnode-2.if0", "down")
    assert (down.returncode, down.stdout.strip()) == (0, "vnode-2.if0: down"), down.stderr
    try:
        assert not running.reaches("vnode-0", "vnode-2")
        assert running.reaches("vnode-1", "vnode-3")  # the other vnodes untouched
    finally:
        running.emulator.link("vnode-2.if0", up=True)
    assert running.reaches("vnode-0", "vnode-2")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("set", "{name}", "nosuch.if0.output", "rate=1mbit"), "names no vnode's iface"),
        (("set", "{name}", "vnode-0.eth9.output", "rate=1mbit"), "vnode vnode-0 has no iface"),
        (("set", "{name}", "vnode-0.if0.sideways", "rate=1mbit"), "does not end in .output"),
        (("set", "{name}", "vnode-0.if0.output", "speed=1mbit"), "unknown property 'speed'"),
        (("set", "{name}", "vnode-0.if0.output", "rate=10mbps"), "ambiguous"),
        (("set", "{name}", "vnode-0.if0.output", "rate=fast"), "not a number"),
        (("set", "{name}", "vnode-0.if0.output", "loss=200%"), "more than 100%"),
        (("set", "{name}", "vnode-0.if0.output", "rate"), "is not KEY=VALUE"),
        (("link", "{name}", "vnode-9.if0", "down"), "names no vnode's iface"),
        (("link", "{name}", "vnode-0.if0", "sideways"), "neither up nor down"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_changes_nothing(
    running: Running, args: tuple[str, ...], says: str
) -> None:
    plan = running.plan_bytes()
    rate = running.root_rate("vnode-0")
    refused = running.cli(*(arg.format(name=running.name) for arg in args))
    assert refused.returncode == 2, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert says in refused.stderr
    assert running.plan_bytes() == plan
    assert running.root_rate("vnode-0") == rate
    assert running.reaches("vnode-0", "vnode-2")


def test_delay_without_netem_is_refused_and_changes_nothing(running: Running) -> None:
    if netem_available():
        pytest.skip("this kernel has sch_netem: the refusal cannot be shown here")
    plan = running.plan_bytes()
    rate = running.root_rate("vnode-1")
    with pytest.raises(PreflightError, match="sch_netem"):
        running.emulator.set("vnode-1.if0.output", {"delay": "5ms"})
    assert running.plan_bytes() == plan
    assert running.root_rate("vnode-1") == rate
    with pytest.raises(UsageError, match="at least one property"):
        running.emulator.set("vnode-1.if0.output", {})
