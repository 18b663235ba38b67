"""The ledger: every reservation omnibed made, written before the testbed is called.

SQLite (stdlib) in the user state directory, so a crash, a signal or a lost terminal
never leaves a reservation nobody knows of. A row is written PENDING before the testbed
call, updated with what the testbed answered, and deleted once released. A row may name
an owner process (reserve-and-run without --keep): when that process is gone, `gc`
releases the reservation.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from platformdirs import user_state_dir

from omnibed.core.errors import UsageError
from omnibed.core.timeutil import utcnow
from omnibed.core.types import Reservation, ReservationState

_SCHEMA = """
CREATE TABLE IF NOT EXISTS reservations (
    name TEXT PRIMARY KEY,
    testbed TEXT NOT NULL,
    state TEXT NOT NULL,
    created TEXT NOT NULL,
    owner TEXT,
    reservation TEXT
)
"""


def omnibed_home() -> Path:
    """$OMNIBED_HOME, or the user state directory; created 0700."""
    home = Path(os.environ.get("OMNIBED_HOME") or user_state_dir("omnibed"))
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    return home


def process_owner(pid: int | None = None) -> str:
    """An id of a live process that survives pid reuse: `pid:start-time`."""
    pid = os.getpid() if pid is None else pid
    return f"{pid}:{_start_time(pid)}"


def owner_alive(owner: str) -> bool:
    pid_text, _, start = owner.partition(":")
    return _start_time(int(pid_text)) == start


def _start_time(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "gone"
    return stat.rsplit(")", 1)[1].split()[19]


@dataclass(frozen=True)
class Entry:
    """A ledger row; `reservation` is None while the testbed has not answered."""

    name: str
    testbed: str
    state: ReservationState
    created: datetime
    owner: str | None
    reservation: Reservation | None

    def expired(self, now: datetime) -> bool:
        return self.reservation is not None and self.reservation.end <= now

    def orphaned(self) -> bool:
        return self.owner is not None and not owner_alive(self.owner)


class Ledger:
    """The reservations of one omnibed home."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with self._db() as db:
            db.execute(_SCHEMA)
        os.chmod(path, 0o600)

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30)
        try:
            with db:
                yield db
        finally:
            db.close()

    def record_pending(self, name: str, testbed: str, owner: str | None = None) -> None:
        """Write the reservation before the testbed call; a name can be used once."""
        try:
            with self._db() as db:
                db.execute(
                    "INSERT INTO reservations (name, testbed, state, created, owner)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (name, testbed, ReservationState.PENDING.value, utcnow().isoformat(), owner),
                )
        except sqlite3.IntegrityError:
            raise UsageError(
                f"a reservation called {name!r} already exists: "
                f"use another --name or `omnibed release {name}`"
            ) from None

    def update(self, reservation: Reservation) -> None:
        with self._db() as db:
            db.execute(
                "UPDATE reservations SET state = ?, reservation = ? WHERE name = ?",
                (reservation.state.value, json.dumps(_dump(reservation)), reservation.name),
            )

    def set_owner(self, name: str, owner: str | None) -> None:
        with self._db() as db:
            db.execute("UPDATE reservations SET owner = ? WHERE name = ?", (owner, name))

    def remove(self, name: str) -> None:
        with self._db() as db:
            db.execute("DELETE FROM reservations WHERE name = ?", (name,))

    def get(self, name: str) -> Entry | None:
        with self._db() as db:
            row = db.execute(
                "SELECT name, testbed, state, created, owner, reservation"
                " FROM reservations WHERE name = ?",
                (name,),
            ).fetchone()
        return _entry(row) if row else None

    def entries(self) -> list[Entry]:
        with self._db() as db:
            rows = db.execute(
                "SELECT name, testbed, state, created, owner, reservation"
                " FROM reservations ORDER BY created"
            ).fetchall()
        return [_entry(row) for row in rows]


def _dump(reservation: Reservation) -> dict[str, Any]:
    return {
        "provider": reservation.provider,
        "id": reservation.id,
        "name": reservation.name,
        "start": reservation.start.isoformat(),
        "end": reservation.end.isoformat(),
        "state": reservation.state.value,
        "site": reservation.site,
        "extra": dict(reservation.extra),
    }


def load_reservation(data: dict[str, Any]) -> Reservation:
    return Reservation(
        provider=data["provider"],
        id=data["id"],
        name=data["name"],
        start=datetime.fromisoformat(data["start"]),
        end=datetime.fromisoformat(data["end"]),
        state=ReservationState(data["state"]),
        site=data["site"],
        extra=data["extra"],
    )


def _entry(row: tuple[Any, ...]) -> Entry:
    name, testbed, state, created, owner, reservation = row
    return Entry(
        name=name,
        testbed=testbed,
        state=ReservationState(state),
        created=datetime.fromisoformat(created),
        owner=owner,
        reservation=load_reservation(json.loads(reservation)) if reservation else None,
    )
