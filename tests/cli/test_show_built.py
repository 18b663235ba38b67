"""`omnibed emulate show` of a platform really built on the local testbed: the picture names
every pnode, vnode and vnetwork with the mode `emulate up` chose for it, and renders."""

from __future__ import annotations

import json
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import png
import pytest

from tests.cli.support import Built, omnibed

pytestmark = pytest.mark.root
SVG = "{http://www.w3.org/2000/svg}"


def boxes(svg: bytes) -> list[list[str]]:
    """The text lines of each node Graphviz drew (vnodes and vnetworks)."""
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    return [
        [t.text or "" for t in group.iter(f"{SVG}text")]
        for group in root.iter(f"{SVG}g")
        if group.get("class") == "node"
    ]


@pytest.mark.skipif(not shutil.which("dot"), reason="Graphviz's dot is not installed")
@pytest.mark.skipif(not shutil.which("rsvg-convert"), reason="librsvg2-bin is not installed")
def test_svg_of_a_built_platform_names_all_with_the_modes_chosen(
    built: Built, tmp_path: Path
) -> None:
    drawn = tmp_path / "platform.svg"
    done = omnibed(built.home, "emulate", "show", built.name, "-f", "svg", "-o", str(drawn))
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    status = json.loads(omnibed(built.home, "emulate", "status", built.name, "--json").stdout)
    svg = drawn.read_bytes()
    by_head = {lines[0]: lines[1:] for lines in boxes(svg)}
    assert {v["name"] for v in status["vnodes"]} == {"node-0", "node-1"}
    for vnode in status["vnodes"]:
        assert vnode["name"] in by_head, (vnode["name"], by_head)
    for network in status["networks"]:
        lines = by_head[network["name"]]
        chosen = f"VXLAN {network['vni']} over " if network["mode"] == "vxlan" else "bridge"
        assert network["cidr"] in lines and any(line.startswith(chosen) for line in lines), lines
    texts = {t.text for t in ET.fromstring(svg).iter(f"{SVG}text")}
    for pnode in {v["pnode"] for v in status["vnodes"]}:
        assert f"pnode {pnode}" in texts, (pnode, texts)
    subprocess.run(
        ["rsvg-convert", "-b", "white", "-o", str(tmp_path / "platform.png"), str(drawn)],
        check=True,
    )
    width, height, rows, _ = png.Reader(filename=str(tmp_path / "platform.png")).asRGBA8()
    dark = sum(1 for row in rows for k in range(0, len(row), 4) if sum(row[k : k + 3]) < 300)
    assert width > 100 and height > 100
    assert dark > 0.005 * width * height, (dark, width, height)  # lines and text, not blank


def test_mermaid_of_a_built_platform_goes_to_a_pipe_whole(built: Built) -> None:
    done = omnibed(built.home, "emulate", "show", built.name)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert f"title: \"{built.name}\"\n---\nflowchart LR\n" in done.stdout
    assert done.stdout.count("  subgraph ") == 2  # one per pnode
    for name in ("node-0", "node-1", "lan", "wan"):
        assert f'"{name}' in done.stdout, name
