"""The ledger keeps every reservation from before the testbed call until it is released."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from omnibed.core.errors import LedgerError, UsageError
from omnibed.core.ledger import Ledger, owner_alive, process_owner
from omnibed.core.types import Reservation, ReservationState

START = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def _reservation(name: str, end: datetime) -> Reservation:
    return Reservation(
        provider="local",
        id="abc",
        name=name,
        start=START,
        end=end,
        state=ReservationState.READY,
        extra={"netns": ["a", "b"]},
    )


def test_pending_then_update_round_trips(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.record_pending("exp1", "local")
    entry = ledger.get("exp1")
    assert entry is not None and entry.state is ReservationState.PENDING
    assert entry.reservation is None
    ledger.update(_reservation("exp1", START + timedelta(hours=1)))
    entry = ledger.get("exp1")
    assert entry.reservation == _reservation("exp1", START + timedelta(hours=1))
    assert entry.reservation.end.tzinfo is not None
    assert os.stat(tmp_path / "ledger.sqlite").st_mode & 0o777 == 0o600


def test_name_is_unique(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.record_pending("exp1", "local")
    with pytest.raises(UsageError, match="already exists"):
        ledger.record_pending("exp1", "grid5000")


def test_a_row_is_changed_only_with_the_token_that_recorded_it(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    mine = ledger.record_pending("exp1", "local")
    other = "a-token-another-process-made"
    assert not ledger.update(_reservation("exp1", START), token=other)
    assert not ledger.set_owner("exp1", process_owner(), token=other)
    assert not ledger.remove("exp1", token=other)
    entry = ledger.get("exp1")
    assert (entry.token, entry.owner, entry.reservation) == (mine, None, None)
    assert ledger.update(_reservation("exp1", START), token=mine)
    assert ledger.remove("exp1", token=mine) and ledger.get("exp1") is None


def test_a_ledger_from_before_tokens_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE reservations (name TEXT PRIMARY KEY, testbed TEXT NOT NULL,"
                   " state TEXT NOT NULL, created TEXT NOT NULL, owner TEXT, reservation TEXT)")
        db.execute("INSERT INTO reservations VALUES ('old', 'local', 'pending', ?, NULL, NULL)",
                   (START.isoformat(),))
    ledger = Ledger(path)
    assert ledger.get("old").token is None and ledger.get("old").problem is None
    token = ledger.record_pending("new", "local")
    assert ledger.get("new").token == token
    assert [e.name for e in Ledger(path).entries()] == ["old", "new"]


def test_expiry_and_removal(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.record_pending("old", "local")
    ledger.update(_reservation("old", START + timedelta(hours=1)))
    assert ledger.get("old").expired(START + timedelta(hours=2))
    assert not ledger.get("old").expired(START)
    ledger.remove("old")
    assert ledger.get("old") is None and ledger.entries() == []


def test_owner_outlives_pid_reuse_checks(tmp_path: Path) -> None:
    assert owner_alive(process_owner())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    owner = process_owner(child.pid)
    child.wait()
    assert not owner_alive(owner)
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.record_pending("orphan", "local", owner=owner)
    assert ledger.get("orphan").orphaned()


# -- a damaged, half-readable or locked ledger ------------------------------------------

OMNIBED = str(Path(sys.executable).with_name("omnibed"))


def omnibed(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMNIBED_HOME": str(home), "COLUMNS": "200"}
    return subprocess.run([OMNIBED, *args], env=env, capture_output=True, text=True, timeout=120)


def one_error_line(result: subprocess.CompletedProcess, status: int) -> str:
    assert result.returncode == status, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    return lines[0]


def ledger_with_a_live_reservation(home: Path) -> Path:
    home.mkdir()
    ledger = Ledger(home / "ledger.sqlite")
    ledger.record_pending("live", "local")
    ledger.update(_reservation("live", START + timedelta(days=3650)))
    return ledger.path


@pytest.mark.parametrize("damage", [b"", b"this is not an SQLite file at all" * 100])
def test_a_damaged_ledger_is_reported_and_kept_never_started_empty(
    tmp_path: Path, damage: bytes
) -> None:
    path = ledger_with_a_live_reservation(tmp_path / "home")
    path.write_bytes(damage)
    for _ in range(2):  # the second command must not find a fresh, empty ledger either
        line = one_error_line(omnibed(tmp_path / "home", "ls"), 1)
        assert "damaged" in line and str(path) in line, line
    copies = [p for p in path.parent.iterdir() if p.name.startswith("ledger.sqlite.damaged")]
    assert len(copies) == 1 and copies[0].read_bytes() == damage
    assert copies[0].stat().st_mode & 0o777 == 0o600
    assert path.read_bytes() == damage
    with pytest.raises(LedgerError, match="damaged"):
        Ledger(path)


def test_a_ledger_without_its_table_is_damaged(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    sqlite3.connect(path).close()  # an SQLite file, created by something else
    path.touch()
    with pytest.raises(LedgerError, match="damaged"):
        Ledger(path)


def test_bad_rows_are_reported_and_the_rest_keeps_working(tmp_path: Path) -> None:
    home = tmp_path / "home"
    path = ledger_with_a_live_reservation(home)
    ledger = Ledger(path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    owner = process_owner(dead.pid)
    dead.wait()
    ledger.record_pending("orphan", "local", owner=owner)
    for name in ("badjson", "badstate", "badowner"):
        ledger.record_pending(name, "local")
    with sqlite3.connect(path) as db:
        db.execute("UPDATE reservations SET reservation = '{not json' WHERE name = 'badjson'")
        db.execute("UPDATE reservations SET state = 'exploded' WHERE name = 'badstate'")
        db.execute("UPDATE reservations SET owner = 'nobody' WHERE name = 'badowner'")

    problems = {e.name: e.problem for e in ledger.entries() if e.problem}
    assert set(problems) == {"badjson", "badstate", "badowner"}
    assert ledger.get("live").problem is None and ledger.get("badjson").problem

    listed = omnibed(home, "ls", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    assert set(rows) == {"live", "orphan", "badjson", "badstate", "badowner"}
    assert rows["live"]["end"] and rows["live"]["problem"] is None
    assert "exploded" in rows["badstate"]["problem"]
    warnings = listed.stderr.strip().splitlines()
    assert len(warnings) == 3 and all("omnibed release" in w for w in warnings), warnings

    collected = omnibed(home, "gc")
    assert collected.returncode == 0, collected.stderr
    assert "released orphan" in collected.stdout
    assert "badowner" in collected.stderr and "live" not in collected.stdout

    released = omnibed(home, "release", "badjson")
    assert released.returncode == 0, released.stderr
    left = {row["name"] for row in json.loads(omnibed(home, "ls", "--json").stdout)}
    assert left == {"live", "badstate", "badowner"}


def hold_lock(path: Path) -> subprocess.Popen:
    """Another process holding the ledger's SQLite lock until its stdin is closed."""
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sqlite3, sys\n"
         f"db = sqlite3.connect({str(path)!r}, isolation_level=None)\n"
         "db.execute('BEGIN EXCLUSIVE')\n"
         "print('locked', flush=True)\n"
         "sys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert holder.stdout.readline() == "locked\n"
    return holder


