"""The picture of a platform (`omnibed emulate show`): DOT, SVG and Mermaid from a plan or a
platform file, checked on what they draw."""

from __future__ import annotations

import os
import pty
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import png
import pytest

from omnibed.core.types import Nic, NicRole, Tri
from omnibed.emulator import picture
from omnibed.emulator.model import (
    IfaceSpec,
    LinkSpec,
    Network,
    Platform,
    RouteSpec,
    VNodeSpec,
    load_platform,
)
from omnibed.emulator.modes import PnodeFacts
from omnibed.emulator.planner import Plan, plan

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
OMNIBED = str(Path(sys.executable).with_name("omnibed"))
SVG = "{http://www.w3.org/2000/svg}"


def facts(i: int) -> PnodeFacts:
    """Pnode `p<i>`: control NIC eth0, one extra NIC eth1 that passes foreign MACs."""
    control = Nic(
        "eth0", f"52:54:00:00:00:{i:02x}", NicRole.CONTROL, 1500, (f"10.0.0.{i + 1}/24",),
        None, Tri.YES, Tri.YES,
    )  # fmt: skip
    extra = Nic("eth1", f"52:54:00:01:00:{i:02x}", NicRole.EXTRA, 1500, (), None, Tri.YES, Tri.YES)
    return PnodeFacts(f"p{i}", f"10.0.0.{i + 1}", (control, extra))


def two_networks() -> Platform:
    """Two vnetworks over two pnodes with one spare NIC each: `lan` is bridged over eth1, so
    `wan` goes VXLAN over eth0; `wan` is shaped."""
    shaped = LinkSpec(rate="10mbit", delay="5ms")
    return Platform(
        [Network("lan", "10.8.0.0/24"), Network("wan", "10.9.0.0/24")],
        [
            VNodeSpec(
                "node-{i}",
                per_pnode=2,
                ifaces=[IfaceSpec("if0", "lan"), IfaceSpec("if1", "wan", output=shaped)],
            ),
            VNodeSpec("router.1", pnode=1, ifaces=[IfaceSpec("if0", "wan", address="10.9.0.254")]),
        ],
    )


@pytest.fixture(scope="module")
def built() -> Plan:
    return plan(two_networks(), [facts(0), facts(1)], "pic")


def test_plan_picture_places_vnodes_and_names_each_vnetwork_mode(built: Plan) -> None:
    drawn = picture.of_plan(built)
    assert drawn.pnodes == ("p0", "p1")
    assert {(v.name, v.pnode) for v in drawn.vnodes} == {
        ("node-0", "p0"), ("node-1", "p0"), ("node-2", "p1"), ("node-3", "p1"), ("router.1", "p1"),
    }  # fmt: skip
    lan, wan = drawn.networks
    assert lan.details == ("10.8.0.0/24", "bridge over eth1", "MTU 1500")
    vni = built.networks[1].vni
    assert wan.details == ("10.9.0.0/24", f"VXLAN {vni} over eth0", "MTU 1450")
    assert len(drawn.wires) == 4 * 2 + 1
    wire = next(w for w in drawn.wires if (w.vnode, w.network) == ("node-0", "wan"))
    assert wire.details == ("if1 10.9.0.1/24", "out 10 Mbit/s, 5 ms")
    router = next(w for w in drawn.wires if w.vnode == "router.1")
    assert router.details == ("if0 10.9.0.254/24",)


def test_mode_line_of_a_bridge_without_uplink_and_of_different_nics(built: Plan) -> None:
    lan = built.networks[0]
    alone = type(lan)(**{**lan.__dict__, "nics": {"p0": None}})
    assert picture.mode_line(alone) == "bridge, on one pnode"
    mixed = type(lan)(**{**lan.__dict__, "nics": {"p0": "eth1", "p1": "eth2"}})
    assert picture.mode_line(mixed) == "bridge over p0: eth1, p1: eth2"


def test_dot_puts_each_pnode_in_a_cluster_and_labels_edges(built: Plan) -> None:
    text = picture.dot(picture.of_plan(built))
    assert text.count("subgraph cluster_") == 2
    assert 'label="pnode p0"' in text and 'label="pnode p1"' in text
    assert "bridge over eth1" in text and "VXLAN" in text
    assert text.count(" -- ") == 9  # one edge per viface
    assert "if1 10.9.0.1/24\\nout 10 Mbit/s, 5 ms" in text


