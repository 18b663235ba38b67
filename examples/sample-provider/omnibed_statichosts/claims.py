"""Which hosts are claimed by which reservation: a JSON file guarded by an flock."""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class Claim:
    """One reservation: its hosts, times (ISO 8601, UTC), the public key it installs for root
    and the hosts that key was installed on (`keyed`)."""

    id: str
    name: str
    hosts: list[str]
    start: str
    end: str
    public_key: str | None = None
    keyed: list[str] = field(default_factory=list)
    ready: bool = False


class ClaimBook:
    """`with book.locked() as claims:` reads the claims by name and saves them on exit."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextmanager
    def locked(self) -> Iterator[dict[str, Claim]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = os.open(self.path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            claims = {
                name: Claim(**fields)
                for name, fields in (
                    json.loads(self.path.read_text()) if self.path.exists() else {}
                ).items()
            }
            yield claims
            temporary = self.path.with_suffix(".tmp")
            temporary.write_text(json.dumps({n: asdict(c) for n, c in claims.items()}, indent=1))
            temporary.replace(self.path)
        finally:
            os.close(lock)

    def get(self, name: str) -> Claim | None:
        with self.locked() as claims:
            return claims.get(name)
