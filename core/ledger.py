"""The ledger: every reservation omnibed made, written before the testbed is called.

SQLite (stdlib) in the user state directory, so a crash, a signal or a lost terminal
never leaves a reservation nobody knows of. A row is written PENDING before the testbed
call, updated with what the testbed answered, and deleted once released. A row may name
an owner process (reserve-and-run without --keep): when that process is gone, `gc`
releases the reservation. A row carries the token of the request that recorded it, so a
process changes or removes only the row it recorded, never one another process won.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from platformdirs import user_state_dir

from omnibed.core.errors import LedgerError, UsageError
from omnibed.core.timeutil import utcnow
from omnibed.core.types import Reservation, ReservationState

_SCHEMA = """
CREATE TABLE reservations (
    name TEXT PRIMARY KEY,
    testbed TEXT NOT NULL,
    state TEXT NOT NULL,
    created TEXT NOT NULL,
    owner TEXT,
    reservation TEXT,
    token TEXT
)
"""
_COLUMNS = "name, testbed, state, created, owner, reservation, token"
_OWNER = re.compile(r"\d+:\S+")
LOCK_TIMEOUT = 10.0  # seconds; omnibed holds the ledger's lock for milliseconds


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
    """Whether the process `owner` (see :func:`process_owner`) still runs."""
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
    """A ledger row; `reservation` is None while the testbed has not answered.

    A row that cannot be read whole has `problem` set (what is wrong with it), state
    UNKNOWN and no reservation: it is listed and can be released by name, never guessed at.
    """

    name: str
    testbed: str
    state: ReservationState
    created: datetime | None
    owner: str | None
    reservation: Reservation | None
    token: str | None = None
    problem: str | None = None

    def expired(self, now: datetime) -> bool:
        return self.reservation is not None and self.reservation.end <= now

    def orphaned(self) -> bool:
        return self.owner is not None and not owner_alive(self.owner)

    def to_json(self) -> dict[str, Any]:
        """The row as `omnibed ls --json` shows it: name, testbed, state, the reservation's
        start, end and id (None until the testbed answered), and `problem`."""
        reservation = self.reservation
        return {
            "name": self.name,
            "testbed": self.testbed,
            "state": self.state.value,
            "start": reservation.start.isoformat() if reservation else None,
            "end": reservation.end.isoformat() if reservation else None,
            "id": reservation.id if reservation else None,
            "problem": self.problem,
        }


class Ledger:
    """The reservations of one omnibed home.

    The file appears whole (written aside, then linked into place), so a ledger without
    its table is damaged, never new: it is reported with a copy kept, not started empty.
    A lock held longer than `timeout` seconds is reported with the process holding it.
    """

    def __init__(self, path: Path, *, timeout: float = LOCK_TIMEOUT) -> None:
        self.path = path
        self.timeout = timeout
        if not path.exists():
            self._create()
        with self._db() as db:
            tables = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        if ("reservations",) not in tables:
            raise self._damaged("it is empty" if not tables else "it has no reservations table")
        os.chmod(path, 0o600)
        if "token" not in self._columns():
            self._add_token_column()

    def _columns(self) -> set[str]:
        with self._db() as db:
            return {row[1] for row in db.execute("PRAGMA table_info(reservations)")}

    def _add_token_column(self) -> None:
        """Upgrade a ledger written before rows carried their request's token."""
        with self._db(write=True) as db:
            columns = {row[1] for row in db.execute("PRAGMA table_info(reservations)")}
            if "token" not in columns:
                db.execute("ALTER TABLE reservations ADD COLUMN token TEXT")

    def _create(self) -> None:
        """Write an empty ledger aside and link it into place, unless one appeared meanwhile."""
        part = self.path.with_name(f".{self.path.name}.{os.getpid()}.part")
        part.unlink(missing_ok=True)
        os.close(os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        try:
            db = sqlite3.connect(part)
            try:
                db.execute(_SCHEMA)
                db.commit()
            finally:
                db.close()
            os.link(part, self.path)
        except FileExistsError:
            pass
        finally:
            part.unlink()

    @contextmanager
    def _db(self, *, write: bool = False) -> Iterator[sqlite3.Connection]:
        """A transaction (taking the write lock at once if `write`); SQLite's failures are
        turned into one-line LedgerErrors, except the IntegrityError of a duplicate name."""
        try:
            db = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
            try:
                db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                yield db
                db.execute("COMMIT")
            finally:
                db.close()  # rolls back what was not committed
        except sqlite3.IntegrityError:
            raise
        except sqlite3.Error as error:
            code = getattr(error, "sqlite_errorcode", 0) & 0xFF
            if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                raise self._locked() from None
            if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
                raise self._damaged(str(error)) from None
            raise LedgerError(
                f"the ledger {self.path} cannot be used: {error}", path=str(self.path)
            ) from None

    def _damaged(self, why: str) -> LedgerError:
        copy = _keep_copy(self.path)
        return LedgerError(
            f"the ledger {self.path} is damaged ({why}); a copy is kept at {copy}. The"
            f" reservations it recorded may still be live: release them on their testbeds,"
            f" then move {self.path} away to start an empty ledger",
            path=str(self.path),
        )

    def _locked(self) -> LedgerError:
        holders = ", ".join(_lock_holders(self.path)) or "another process"
        return LedgerError(
            f"the ledger {self.path} is locked by {holders} since more than {self.timeout:g} s:"
            f" wait for it to finish (or stop it) and try again",
            path=str(self.path),
        )

    def record_pending(
        self, name: str, testbed: str, owner: str | None = None, *, token: str | None = None
    ) -> str:
        """Write the reservation before the testbed call; a name can be used once.

        Returns the row's token (`token`, or a fresh one): pass it to `update`, `set_owner`
        and `remove` to touch this row only, never one recorded by another process.
        """
        token = token or secrets.token_hex(16)
        try:
            with self._db(write=True) as db:
                db.execute(
                    "INSERT INTO reservations (name, testbed, state, created, owner, token)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        name,
                        testbed,
                        ReservationState.PENDING.value,
                        utcnow().isoformat(),
                        owner,
                        token,
                    ),
                )
        except sqlite3.IntegrityError:
            raise UsageError(
                f"a reservation called {name!r} already exists: "
                f"use another --name or `omnibed release {name}`"
            ) from None
        return token

    def update(self, reservation: Reservation, *, token: str | None = None) -> bool:
        """Record what the testbed answered; False if no row (with `token`) is there."""
        return self._change(
            "UPDATE reservations SET state = ?, reservation = ?",
            (reservation.state.value, json.dumps(reservation.to_json())),
            reservation.name,
            token,
        )

    def set_owner(self, name: str, owner: str | None, *, token: str | None = None) -> bool:
        return self._change("UPDATE reservations SET owner = ?", (owner,), name, token)

    def remove(self, name: str, *, token: str | None = None) -> bool:
        return self._change("DELETE FROM reservations", (), name, token)

    def _change(
        self, statement: str, values: tuple[Any, ...], name: str, token: str | None
    ) -> bool:
        """Run `statement` on the row `name` (and `token`, if given); whether a row changed."""
        if token is None:
            statement, values = statement + " WHERE name = ?", (*values, name)
        else:
            statement, values = statement + " WHERE name = ? AND token = ?", (*values, name, token)
        with self._db(write=True) as db:
            return db.execute(statement, values).rowcount > 0

    def get(self, name: str) -> Entry | None:
        with self._db() as db:
            row = db.execute(
                f"SELECT {_COLUMNS} FROM reservations WHERE name = ?", (name,)
            ).fetchone()
        return _entry(row) if row else None

    def entries(self) -> list[Entry]:
        """Every row, oldest first; a row that cannot be read has its `problem` set."""
        with self._db() as db:
            rows = db.execute(f"SELECT {_COLUMNS} FROM reservations ORDER BY created").fetchall()
        return [_entry(row) for row in rows]


