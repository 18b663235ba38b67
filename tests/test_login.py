"""The root steps of the provider kit (omnibed.core.login) and announced host keys
(omnibed.core.ssh.announce_host_keys), against real OpenSSH servers (tests.fakes.sshd)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from omnibed.core.errors import HostKeyMismatch, SSHError
from omnibed.core.login import Login, authorise_root, verify_root
from omnibed.core.ssh import KeyPair, announce_host_keys, ensure_keypair, run
from omnibed.core.types import SSHEndpoint
from tests.fakes.sshd import FakeSSHD

pytestmark = pytest.mark.root


@pytest.fixture
def admin(tmp_path: Path) -> KeyPair:
    """The key that logs in as root already (a testbed's own, or the user's)."""
    return ensure_keypair(tmp_path / "admin")


@pytest.fixture
def login(tmp_path: Path) -> Login:
    return Login.of(ensure_keypair(tmp_path / "reservation"), tmp_path / "known_hosts")


@pytest.fixture
def sshd(admin: KeyPair) -> Iterator[FakeSSHD]:
    with FakeSSHD([admin.public_openssh]) as server:
        yield server


def as_admin(sshd: FakeSSHD, admin: KeyPair) -> SSHEndpoint:
    return SSHEndpoint(sshd.host, sshd.port, key_file=str(admin.private_path))


def keys_file(sshd: FakeSSHD) -> Path:
    assert sshd.directory is not None
    return sshd.directory / "authorized_keys"


def test_authorise_root_lets_the_key_in_once_and_drops_a_forced_command_for_it(
    sshd: FakeSSHD, admin: KeyPair, login: Login
) -> None:
    as_reservation = login.endpoint(SSHEndpoint(sshd.host, sshd.port))
    refusing = f'command="echo Please login as cc" {login.public_key}'
    with keys_file(sshd).open("a") as keys:
        keys.write(refusing + "\n")
    with pytest.raises(SSHError, match="does not run commands as root"):
        verify_root(as_reservation, login.known_hosts)
    for _ in range(2):
        authorise_root(as_admin(sshd, admin), login.public_key, login.known_hosts, become="",
                       authorized_keys=str(keys_file(sshd)), node="n1")
    verify_root(as_reservation, login.known_hosts)
    lines = keys_file(sshd).read_text().splitlines()
    assert lines == [admin.public_openssh, login.public_key]  # others kept, the key once
    assert keys_file(sshd).stat().st_mode & 0o777 == 0o600


def test_authorise_root_failing_says_where_and_the_fix(
    sshd: FakeSSHD, admin: KeyPair, login: Login
) -> None:
    with pytest.raises(SSHError, match=r"for root on n1 .* failed: exit 1; give sudo$"):
        authorise_root(as_admin(sshd, admin), login.public_key, login.known_hosts,
                       become="false", node="n1", fix="give sudo")


def test_verify_root_names_the_uid_and_the_fix(
    sshd: FakeSSHD, admin: KeyPair, login: Login
) -> None:
    with keys_file(sshd).open("a") as keys:
        keys.write(f'command="echo 1000" {login.public_key}\n')
    with pytest.raises(SSHError, match=r"gave '1000', exit 0\): log in as root$"):
        verify_root(login.endpoint(SSHEndpoint(sshd.host, sshd.port)), login.known_hosts,
                    fix="log in as root")


def test_an_announced_host_key_is_checked_at_first_contact(
    sshd: FakeSSHD, admin: KeyPair, tmp_path: Path
) -> None:
    """The key a provider announced refuses a server showing another one, with no
    first contact to trust; the real key logs in."""
    endpoint = as_admin(sshd, admin)
    known_hosts = tmp_path / "known_hosts"
    forged = " ".join(ensure_keypair(tmp_path / "forged").public_openssh.split()[:2])
    announce_host_keys(known_hosts, endpoint, [forged])
    with pytest.raises(HostKeyMismatch):
        run(endpoint, "true", known_hosts)
    announce_host_keys(known_hosts, endpoint, [sshd.host_key])
    assert known_hosts.read_text() == f"[{sshd.host}]:{sshd.port} {sshd.host_key}\n"
    assert run(endpoint, "true", known_hosts).exit_status == 0
    announce_host_keys(known_hosts, endpoint, [])  # nothing announced: nothing changes
    assert known_hosts.read_text() == f"[{sshd.host}]:{sshd.port} {sshd.host_key}\n"
