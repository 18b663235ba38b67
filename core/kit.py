"""The provider kit: the mechanics every provider needs, written once.

- :func:`check_options` refuses `-o` options the provider did not declare;
- :func:`poll_until` waits for the testbed and raises ProviderTimeout with the last status;
- :class:`RecordStore` keeps JSON records (one per reservation, or state shared between
  reservations) written atomically with mode 0600, under a lock for read-change-write.

Logging in to nodes is the other half of the kit, in :mod:`omnibed.core.login`: the
reservation's `Login` (key, public key, known_hosts) that the verbs receive, and
`authorise_root` / `verify_root`. A provider that knows its nodes' host keys puts them on
`Node.host_keys` (:mod:`omnibed.core.types`).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from omnibed.core.errors import ProviderTimeout, UsageError

T = TypeVar("T")

RESERVATIONS = "reservations"
"""The folder of `state_dir` where every built-in provider keeps its per-reservation table."""


def check_options(options: Mapping[str, str], declared: Mapping[str, str], testbed: str) -> None:
    """Raise UsageError naming every option of `options` not in `declared` (name -> help)."""
    unknown = sorted(set(options) - set(declared))
    if unknown:
        known = ", ".join(f"{key} ({text})" for key, text in declared.items()) or "none"
        raise UsageError(f"unknown option(s) {', '.join(unknown)} for {testbed}; known: {known}")


@dataclass(frozen=True, slots=True)
class Pending:
    """What a `poll_until` check returns while not done: a one-line status."""

    status: str


def poll_until(
    check: Callable[[], T | Pending],
    *,
    timeout: float,
    interval: float,
    what: str,
    fix: str,
    provider: str,
) -> T:
    """Call `check` every `interval` s until it returns something other than a Pending.

    `check` reports progress itself if it wants to. After `timeout` s, ProviderTimeout says
    "`what` is still `<last status>` after `timeout` s: `fix`". Errors of `check` propagate.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if not isinstance(result, Pending):
            return result
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ProviderTimeout(
                f"{what} is still {result.status} after {timeout:g} s: {fix}", provider=provider
            )
        time.sleep(min(interval, remaining))


def write_json(path: Path, data: Any) -> None:
    """Replace `path` with `data` as JSON, atomically, mode 0600 (its folder made 0700)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f".{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as file:
        os.fchmod(file.fileno(), 0o600)
        json.dump(data, file, indent=1, sort_keys=True)
    os.replace(temporary, path)


class RecordStore:
    """A table of JSON records, one file `<directory>/<key>.json` each (key URL-quoted).

    Each write is atomic and 0600. `locked()` holds an exclusive lock over the table, for a
    read-change-write that another process must not interleave (state shared between
    reservations); `edit(key)` is that for one record.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, key: str) -> Path:
        return self.directory / f"{urllib.parse.quote(key, safe='')}.json"

    def load(self, key: str) -> dict[str, Any] | None:
        """The record `key`, or None if there is none."""
        try:
            data: dict[str, Any] = json.loads(self.path(key).read_text())
        except FileNotFoundError:
            return None
        return data

    def save(self, key: str, record: Mapping[str, Any]) -> None:
        write_json(self.path(key), dict(record))

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def keys(self) -> list[str]:
        """The keys of every record, sorted."""
        return sorted(urllib.parse.unquote(path.stem) for path in self.directory.glob("*.json"))

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the table's lock (`<directory>/.lock`) for the block."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the only descriptor releases the lock

    @contextmanager
    def edit(self, key: str) -> Iterator[dict[str, Any]]:
        """Under the lock, yield the record `key` (empty if none) and save it after the block."""
        with self.locked():
            record = self.load(key) or {}
            yield record
            self.save(key, record)
