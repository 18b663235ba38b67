"""Where a container vnode's cgroups live on this pnode, what they count, how to clear them.

runc puts a container with cgroupsPath `/omnibed-vnode-NAME` into that path of every cgroup
hierarchy: one under cgroup v2 (the testbeds' current images), one per controller and
named hierarchy under cgroup v1 or the hybrid layout (this machine's). Paths are found
the way runc finds them, from /proc/self/mountinfo; crun places them at the same paths.
Python 3.9 compatible; stdlib only.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Sequence

PREFIX = "omnibed-vnode-"  # top-level, so a vnode's CPU weight counts against the pnode's
ROOT = "/sys/fs/cgroup"
# the cgroup v2 hierarchy of the hybrid layout; where none is mounted there (cgroup v1), crun
# 1.8 still makes a plain directory per container below it, with a cgroup.procs file naming
# its init (for the `0::` line of /proc/self/cgroup): no cgroup, a stale pid once it ended
UNIFIED = ROOT + "/unified"


def cgroup_path(name: str) -> str:
    """The OCI cgroupsPath of container `name`."""
    return f"/{PREFIX}{name}"


def is_v2() -> bool:
    """True when /sys/fs/cgroup is itself the cgroup v2 hierarchy (runc's criterion)."""
    return os.path.exists(os.path.join(ROOT, "cgroup.controllers"))


def crun_can_run() -> bool:
    """False on the hybrid layout whose v2 hierarchy (/sys/fs/cgroup/unified) holds
    controllers: crun 1.8 refuses it ("cgroups in hybrid mode not supported"). Pure cgroup
    v2, pure v1 and a hybrid layout without v2 controllers are fine."""
    if is_v2() or hierarchies().get("") != UNIFIED:
        return True
    return not _read(os.path.join(UNIFIED, "cgroup.controllers")).split()


def hierarchies() -> dict[str, str]:
    """{controller or hierarchy name: mount point}; the v2 hierarchy is named ""."""
    found: dict[str, str] = {}
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            fields = line.split()
            separator = fields.index("-")
            fstype, options = fields[separator + 1], fields[separator + 3]
            if fields[3] != "/":  # a bind of a sub-cgroup, not a hierarchy's root
                continue
            if fstype == "cgroup2":
                found.setdefault("", fields[4])
            elif fstype == "cgroup":
                for option in options.split(","):
                    if option.startswith("name=") or option in _V1_CONTROLLERS:
                        found.setdefault(option, fields[4])
    return found


_V1_CONTROLLERS = {
    "cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids",
    "net_cls", "net_prio", "perf_event", "hugetlb", "rdma", "misc",
}  # fmt: skip


def controllers() -> set[str]:
    """The controllers a container can be limited with here."""
    if is_v2():
        with open(os.path.join(ROOT, "cgroup.controllers")) as file:
            return set(file.read().split())
    return {name for name in hierarchies() if name in _V1_CONTROLLERS}


def dirs(name: str) -> dict[str, str]:
    """{controller or hierarchy: directory} of container `name`, existing or not."""
    if is_v2():
        return {"": ROOT + cgroup_path(name)}
    return {key: mount + cgroup_path(name) for key, mount in hierarchies().items()}


def _bases() -> list[str]:
    """The mount point of every hierarchy a container has a cgroup in."""
    return [ROOT] if is_v2() else sorted(set(hierarchies().values()))


def _read(path: str) -> str:
    with open(path) as file:
        return file.read()


def _keyed(text: str) -> dict[str, int]:
    pairs = (line.split() for line in text.splitlines())
    return {p[0]: int(p[1]) for p in pairs if len(p) == 2 and p[1].lstrip("-").isdigit()}


def counters(name: str) -> dict[str, int]:
    """oom_kills, memory_failcnt (v1 only: hits of the limit), cpu_usage_ns of `name`;
    {} when it has no cgroup."""
    places = dirs(name)
    try:
        if is_v2():
            events = _keyed(_read(places[""] + "/memory.events"))
            usage_us = _keyed(_read(places[""] + "/cpu.stat"))["usage_usec"]
            return {"oom_kills": events.get("oom_kill", 0), "cpu_usage_ns": usage_us * 1000}
        memory = places["memory"]
        return {
            "oom_kills": _keyed(_read(memory + "/memory.oom_control")).get("oom_kill", 0),
            "memory_failcnt": int(_read(memory + "/memory.failcnt")),
            "cpu_usage_ns": int(_read(places["cpuacct"] + "/cpuacct.usage")),
        }
    except FileNotFoundError:
        return {}


def kill(names: Sequence[str]) -> set[str]:
    """SIGKILL every process in the cgroups of containers `names`; the names that had one."""
    bases = _bases()
    return {n for n in names if sum(_kill(base + cgroup_path(n)) for base in bases) > 0}


def remove(names: Sequence[str], timeout: float = 5.0) -> set[str]:
    """Kill what is left in the cgroups of containers `names` and remove them; the names
    that had one. Idempotent."""
    bases = _bases()
    stray = not is_v2() and UNIFIED not in bases
    removed = set()
    for name in names:
        for directory in (base + cgroup_path(name) for base in bases):
            if os.path.isdir(directory):
                _clear(directory, timeout)
                removed.add(name)
        if stray and _remove_plain(UNIFIED + cgroup_path(name)):
            removed.add(name)
    return removed


def _remove_plain(directory: str) -> bool:
    """Remove crun's plain directory `directory` (no cgroup: its pid is not killed) and its
    files; whether it was there."""
    try:
        entries = os.listdir(directory)
    except FileNotFoundError:
        return False
    for entry in entries:
        os.unlink(os.path.join(directory, entry))
    os.rmdir(directory)
    return True


def _kill(directory: str) -> int:
    try:
        pids = [int(p) for p in _read(directory + "/cgroup.procs").split()]
    except FileNotFoundError:
        return 0
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(pids)


def _clear(directory: str, timeout: float) -> None:
    """Kill every process in cgroup `directory`, then remove it."""
    deadline = time.monotonic() + timeout
    while True:
        _kill(directory)
        try:
            os.rmdir(directory)
            return
        except FileNotFoundError:
            return
        except OSError:  # busy until the killed processes are reaped
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)