def test_a_locked_ledger_names_its_holder(tmp_path: Path) -> None:
    path = ledger_with_a_live_reservation(tmp_path / "home")
    holder = hold_lock(path)
    try:
        with pytest.raises(LedgerError, match=rf"locked by pid {holder.pid} \(.*python"):
            Ledger(path, timeout=0.2).entries()
    finally:
        holder.communicate("")
    assert [e.name for e in Ledger(path, timeout=0.2).entries()] == ["live"]


@pytest.mark.slow
def test_a_locked_ledger_is_one_line_from_the_cli(tmp_path: Path) -> None:
    path = ledger_with_a_live_reservation(tmp_path / "home")
    holder = hold_lock(path)
    try:
        line = one_error_line(omnibed(tmp_path / "home", "ls"), 1)
    finally:
        holder.communicate("")
    assert f"locked by pid {holder.pid}" in line and str(path) in line, line


def test_an_entry_is_listed_as_json_before_and_after_the_testbed_answered(
    tmp_path: Path,
) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.record_pending("exp1", "local")
    assert ledger.get("exp1").to_json() == {
        "name": "exp1", "testbed": "local", "state": "pending",
        "start": None, "end": None, "id": None, "problem": None,
    }
    ledger.update(_reservation("exp1", START + timedelta(hours=1)))
    assert json.loads(json.dumps(ledger.get("exp1").to_json())) == {
        "name": "exp1", "testbed": "local", "state": "ready",
        "start": "2026-11-25T12:00:00+00:00", "end": "2026-11-25T13:00:00+00:00",
        "id": "abc", "problem": None,
    }
