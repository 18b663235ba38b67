"""Fixtures: a fake Grid'5000 API, credentials pointing at it, and (root) sshd-backed nodes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from omnibed.core import ssh
from omnibed.providers.grid5000 import Grid5000Provider
from omnibed.providers.grid5000.provider import HOSTS_FILE
from tests.fakes.grid5000 import FakeGrid5000, G5kSSHD, write_tools
from tests.fakes.sshd import FakeSSHD


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeGrid5000]:
    envs = tmp_path / "environments"
    envs.mkdir()
    with FakeGrid5000(step=0.2, environments_dir=envs) as server:
        yield server


@pytest.fixture
def home(tmp_path: Path, fake: FakeGrid5000, monkeypatch: pytest.MonkeyPatch) -> Path:
    """$OMNIBED_HOME with the credentials file at $OMNIBED_GRID5000_CONFIG (0600)."""
    monkeypatch.setenv("OMNIBED_HOME", str(tmp_path / "omnibed"))
    monkeypatch.setenv("OMNIBED_GRID5000_CONFIG",
                       str(fake.write_config(tmp_path / "python-grid5000.yaml")))
    return tmp_path / "omnibed"


@pytest.fixture
def provider(home: Path) -> Grid5000Provider:
    return Grid5000Provider(home / "providers" / "grid5000")


@dataclass
class Testbed:
    """Two gros nodes, the nancy frontend and access.grid5000.fr, each a real local sshd."""

    nodes: dict[str, G5kSSHD]
    frontend: G5kSSHD
    access: FakeSSHD
    user_key: ssh.KeyPair
    frontend_key: ssh.KeyPair
    log: Path
    envs: Path


@pytest.fixture
def testbed(tmp_path: Path, fake: FakeGrid5000, home: Path,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[Testbed]:
    tools = write_tools(tmp_path / "tools")
    log = tmp_path / "g5k-tools.log"
    log.touch()
    envs = fake.environments_dir
    assert envs is not None
    user_key = ssh.ensure_keypair(tmp_path / "user-key")
    frontend_home = tmp_path / "frontend-home"
    frontend_key = ssh.ensure_keypair(frontend_home / ".ssh")
    started: list[FakeSSHD] = []
    try:
        nodes = {}
        for index in (1, 2):
            node = G5kSSHD([user_key.public_openssh], tools, log, envs)
            started.append(node.start())
            nodes[f"gros-{index}.nancy.grid5000.fr"] = node
        frontend = G5kSSHD([user_key.public_openssh], tools, log, envs, home=frontend_home)
        started.append(frontend.start())
        access = FakeSSHD([user_key.public_openssh])
        started.append(access.start())
        entries = {name: {"host": s.host, "port": s.port, "user": "root",
                          "key_file": str(user_key.private_path)}
                   for name, s in [*nodes.items(), ("nancy", frontend),
                                   ("access.grid5000.fr", access)]}
        hosts = home / "providers" / "grid5000" / HOSTS_FILE  # the CLI's state_dir too
        hosts.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        hosts.write_text(json.dumps(entries))
        fake.node_keys.update({name: s.authorized_keys_file for name, s in nodes.items()})
        yield Testbed(nodes, frontend, access, user_key, frontend_key, log, envs)
    finally:
        for server in started:
            server.stop()
