"""Helpers shared by the Chameleon tests."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from omnibed.core import ssh
from omnibed.core.types import ReservationRequest

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
