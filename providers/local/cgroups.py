"""One cgroup (v2) per local reservation, holding every process its pnodes' sshds start.

A process a user starts on a pnode can leave the pnode's network namespace (e.g. into a
vnode namespace of the emulator); it stays in the cgroup, so `release` still finds it.
Where no writable cgroup2 hierarchy exists, the cgroup is skipped and release falls back to
the processes of the namespaces alone.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from pathlib import Path

BASE = "omnibed-local"


def hierarchy() -> Path | None:
    """Where the cgroup2 hierarchy is mounted (and writable), or None."""
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            _, mount_point, kind, options, *_ = line.split()
            if kind == "cgroup2" and "rw" in options.split(","):
                return Path(mount_point)
    return None


def path_for(reservation_id: str) -> Path | None:
    root = hierarchy()
    return root / BASE / reservation_id if root else None


def create(reservation_id: str) -> Path | None:
    """Make the reservation's cgroup; return it, or None where cgroups cannot be used."""
    path = path_for(reservation_id)
    if path is None:
        return None
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return path


def launcher(cgroup: Path | None) -> list[str]:
    """A command prefix that enters `cgroup` (if it may) and then execs the rest."""
    if cgroup is None:
        return []
    return ["sh", "-c", '{ echo $$ > "$0/cgroup.procs"; } 2>/dev/null; exec "$@"', str(cgroup)]


def kill_all(reservation_id: str, grace: float = 5.0) -> None:
    """Kill every process of the reservation's cgroup, then remove the cgroup."""
    path = path_for(reservation_id)
    if path is None or not path.is_dir():
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        deadline = time.monotonic() + grace
        pids = _pids(path)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                continue
        while pids and time.monotonic() < deadline:
            time.sleep(0.05)
            pids = _pids(path)
        if not pids:
            break
    deadline = time.monotonic() + grace
    while True:
        try:
            path.rmdir()
            return
        except OSError as exc:  # EBUSY while the killed tasks, gone from cgroup.procs, exit
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _pids(path: Path) -> list[int]:
    return [int(pid) for pid in (path / "cgroup.procs").read_text().split()]


def one_per_mount_namespace(reservation_id: str) -> list[int]:
    """One process of the reservation's cgroup per mount namespace other than this
    process's (one per local pnode)."""
    path = path_for(reservation_id)
    if path is None or not path.is_dir():
        return []
    seen = {os.readlink("/proc/self/ns/mnt")}
    chosen = []
    for pid in _pids(path):
        try:
            namespace = os.readlink(f"/proc/{pid}/ns/mnt")
        except OSError:
            continue
        if namespace not in seen:
            seen.add(namespace)
            chosen.append(pid)
    return chosen
