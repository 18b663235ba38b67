"""A reservation name never reaches the filesystem unchecked, and a failed reserve deletes
only what it created.

omnibed runs as root and keeps each reservation's keys in `<home>/reservations/<name>`:
an unchecked name such as `/some/dir` or `..` used to be removed with everything in it
when the reserve failed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from omnibed.api import Omnibed
from omnibed.core.errors import UsageError
from omnibed.core.ledger import Ledger
from omnibed.core.types import ReservationRequest

OMNIBED = str(Path(sys.executable).with_name("omnibed"))
TOO_MANY = "300"  # more pnodes than the local testbed makes: its reserve fails


def omnibed(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMNIBED_HOME": str(home), "COLUMNS": "200"}
    return subprocess.run([OMNIBED, *args], env=env, capture_output=True, text=True, timeout=120)


def assert_refused_name(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: reservation name"), lines[0]
    assert "letters, digits" in lines[0]


def victim(path: Path) -> Path:
    """A directory of the user's, outside omnibed's home, with a file in it."""
    path.mkdir(parents=True)
    (path / "thesis.tex").write_text("years of work\n")
    return path


@pytest.mark.root
def test_an_absolute_name_never_deletes_that_directory(tmp_path: Path) -> None:
    home, kept = tmp_path / "home", victim(tmp_path / "precious")
    for verb in ("reserve", "reserve-and-run"):
        tail = ["--", "true"] if verb == "reserve-and-run" else []
        result = omnibed(home, verb, "--testbed", "local", "--nodes", TOO_MANY,
                         "--name", str(kept), *tail)
        assert (kept / "thesis.tex").read_text() == "years of work\n"
        assert_refused_name(result)


@pytest.mark.root
def test_dot_dot_never_deletes_the_home_and_its_ledger(tmp_path: Path) -> None:
    home = tmp_path / "home"
    listed = omnibed(home, "ls", "--json")  # creates the home and its ledger
    assert listed.returncode == 0, listed.stderr
    (home / "marker").write_text("still here\n")
    result = omnibed(home, "reserve", "--testbed", "local", "--nodes", TOO_MANY, "--name", "..")
    assert (home / "marker").read_text() == "still here\n"
    assert (home / "ledger.sqlite").exists()
    assert_refused_name(result)


@pytest.mark.root
@pytest.mark.parametrize("name", ["a/b", "../x", ".hidden", "-o", "has space", "x" * 64, "é"])
def test_unsafe_names_are_refused_before_anything_is_made(tmp_path: Path, name: str) -> None:
    home = tmp_path / "home"
    result = omnibed(home, "reserve", "--testbed", "local", "--nodes", TOO_MANY, f"--name={name}")
    assert not (home / "reservations").exists() or list((home / "reservations").iterdir()) == []
    assert not (tmp_path / "x").exists()
    assert_refused_name(result)
    assert json.loads(omnibed(home, "ls", "--json").stdout) == []


def test_a_300_character_name_is_one_line(tmp_path: Path) -> None:
    result = omnibed(tmp_path, "reserve", "--testbed", "local", "--name", "n" * 300)
    assert_refused_name(result)
    assert len(result.stderr) < 300


@pytest.mark.parametrize("name", ["exp1", "my-exp_2.run", "A", "9" * 63])
def test_safe_names_are_accepted(name: str) -> None:
    assert ReservationRequest(name=name, nodes=1, duration=timedelta(hours=1)).name == name


@pytest.mark.parametrize("name", ["", "..", "/etc", "a/b", ".x", "x" * 64, "a\nb", "a\0b"])
def test_python_callers_cannot_build_a_request_with_an_unsafe_name(name: str) -> None:
    with pytest.raises(ValueError, match="reservation name"):
        ReservationRequest(name=name, nodes=1, duration=timedelta(hours=1))


def test_make_request_refuses_an_unsafe_name_as_bad_input(tmp_path: Path) -> None:
    api = Omnibed(home=tmp_path)
    with pytest.raises(UsageError, match="reservation name"):
        api.make_request("local", nodes=1, walltime=timedelta(hours=1), name="../escape")


@pytest.mark.root
def test_a_failed_reserve_keeps_a_directory_it_did_not_make(tmp_path: Path) -> None:
    """A directory already at the reservation's place (left by hand, or a symlink) survives."""
    home = tmp_path / "home"
    kept = victim(tmp_path / "precious")
    (home / "reservations").mkdir(parents=True)
    (home / "reservations" / "linked").symlink_to(kept)
    victim(home / "reservations" / "mine")
    for name in ("linked", "mine"):
        result = omnibed(home, "reserve", "--testbed", "local", "--nodes", TOO_MANY,
                         "--name", name)
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert sorted(os.listdir(kept)) == ["thesis.tex"], "keys were written through the link"
    assert (home / "reservations" / "linked").is_symlink()
    assert (home / "reservations" / "mine" / "thesis.tex").exists()
    assert json.loads(omnibed(home, "ls", "--json").stdout) == []


@pytest.mark.parametrize("legacy", ["..", "/etc/omnibed-victim", "a/b"])
def test_a_name_recorded_before_names_were_checked_is_released_touching_no_folder(
    tmp_path: Path, legacy: str
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "marker").write_text("still here\n")
    kept = victim(home / "reservations" / "a" / "b")
    Ledger(home / "ledger.sqlite").record_pending(legacy, "local")
    released = omnibed(home, "release", legacy)
    assert released.returncode == 0, released.stderr
    assert (home / "marker").exists() and (kept / "thesis.tex").exists()
    assert json.loads(omnibed(home, "ls", "--json").stdout) == []
