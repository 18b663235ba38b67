"""The emulator end to end on the local testbed: the mode it picks per underlay profile,
vnodes reaching each other across pnodes, rate shaping measured with iperf3, the preflight
refusal of delay without sch_netem, and rollback after a failure on one pnode."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest

from omnibed.api import Omnibed
from omnibed.core.errors import ApplyError, PlatformError, PreflightError
from omnibed.emulator.coordinator import PLAN_FILE, Emulator
from omnibed.emulator.model import load_platform
from omnibed.emulator.planner import Plan, instance_tag

pytestmark = pytest.mark.root

EXAMPLES = Path(__file__).parents[2] / "examples"
TWO_PER_PNODE = """
networks:
  - {name: lan, cidr: 10.77.0.0/24}
nodes:
  - name: vnode-{i}
    per_pnode: 2
    ifaces:
      - {name: if0, network: lan}
"""


@pytest.fixture
def api(tmp_path: Path) -> Omnibed:
    return Omnibed(home=tmp_path / "home")


@contextmanager
def reserved(api: Omnibed, nodes: int, profile: str, extra_nics: int = 0) -> Iterator[str]:
    request = api.make_request(
        "local",
        nodes=nodes,
        walltime=timedelta(hours=1),
        extra_nics=extra_nics,
        options={"profile": profile},
    )
    api.reserve("local", request)
    try:
        api.wait(request.name)
        yield request.name
    finally:
        api.release(request.name)


def netns_names() -> set[str]:
    listing = subprocess.run(["ip", "-j", "netns", "list"], capture_output=True, text=True)
    return {ns["name"] for ns in json.loads(listing.stdout or "[]")}


def netem_available() -> bool:
    """Whether this kernel accepts a netem qdisc (tried in a throwaway namespace)."""
    tried = subprocess.run(
        ["unshare", "-n", "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"],
        capture_output=True,
    )
    return tried.returncode == 0


def vnode_namespaces_of(name: str) -> set[str]:
    """Namespaces the emulation of reservation `name` would name its vnodes with."""
    return {ns for ns in netns_names() if ns.startswith(f"ob-{instance_tag(name)}-")}


def pnode_links_in_group(api: Omnibed, name: str, group: int) -> list[str]:
    """Links of the emulation's group still present in the pnodes' namespaces."""
    found = []
    for node in api.nodes(name):
        links = json.loads(
            subprocess.run(
                ["ip", "-j", "-n", node.hostname, "link", "show"], capture_output=True, text=True
            ).stdout
        )
        found += [link["ifname"] for link in links if link.get("group") == str(group)]
    return found


def addresses(plan: Plan) -> dict[str, str]:
    return {v.name: v.ifaces[0].address.split("/")[0] for v in plan.vnodes}


@pytest.mark.parametrize(
    ("profile", "extra_nics", "pnodes", "mode"),
    [
        ("baremetal", 0, 3, "vxlan"),  # only the control NIC: never bridged
        ("baremetal", 1, 2, "bridge"),
        ("xen", 0, 2, "vxlan"),
        ("xen", 1, 3, "bridge"),
        ("kvm", 0, 3, "vxlan"),
        ("nomcast", 0, 2, "vxlan"),
    ],
)
def test_mode_reachability_and_clean_down(
    api: Omnibed, profile: str, extra_nics: int, pnodes: int, mode: str
) -> None:
    with reserved(api, pnodes, profile, extra_nics) as name:
        emulator = Emulator(api.access(name))
        plan = emulator.up(load_platform(TWO_PER_PNODE))
        try:
            assert [n.mode for n in plan.networks] == [mode], plan.summary()
            assert len({v.pnode for v in plan.vnodes}) == pnodes
            targets = " ".join(addresses(plan).values())
            everyone = f"for a in {targets}; do ping -c 1 -W 2 $a >/dev/null || exit 9; done"
            results = emulator.exec(None, ["sh", "-c", everyone])
            assert {v: r.exit_status for v, r in results.items()} == {
                v.name: 0 for v in plan.vnodes
            }
            mtu = plan.networks[0].mtu
            far = addresses(plan)[plan.vnodes[-1].name]
            full_frame = emulator.exec(
                [plan.vnodes[0].name],
                ["ping", "-c", "1", "-W", "2", "-M", "do", "-s", str(mtu - 28), far],
            )
            assert full_frame[plan.vnodes[0].name].exit_status == 0, "MTU not carried"
            checks = emulator.connectivity()
            assert all(check.ok for check in checks), checks
            pnode_of = {v.name: v.pnode for v in plan.vnodes}
            # a ring: each pnode is checked from once and reached once, not every pair
            assert sorted(pnode_of[c.source] for c in checks) == sorted(plan.pnodes)
            assert sorted(pnode_of[c.target] for c in checks) == sorted(plan.pnodes)
        finally:
            emulator.down()
        assert {v.netns for v in plan.vnodes} & netns_names() == set()
        assert pnode_links_in_group(api, name, plan.group) == []
        assert not (api.reservation_dir(name) / PLAN_FILE).exists()


def _iperf_mbps(emulator: Emulator, client: str, server: str, server_address: str) -> float:
    started = emulator.exec([server], ["iperf3", "-s", "-D", "-1"])
    assert started[server].exit_status == 0, started[server].stderr
    run = emulator.exec([client], ["iperf3", "-c", server_address, "-t", "6", "-O", "2", "-J"])
    assert run[client].exit_status == 0, run[client].stderr
    report = json.loads(run[client].stdout)
    return report["end"]["sum_received"]["bits_per_second"] / 1e6


@pytest.mark.parametrize("rate_mbit", [10, 100])
def test_rate_shaping_measured_with_iperf3(api: Omnibed, rate_mbit: int) -> None:
    platform = load_platform(f"""
