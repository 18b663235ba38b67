"""Static hosts for the sample provider: real sshds on 127.0.0.1, plus a refusing and a
down host, written to an inventory the way a statichosts user writes one."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from omnibed.core.ssh import ensure_keypair
from tests.fakes.sshd import FakeSSHD, free_port

GOOD = ("alpha", "beta")


@dataclass(frozen=True)
class StaticHosts:
    inventory: Path
    good: tuple[str, ...] = GOOD
    refusing: str = "refusing"
    down: str = "down"

    def environment(self) -> dict[str, str]:
        """The variables the sample provider's own conftest reads."""
        return {
            "OMNIBED_STATICHOSTS_INVENTORY": str(self.inventory),
            "OMNIBED_STATICHOSTS_HOSTS": ",".join(self.good),
            "OMNIBED_STATICHOSTS_REFUSING": self.refusing,
            "OMNIBED_STATICHOSTS_DOWN": self.down,
        }


@pytest.fixture
def static_hosts(tmp_path: Path) -> Iterator[StaticHosts]:
    admin = ensure_keypair(tmp_path / "admin")
    stranger = ensure_keypair(tmp_path / "stranger")
    servers = {name: FakeSSHD([admin.public_openssh]) for name in GOOD}
    servers["refusing"] = FakeSSHD([stranger.public_openssh])
    try:
        for server in servers.values():
            server.start()
        entries = [
            {
                "name": name,
                "host": server.host,
                "port": server.port,
                "key": str(admin.private_path),
                "authorized_keys": str(Path(str(server.directory)) / "authorized_keys"),
            }
            for name, server in servers.items()
        ]
        entries.append(
            {"name": "down", "host": "127.0.0.1", "port": free_port(),
             "key": str(admin.private_path)}
        )
        inventory = tmp_path / "inventory.yaml"
        inventory.write_text(yaml.safe_dump({"hosts": entries}))
        yield StaticHosts(inventory)
    finally:
        for server in servers.values():
            server.stop()
