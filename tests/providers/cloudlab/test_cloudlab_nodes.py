"""CloudLab nodes for real: sshd-backed nodes, user login, sudo to root, Xen forwarded ports.

The fake aggregate's nodes are network namespaces with a real sshd, a CloudLab user that
exists only inside the node and passwordless sudo (see tests/fakes/protogeni_nodes.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from omnibed.core import ssh
from omnibed.core.errors import SSHError
from omnibed.core.login import Login
from omnibed.core.types import NicRole, ReservationRequest, Tri
from omnibed.providers.cloudlab import CloudLabProvider
from tests.fakes.protogeni import FakeProtoGENI
from tests.fakes.protogeni_nodes import XEN_HOST, SSHNodes

pytestmark = pytest.mark.root


@pytest.fixture
def nodes() -> Iterator[SSHNodes]:
    backend = SSHNodes()
    try:
        yield backend
    finally:
        backend.close()


@pytest.fixture
def live(pki, nodes: SSHNodes) -> Iterator[FakeProtoGENI]:
    with FakeProtoGENI(pki, backend=nodes) as server:
        yield server


@pytest.fixture
def keys(tmp_path: Path) -> ssh.KeyPair:
    return ssh.ensure_keypair(tmp_path / "reservation")


def _reserve(live: FakeProtoGENI, tmp_path: Path, keys: ssh.KeyPair, name: str,
             extra_nics: int = 0, **extra):
    live.write_config(tmp_path / "state")
    provider = CloudLabProvider(tmp_path / "state")
    request = ReservationRequest(name=name, nodes=2, duration=timedelta(hours=1),
                                 public_key=keys.public_openssh, extra=extra,
                                 extra_nics=extra_nics)
    return provider, provider.wait(provider.reserve(request), timeout=60)


def test_root_through_user_login_and_sudo(
    live: FakeProtoGENI, nodes: SSHNodes, tmp_path: Path, keys: ssh.KeyPair, passphrase: str
) -> None:
    provider, reservation = _reserve(live, tmp_path, keys, "rootpcs")
    known_hosts = keys.private_path.parent / "known_hosts"
    key_file = str(keys.private_path)
    listed = provider.list_nodes(reservation)
    assert [node.id for node in listed] == ["node0", "node1"]
    for node in listed:
        as_root_first = node.ssh.__class__(node.ssh.host, node.ssh.port, "root", key_file)
        with pytest.raises(SSHError):  # root has no key before root_access
            ssh.run(as_root_first, "true", known_hosts)
        as_user = ssh.run(node.ssh.__class__(node.ssh.host, 22, "alice", key_file),
                          "id -un", known_hosts)
        assert as_user.stdout.strip() == "alice"
        endpoint = provider.root_access(reservation, node, Login.of(keys, known_hosts))
        assert endpoint.user == "root" and endpoint.port == 22
        again = provider.root_access(reservation, node, Login.of(keys, known_hosts))
        assert again == endpoint  # idempotent
        result = ssh.run(endpoint, "id -u; hostname", known_hosts)
        uid, hostname = result.stdout.split()
        assert uid == "0"
        assert hostname != node.hostname and hostname != node.id  # ids come from client_id
        root_keys = nodes.node("rootpcs", node.id).root_home / ".ssh" / "authorized_keys"
        assert root_keys.read_text().count(keys.public_openssh.split()[1]) == 1
    assert not Path("/root/.ssh/authorized_keys").exists() or keys.public_openssh.split()[
        1
    ] not in Path("/root/.ssh/authorized_keys").read_text()
    provider.release(reservation)
    assert nodes.nodes == {}


def test_xen_vms_are_reached_on_forwarded_ports(
    live: FakeProtoGENI, tmp_path: Path, keys: ssh.KeyPair, passphrase: str
) -> None:
    provider, reservation = _reserve(live, tmp_path, keys, "xenvms", vm="xen")
    known_hosts = keys.private_path.parent / "known_hosts"
    listed = provider.list_nodes(reservation)
    assert {node.ssh.host for node in listed} == {XEN_HOST}
    assert len({node.ssh.port for node in listed}) == 2 and 22 not in {
        node.ssh.port for node in listed
    }
    endpoints = {
        node.id: provider.root_access(reservation, node, Login.of(keys, known_hosts))
        for node in listed
    }
    results = ssh.run_many(endpoints, "id -u; cat /proc/net/dev | grep -c eth0", known_hosts)
    assert {node: r.stdout.split() for node, r in results.items()} == {
        "node0": ["0", "1"], "node1": ["0", "1"]
    }
    provider.release(reservation)


@pytest.mark.parametrize("vm", ["", "xen"])
def test_nics_are_the_devices_on_the_node(
    live: FakeProtoGENI, nodes: SSHNodes, tmp_path: Path, keys: ssh.KeyPair, passphrase: str,
    vm: str,
) -> None:
    """The manifest names NICs `node0:if0` (no Linux name may hold a colon); the node has
    eth0 (default route, control address) and eth1 (the extra LAN's MAC)."""
    name = f"nics{vm}"
    provider, reservation = _reserve(live, tmp_path, keys, name, extra_nics=1,
                                     **({"vm": vm} if vm else {}))
    login = Login.of(keys, keys.private_path.parent / "known_hosts")
    for index, node in enumerate(provider.list_nodes(reservation), start=1):
        netns = nodes.node(name, node.id).netns
        on_node = {link["ifname"]: link for link in json.loads(subprocess.run(
            ["ip", "-n", netns, "-j", "addr", "show"], check=True, capture_output=True,
            text=True).stdout)}
        control, extra = provider.nic_capabilities(reservation, node, login)
        assert control.role is NicRole.CONTROL and extra.role is NicRole.EXTRA
        assert (control.name, extra.name) == ("eth0", "eth1")
        assert control.addresses == (f"{nodes.node(name, node.id).address}/24",)
        assert extra.mac == on_node["eth1"]["address"]
        assert extra.addresses == (f"10.10.1.{index}/24",)
        assert extra.foreign_mac is (Tri.NO if vm else Tri.YES)
    provider.release(reservation)


def test_reserve_and_run_hostname_through_the_cli(
    live: FakeProtoGENI, tmp_path: Path, passphrase: str
) -> None:
    home = tmp_path / "home"
    live.write_config(home / "providers" / "cloudlab")
    env = {**os.environ, "OMNIBED_HOME": str(home)}
    done = subprocess.run(
        [str(Path(sys.executable).parent / "omnibed"), "reserve-and-run", "--testbed", "cloudlab",
         "--nodes", "2", "--name", "clicl", "--", "hostname"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    hostname = os.uname().nodename
    assert done.stdout.count(hostname) >= 2, done.stdout
    assert "node0" in done.stdout and "node1" in done.stdout
    assert live.state.slivers == {}  # released afterwards
