"""`wait_reachable` logs in as root to every vnode's sshd through its pnode, host keys checked:
through one relay per pnode (direct-tcpip channels to it), or, where the pnode's sshd forbids
TCP forwarding, through one relay process per login. Real sshds: the pnode's on 127.0.0.1,
each vnode's on 127.0.0.1:22 of a network namespace of its own."""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from omnibed.core.errors import EmulatorError
from omnibed.core.ssh import KeyPair, ensure_keypair
from omnibed.core.types import SSHEndpoint
from omnibed.emulator import vnode_ssh
from omnibed.emulator.planner import VnodePlan
from tests.fakes.sshd import FakeSSHD

pytestmark = pytest.mark.root

VNODES = 3


@pytest.fixture
def key(tmp_path: Path) -> KeyPair:
    return ensure_keypair(tmp_path / "key")


@pytest.fixture
def vnodes(key: KeyPair) -> Iterator[list[tuple[VnodePlan, FakeSSHD]]]:
    """VNODES vnodes of pnode p0, each a namespace (loopback up) with an sshd on port 22."""
    made: list[tuple[VnodePlan, FakeSSHD]] = []
    try:
        for i in range(VNODES):
            netns = f"omnibed-t-{uuid.uuid4().hex[:8]}"
            subprocess.run(["ip", "netns", "add", netns], check=True)
            subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
            sshd = FakeSSHD([key.public_openssh], netns=netns)
            made.append((VnodePlan(name=f"vnode-{i}", pnode="p0", netns=netns, ssh=True), sshd))
            sshd.start()
        yield made
    finally:
        for vnode, sshd in made:
            sshd.stop()
            subprocess.run(["ip", "netns", "del", vnode.netns], check=False)


def _known_hosts(path: Path, pnode: FakeSSHD, vnodes: list[tuple[VnodePlan, FakeSSHD]]) -> Path:
    lines = [f"[{pnode.host}]:{pnode.port} {pnode.host_key}"]
    lines += [f"{vnode_ssh.alias(v.name)} {sshd.host_key}" for v, sshd in vnodes]
    path.write_text("".join(line + "\n" for line in lines))
    return path


@pytest.mark.parametrize("forwarding", [True, False], ids=["one-relay", "relay-per-login"])
def test_every_vnode_answers_through_its_pnode(
    forwarding: bool, key: KeyPair, vnodes: list, tmp_path: Path
) -> None:
    with FakeSSHD([key.public_openssh], tcp_forwarding=forwarding) as pnode:
        known_hosts = _known_hosts(tmp_path / "known_hosts", pnode, vnodes)
        endpoint = SSHEndpoint(pnode.host, pnode.port, "root", str(key.private_path))
        vnode_ssh.wait_reachable(
            {"p0": endpoint}, [v for v, _ in vnodes], known_hosts, str(key.private_path), 30
        )
        for _, sshd in vnodes:
            assert "Accepted publickey for root" in sshd.log()
        assert ("refused local port forward" in pnode.log()) is not forwarding


def test_a_vnode_with_another_host_key_is_named(
    key: KeyPair, vnodes: list, tmp_path: Path
) -> None:
    with FakeSSHD([key.public_openssh]) as pnode:
        known_hosts = _known_hosts(tmp_path / "known_hosts", pnode, vnodes)
        first, second = vnodes[0][1].host_key, vnodes[1][1].host_key
        known_hosts.write_text(known_hosts.read_text().replace(first, second, 1))
        endpoint = SSHEndpoint(pnode.host, pnode.port, "root", str(key.private_path))
        with pytest.raises(EmulatorError, match="vnode vnode-0 answered SSH with a host key"):
            vnode_ssh.wait_reachable(
                {"p0": endpoint}, [v for v, _ in vnodes], known_hosts, str(key.private_path), 30
            )


