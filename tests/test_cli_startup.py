"""`omnibed --version`, and the commands a user types most start without loading what they do
not use: no SSH library, no testbed SDK, no emulator (bench/cli_startup.py times them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

OMNIBED = str(Path(sys.executable).with_name("omnibed"))
HEAVY = ("paramiko", "openstack", "grid5000", "omnibed.emulator.coordinator")
LOADED = (  # run one omnibed command in this interpreter, then list the modules it loaded
    "import json, sys; from omnibed.cli import main; sys.argv = ['omnibed', *sys.argv[1:]]\n"
    "try: main()\nexcept SystemExit: pass\n"
    "print(json.dumps(sorted(sys.modules)), file=sys.stderr)"
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
