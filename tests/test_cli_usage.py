"""Bad input gets one line that says what to do, exit status 2, and nothing reserved."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

OMNIBED = str(Path(sys.executable).with_name("omnibed"))


def omnibed(home: Path, *args: str, user: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMNIBED_HOME": str(home), "COLUMNS": "200"}
    prefix = ["setpriv", f"--reuid={user}", "--regid=65534", "--clear-groups"] if user else []
    return subprocess.run(
        [*prefix, OMNIBED, *args], env=env, capture_output=True, text=True, timeout=120
    )


def assert_refused(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:")
    for word in words:
        assert word in lines[0], lines[0]


def assert_nothing_reserved(home: Path) -> None:
    """No ledger entry and no reservation state of the local testbed under `home`."""
    listing = omnibed(home, "ls", "--json")
    assert json.loads(listing.stdout) == []
    local_state = home / "providers" / "local"
    made = [p.name for p in local_state.iterdir() if p.is_dir()] if local_state.exists() else []
    assert made in ([], ["images"]), made


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--testbed", "nowhere", "--nodes", "1"], ["unknown testbed 'nowhere'", "local"]),
        (["--testbed", "local", "--nodes", "0"], ["--nodes must be at least 1"]),
        (["--testbed", "local", "--extra-nics", "-1"], ["--extra-nics cannot be negative"]),
        (["--testbed", "local", "--walltime", "soon"], ["walltime 'soon'", "1h30m"]),
        (["--testbed", "local", "--walltime", "9999999999d"], ["walltime", "at most 365 days"]),
        (["--testbed", "local", "--walltime", "999999999d"], ["walltime", "at most 365 days"]),
        (["--testbed", "local", "--walltime", "99999999999:00"], ["walltime", "at most 365 days"]),
        (["--testbed", "local", "--name", "n" * 300], ["reservation name", "letters"]),
        (["--testbed", "local", "-o", "colour=red"], ["unknown option(s) colour", "profile"]),
        (["--testbed", "local", "-o", "profile"], ["not KEY=VALUE"]),
    ],
)
def test_bad_reserve_input_is_one_line_and_reserves_nothing(
    tmp_path: Path, args: list[str], words: list[str]
) -> None:
    assert_refused(omnibed(tmp_path, "reserve-and-run", *args, "--", "true"), *words)
    assert_refused(omnibed(tmp_path, "reserve", *args), *words)
    assert_nothing_reserved(tmp_path)


def test_no_command_after_double_dash(tmp_path: Path) -> None:
    result = omnibed(tmp_path, "run", "nothing-here", "--")
    assert result.returncode == 2


def test_unknown_reservation_name(tmp_path: Path) -> None:
    for verb in (["release", "ghost"], ["nodes", "ghost"], ["run", "ghost", "--", "true"]):
        assert_refused(omnibed(tmp_path, *verb), "no reservation called 'ghost'", "omnibed ls")


@pytest.mark.root
@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["-o", "profile=vmware"], ["profile", "baremetal", "xen", "kvm", "nomcast"]),
        (["-o", "profile=kvm", "--extra-nics", "1"], ["kvm", "NIC"]),
        (["--extra-nics", "2"], ["extra NIC"]),
        (["-o", "image=never-saved"], ["image", "never-saved"]),
    ],
)
def test_local_testbed_refusals(tmp_path: Path, args: list[str], words: list[str]) -> None:
    result = omnibed(
        tmp_path, "reserve-and-run", "--testbed", "local", "--nodes", "2", *args, "--", "true"
    )
    assert_refused(result, *words)
    assert_nothing_reserved(tmp_path)


@pytest.mark.root
def test_local_testbed_needs_root() -> None:
    home = Path(tempfile.mkdtemp(prefix="omnibed-nobody-"))
    home.chmod(0o777)
    result = omnibed(home, "reserve-and-run", "--testbed", "local", "--", "true", user="nobody")
    try:
        assert_refused(result, "root", "sudo")
        assert_nothing_reserved(home)
    finally:
        shutil.rmtree(home)
