"""The local testbed announces each pnode's host key on its Node, and omnibed writes it to
the reservation's known_hosts before any login: first contact is never trusted."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from omnibed.api import Omnibed
from omnibed.core import ssh
from omnibed.core.errors import HostKeyMismatch
from omnibed.providers.local import LocalProvider
from tests.fakes.sshd import FakeSSHD
from tests.local.support import needs_root

pytestmark = [pytest.mark.root, needs_root]


@pytest.fixture
def api(provider: LocalProvider, tmp_path: Path) -> Omnibed:
    return Omnibed(home=tmp_path / "home", providers={"local": provider})


@pytest.fixture
def reserved(api: Omnibed) -> Iterator[Callable[[int], str]]:
    """reserved(nodes): the name of a READY local reservation made through omnibed."""
    names: list[str] = []

    def make(nodes: int) -> str:
        request = api.make_request("local", nodes=nodes, walltime=timedelta(hours=1))
        names.append(request.name)
        api.reserve("local", request)
        api.wait(request.name, timeout=120)
        return request.name

    try:
        yield make
    finally:
        for name in names:
            api.release(name)


def test_the_announced_host_keys_are_written_before_any_login(
    api: Omnibed, reserved: Callable[[int], str]
) -> None:
    name = reserved(2)
    nodes = api.nodes(name)
    assert all(len(node.host_keys) == 1 for node in nodes)
    known_hosts = api.known_hosts(name)
    some_key = " ".join(ssh.ensure_keypair(known_hosts.parent / "k").public_openssh.split()[:2])
    stale, other = f"{nodes[0].ssh.host} {some_key}", f"192.0.2.7 {some_key}"
    known_hosts.write_text(f"{other}\n{stale}\n")
    api.root_endpoints(name)
    lines = known_hosts.read_text().splitlines()
    for node in nodes:
        assert f"{node.ssh.host} {node.host_keys[0]}" in lines
    assert stale not in lines and other in lines
    assert known_hosts.stat().st_mode & 0o777 == 0o600
    results = api.run(name, "id -u")  # the announced keys are the ones the pnodes show
    assert {result.stdout.strip() for result in results.values()} == {"0"}
    api.root_endpoints(name)
    assert known_hosts.read_text().splitlines() == lines  # writing twice changes nothing


def test_a_forged_host_key_at_the_pnode_address_is_refused_at_first_contact(
    api: Omnibed, reserved: Callable[[int], str], provider: LocalProvider
) -> None:
    """An impostor sshd, which takes the reservation's key, holds the pnode's address before
    omnibed's first login: the key the provider announced refuses it."""
    name = reserved(1)
    [node] = api.nodes(name)
    pnode_dir = Path(provider.state_dir, api.reservation(name)[1].id, node.id)
    pnode_sshd = int((pnode_dir / "sshd.pid").read_text())
    os.kill(pnode_sshd, signal.SIGTERM)
    while Path(f"/proc/{pnode_sshd}").exists():  # it frees the address when gone
        time.sleep(0.05)
    assert not api.known_hosts(name).exists()  # nothing was ever contacted
    with FakeSSHD([api.keypair(name).public_openssh], address=node.ssh.host,
                  netns=node.extra["netns"]) as impostor:
        assert impostor.host_key.split()[:2] != node.host_keys[0].split()
        endpoint = api.root_endpoint(name, node.id)
        with pytest.raises(HostKeyMismatch):
            ssh.run(endpoint, "id -u", api.known_hosts(name))
    assert impostor.host_key.split()[1] not in api.known_hosts(name).read_text()