def _keep_copy(path: Path) -> Path:
    """A 0600 copy of the damaged ledger, named by its content (made once per content)."""
    data = path.read_bytes()
    copy = path.with_name(f"{path.name}.damaged-{hashlib.sha256(data).hexdigest()[:12]}")
    try:
        fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return copy
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    return copy


def _lock_holders(path: Path) -> list[str]:
    """`pid N (command)` of each other process holding a lock on `path`, from /proc/locks."""
    try:
        info = path.stat()
        locks = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return []
    where = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    pids = []
    for line in locks:
        fields = line.split()
        if "->" in fields or len(fields) < 6:  # "->": a process waiting, not holding
            continue
        if fields[5] == where and fields[4] != str(os.getpid()) and fields[4] not in pids:
            pids.append(fields[4])
    return [f"pid {pid} ({_command_of(pid)})" for pid in pids]


def _command_of(pid: str) -> str:
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "gone"
    command = " ".join(b" ".join(words).decode(errors="replace").split())
    return command if len(command) <= 80 else command[:77] + "..."


def _entry(row: tuple[Any, ...]) -> Entry:
    name, testbed, state, created, owner, reservation, token = row
    try:
        if owner is not None and not _OWNER.fullmatch(str(owner)):
            raise ValueError(f"owner {owner!r} is not pid:start-time")
        return Entry(
            name=name,
            testbed=testbed,
            state=ReservationState(state),
            created=datetime.fromisoformat(created),
            owner=owner,
            reservation=Reservation.from_json(json.loads(reservation)) if reservation else None,
            token=token,
        )
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        return Entry(
            name=str(name),
            testbed=str(testbed),
            state=ReservationState.UNKNOWN,
            created=None,
            owner=None,
            reservation=None,
            token=token,
            problem=f"{type(error).__name__}: {error}",
        )