@pytest.mark.parametrize(
    ("accepted", "chosen"),
    [(None, "ecdh-sha2-nistp256"), ("curve25519-sha256@libssh.org",) * 2],
    ids=["any-kex", "curve25519-only"],
)
def test_logins_offer_the_key_exchange_sshd_does_with_openssl_first(
    accepted: str | None, chosen: str, key: KeyPair, tmp_path: Path
) -> None:
    """A vnode's sshd computes ecdh-sha2-nistp256 with OpenSSL and curve25519 with OpenSSH's
    own portable code: the logins ask for the first, and still log in to an sshd that
    accepts only the second."""
    netns = f"omnibed-t-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
        vnode = VnodePlan(name="vnode-kex", pnode="p0", netns=netns, ssh=True)
        sshd = FakeSSHD([key.public_openssh], netns=netns, log_level="DEBUG1",
                        kex_algorithms=accepted)  # fmt: skip
        with sshd, FakeSSHD([key.public_openssh]) as pnode:
            known_hosts = _known_hosts(tmp_path / "known_hosts", pnode, [(vnode, sshd)])
            endpoint = SSHEndpoint(pnode.host, pnode.port, "root", str(key.private_path))
            vnode_ssh.wait_reachable(
                {"p0": endpoint}, [vnode], known_hosts, str(key.private_path), 30
            )
            assert f"kex: algorithm: {chosen}" in sshd.log()
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False)


@pytest.mark.parametrize("forwarding", [True, False], ids=["one-relay", "relay-per-login"])
def test_vnodes_whose_sshd_starts_late_are_waited_for(
    forwarding: bool, key: KeyPair, vnodes: list, tmp_path: Path
) -> None:
    """Logins retried while the vnodes' sshds cannot be reached (loopback down for 3 s) must
    not break the pnode's SSH connection (its sshd drops it on data sent to a channel it
    closed)."""

    def loopback(state: str) -> None:
        for vnode, _ in vnodes:
            subprocess.run(["ip", "-n", vnode.netns, "link", "set", "lo", state], check=True)

    loopback("down")
    with FakeSSHD([key.public_openssh], tcp_forwarding=forwarding) as pnode:
        known_hosts = _known_hosts(tmp_path / "known_hosts", pnode, vnodes)
        endpoint = SSHEndpoint(pnode.host, pnode.port, "root", str(key.private_path))
        late = threading.Timer(3.0, loopback, args=("up",))
        late.start()
        try:
            vnode_ssh.wait_reachable(
                {"p0": endpoint}, [v for v, _ in vnodes], known_hosts, str(key.private_path), 30
            )
        finally:
            late.join()
        assert "nonexistent channel" not in pnode.log()


@pytest.mark.slow
def test_many_logins_keep_the_pnode_connection(key: KeyPair, vnodes: list, tmp_path: Path) -> None:
    """200 logins through one pnode connection (vnodes sharing the namespaces and sshds of
    VNODES): none may write to a channel after closing it, or the pnode's sshd drops the
    connection and every login after it fails."""
    many = [
        (VnodePlan(name=f"many-{i}", pnode="p0", netns=vnode.netns, ssh=True), sshd)
        for i in range(200)
        for vnode, sshd in [vnodes[i % VNODES]]
    ]
    with FakeSSHD([key.public_openssh]) as pnode:
        known_hosts = _known_hosts(tmp_path / "known_hosts", pnode, many)
        endpoint = SSHEndpoint(pnode.host, pnode.port, "root", str(key.private_path))
        vnode_ssh.wait_reachable(
            {"p0": endpoint}, [v for v, _ in many], known_hosts, str(key.private_path), 60
        )
        assert "nonexistent channel" not in pnode.log()


def test_a_stopped_wait_ends_within_seconds(key: KeyPair, vnodes: list, tmp_path: Path) -> None:
    """`emulate up` stops the wait when a container fails to start: the wait for vnodes whose
    sshd never answers ends within seconds, not after its timeout."""
    for vnode, _ in vnodes:
        subprocess.run(["ip", "-n", vnode.netns, "link", "set", "lo", "down"], check=True)
    stop = threading.Event()
    with FakeSSHD([key.public_openssh]) as pnode:
        known_hosts = _known_hosts(tmp_path / "known_hosts", pnode, vnodes)
        endpoint = SSHEndpoint(pnode.host, pnode.port, "root", str(key.private_path))
        threading.Timer(1.0, stop.set).start()
        started = time.monotonic()
        with pytest.raises(EmulatorError, match="stopped"):
            vnode_ssh.wait_reachable(
                {"p0": endpoint}, [v for v, _ in vnodes], known_hosts, str(key.private_path),
                60, stop=stop,
            )  # fmt: skip
        assert time.monotonic() - started < 10
