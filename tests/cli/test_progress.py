"""While omnibed waits, a live progress display on a terminal: reserving and waiting with the
testbed's words, `emulate up` with one row per pnode counting its vnodes built; when stdout
is a pipe, nothing of it, even with stderr on a terminal (stdout carries the result only)."""

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


class Terminal:
    """A pseudo-terminal whose every written character is kept, escape sequences removed."""

    def __init__(self) -> None:
        self.reading_end, self.end = os.openpty()
        self.written = bytearray()
        self.reader = threading.Thread(target=self._read)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.reading_end, 65536)
            except OSError:  # EIO: every writer closed its end
                return
            if not data:
                return
            self.written.extend(data)

    def close(self) -> str:
        os.close(self.end)
        self.reader.join(timeout=30)
        os.close(self.reading_end)
        return ESCAPES.sub("", self.written.decode(errors="replace"))


def on_a_terminal(
    home: Path, *args: str, stdout_too: bool = True
) -> tuple[subprocess.CompletedProcess[str], str, str]:
    """`omnibed ARGS` with stderr on a pseudo-terminal and stdout on another one (or a pipe
    when not `stdout_too`): the run, what reached stdout and what reached stderr."""
    out, err = Terminal(), Terminal()
    try:
        done = subprocess.run(
            [OMNIBED, *args],
            env={**os.environ, "OMNIBED_HOME": str(home), "TERM": "xterm", "COLUMNS": "120"},
            stdin=subprocess.DEVNULL, stdout=out.end if stdout_too else subprocess.PIPE,
            stderr=err.end, text=True, timeout=600,
        )  # fmt: skip
    finally:
        printed, shown = out.close(), err.close()
    return done, done.stdout if not stdout_too else printed, shown


def test_reserve_and_emulate_up_show_progress_on_a_terminal(tmp_path: Path) -> None:
    home = tmp_path / "home"
    platform = tmp_path / "two-networks.yaml"
    platform.write_text(TWO_NETWORKS)
    reserved, printed, shown = on_a_terminal(home, "reserve", "-t", "local", "-n", "2")
    assert reserved.returncode == 0, shown
    name = printed.strip()
    try:
        assert printed.replace("\r\n", "\n") == f"{name}\n"
        assert f"reserving 2 node(s) on local as {name}" in shown, shown
        assert "2 pnode(s) ready" in shown, shown  # the local testbed's own words
        up, printed, shown = on_a_terminal(home, "emulate", "up", name, str(platform))
        assert up.returncode == 0, shown
        assert f"building {platform} on {name}" in shown, shown
        for pnode in ("pnode-1", "pnode-2"):
            assert f"{pnode}: vnodes built 1/1" in shown, shown
        assert "vnodes built" not in printed
        quiet, other, shown = on_a_terminal(home, "reserve", "-t", "local", stdout_too=False)
        assert quiet.returncode == 0, shown
        assert omnibed(home, "release", other.strip()).returncode == 0
        assert shown == "", shown  # stdout a pipe: no display, although stderr is a terminal
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
        up, _, shown = on_a_terminal(home, "emulate", "up", name, str(platform))
        assert up.returncode == 0, shown
        uploaded = re.findall(r"pnode-1: MiB of image progress uploaded (\d+)/(\d+)", shown)
        assert uploaded and all(int(total) > 0 for _, total in uploaded), shown
        assert "pnode-1: vnodes built 2/2" in shown, shown
    finally:
        assert omnibed(home, "release", name).returncode == 0
