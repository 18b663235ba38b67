"""A pnode whose python3 is missing or too old is named before anything is changed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from omnibed.core import ssh
from omnibed.core.errors import PreflightError
from omnibed.core.types import SSHEndpoint
from omnibed.emulator.control import ControlAgents
from omnibed.emulator.transport import Agents, DirectAgents
from tests.fakes.sshd import FakeSSHD

pytestmark = pytest.mark.root


def _pnode_path(tmp_path: Path, python3: str | None) -> str:
    """A PATH holding the system tools and, if given, a python3 with this --version."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if python3 is not None:
        fake = bin_dir / "python3"
        fake.write_text(f"#!/bin/sh\necho '{python3}'\n")
        fake.chmod(0o755)
    tools = bin_dir / "tools"
    tools.mkdir()
    for tool in ("sh", "bash", "env", "cat", "mv", "rm", "test"):
        (tools / tool).symlink_to(shutil.which(tool))
    return f"{bin_dir}:{tools}"


@pytest.mark.parametrize(
    ("python3", "said"),
    [(None, "python3 is missing"), ("Python 3.6.15", "python3 is Python 3.6")],
)
@pytest.mark.parametrize("kept", [False, True], ids=["own agents", "control process"])
def test_pnode_without_a_usable_python_is_named(
    tmp_path: Path, python3: str | None, said: str, kept: bool
) -> None:
    control = ControlAgents(tmp_path / "control", idle=5)
    agents: Agents = control if kept else DirectAgents()
    keys = ssh.ensure_keypair(tmp_path / "keys")
    path = _pnode_path(tmp_path, python3)
    home = tmp_path / "home"  # no shell start-up file may change PATH
    home.mkdir()
    with FakeSSHD([keys.public_openssh], path=path, user_home=str(home)) as pnode:
        endpoint = SSHEndpoint(pnode.host, pnode.port, "root", str(keys.private_path))
        with pytest.raises(PreflightError) as refused:
            lease = agents.lease("scope", ["pnode-7"], lambda wanted: {"pnode-7": endpoint},
                                 tmp_path / "known_hosts")
            with lease:
                pass
        control.forget("scope")  # ends the control process, if this test started one
    assert list(refused.value.missing) == ["pnode-7"]
    assert said in str(refused.value) and ">= 3.9" in str(refused.value)
