"""Each local pnode has its own root filesystem: root on a pnode never writes the host's files."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from omnibed.core import ssh
from omnibed.core.login import Login
from omnibed.core.types import Reservation
from omnibed.providers.local import LocalProvider
from tests.local.support import leftovers, needs_root, netns_pids

pytestmark = [pytest.mark.root, needs_root]


def _on(provider: LocalProvider, reservation: Reservation, node_id: str, key: ssh.KeyPair,
        command: str) -> ssh.CommandResult:
    node = {node.id: node for node in provider.list_nodes(reservation)}[node_id]
    login = Login.of(key, key.private_path.with_name("known_hosts"))
    return ssh.run(provider.root_access(reservation, node, login), command, login.known_hosts)


def _mounts_under(directory: Path) -> list[str]:
    with open("/proc/self/mountinfo") as mounts:
        return [line.split()[4] for line in mounts if line.split()[4].startswith(str(directory))]


def test_root_on_a_pnode_changes_only_that_pnode_and_snapshot_keeps_it(
    provider: LocalProvider, reserve: Callable[..., Reservation], keypair: ssh.KeyPair
) -> None:
    token = uuid.uuid4().hex[:12]
    written = Path(f"/root/omnibed-pnode-{token}")
    host_file = Path(f"/var/tmp/omnibed-host-{token}")
    host_file.write_text("the host's\n")
    try:
        first = reserve(nodes=2)
        wrote = _on(provider, first, "pnode-1", keypair,
                    f"echo {token} > {written} && rm {host_file} && cat {written}")
        assert (wrote.exit_status, wrote.stdout.strip()) == (0, token), wrote.stderr
        assert not written.exists()  # not on the host
        assert host_file.read_text() == "the host's\n"  # and the host's file is still there
        other = _on(provider, first, "pnode-2", keypair, f"cat {written}; cat {host_file}")
        assert other.stdout.split() == ["the", "host's"], other.stderr  # not on the other pnode

        image = f"rootfs-{token}"
        assert provider.snapshot(first, provider.list_nodes(first)[0], image,
                                 str(keypair.private_path)) == image
        second = reserve(nodes=2, image=image)
        for node_id in ("pnode-1", "pnode-2"):
            seen = _on(provider, second, node_id, keypair, f"cat {written}")
            assert (seen.exit_status, seen.stdout.strip()) == (0, token), seen.stderr
        assert not written.exists()

        for reservation in (first, second):
            pids = netns_pids(reservation)
            provider.release(reservation)
            assert leftovers(reservation, provider.state_dir, pids) == []
        assert _mounts_under(provider.state_dir) == []
    finally:
        host_file.unlink(missing_ok=True)
        written.unlink(missing_ok=True)


def test_a_pnode_sees_its_own_network_in_sys_and_mounts_nothing_on_the_host(
    provider: LocalProvider, reserve: Callable[..., Reservation], keypair: ssh.KeyPair
) -> None:
    reservation = reserve(nodes=1)
    links = _on(provider, reservation, "pnode-1", keypair, "ls /sys/class/net")
    assert links.stdout.split() == ["eth0", "lo"], links.stderr
    # the pnode's overlay, /proc, /sys... live in its mount namespace: the host has only the
    # tmpfs holding its writable layer
    node_dir = provider.state_dir / reservation.id / "pnode-1"
    assert _mounts_under(provider.state_dir) == [str(node_dir / "fs")]


def test_a_pnode_has_a_cgroup_layout_crun_runs_on_and_the_host_keeps_its_own(
    provider: LocalProvider, reserve: Callable[..., Reservation], keypair: ssh.KeyPair
) -> None:
    """This machine's hybrid layout (v2 controllers in /sys/fs/cgroup/unified) is refused
    by crun: a pnode sees a pure v1 layout instead, as a testbed node may have."""
    from omnibed.emulator.agent import cgroups

    host = cgroups.hierarchies()
    reservation = reserve(nodes=1)
    # the agent's own modules, by the pnode's python3 (root's home, where the venv's python
    # may live, is the pnode's own)
    agent_parent = Path(cgroups.__file__).parent.parent
    check = "from agent import cgroups as g, containers as c; print(g.crun_can_run(), c.choose())"
    command = f"PYTHONPATH={agent_parent} /usr/bin/python3 -c '{check}'"
    seen = _on(provider, reservation, "pnode-1", keypair, command)
    runtime = "crun" if shutil.which("crun") or not shutil.which("runc") else "runc"
    assert (seen.exit_status, seen.stdout.split()) == (0, ["True", runtime]), seen.stderr
    layout = _on(provider, reservation, "pnode-1", keypair, "cat /proc/self/mountinfo").stdout
    controllers = {f for line in layout.splitlines() if " - cgroup " in line
                   for f in line.split()[-1].split(",")}  # fmt: skip
    assert {"cpu", "cpuacct", "memory", "cpuset"} <= controllers or cgroups.is_v2()
    assert cgroups.hierarchies() == host, "the host's cgroup layout changed"


def test_the_local_testbed_knows_where_the_emulator_keeps_runtime_state() -> None:
    """Release removes container vnodes through each runtime's state on each pnode."""
    from omnibed.emulator.agent.containers import RUNTIMES, Runtime
    from omnibed.providers.local.provider import EMULATOR_RUNTIME_ROOTS

    agent = {p: Runtime(program=p).state_root for p in RUNTIMES}
    assert EMULATOR_RUNTIME_ROOTS == agent


def test_root_has_a_fresh_home_on_each_pnode(
    provider: LocalProvider, reserve: Callable[..., Reservation], keypair: ssh.KeyPair
) -> None:
    host_dotfile = Path(f"/root/.omnibed-host-{uuid.uuid4().hex[:12]}")
    host_dotfile.write_text("the host's root dotfile\n")
    try:
        reservation = reserve(nodes=1)
        home = _on(provider, reservation, "pnode-1", keypair,
                   f"test ! -e {host_dotfile} && cat /root/.bashrc && echo $HOME")
        assert home.exit_status == 0, home.stderr  # the host's /root is not seen
        skel = Path("/etc/skel/.bashrc").read_text()
        assert home.stdout == skel + "/root\n"  # a freshly deployed node's root home
        assert Path("/root/.bashrc").read_text() != skel  # (this machine's differs)
    finally:
        host_dotfile.unlink(missing_ok=True)