def test_mermaid_has_a_subgraph_per_pnode_and_a_link_per_viface(built: Plan) -> None:
    text = picture.mermaid(picture.of_plan(built))
    lines = text.splitlines()
    assert "flowchart LR" in lines
    assert sum(1 for line in lines if line.startswith("  subgraph ")) == 2
    assert sum(1 for line in lines if " ---|" in line) == 9
    assert any('"router.1"' in line for line in lines)
    assert any("bridge over eth1" in line and line.strip().startswith("n0([") for line in lines)


def test_mermaid_labels_cannot_break_out_of_their_quotes() -> None:
    text = picture.mermaid(
        picture.Picture('a"b', (), (picture.Vnode("v", None, ('x"] --> y["<b>',)),), (), ())
    )
    box = next(line for line in text.splitlines() if line.startswith("  v0["))
    assert box.count('"') == 2, box
    assert "#quot;" in box and "#lt;b#gt;" in box


def test_platform_file_picture_has_no_pnodes_and_says_mode_is_chosen_at_build() -> None:
    drawn = picture.of_platform(load_platform(EXAMPLES / "shaped.yaml"), "shaped.yaml")
    assert drawn.pnodes == ()
    (vnode,) = drawn.vnodes
    assert (vnode.name, vnode.pnode, vnode.details) == ("vnode-{i}", None, ("2 per pnode",))
    (network,) = drawn.networks
    assert network.details == ("192.168.10.0/24", "mode chosen at build")
    (wire,) = drawn.wires
    assert wire.details == ("if0 auto", "out 10 Mbit/s", "in 100 Mbit/s")
    assert "subgraph" not in picture.mermaid(drawn)


@pytest.mark.skipif(not shutil.which("dot"), reason="Graphviz's dot is not installed")
@pytest.mark.skipif(not shutil.which("rsvg-convert"), reason="librsvg2-bin is not installed")
def test_svg_of_two_networks_parses_names_everything_and_renders_not_blank(
    built: Plan, tmp_path: Path
) -> None:
    drawn = picture.svg(picture.of_plan(built))
    root = ET.fromstring(drawn)
    assert root.tag == f"{SVG}svg"
    texts = {t.text for t in root.iter(f"{SVG}text")}
    for name in ("node-0", "node-1", "node-2", "node-3", "router.1", "lan", "wan"):
        assert name in texts, (name, texts)
    (tmp_path / "platform.svg").write_bytes(drawn)
    subprocess.run(
        ["rsvg-convert", "-b", "white", "-o", str(tmp_path / "platform.png"),
         str(tmp_path / "platform.svg")],
        check=True,
    )  # fmt: skip
    width, height, rows, _ = png.Reader(filename=str(tmp_path / "platform.png")).asRGBA8()
    dark = sum(1 for row in rows for k in range(0, len(row), 4) if sum(row[k : k + 3]) < 300)
    assert width > 100 and height > 100
    assert dark > 0.005 * width * height, (dark, width, height)  # lines and text, not blank


