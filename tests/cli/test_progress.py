"""While omnibed waits, a live progress display on a terminal: reserving and waiting with the
testbed's words, `emulate up` with one row per pnode counting its vnodes built; on a pipe,
nothing of it (stdout carries the result only, stderr stays empty)."""

from __future__ import annotations

import os
import re
import subprocess
import threading
from pathlib import Path

import pytest

from tests.cli.support import OMNIBED, TWO_NETWORKS, Built, omnibed

pytestmark = pytest.mark.root
ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def on_a_terminal(home: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], str]:
    """`omnibed ARGS` with stderr on a pseudo-terminal and stdout a pipe: what it printed to
    stdout, and every character written to the terminal, escape sequences removed."""
    terminal, other_end = os.openpty()
    written = bytearray()

    def read() -> None:
        while True:
            try:
                data = os.read(terminal, 65536)
            except OSError:  # EIO: every writer closed its end
                return
            if not data:
                return
            written.extend(data)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        done = subprocess.run(
            [OMNIBED, *args],
            env={**os.environ, "OMNIBED_HOME": str(home), "TERM": "xterm", "COLUMNS": "120"},
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=other_end, text=True,
            timeout=600,
        )  # fmt: skip
    finally:
        os.close(other_end)
        reader.join(timeout=30)
        os.close(terminal)
    return done, ESCAPES.sub("", written.decode(errors="replace"))


def test_reserve_and_emulate_up_show_progress_on_a_terminal(tmp_path: Path) -> None:
    home = tmp_path / "home"
    platform = tmp_path / "two-networks.yaml"
    platform.write_text(TWO_NETWORKS)
    reserved, shown = on_a_terminal(home, "reserve", "-t", "local", "-n", "2")
    assert reserved.returncode == 0, shown
    name = reserved.stdout.strip()
    try:
        assert reserved.stdout == f"{name}\n"
        assert f"reserving 2 node(s) on local as {name}" in shown, shown
        assert "2 pnode(s) ready" in shown, shown  # the local testbed's own words
        up, shown = on_a_terminal(home, "emulate", "up", name, str(platform))
        assert up.returncode == 0, shown
        assert f"building {platform} on {name}" in shown, shown
        for pnode in ("pnode-1", "pnode-2"):
            assert f"{pnode}: vnodes built 1/1" in shown, shown
        assert "\x1b" not in up.stdout and "vnodes built" not in up.stdout
    finally:
        assert omnibed(home, "release", name).returncode == 0


def test_on_a_pipe_nothing_but_the_result(built: Built) -> None:
    assert (built.reserved.stdout, built.reserved.stderr) == (f"{built.name}\n", "")
    assert built.up.stderr == ""
    assert "\x1b" not in built.up.stdout and "vnodes built" not in built.up.stdout
    assert "lan" in built.up.stdout and "wan" in built.up.stdout  # the summary of modes


CONTAINERS = """\
networks:
  - {name: lan, cidr: 10.83.0.0/24}
nodes:
  - name: box-{i}
    per_pnode: 2
    image: progress
    ifaces:
      - {name: if0, network: lan}
"""


@pytest.mark.slow
def test_emulate_up_shows_each_pnode_uploading_its_image(tmp_path: Path) -> None:
    home = tmp_path / "home"
    image = omnibed(home, "image", "build", "progress", "--packages", "python3")
    assert image.returncode == 0, image.stderr
    platform = tmp_path / "containers.yaml"
    platform.write_text(CONTAINERS)
    reserved = omnibed(home, "reserve", "-t", "local", "-n", "1")
    assert reserved.returncode == 0, reserved.stderr
    name = reserved.stdout.strip()
    try:
        up, shown = on_a_terminal(home, "emulate", "up", name, str(platform))
        assert up.returncode == 0, shown
        uploaded = re.findall(r"pnode-1: MiB of image progress uploaded (\d+)/(\d+)", shown)
        assert uploaded and all(int(total) > 0 for _, total in uploaded), shown
        assert "pnode-1: vnodes built 2/2" in shown, shown
    finally:
        assert omnibed(home, "release", name).returncode == 0