networks:
  - {{name: lan, cidr: 10.78.0.0/24}}
nodes:
  - name: vnode-{{i}}
    per_pnode: 1
    ifaces:
      - name: if0
        network: lan
        output: {{rate: {rate_mbit}mbit}}
        input: {{rate: {rate_mbit}mbit}}
""")
    with reserved(api, 2, "baremetal") as name:
        emulator = Emulator(api.access(name))
        plan = emulator.up(platform)
        try:
            a, b = (v.name for v in plan.vnodes)
            assert plan.vnode(a).pnode != plan.vnode(b).pnode
            measured = _iperf_mbps(emulator, a, b, addresses(plan)[b])
        finally:
            emulator.down()
    assert abs(measured - rate_mbit) <= 0.1 * rate_mbit, f"{measured:.1f} Mbit/s"


def test_delay_fails_preflight_without_netem_and_changes_nothing(api: Omnibed) -> None:
    if netem_available():
        pytest.skip("this kernel has sch_netem: the refusal cannot be shown here")
    with reserved(api, 2, "baremetal") as name:
        emulator = Emulator(api.access(name))
        with pytest.raises(PreflightError) as refused:
            emulator.up(load_platform(EXAMPLES / "delay.yaml"))
        assert set(refused.value.missing) == {"pnode-1", "pnode-2"}
        assert "sch_netem" in str(refused.value)
        assert vnode_namespaces_of(name) == set()
        assert not (api.reservation_dir(name) / PLAN_FILE).exists()
        shaped = emulator.up(load_platform(EXAMPLES / "shaped.yaml"))  # rate alone works
        assert len(shaped.vnodes) == 4
        emulator.down()


def test_failure_on_one_pnode_rolls_back_every_pnode(api: Omnibed) -> None:
    platform = load_platform(TWO_PER_PNODE)
    with reserved(api, 2, "baremetal") as name:
        emulator = Emulator(api.access(name))
        plan = emulator.up(platform)
        emulator.down()
        # The second pnode already holds a non-bridge link under the bridge's name.
        second = next(n for n in api.nodes(name) if n.id == "pnode-2")
        bridge = plan.state("pnode-2").bridges[0].name
        subprocess.run(
            [
                "ip",
                "-n",
                second.hostname,
                "link",
                "add",
                bridge,
                "type",
                "veth",
                "peer",
                "name",
                f"{bridge}p",
            ],
            check=True,
        )
        with pytest.raises(ApplyError) as failed:
            emulator.up(platform)
        assert list(failed.value.failures) == ["pnode-2"]
        assert failed.value.rolled_back
        assert {v.netns for v in plan.vnodes} & netns_names() == set()
        assert pnode_links_in_group(api, name, plan.group) == []
        assert not (api.reservation_dir(name) / PLAN_FILE).exists()


FORCED_BRIDGE = """
networks:
  - {name: lan, cidr: 10.79.0.0/24, mode: bridge}
