"""Helpers shared by the Chameleon tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest

from omnibed.core import ssh
from omnibed.core.types import ReservationRequest
from tests.fakes.openstack import FakeOpenStack
from tests.providers.chameleon.nodes import NetnsNodes

CLOUDS_YAML = """\
clouds:
  fake-chameleon:
    auth_type: v3applicationcredential
    auth:
      auth_url: {auth_url}
      application_credential_id: appcred
      application_credential_secret: appsecret
    interface: public
    identity_api_version: 3
"""



@contextmanager
def cloud_with_nodes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[FakeOpenStack, NetnsNodes]]:
    """The fake cloud whose servers are real sshd nodes, named in a clouds.yaml for the SDK."""
    socket = str(tmp_path / "cloud.sock")
    nodes = NetnsNodes(socket)
    try:
        with FakeOpenStack(backer=nodes, unix_socket=socket) as cloud:
            os.chmod(socket, 0o777)
            clouds = tmp_path / "clouds.yaml"
            clouds.write_text(CLOUDS_YAML.format(auth_url=cloud.auth_url))
            monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(clouds))
            yield cloud, nodes
    finally:
        nodes.close()


def request(name: str, site: str = "CHI@UC", nodes: int = 2, home: Path | None = None,
            **extra: str) -> ReservationRequest:
    """A request with fast polling; the key pair is made where the lead's api makes it."""
    public_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTestsOnly test"
    if home is not None:
        public_key = ssh.ensure_keypair(home / "reservations" / name).public_openssh
    return ReservationRequest(
        name=name, nodes=nodes, duration=timedelta(hours=2), site=site,
        public_key=public_key,
        extra={"cloud": "fake-chameleon", "site": site, "poll": "0.01", **extra})
