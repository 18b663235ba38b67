"""A timeline of live changes, run on the pnode by a process of its own from the pnode's clock.

`prepare` checks a timeline's shaping against the kernel, then forks a runner detached from
the agent's session (it outlives the SSH connection that asked for it) and returns; `go`
tells it its start (epoch seconds), once every pnode has prepared. The runner sleeps until
each action's time and applies its changes over netlink sockets it keeps open, one per
namespace; it appends one JSON line per action to its log:
{"i": n, "planned": epoch, "actual": epoch once the kernel acknowledged, "took": seconds
spent applying, "error": text|null}, and {"cancelled": epoch} when stopped. Its files live
in TIMELINES_DIR/<instance digest>/<id>/, directories only root can read or write
(actions.json, start, log, pid, lock, and `control`, the FIFO it reads `start EPOCH` or
`cancel` from); the runner holds `lock` for as long as it lives, so a free lock means it is
gone.

An action: {"offset": seconds from the start, or null and "at": epoch seconds, "what":
"vnode-3.if0 down", "where": "platform.yaml:12:5", "changes": [{"link": {"netns", "ifname",
"up", "peer": its pnode end}} | {"shape": {"viface", "direction"}}]}. `records` reads
timelines back, `cancel` stops them (teardown cancels its instance's and removes their
files).
Python 3.9 compatible; stdlib only.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import json
import os
import re
import select
import shutil
import signal
import stat
import struct
import time
from typing import Any

from . import nlbatch as nl
from .live import _batch_in, _flush, _index, add_shaping
from .netlink_apply import ApplyFailure
from .preflight import explain, kernel_missing
from .shaping import SIOCETHTOOL, offloads_off
from .state import Viface

TIMELINES_DIR = "/run/omnibed/timelines"
RT_PRIORITY = 10  # SCHED_FIFO, low among real-time tasks: above every ordinary process
ETHTOOL_GLINK = 0xA
PREPARED_FOR = 120.0  # seconds a prepared runner waits for its start before it gives up
_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")


def instance_dir(instance: str) -> str:
    digest = hashlib.sha256(instance.encode()).hexdigest()[:16]
    return os.path.join(TIMELINES_DIR, digest)


def _timeline_dir(instance: str, timeline: str) -> str:
    if not _ID.fullmatch(timeline):
        raise ValueError(f"bad timeline id {timeline!r}")
    return os.path.join(instance_dir(instance), timeline)


def _private_dirs(path: str) -> None:
    """`path` and its parents up from /run/omnibed, made root's and 0700."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    while path not in ("/run", "/"):
        info = os.lstat(path)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
            raise OSError(errno.EPERM, f"{path} is not a directory of uid {os.geteuid()}")
        os.chmod(path, 0o700)
        path = os.path.dirname(path)


# -- the agent's side --------------------------------------------------------------------------