nodes:
  - name: vnode-{i}
    per_pnode: 1
    ifaces:
      - {name: if0, network: lan}
"""


def test_forced_bridge_on_a_locked_underlay(api: Omnibed) -> None:
    """Refused with the reason; with force, built and reported unreachable."""
    with reserved(api, 2, "kvm") as name:
        emulator = Emulator(api.access(name))
        with pytest.raises(PlatformError, match="foreign MAC") as refused:
            emulator.up(load_platform(FORCED_BRIDGE))
        assert "--force" in str(refused.value)
        assert vnode_namespaces_of(name) == set()
        plan = emulator.up(load_platform(FORCED_BRIDGE), force=True)
        try:
            assert plan.unreachable_expected == ("lan",)
            checks = emulator.connectivity()
            assert checks and not any(check.ok for check in checks)
        finally:
            emulator.down()


def test_reserve_and_run_with_a_platform_through_the_cli(tmp_path: Path) -> None:
    omnibed = str(Path(sys.executable).with_name("omnibed"))
    env = {**os.environ, "OMNIBED_HOME": str(tmp_path / "home"), "COLUMNS": "200"}
    result = subprocess.run(
        [
            omnibed,
            "reserve-and-run",
            "--testbed",
            "local",
            "-o",
            "profile=xen",
            "--nodes",
            "2",
            "--platform",
            str(EXAMPLES / "listing1.yaml"),
            "--",
            "hostname",
            "-I",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "vnetwork vnetwork (192.168.0.0/22): vxlan" in result.stdout
    assert "why:" in result.stdout
    assert "vnode-0 -> vnode-2 reachable" in result.stdout
    for i in range(4):
        assert f"[vnode-{i}] 192.168.0.{i + 1}" in result.stdout
    assert "4/4 succeeded" in result.stderr and "released" in result.stderr
    listed = subprocess.run([omnibed, "ls", "--json"], env=env, capture_output=True, text=True)
    assert json.loads(listed.stdout) == []


def test_emulate_status_json_through_the_cli(api: Omnibed) -> None:
    omnibed = str(Path(sys.executable).with_name("omnibed"))
    env = {**os.environ, "OMNIBED_HOME": str(api.home)}
    with reserved(api, 2, "xen", extra_nics=1) as name:
        up = subprocess.run(
            [omnibed, "emulate", "up", name, str(EXAMPLES / "listing1.yaml")],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert up.returncode == 0, up.stderr
        status = json.loads(
            subprocess.run(
                [omnibed, "emulate", "status", name, "--json"],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            ).stdout
        )
        network = status["networks"][0]
        assert (network["mode"], network["nics"]) == (
            "bridge",
            {"pnode-1": "eth1", "pnode-2": "eth1"},
        )
        assert "extra NIC" in network["reason"]
        assert [v["pnode"] for v in status["vnodes"]] == [
            "pnode-1",
            "pnode-1",
            "pnode-2",
            "pnode-2",
        ]
        assert all(state["complete"] for state in status["pnodes"].values())
        ran = subprocess.run(
            [omnibed, "emulate", "exec", name, "vnode-3", "--", "hostname", "-I"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert ran.stdout.split()[0] == "192.168.0.4", ran.stderr  # one vnode: as is
        down = subprocess.run(
            [omnibed, "emulate", "down", name], env=env, capture_output=True, text=True, timeout=120
        )
        assert "removed 4 vnodes" in down.stdout
