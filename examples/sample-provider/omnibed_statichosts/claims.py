"""Which hosts are claimed by which reservation: state shared between reservations, kept in
omnibed's record store (atomic 0600 writes under a lock)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from omnibed.core.kit import RecordStore


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

    def __init__(self, state_dir: Path) -> None:
        self.store = RecordStore(state_dir / "shared")

    @contextmanager
    def locked(self) -> Iterator[dict[str, Claim]]:
        with self.store.edit("claims") as record:
            claims = {name: Claim(**fields) for name, fields in record.items()}
            yield claims
            record.clear()
            record.update({name: asdict(claim) for name, claim in claims.items()})

    def get(self, name: str) -> Claim | None:
        with self.locked() as claims:
            return claims.get(name)
