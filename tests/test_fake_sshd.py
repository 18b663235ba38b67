"""The fake sshd the tests log in to: it must start even when its port is taken first."""

import socket

import pytest

from omnibed.core.ssh import ensure_keypair
from tests.fakes.sshd import FakeSSHD

pytestmark = pytest.mark.root


def test_a_port_taken_before_sshd_binds_it_is_chosen_again(tmp_path):
    """Other processes on the machine may bind the free port the fake picked; it picks again."""
    key = ensure_keypair(tmp_path / "key")
    server = FakeSSHD([key.public_openssh])
    taken = server.port
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        with server:
            assert server.port != taken
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as client:
                assert client.recv(4).startswith(b"SSH-")
