"""What a local reservation made, kept in `state_dir/<id>/reservation.json`.

The record is written before the first network object is made and rewritten when the
reservation is complete, so `release` can undo a reservation a crashed process left half-made.
A machine-wide lock serialises reservations so two processes never pick the same subnet; it
lives in a directory only root can create and write, so no other user can hold it.
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

from omnibed.core.errors import ProviderError, ReservationError
from omnibed.core.kit import write_json
from omnibed.core.ledger import owner_alive, process_owner
from omnibed.core.types import Reservation, ReservationState

RECORD_FILE = "reservation.json"
LOCK_DIR = Path("/run/omnibed")
LOCK_NAME = "local.lock"
LOCK_TIMEOUT = 600.0


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
    owner: str = ""  # the reserving process, as omnibed.core.ledger.process_owner() gives it

    def being_made_elsewhere(self) -> bool:
        """True while another live process is still making this reservation."""
        return (
            self.state == ReservationState.PENDING.value
            and bool(self.owner)
            and self.owner != process_owner()
            and owner_alive(self.owner)
        )

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
        """Write the record atomically, 0600, to `state_dir/<id>/reservation.json`."""
        write_json(state_dir / self.id / RECORD_FILE, asdict(self))

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
def machine_lock(timeout: float = LOCK_TIMEOUT, directory: Path = LOCK_DIR) -> Iterator[None]:
    """Hold the machine-wide lock of the local testbed (released even if the process dies).

    The lock file lives in `directory`, a root-owned 0700 directory (made if missing, checked
    otherwise; neither it nor the file may be a symlink). After `timeout` s a ReservationError
    names the process holding the lock.
    """
    fd = _open_lock(directory)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise ReservationError(
                        f"the local testbed is busy: {lock_holder(fd)} has held "
                        f"{directory / LOCK_NAME} for more than {timeout:.0f} s; "
                        "wait for it to finish or stop it",
                        provider="local",
                    ) from None
                time.sleep(0.1)
        yield
    finally:
        os.close(fd)  # closing the only descriptor releases the lock


def _open_lock(directory: Path) -> int:
    """Open (creating) the lock file in `directory` after checking only root controls it."""
    try:
        directory.mkdir(mode=0o700)
    except FileExistsError:
        pass
    refused = f"{directory} must be a directory owned by root with mode 0700"
    fix = "remove it (omnibed makes it again)"
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as error:
        raise ProviderError(f"{refused} ({error.strerror}): {fix}", provider="local") from None
    try:
        info = os.fstat(dir_fd)
        if info.st_uid != 0 or stat.S_IMODE(info.st_mode) & 0o077:
            raise ProviderError(
                f"{refused}, not uid {info.st_uid} mode {stat.S_IMODE(info.st_mode):o}: {fix}",
                provider="local",
            )
        return os.open(
            LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
            dir_fd=dir_fd,
        )
    finally:
        os.close(dir_fd)


def lock_holder(fd: int) -> str:
    """`process PID (command)` holding a flock on the file of `fd`, from /proc/locks."""
    info = os.fstat(fd)
    device = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    with open("/proc/locks") as locks:
        for line in locks:
            fields = line.split()
            if "->" not in fields and len(fields) > 5 and fields[5] == device:
                pid = fields[4]
                return f"process {pid} ({command_of(pid)})"
    return "another process"


def command_of(pid: str) -> str:
    """The command line of process `pid` on one line (at most 120 characters)."""
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "gone"
    command = " ".join(word.decode(errors="replace") for word in words)
    return " ".join(command.split())[:120]  # one line, however the command was spelled