def prepare(instance: str, timeline: str, actions: list[dict[str, Any]]) -> dict[str, Any]:
    """Fork a detached runner for `actions`, waiting for `go`; problems lists the kernel
    features their shaping lacks (then there is no runner)."""
    features: set[str] = set()
    for action in actions:
        for change in action["changes"]:
            if "shape" in change:
                viface = Viface.from_json(change["shape"]["viface"])
                shaping = getattr(viface, change["shape"]["direction"])
                features |= {"sch_tbf"} if shaping.rate_bps is not None else set()
                features |= {"sch_netem"} if shaping.needs_netem() else set()
    # only when there is shaping: the probe makes a namespace, slow on a busy kernel
    problems = [explain(f) for f in sorted(kernel_missing(features))] if features else []
    if problems:
        return {"problems": problems, "pid": None}
    directory = _timeline_dir(instance, timeline)
    _private_dirs(os.path.dirname(directory))
    os.mkdir(directory, 0o700)
    with open(os.path.join(directory, "actions.json"), "w") as file:
        file.write(json.dumps({"created": time.time(), "actions": actions}))
    os.mkfifo(os.path.join(directory, "control"), 0o600)
    # read and write: the runner is never without a writer, so never sees an end of file
    control = os.open(os.path.join(directory, "control"), os.O_RDWR | os.O_CLOEXEC)
    lock = os.open(os.path.join(directory, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # shared with the runner, which keeps it
        child = os.fork()
        if child == 0:
            _detach_and_run(directory, actions, control)  # never returns
        os.waitpid(child, 0)
    finally:
        os.close(lock)
        os.close(control)
    with open(os.path.join(directory, "pid")) as file:
        return {"problems": [], "pid": int(file.read())}


def go(instance: str, timeline: str, start: float) -> dict[str, Any]:
    """Start prepared runner `timeline` at `start` (epoch seconds); running: whether it was
    still there to be told."""
    directory = _timeline_dir(instance, timeline)
    with open(os.path.join(directory, "start"), "w") as file:
        file.write(repr(float(start)))
    return {"running": _tell(directory, f"start {float(start)!r}\n")}


def _tell(directory: str, message: str) -> bool:
    """Write `message` to the runner's control FIFO; False when no runner reads it."""
    try:
        fd = os.open(os.path.join(directory, "control"), os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:  # ENXIO: no reader any more
        if exc.errno in (errno.ENXIO, errno.ENOENT):
            return False
        raise
    try:
        os.write(fd, message.encode())
    finally:
        os.close(fd)
    return True


def _running(directory: str) -> bool:
    try:
        fd = os.open(os.path.join(directory, "lock"), os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _timelines(instance: str) -> list[str]:
    try:
        names = sorted(os.listdir(instance_dir(instance)))
    except FileNotFoundError:
        return []
    return [os.path.join(instance_dir(instance), n) for n in names if _ID.fullmatch(n)]


def records(instance: str) -> list[dict[str, Any]]:
    """Every timeline of `instance` on this pnode: its id, whether it still runs, when it
    was created and started (null until `go`), its actions and the lines its runner logged."""
    found = []
    for directory in _timelines(instance):
        try:
            with open(os.path.join(directory, "actions.json")) as file:
                planned = json.load(file)
            with open(os.path.join(directory, "log")) as file:
                log = [json.loads(line) for line in file if line.endswith("\n")]
        except FileNotFoundError:
            continue
        try:
            with open(os.path.join(directory, "start")) as file:
                start: float | None = float(file.read())
        except FileNotFoundError:
            start = None
        found.append(
            {
                "id": os.path.basename(directory),
                "running": _running(directory),
                "created": planned["created"],
                "start": start,
                "actions": planned["actions"],
                "log": log,
            }
        )
    return found


def cancel(instance: str, timeline: str | None = None, *, remove: bool = False) -> list[str]:
    """Stop the runners of `instance` (only `timeline` if given), waiting until each is gone;
    `remove` deletes their files too. The ids of the runners that were stopped."""
    stopped = []
    for directory in _timelines(instance):
        if timeline is not None and os.path.basename(directory) != timeline:
            continue
        if _running(directory):
            with open(os.path.join(directory, "pid")) as file:
                pid = int(file.read())
            _stop(directory, pid)
            stopped.append(os.path.basename(directory))
        if remove:
            shutil.rmtree(directory, ignore_errors=True)
    if remove and timeline is None:
        shutil.rmtree(instance_dir(instance), ignore_errors=True)
    return stopped


def _stop(directory: str, pid: int) -> None:
    """Tell the runner to stop (it logs that it was cancelled); SIGKILL it after 2 s."""
    told = _tell(directory, "cancel\n")
    for patience in (2.0 if told else 0.0, 2.0):
        deadline = time.monotonic() + patience
        while time.monotonic() < deadline:
            if not _running(directory):
                return
            time.sleep(0.005)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return


# -- the runner's side -------------------------------------------------------------------------


def _detach_and_run(directory: str, actions: list[dict[str, Any]], control: int) -> None:
    """In the agent's forked child: a new session, a grandchild that runs the timeline with
    none of the agent's pipes or sockets (the SSH channel closes without waiting for it)."""
    status = 1
    try:
        os.setsid()
        grandchild = os.fork()
        if grandchild:
            with open(os.path.join(directory, "pid"), "w") as file:
                file.write(str(grandchild))
            status = 0
        else:
            _close_channels(directory, keep=control)
            status = run(directory, actions, control)
    finally:
        os._exit(status)


def _close_channels(directory: str, keep: int) -> None:
    null = os.open(os.devnull, os.O_RDWR)
    errors = os.open(os.path.join(directory, "stderr"), os.O_WRONLY | os.O_CREAT, 0o600)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.dup2(errors, 2)
    os.close(null)
    os.close(errors)
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            continue
        if fd > 2 and fd != keep and (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
            os.close(fd)


def sync_link_state(sock_fd: int, ifname: str) -> None:
    """Ask for `ifname`'s link state (ETHTOOL_GLINK), which makes the kernel apply its
    pending carrier change now (linkwatch_sync_dev): a veth whose peer just came up
    otherwise drops what it should send until a kernel worker gets to it, tens of ms on a
    busy pnode."""
    value = ctypes.create_string_buffer(struct.pack("=II", ETHTOOL_GLINK, 0))
    ifreq = struct.pack("16sP", ifname.encode(), ctypes.addressof(value)) + b"\0" * 16
    fcntl.ioctl(sock_fd, SIOCETHTOOL, ifreq)


class Changer:
    """Applies live changes through netlink sockets kept open per namespace, interface
    indexes looked up once, offloads turned off once per shaped device."""

    def __init__(self) -> None:
        self.batches: dict[str | None, nl.Batch] = {}
        self.indexes: dict[tuple[str | None, str], int] = {}
        self.offloads_off: set[tuple[str | None, str]] = set()
        self.unsynced: list[str] = []

    def _batch(self, netns: str | None) -> nl.Batch:
        if netns not in self.batches:
            self.batches[netns] = nl.Batch() if netns is None else _batch_in(netns)
        return self.batches[netns]

    def _index(self, netns: str | None, ifname: str) -> int:
        key = (netns, ifname)
        if key not in self.indexes:
            self.indexes[key] = _index(self._batch(netns), ifname, netns or "the pnode")
        return self.indexes[key]

    def link(self, netns: str, ifname: str, up: bool, peer: str | None) -> None:
        """Set `ifname` up or down; `peer`, its pnode end, is synced by `sync_peers`."""
        batch = self._batch(netns)
        body = nl.link_body(index=self._index(netns, ifname), up=up)
        batch.add(nl.RTM_NEWLINK, nl.SET, body, f"{ifname}@{netns} {'up' if up else 'down'}")
        _flush(batch)
        if up and peer is not None:
            self.unsynced.append(peer)

    def sync_peers(self) -> None:
        """Make traffic flow now through the pnode ends of the links just brought up, not
        when the kernel's link watcher gets to them."""
        for peer in self.unsynced:
            sync_link_state(self._batch(None).fileno(), peer)
        self.unsynced.clear()

    def shape(self, viface: Viface, direction: str) -> None:
        netns = viface.netns if direction == "output" else None
        ifname = viface.ifname if direction == "output" else viface.host_ifname
        shaping = getattr(viface, direction)
        batch = self._batch(netns)
        index = self._index(netns, ifname)
        add_shaping(batch, index, shaping, viface.mtu,
                    f"{direction} shaping on {ifname}@{netns or 'the pnode'}")  # fmt: skip
        _flush(batch)
        if not shaping.is_empty() and (netns, ifname) not in self.offloads_off:
            offloads_off(batch.fileno(), ifname)
            self.offloads_off.add((netns, ifname))

    def warm(self, change: dict[str, Any]) -> None:
        """Open the socket and look up the interface `change` needs, ahead of its time; a
        failure here is left for `apply` to report."""
        if "link" in change:
            where, ifname = change["link"]["netns"], change["link"]["ifname"]
        else:
            viface = change["shape"]["viface"]
            output = change["shape"]["direction"] == "output"
            where = viface["netns"] if output else None
            ifname = viface["ifname"] if output else viface["host_ifname"]
        try:
            self._index(where, ifname)
        except (ApplyFailure, OSError):
            pass

    def apply(self, change: dict[str, Any]) -> None:
        if "link" in change:
            link = change["link"]
            self.link(str(link["netns"]), str(link["ifname"]), bool(link["up"]), link["peer"])
        else:
            shape = change["shape"]
            self.shape(Viface.from_json(shape["viface"]), str(shape["direction"]))

    def close(self) -> None:
        for batch in self.batches.values():
            batch.close()


def run(directory: str, actions: list[dict[str, Any]], control: int) -> int:
    """Wait for `start` on the control FIFO (PREPARED_FOR seconds at most), then apply each
    action at its time, logging each, until the end or `cancel`. The runner asks for a
    real-time priority, so a busy pnode does not make it late."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(RT_PRIORITY))
    except OSError as exc:  # a pnode that refuses it runs the timeline all the same
        os.write(2, f"no real-time priority, events may be late: {exc}\n".encode())
    changer = Changer()
    with open(os.path.join(directory, "log"), "a") as log:
        try:
            for action in actions:
                for change in action["changes"]:
                    changer.warm(change)
            told = _heard(control, PREPARED_FOR)
            if not told.startswith("start "):
                log.write(json.dumps({"cancelled": time.time()}) + "\n")
                return 0
            start = float(told.split()[1])
            due = sorted(
                (start + a["offset"] if a["offset"] is not None else a["at"], i)
                for i, a in enumerate(actions)
            )
            for at, i in due:
                if "cancel" in _heard(control, max(at - time.time(), 0.0)):
                    log.write(json.dumps({"cancelled": time.time()}) + "\n")
                    return 0
                error = None
                began = time.perf_counter()
                try:
                    for change in actions[i]["changes"]:
                        changer.apply(change)
                except Exception as exc:  # logged for `emulate status --events`; go on
                    error = str(exc)
                actual = time.time()
                took = time.perf_counter() - began
                line = {"i": i, "planned": at, "actual": actual, "took": took, "error": error}
                log.write(json.dumps(line) + "\n")
                log.flush()
                try:
                    changer.sync_peers()  # after `actual`: it may wait for the kernel's lock
                except OSError as exc:
                    os.write(2, f"action {i}: {exc}\n".encode())
        finally:
            changer.close()
    return 0


def _heard(control: int, timeout: float) -> str:
    """What was written to the control FIFO within `timeout` seconds ('' if nothing)."""
    if not select.select([control], [], [], timeout)[0]:
        return ""
    return os.read(control, 4096).decode(errors="replace")
