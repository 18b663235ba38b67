"""Two `omnibed reserve --name X` at once: the loser of the race for the name in the ledger
leaves the winner's reservation alone, on the testbed and in the ledger."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.root

OMNIBED = str(Path(sys.executable).with_name("omnibed"))


def omnibed(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMNIBED_HOME": str(home), "COLUMNS": "200"}
    return subprocess.run([OMNIBED, *args], env=env, capture_output=True, text=True, timeout=180)


def waiting_for_the_ledger(process: subprocess.Popen, ledger: Path) -> bool:
    """Whether `process` has the ledger open and sleeps in SQLite's wait for its lock
    (nothing else in omnibed sleeps before the reservation is recorded)."""
    fds = Path(f"/proc/{process.pid}/fd")
    try:
        opened = any(os.readlink(fd) == str(ledger) for fd in fds.iterdir())
        sleeping = "nanosleep" in Path(f"/proc/{process.pid}/wchan").read_text()
    except OSError:
        return False
    return opened and sleeping


def test_the_loser_of_a_name_race_never_releases_the_winner(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert omnibed(home, "ls").returncode == 0  # the ledger exists
    ledger = home / "ledger.sqlite"
    lock = sqlite3.connect(ledger, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")  # others may read the ledger, nobody may write it
    env = {**os.environ, "OMNIBED_HOME": str(home), "COLUMNS": "200"}
    racers = [
        subprocess.Popen(
            [OMNIBED, "reserve", "--testbed", "local", "--nodes", "1", "--name", "race"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for _ in range(2)
    ]
    try:
        deadline = time.monotonic() + 60
        while not all(waiting_for_the_ledger(racer, ledger) for racer in racers):
            assert all(racer.poll() is None for racer in racers), "a racer ended early"
            assert time.monotonic() < deadline, "the racers never reached the ledger's lock"
            time.sleep(0.05)
        lock.execute("ROLLBACK")
        results = sorted(
            ((racer.wait(timeout=180), *racer.communicate()) for racer in racers),
            key=lambda result: result[0],
        )
        (won, won_out, won_err), (lost, _, lost_err) = results
        assert (won, lost) == (0, 2), (won_err, lost_err)
        assert won_out.strip() == "race"
        assert lost_err.strip().splitlines() == [
            "error: a reservation called 'race' already exists: use another --name or "
            "`omnibed release race`"
        ]
        listed = json.loads(omnibed(home, "ls", "--json").stdout)
        assert [(row["name"], row["state"]) for row in listed] == [("race", "ready")]
        ran = omnibed(home, "run", "race", "--", "id", "-u")
        assert (ran.returncode, ran.stdout) == (0, "0\n"), ran.stderr  # one node: as is
    finally:
        lock.close()
        for racer in racers:
            if racer.poll() is None:
                racer.kill()
        omnibed(home, "release", "race")
