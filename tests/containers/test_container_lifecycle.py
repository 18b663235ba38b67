"""Container vnodes stopped, started, frozen and thawed in place on the local testbed,
through the `omnibed` command: a stopped vnode's processes are gone and its sshd cannot be
reached, then answers again once started, with its files kept (and one that ended by
itself is started again); a frozen vnode's processes do not advance, then do once thawed,
the other vnode running throughout; `emulate down` with a frozen and a stopped vnode
leaves no container, mount, cgroup or process."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from omnibed.emulator.agent import cgroups
from tests.containers.conftest import leftovers, omnibed, reserve

pytestmark = [pytest.mark.root, pytest.mark.slow]

PLATFORM = """
networks: [{name: lan, cidr: 10.83.0.0/24}]
nodes:
  - {name: "box-{i}", per_pnode: 2, image: vnode, memory: 64MiB, ssh: true,
     ifaces: [{name: if0, network: lan}]}
"""
# the banner of sshd at `address`, read within 3 s, or the reason it could not be
REACH = """
import socket, sys
try:
    print(socket.create_connection((sys.argv[1], 22), timeout=3).recv(7).decode())
except OSError as exc:
    print(exc)
"""
COUNTER = "i=0; while :; do i=$((i+1)); echo $i > /root/count; sleep 0.05; done"


@pytest.fixture(scope="module")
def platform(image_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Two container vnodes with sshd on one local pnode."""
    path = tmp_path_factory.mktemp("lifecycle") / "boxes.yaml"
    path.write_text(PLATFORM)
    name, reservation_id = reserve(image_home, 1)
    try:
        up = omnibed(image_home, "emulate", "up", name, str(path))
        assert up.returncode == 0, up.stderr
        yield {"name": name, "id": reservation_id, "home": image_home}
    finally:
        omnibed(image_home, "release", name)


def emulate(platform: dict, *args: str):
    return omnibed(platform["home"], "emulate", args[0], platform["name"], *args[1:])


def vnodes(platform: dict) -> dict[str, dict]:
    shown = emulate(platform, "status", "--json")
    assert shown.returncode == 0, shown.stderr
    return {v["name"]: v for v in json.loads(shown.stdout)["vnodes"]}


def banner(platform: dict, source: str, target: str) -> str:
    address = vnodes(platform)[target]["ifaces"]["if0"]["address"].split("/")[0]
    seen = emulate(platform, "exec", source, "--", "python3", "-c", REACH, address)
    assert seen.returncode == 0, seen.stderr
    return seen.stdout.strip()


def processes(platform: dict, vnode: str) -> list[str]:
    """The pids in the vnode container's cgroups."""
    container = vnodes(platform)[vnode]["container"]["name"]
    found = set()
    for directory in cgroups.dirs(container).values():
        try:
            found |= set(Path(directory, "cgroup.procs").read_text().split())
        except FileNotFoundError:
            continue
    return sorted(found)


def counter(platform: dict, vnode: str) -> int:
    """The count COUNTER last wrote in `vnode`, read through one of its processes (its
    overlay is mounted in its own mount namespace only)."""
    pid = processes(platform, vnode)[0]
    return int(Path(f"/proc/{pid}/root/root/count").read_text())


def test_a_stopped_container_loses_its_processes_then_starts_with_its_files(
    platform: dict,
) -> None:
    assert banner(platform, "box-0", "box-1") == "SSH-2.0"
    kept = emulate(platform, "exec", "box-1", "--", "sh", "-c", "echo kept > /root/file")
    assert kept.returncode == 0, kept.stderr
    stopped = emulate(platform, "stop", "box-1")
    assert (stopped.returncode, stopped.stdout) == (0, "box-1: stopped\n"), stopped.stderr
    assert processes(platform, "box-1") == []
    listed = vnodes(platform)
    assert listed["box-1"]["run"] == "stopped" and listed["box-0"]["run"] == "running"
    assert banner(platform, "box-0", "box-1") != "SSH-2.0"
    started = emulate(platform, "start", "box-1")
    assert (started.returncode, started.stdout) == (0, "box-1: running\n"), started.stderr
    deadline = time.monotonic() + 60
    while banner(platform, "box-0", "box-1") != "SSH-2.0":  # sshd starts afresh
        assert time.monotonic() < deadline, "the restarted vnode's sshd never answered"
    seen = emulate(platform, "exec", "box-1", "--", "cat", "/root/file")
    assert seen.stdout == "kept\n", seen.stderr
    assert vnodes(platform)["box-1"]["run"] == "running"


def test_a_frozen_container_does_not_advance_until_thawed(platform: dict) -> None:
    loop = emulate(platform, "exec", "box-0", "--", "sh", "-c",
                   f"({COUNTER}) >/dev/null 2>&1 &")  # fmt: skip
    assert loop.returncode == 0, loop.stderr
    time.sleep(0.5)
    frozen = emulate(platform, "freeze", "box-0")
    assert (frozen.returncode, frozen.stdout) == (0, "box-0: frozen\n"), frozen.stderr
    try:
        assert vnodes(platform)["box-0"]["run"] == "frozen"
        assert processes(platform, "box-0") != []  # frozen, not gone
        first = counter(platform, "box-0")
        time.sleep(1)
        assert counter(platform, "box-0") == first
        assert banner(platform, "box-1", "box-1") == "SSH-2.0"  # the other vnode runs
    finally:
        thawed = emulate(platform, "thaw", "box-0")
    assert thawed.returncode == 0, thawed.stderr
    time.sleep(1)
    assert counter(platform, "box-0") > first + 5
    assert vnodes(platform)["box-0"]["run"] == "running"


def test_start_revives_a_container_vnode_that_ended_by_itself(platform: dict) -> None:
    container = vnodes(platform)["box-1"]["container"]["name"]
    assert cgroups.kill([container]) == {container}  # its init and every process in it
    deadline = time.monotonic() + 30
    while vnodes(platform)["box-1"]["run"] != "stopped":  # as its runtime reports it
        assert time.monotonic() < deadline, "the killed vnode was never reported stopped"
    started = emulate(platform, "start", "box-1")
    assert (started.returncode, started.stdout) == (0, "box-1: running\n"), started.stderr
    assert vnodes(platform)["box-1"]["run"] == "running"
    assert emulate(platform, "exec", "box-1", "--", "true").returncode == 0


def test_down_with_a_frozen_and_a_stopped_vnode_leaves_nothing(platform: dict) -> None:
    frozen = emulate(platform, "freeze", "box-0")
    assert frozen.returncode == 0, frozen.stderr
    stopped = emulate(platform, "stop", "box-1")
    assert stopped.returncode == 0, stopped.stderr
    down = emulate(platform, "down")
    assert down.returncode == 0, down.stderr
    assert leftovers(f"{platform['id']}-") == {
        "containers": [], "mounts": [], "cgroups": [], "processes": []
    }  # fmt: skip