def omnibed(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMNIBED_HOME": str(home), "COLUMNS": "200"}
    return subprocess.run(
        [OMNIBED, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["emulate", "show"], ["reservation name or --platform"]),
        (["emulate", "show", "--platform", "/nowhere.yaml"], ["/nowhere.yaml", "does not exist"]),
        (["emulate", "show", "nothing-here"], ["nothing-here"]),
        (
            ["emulate", "show", "--platform", str(EXAMPLES / "vxlan.yaml"), "--format", "png"],
            ["png", "svg, mermaid or dot"],
        ),
    ],
)
def test_show_refuses_bad_input_in_one_line(
    tmp_path: Path, args: list[str], words: list[str]
) -> None:
    result = omnibed(tmp_path, *args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_show_refuses_svg_to_a_terminal(tmp_path: Path) -> None:
    platform = str(EXAMPLES / "vxlan.yaml")
    terminal, other_end = pty.openpty()
    try:
        result = subprocess.run(
            [OMNIBED, "emulate", "show", "--platform", platform, "-f", "svg"],
            env={**os.environ, "OMNIBED_HOME": str(tmp_path)},
            stdin=subprocess.DEVNULL, stdout=other_end, stderr=subprocess.PIPE, text=True,
            timeout=120,
        )  # fmt: skip
    finally:
        os.close(terminal)
        os.close(other_end)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: SVG is not for a terminal: add -o FILE.svg or pipe it"


def test_show_draws_a_platform_file_as_mermaid_and_to_a_file(tmp_path: Path) -> None:
    platform = str(EXAMPLES / "vxlan.yaml")
    result = omnibed(tmp_path, "emulate", "show", "--platform", platform)
    assert result.returncode == 0, result.stderr
    assert "flowchart LR" in result.stdout and "node-{i}" in result.stdout
    target = tmp_path / "vxlan.dot"
    result = omnibed(
        tmp_path, "emulate", "show", "--platform", platform, "-f", "dot", "-o", str(target)
    )
    assert result.returncode == 0, result.stderr
    assert target.read_text().startswith("graph ")


def test_readme_picture_is_what_show_draws_of_the_example(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    written = re.search(
        r"<!-- picture:start -->\n```mermaid\n(.*?)```\n<!-- picture:end -->", readme, re.S
    )
    assert written is not None, "README lost its picture markers"
    drawn = omnibed(tmp_path, "emulate", "show", "--platform", str(EXAMPLES / "shaped.yaml"))
    assert written.group(1) == drawn.stdout, "README's picture is stale: paste the command's output"


@pytest.fixture(scope="module")
def routed() -> Plan:
    """examples/routed.yaml on two pnodes: a-0, b-0 on p0, a-1, b-1 on p1, gw forwarding."""
    return plan(load_platform(EXAMPLES / "routed.yaml"), [facts(0), facts(1)], "routed")


def test_a_routed_plan_draws_its_gateway_and_each_vnodes_routes(routed: Plan) -> None:
    drawn = picture.of_plan(routed)
    boxes = {v.name: v for v in drawn.vnodes}
    assert [name for name, v in boxes.items() if v.forward] == ["gw"]
    gw_left = next(v.address for s in routed.states for v in s.vifaces
                   if (v.vnode, v.ifname) == ("gw", "if0")).split("/")[0]  # fmt: skip
    assert "route 10.20.2.0/24 via " + gw_left in boxes["a-0"].details
    assert not any(line.startswith("route ") for line in boxes["gw"].details)
    text = picture.dot(drawn)
    gw_line = next(line for line in text.splitlines() if '"gw' in line)
    assert "forwards" in gw_line and "bold" in gw_line
    assert f"route 10.20.2.0/24 via {gw_left}" in text
    chart = picture.mermaid(drawn)
    assert any(line.strip().startswith("v") and '{{"gw' in line for line in chart.splitlines())
    assert f"route 10.20.2.0/24 via {gw_left}" in chart


@pytest.mark.skipif(not shutil.which("dot"), reason="Graphviz's dot is not installed")
def test_the_svg_of_a_routed_plan_shows_the_gateway_and_the_routes(routed: Plan) -> None:
    root = ET.fromstring(picture.svg(picture.of_plan(routed)))
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert "forwards between its vnetworks" in texts
    assert sum(1 for t in texts if t and t.startswith("route 10.20.")) == 4, texts


def test_a_platform_file_picture_says_which_vnodes_forward_and_how_routes_are_made() -> None:
    drawn = picture.of_platform(load_platform(EXAMPLES / "routed.yaml"), "routed.yaml")
    assert [v.name for v in drawn.vnodes if v.forward] == ["gw"]
    assert "routes: auto" in picture.dot(drawn)
    own = Platform(
        [Network("lan", "10.8.0.0/24"), Network("wan", "10.9.0.0/24")],
        [
            VNodeSpec("r", forward=True, ifaces=[IfaceSpec("if0", "lan"), IfaceSpec("if1", "wan")]),
            VNodeSpec("c", ifaces=[IfaceSpec("if0", "lan", address="10.8.0.9")],
                      routes=[RouteSpec("10.9.0.0/24", "10.8.0.1")]),
        ],
    )  # fmt: skip
    chart = picture.mermaid(picture.of_platform(own, "own"))
    assert "route 10.9.0.0/24 via 10.8.0.1" in chart
    assert "routes: auto" not in chart
