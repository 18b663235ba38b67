"""What a local reservation made, kept in `state_dir/<id>/reservation.json`.

The record is written before the first network object is made and rewritten when the
reservation is complete, so `release` can undo a reservation a crashed process left half-made.
A machine-wide lock serialises reservations so two processes never pick the same subnet.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

from omnibed.core.types import Reservation, ReservationState

RECORD_FILE = "reservation.json"
LOCK_FILE = Path("/run/lock/omnibed-local.lock")


@dataclass
class NodeRecord:
    """One pnode: its namespace, control address and MAC, and its own directory."""

    id: str
    netns: str
    address: str
    mac: str
    port: str
    dir: str
    extra_mac: str | None = None
    extra_port: str | None = None


@dataclass
class Record:
    id: str
    name: str
    profile: str
    subnet: str
    start: str
    end: str
    state: str
    switch_netns: str
    host_link: str
    host_address: str
    host_mac: str
    extra_nics: int = 0
    image: str | None = None
    nodes: list[NodeRecord] = field(default_factory=list)

    @property
    def namespaces(self) -> list[str]:
        """Every namespace of the reservation, pnodes first, the switch last."""
        return [node.netns for node in self.nodes] + [self.switch_netns]

    def to_reservation(self) -> Reservation:
        return Reservation(
            provider="local",
            id=self.id,
            name=self.name,
            start=datetime.fromisoformat(self.start),
            end=datetime.fromisoformat(self.end),
            state=ReservationState(self.state),
            extra={
                "profile": self.profile,
                "subnet": self.subnet,
                "switch_netns": self.switch_netns,
                "host_link": self.host_link,
                "netns": [node.netns for node in self.nodes],
                "extra_nics": self.extra_nics,
            },
        )

    def save(self, state_dir: Path) -> None:
        """Write the record atomically to `state_dir/<id>/reservation.json`."""
        directory = state_dir / self.id
        directory.mkdir(parents=True, exist_ok=True)
        temporary = directory / f".{RECORD_FILE}.tmp"
        temporary.write_text(json.dumps(asdict(self), indent=2))
        os.replace(temporary, directory / RECORD_FILE)

    @classmethod
    def load(cls, path: Path) -> Record:
        data = json.loads(path.read_text())
        data["nodes"] = [NodeRecord(**node) for node in data.get("nodes", [])]
        return cls(**data)


def load_records(state_dir: Path) -> list[Record]:
    """Every reservation recorded in `state_dir` (unreadable files are skipped)."""
    records = []
    for path in sorted(state_dir.glob(f"*/{RECORD_FILE}")):
        try:
            records.append(Record.load(path))
        except (OSError, ValueError, TypeError):
            continue
    return records


def load_record(state_dir: Path, reservation_id: str) -> Record | None:
    path = state_dir / reservation_id / RECORD_FILE
    try:
        return Record.load(path)
    except (OSError, ValueError, TypeError):
        return None


@contextmanager
def machine_lock() -> Iterator[None]:
    """Hold the machine-wide lock of the local testbed (released even if the process dies)."""
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK_FILE, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
