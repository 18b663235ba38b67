"""The local testbed records each pnode's host key itself: omnibed never trusts first contact."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from omnibed.core import ssh
from omnibed.core.errors import HostKeyMismatch
from omnibed.core.types import Reservation
from omnibed.providers.local import LocalProvider
from tests.fakes.sshd import FakeSSHD
from tests.local.support import needs_root

pytestmark = [pytest.mark.root, needs_root]


def test_root_access_records_the_pnode_host_key_before_any_login(
    provider: LocalProvider, reserve: Callable[..., Reservation], keypair: ssh.KeyPair
) -> None:
    reservation = reserve(nodes=2)
    known_hosts = keypair.private_path.with_name("known_hosts")
    nodes = provider.list_nodes(reservation)
    stale = f"{nodes[0].ssh.host} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGEGOVZlc3RhbGUgaG9zdCBrZXk"
    known_hosts.write_text(f"192.0.2.7 ssh-ed25519 AAAAother\n{stale}\n")
    for node in nodes:
        provider.root_access(reservation, node, str(keypair.private_path))
    lines = known_hosts.read_text().splitlines()
    for node in nodes:
        assert f"{node.ssh.host} {node.extra['host_key']}" in lines
    assert stale not in lines and "192.0.2.7 ssh-ed25519 AAAAother" in lines
    assert known_hosts.stat().st_mode & 0o777 == 0o600
    provider.root_access(reservation, nodes[0], str(keypair.private_path))
    assert known_hosts.read_text().splitlines() == lines  # recording twice changes nothing


def test_another_key_at_the_pnode_address_is_refused(
    provider: LocalProvider, reserve: Callable[..., Reservation], keypair: ssh.KeyPair
) -> None:
    """An impostor sshd takes the pnode's address before omnibed's first login: refused."""
    reservation = reserve(nodes=1)
    node = provider.list_nodes(reservation)[0]
    endpoint = provider.root_access(reservation, node, str(keypair.private_path))
    known_hosts = keypair.private_path.with_name("known_hosts")

    pid_file = Path(provider.state_dir, reservation.id, node.id, "sshd.pid")
    pnode_sshd = int(pid_file.read_text())
    os.kill(pnode_sshd, signal.SIGTERM)
    while Path(f"/proc/{pnode_sshd}").exists():  # it frees the address when gone
        time.sleep(0.05)
    with FakeSSHD([keypair.public_openssh], address=node.ssh.host,
                  netns=node.extra["netns"]) as impostor:
        assert impostor.host_key.split()[:2] != node.extra["host_key"].split()
        with pytest.raises(HostKeyMismatch):
            ssh.run(endpoint, "true", known_hosts)
