"""Helpers of the local testbed's root tests: SSH as root, raw frames, leftover checks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from omnibed.core import ssh
from omnibed.core.login import Login
from omnibed.core.types import Reservation
from omnibed.providers.local import LocalProvider, cgroups

FRAMECHECK = Path(__file__).with_name("framecheck.py")

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the local testbed needs root")


def run_as_root(
    provider: LocalProvider, reservation: Reservation, key: ssh.KeyPair, command: str,
    known_hosts: Path,
) -> dict[str, ssh.CommandResult]:
    """Run `command` on every pnode over real SSH with the endpoint `root_access` gives."""
    endpoints = {
        node.id: provider.root_access(reservation, node, Login.of(key, known_hosts))
        for node in provider.list_nodes(reservation)
    }
    return ssh.run_many(endpoints, command, known_hosts)


def frames_seen(
    sender_netns: str, receiver_netns: str, interface: str, frames: list[tuple[str, str, str]]
) -> list[str]:
    """Send `frames` (src MAC, dst MAC, token) from one namespace; the tokens the other saw.

    The last frame is the end marker and must be one the switch delivers.
    """
    end = frames[-1][2]
    receiver = subprocess.Popen(
        ["ip", "netns", "exec", receiver_netns, sys.executable, str(FRAMECHECK),
         "recv", interface, end],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert receiver.stdout is not None
        assert receiver.stdout.readline().strip() == "ready"
        specs = [",".join(frame) for frame in frames]
        subprocess.run(
            ["ip", "netns", "exec", sender_netns, sys.executable, str(FRAMECHECK),
             "send", interface, *specs],
            check=True,
        )
        out, _ = receiver.communicate(timeout=60)
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()
    assert receiver.returncode == 0, f"the end marker frame {end!r} never arrived"
    return out.split()


def netns_pids(reservation: Reservation) -> set[int]:
    """Every process living in one of the reservation's namespaces right now."""
    pids: set[int] = set()
    for name in [*reservation.extra["netns"], reservation.extra["switch_netns"]]:
        out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
        pids.update(int(pid) for pid in out.stdout.split())
    return pids


def leftovers(reservation: Reservation, state_dir: Path, pids: set[int]) -> list[str]:
    """What of `reservation` still exists: namespaces, root-ns links, `pids`, cgroup, dir."""
    prefix = reservation.id
    netns = os.listdir("/run/netns") if os.path.isdir("/run/netns") else []
    found = [f"netns {name}" for name in netns if name.startswith(prefix)]
    found += [f"link {name}" for name in os.listdir("/sys/class/net") if name.startswith(prefix)]
    found += [f"process {pid}" for pid in sorted(pids) if _alive(pid)]
    cgroup = cgroups.path_for(reservation.id)
    if cgroup is not None and cgroup.exists():
        found.append(f"cgroup {cgroup}")
    if (state_dir / reservation.id).exists():
        found.append(f"directory {state_dir / reservation.id}")
    return found


def _alive(pid: int) -> bool:
    """True if `pid` exists and is not a zombie."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


RESERVE_ONE = """
import sys
from datetime import timedelta
from omnibed.core.errors import OmnibedError
from omnibed.core.types import ReservationRequest
from omnibed.providers.local import LocalProvider
provider = LocalProvider(__import__("pathlib").Path(sys.argv[1]))
provider.lock_timeout = float(sys.argv[3])
try:
    reservation = provider.reserve(
        ReservationRequest(name=sys.argv[2], nodes=int(sys.argv[4]), duration=timedelta(hours=1))
    )
except OmnibedError as error:
    print(error)
    sys.exit(1)
print("reserved", reservation.id)
provider.release(reservation)
"""


def reserve_in_child(
    state_dir: Path, name: str, lock_timeout: float, timeout: float = 60
) -> subprocess.CompletedProcess:
    """Reserve one pnode and release it in a child process (killed after `timeout` s);
    stdout is `reserved <id>` or the one-line error."""
    child = start_reserve(state_dir, name, lock_timeout)
    try:
        out, err = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
        pytest.fail(f"reserving {name} still hung after {timeout:.0f} s")
    return subprocess.CompletedProcess(child.args, child.returncode, out, err)


def start_reserve(
    state_dir: Path, name: str, lock_timeout: float = 60, nodes: int = 1
) -> subprocess.Popen:
    """A child process that reserves `nodes` pnodes, prints `reserved <id>` (or the
    one-line error) and releases them."""
    return subprocess.Popen(
        [sys.executable, "-c", RESERVE_ONE, str(state_dir), name, str(lock_timeout), str(nodes)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
