"""Real nodes behind the fake cloud: the floating-IP gateway jump, cc + sudo, cc-snapshot."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from omnibed.core import ssh
from omnibed.core.errors import HostKeyMismatch, SSHError
from omnibed.core.login import Login
from omnibed.core.types import NicRole, Tri
from omnibed.providers.chameleon import ChameleonProvider
from tests.fakes.openstack import FakeOpenStack
from tests.providers.chameleon.nodes import NetnsNodes
from tests.providers.chameleon.support import cloud_with_nodes, request

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]
NOTHING = {"leases": 0, "servers": 0, "keypairs": 0, "ports": 0, "floatingips": 0}


@pytest.fixture
def real(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
         ) -> Iterator[tuple[FakeOpenStack, NetnsNodes, ChameleonProvider, Path]]:
    with cloud_with_nodes(tmp_path, monkeypatch) as (cloud, nodes):
        yield cloud, nodes, ChameleonProvider(tmp_path / "providers" / "chameleon"), tmp_path


@pytest.mark.parametrize("site", ["CHI@TACC", "KVM@TACC"])
def test_gateway_jump_root_nics_and_release(real, site):
    cloud, nodes, provider, home = real
    keys = ssh.ensure_keypair(home / "elsewhere")  # not omnibed's layout: only the argument
    ask = dataclasses.replace(request(f"real-{site[:3].lower()}", site=site, nodes=3),
                              public_key=keys.public_openssh)
    reservation = provider.wait(provider.reserve(ask), timeout=120)
    key_file = str(keys.private_path)
    known_hosts = home / "known_hosts"
    login = Login.of(keys, known_hosts)
    listed = provider.list_nodes(reservation)
    gateway, *others = listed
    # only the gateway is reachable from here: the others need the jump
    for node in others:
        direct = ssh.SSHEndpoint(host=node.ssh.host, user="cc", key_file=key_file)
        with pytest.raises(SSHError):
            ssh.run(direct, "true", known_hosts, timeout=10)
    cc = ssh.run(ssh.SSHEndpoint(host=gateway.ssh.host, user="root", key_file=key_file),
                 "id -u", known_hosts, timeout=30)
    assert "Please login as the user" in cc.stdout  # root refused before root_access
    for node in listed:
        endpoint = provider.root_access(reservation, node, login)
        assert endpoint.user == "root"
        assert [j.host for j in endpoint.jumps] == ([] if node is gateway
                                                    else [gateway.ssh.host])
        result = ssh.run(endpoint, "id -u; ip -o -4 addr show eth0", known_hosts, timeout=30)
        assert result.stdout.split()[0] == "0"
        assert node.extra["fixed_ip"] in result.stdout
        nics = provider.nic_capabilities(reservation, node, login)
        assert nics[0].name == "eth0" and nics[0].role is NicRole.CONTROL
        assert nics[0].foreign_mac is (Tri.NO if site.startswith("KVM") else Tri.UNKNOWN)
    with pytest.raises(SSHError):  # the names are read on the node: another key is refused
        provider.nic_capabilities(reservation, others[0],
                                  Login.of(ssh.ensure_keypair(home / "other"), known_hosts))
    provider.release(reservation)
    assert cloud.state.counts() == NOTHING
    assert nodes.nodes == {} and nodes.gateways == {}


def test_only_a_changed_host_key_stops_root_access(real):
    """A refused root login goes on to install the key as cc, whatever its message says
    (here the key's folder says "host key"); a changed host key is raised."""
    cloud, nodes, provider, home = real
    keys = ssh.ensure_keypair(home / "ssh host key tests")
    ask = dataclasses.replace(request("rootless", site="CHI@UC", nodes=1),
                              public_key=keys.public_openssh)
    reservation = provider.wait(provider.reserve(ask), timeout=120)
    [node] = provider.list_nodes(reservation)
    netns, _ = nodes.nodes[node.id]
    (nodes.dir / netns / "root" / ".ssh" / "authorized_keys").unlink()  # root takes no key
    login = Login.of(keys, home / "known_hosts")
    endpoint = provider.root_access(reservation, node, login)
    assert ssh.run(endpoint, "id -u", login.known_hosts, timeout=30).stdout.strip() == "0"
    forged = " ".join(ssh.ensure_keypair(home / "forged").public_openssh.split()[:2])
    login.known_hosts.write_text(f"{node.ssh.host} {forged}\n")
    with pytest.raises(HostKeyMismatch):
        provider.root_access(reservation, node, login)
    provider.release(reservation)
    assert cloud.state.counts() == NOTHING


def test_bare_metal_snapshot_runs_cc_snapshot_with_sudo(real):
    cloud, nodes, provider, home = real
    keys = ssh.ensure_keypair(home / "elsewhere")  # not omnibed's layout: only the argument
    ask = dataclasses.replace(request("snap", site="CHI@UC", nodes=2),
                              public_key=keys.public_openssh)
    reservation = provider.wait(provider.reserve(ask), timeout=120)
    node = provider.list_nodes(reservation)[1]  # behind the gateway
    with pytest.raises(SSHError):  # the key decides: another one is refused
        provider.snapshot(reservation, node, "refused",
                          Login.of(ssh.ensure_keypair(home / "other"), home / "known_hosts"))
    image = provider.snapshot(reservation, node, "my-snapshot",
                              Login.of(keys, home / "known_hosts"))
    assert cloud.state.images[image]["name"] == "my-snapshot"
    assert cloud.state.images[image]["uploaded_by"] == "cc-snapshot"
    provider.release(reservation)
    again = provider.wait(provider.reserve(request("snap2", site="CHI@UC", nodes=1,
                                                   home=home, image=image)), timeout=120)
    servers = [b for m, p, b in cloud.state.requests
               if m == "POST" and p == "/compute/v2.1/servers"]
    assert servers[-1]["server"]["imageRef"] == image
    provider.release(again)
    assert cloud.state.counts() == NOTHING


def test_reserve_and_run_hostname_through_the_cli(real):
    cloud, nodes, _, home = real
    env = {**os.environ, "OMNIBED_HOME": str(home / "cli")}
    done = subprocess.run(
        [str(Path(sys.executable).parent / "omnibed"), "reserve-and-run", "--testbed",
         "chameleon", "--nodes", "2", "--name", "clich", "-o", "cloud=fake-chameleon",
         "-o", "site=CHI@UC", "-o", "poll=0.05", "--shell", "hostname; id -u"],
        env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count(os.uname().nodename) >= 2, done.stdout
    assert cloud.state.counts() == NOTHING  # released afterwards
    assert nodes.nodes == {}
