"""The ledger keeps every reservation from before the testbed call until it is released."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from omnibed.core.errors import UsageError
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
