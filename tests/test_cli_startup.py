"""`omnibed --version`, and the commands a user types most start without loading what they do
not use: no SSH library, no testbed SDK, no emulator (bench/cli_startup.py times them); on a
running platform, `emulate exec` and `emulate status --json` load no provider, no SSH library
(the control process holds the agents) and no rich (bench/emulator_pnodes.py times them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from importlib.metadata import version
from pathlib import Path

import pytest

from omnibed.api import Omnibed
from omnibed.emulator.model import load_platform

OMNIBED = str(Path(sys.executable).with_name("omnibed"))
HEAVY = ("paramiko", "openstack", "grid5000", "omnibed.emulator.coordinator")
LOADED = (  # run one omnibed command in this interpreter, then list the modules it loaded
    "import json, sys; from omnibed.cli import main; sys.argv = ['omnibed', *sys.argv[1:]]\n"
    "try: main()\nexcept SystemExit: pass\n"
    "print(json.dumps(sorted(sys.modules)), file=sys.stderr)"
)
RAN = (  # the same, printing [its exit status, the modules it loaded]
    "import json, sys; from omnibed.cli import main; sys.argv = ['omnibed', *sys.argv[1:]]\n"
    "try: main(); status = 0\nexcept SystemExit as end: status = end.code\n"
    "print(json.dumps([status, sorted(sys.modules)]), file=sys.stderr)"
)


def test_version_prints_the_installed_version(tmp_path: Path) -> None:
    env = {**os.environ, "OMNIBED_HOME": str(tmp_path)}
    done = subprocess.run([OMNIBED, "--version"], env=env, capture_output=True, text=True)
    assert (done.returncode, done.stdout) == (0, f"omnibed {version('omnibed')}\n"), done.stderr


@pytest.mark.parametrize(
    "args", [["--help"], ["--version"], ["ls"], ["providers"], ["run", "--help"]]
)
def test_command_loads_no_ssh_sdk_nor_emulator(tmp_path: Path, args: list[str]) -> None:
    env = {**os.environ, "OMNIBED_HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", LOADED, *args], env=env,
                          capture_output=True, text=True, timeout=60)
    loaded = json.loads(done.stderr.strip().splitlines()[-1])
    assert "omnibed.cli.app" in loaded  # the command did run
    assert [name for name in loaded if name.split(".")[0] in HEAVY or name in HEAVY] == []


@pytest.mark.parametrize(
    ("args", "unused"),
    [
        (["--help"], ("omnibed.api", "omnibed.core.ledger", "pluggy")),
        (["--version"], ("omnibed.api", "omnibed.core.ledger", "pluggy")),
        (["emulate", "--help"], ("omnibed.api", "pluggy")),
        (["ls"], ("pluggy", "omnibed.core.plugins")),
        (["ls", "--json"], ("pluggy", "omnibed.core.plugins", "rich.console", "rich.table")),
    ],
)
def test_help_loads_no_api_and_ls_no_plugin_manager(
    tmp_path: Path, args: list[str], unused: tuple[str, ...]
) -> None:
    env = {**os.environ, "OMNIBED_HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", LOADED, *args], env=env,
                          capture_output=True, text=True, timeout=60)
    loaded = json.loads(done.stderr.strip().splitlines()[-1])
    assert "omnibed.cli.app" in loaded  # the command did run
    assert [name for name in unused if name in loaded] == []


@pytest.fixture(scope="module")
def running_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """(OMNIBED_HOME, reservation name) of a local pnode running a one-vnode platform."""
    home = tmp_path_factory.mktemp("home")
    api = Omnibed(home=home)
    request = api.make_request("local", nodes=1, walltime=timedelta(hours=1))
    api.reserve("local", request)
    try:
        platform = (
            "networks: [{name: lan, cidr: 10.78.0.0/24}]\n"
            "nodes: [{name: v0, ifaces: [{name: if0, network: lan}]}]\n"
        )
        api.emulator(request.name).up(load_platform(platform))
        yield home, request.name
    finally:
        api.release(request.name)


@pytest.mark.root
@pytest.mark.parametrize(
    "args", [["emulate", "exec", "R", "v0", "--", "true"], ["emulate", "status", "R", "--json"]]
)
def test_exec_and_status_load_no_provider_ssh_nor_rich(
    running_platform: tuple[Path, str], args: list[str]
) -> None:
    home, name = running_platform
    env = {**os.environ, "OMNIBED_HOME": str(home)}
    env.pop("OMNIBED_CONTROL_IDLE", None)  # the default: the control process keeps the agents
    args = [name if arg == "R" else arg for arg in args]
    done = subprocess.run([sys.executable, "-c", RAN, *args], env=env,
                          capture_output=True, text=True, timeout=120)
    status, loaded = json.loads(done.stderr.strip().splitlines()[-1])
    assert status in (0, None), done.stderr  # the command did run, and succeeded
    unused = ("paramiko", "pluggy", "omnibed.core.plugins", "omnibed.providers", "rich")
    heavy = [m for m in loaded if m in unused or m.startswith(tuple(f"{u}." for u in unused))]
    assert heavy == []
