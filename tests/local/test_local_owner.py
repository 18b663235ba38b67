"""Two reserves under one name: the local testbed never lets one undo what the other made."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from pathlib import Path

import pytest

from omnibed.core.errors import ReservationError
from omnibed.core.types import ReservationState
from omnibed.providers.local import LocalProvider
from tests.local.support import needs_root, start_reserve

pytestmark = [pytest.mark.root, needs_root]


def _pending_record(state_dir: Path, name: str, deadline: float) -> dict:
    """The record of reservation `name` once it is written as pending."""
    while time.monotonic() < deadline:
        for path in state_dir.glob("*/reservation.json"):
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if record["name"] == name and record["state"] == ReservationState.PENDING.value:
                return record
        time.sleep(0.01)
    pytest.fail(f"no pending record of {name} appeared")


def test_the_loser_cannot_release_what_the_winner_is_making(tmp_path: Path) -> None:
    """The winner is stopped mid-build; the loser, holding only the name, finds it and asks
    to release it (as a command that lost the race for the name would): refused, and the
    winner then completes its reservation."""
    state_dir = tmp_path / "state"
    name = f"t-race-{uuid.uuid4().hex[:6]}"
    winner = start_reserve(state_dir, name, nodes=12)
    try:
        record = _pending_record(state_dir, name, time.monotonic() + 60)
        os.kill(winner.pid, signal.SIGSTOP)
        loser = LocalProvider(state_dir)
        found = loser.find(name)
        assert found is not None and found.id == record["id"]
        with pytest.raises(ReservationError, match=f"being made by process {winner.pid} "):
            loser.release(found)
    finally:
        os.kill(winner.pid, signal.SIGCONT)
        out, err = winner.communicate(timeout=120)
    assert winner.returncode == 0, out + err
    assert out.split() == ["reserved", record["id"]]
