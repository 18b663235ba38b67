"""Root access, snapshot and `omnibed reserve-and-run` over real SSH to sshd-backed fake nodes.

The nodes, the nancy frontend and access.grid5000.fr are local sshd servers; the provider
finds them through its hosts file (`<state_dir>/hosts.json`) and logs in through the access
machine (the default gateway outside Grid'5000).
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from omnibed.core import ssh
from omnibed.core.errors import ProviderError, SSHError
from omnibed.core.login import Login
from omnibed.core.types import ReservationRequest

pytestmark = pytest.mark.root

OMNIBED = str(Path(sys.executable).with_name("omnibed"))
NANCY = {"site": "nancy", "cluster": "gros", "poll": "0.05"}


def ask(name: str, **options: str) -> ReservationRequest:
    return ReservationRequest(name=name, nodes=2, duration=timedelta(hours=1),
                              extra={**NANCY, **options})


def test_sudo_g5k_gives_root_with_the_reservation_key(provider, fake, testbed, tmp_path):
    ready = provider.wait(provider.reserve(ask("g5k-sudo")), timeout=60)
    keys = ssh.ensure_keypair(tmp_path / "reservation")
    known_hosts = keys.private_path.parent / "known_hosts"
    nodes = provider.list_nodes(ready)
    assert nodes[0].ssh.jumps[0].port == testbed.access.port
    root = nodes[0].ssh.__class__(host=nodes[0].ssh.host, port=nodes[0].ssh.port,
                                  key_file=str(keys.private_path), jumps=nodes[0].ssh.jumps)
    with pytest.raises(SSHError):  # the reservation key is not installed yet
        ssh.run(root, "true", known_hosts)
    for node in nodes:
        endpoint = provider.root_access(ready, node, Login.of(keys, known_hosts))
        result = ssh.run(endpoint, "id -u", known_hosts)
        assert (result.exit_status, result.stdout.strip()) == (0, "0")
    calls = testbed.log.read_text()
    assert calls.count("sudo-g5k sh -c ") == 2
    assert calls.count(" /root/.ssh/authorized_keys\n") == 2
    provider.root_access(ready, nodes[0], Login.of(keys, known_hosts))  # remembered: no call
    assert testbed.log.read_text() == calls
    provider.release(ready)
    assert fake.live_jobs() == []


def test_image_makes_a_deploy_job_and_kadeploy_ko_nodes_are_named(provider, fake, testbed,
                                                                   tmp_path):
    reservation = provider.reserve(ask("g5k-deploy", image="debian12-min"))
    assert [b for m, p, b in fake.requests if m == "POST"][0]["types"] == ["deploy"]
    ready = provider.wait(reservation, timeout=60)
    fake.deploy_ko.add("gros-2.nancy.grid5000.fr")
    keys = ssh.ensure_keypair(tmp_path / "reservation")
    nodes = provider.list_nodes(ready)
    assert {n.ssh.user for n in nodes} == {"root"}
    login = Login.of(keys, keys.private_path.parent / "known_hosts")
    endpoint = provider.root_access(ready, nodes[0], login)
    assert (endpoint.user, endpoint.key_file) == ("root", str(keys.private_path))
    [deployment] = [b for m, p, b in fake.requests if m == "POST" and "deploy" in p]
    assert deployment["environment"] == "debian12-min"
    frontend_key = " ".join(testbed.frontend_key.public_openssh.split()[:2])
    assert deployment["key"].splitlines()[0] == keys.public_openssh
    assert frontend_key in deployment["key"]  # so that tgz-g5k can log in from the frontend
    with pytest.raises(ProviderError, match="kadeploy failed on gros-2.nancy.grid5000.fr"):
        provider.root_access(ready, nodes[1], login)
    assert len([p for m, p, _ in fake.requests if m == "POST" and "deploy" in p]) == 1
    provider.release(ready)


def test_deploy_snapshot_and_redeploy_the_snapshot(provider, fake, testbed, tmp_path):
    ready = provider.wait(provider.reserve(ask("g5k-snap", image="debian12-min")), timeout=60)
    keys = ssh.ensure_keypair(tmp_path / "reservation")
    known_hosts = keys.private_path.parent / "known_hosts"
    node = provider.list_nodes(ready)[0]
    endpoint = provider.root_access(ready, node, Login.of(keys, known_hosts))
    assert ssh.run(endpoint, "id -u", known_hosts).stdout.strip() == "0"

    image = provider.snapshot(ready, node, "omnibed-snap", Login.of(keys, known_hosts))
    assert image == "omnibed-snap"
    frontend_key = " ".join(testbed.frontend_key.public_openssh.split()[:2])
    assert frontend_key in testbed.nodes[node.id].authorized_keys_file.read_text()
    home = testbed.frontend_key.private_path.parent.parent
    calls = testbed.log.read_text().splitlines()
    assert calls[0] == f"tgz-g5k -m {node.id} -f {home}/public/omnibed-snap.tar.zst"
    assert calls[1:] == ["kaenv3 -p debian12-min -u deploy",
                         f"kaenv3 -a {home}/public/omnibed-snap.yaml"]
    provider.release(ready)

    again = provider.wait(provider.reserve(ask("g5k-again", image=image)), timeout=60)
    other = ssh.ensure_keypair(tmp_path / "again")
    other_hosts = other.private_path.parent / "known_hosts"
    endpoint = provider.root_access(again, provider.list_nodes(again)[0],
                                    Login.of(other, other_hosts))
    assert ssh.run(endpoint, "id -u", other_hosts).exit_status == 0
    provider.release(again)
    assert fake.live_jobs() == []


def test_reserve_and_run_hostname_end_to_end(fake, testbed, home):
    result = subprocess.run(
        [OMNIBED, "reserve-and-run", "--testbed", "grid5000", "--nodes", "2",
         *[arg for k, v in NANCY.items() for arg in ("-o", f"{k}={v}")], "--", "hostname"],
        env={**os.environ}, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    hostname = subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip()
    assert result.stdout.count(hostname) >= 2
    assert "gros-1.nancy.grid5000.fr" in result.stdout + result.stderr
    assert fake.live_jobs() == []
    ledger = subprocess.run([OMNIBED, "ls", "--json"], env={**os.environ},
                            capture_output=True, text=True)
    assert ledger.returncode == 0 and "grid5000" not in ledger.stdout
