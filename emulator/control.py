"""Agents kept running between omnibed commands by the user's control process.

As OpenSSH's ControlMaster keeps a connection for the next `ssh`, the control process
(:mod:`.control_process`) keeps each reservation's SSH connections and agents open, so
`omnibed emulate exec` or `status` asks a running agent instead of logging in and starting
one. It is private to the user: its unix socket lies in a directory only the user can use
(0700, owned by the user, checked before every use; the socket is 0600 and the process
answers only its own user). A command that finds it not running starts it (the command
binds the socket and hands it over, so it can connect at once); it ends after `idle`
seconds without use, or at once when the last reservation it served is released. If it is
killed, its SSH connections close, so its agents end, and the next command starts a new
one over the stale socket (`omnibed gc` removes that socket).

On one unix connection per leased pnode, in JSON lines: the command sends
`{"lease": KEY}` (KEY = reservation scope and pnode id) and gets `{"ok": true, "label":
...}` or `{"need": "endpoint"}`, then sends `{"endpoint": ..., "known_hosts": PATH}` and
gets `{"ok": ...}` or `{"error": WHY}`. After `ok`, every line is an agent request and its
reply, relayed as they are, until the command closes the connection; the agent then waits
for the next lease. `{"forget": SCOPE}` ends the agents of a released reservation.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from omnibed.core.errors import EmulatorError, PreflightError, UsageError
from omnibed.core.types import SSHEndpoint

from .transport import AgentConnection, for_each

SOCKET = "socket"
LOCK = "lock"
LOG = "log"
HANDSHAKE_TIMEOUT = 120.0  # s to start an agent (SSH login, bundle upload) for one lease
FORGET_TIMEOUT = 10.0  # s a release waits for a control process to close what it kept

EndpointsOf = Callable[[Sequence[str]], Mapping[str, SSHEndpoint]]


def open_private_dir(directory: Path) -> int:
    """An O_PATH descriptor of `directory` (created 0700 with its missing parents), once
    checked to be a real directory of this user that no one else may enter."""
    for missing in reversed([directory, *directory.parents]):
        if not missing.exists():
            missing.mkdir(mode=0o700, exist_ok=True)
    try:
        fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        raise UsageError(
            f"{directory} is not a directory: remove it, omnibed recreates it (mode 0700)"
        ) from None
    info = os.fstat(fd)
    if info.st_uid != os.geteuid() or stat.S_IMODE(info.st_mode) & 0o077:
        os.close(fd)
        raise UsageError(
            f"{directory} holds omnibed's control socket but is not yours alone (owner uid "
            f"{info.st_uid}, mode {stat.S_IMODE(info.st_mode):o}): remove it, omnibed "
            "recreates it (mode 0700)"
        )
    return fd


def _path(dir_fd: int, name: str) -> str:
    """A short path to `name` in the directory `dir_fd` (unix socket paths hold 107 bytes)."""
    return f"/proc/self/fd/{dir_fd}/{name}"


class _Leased(AgentConnection):
    """An agent of the control process, reached through one unix connection."""

    def __init__(self, sock: socket.socket, log: Path) -> None:
        self.sock = sock
        self.log = log
        self.file = sock.makefile("rwb")
        super().__init__("control process", self.file, self.file)

    def send(self, message: Mapping[str, Any]) -> dict[str, Any]:
        """One handshake message and the control process's answer ({} if it went away)."""
        line = self.exchange(json.dumps(message).encode() + b"\n")
        return json.loads(line) if line else {}

    def _stderr_tail(self) -> str:
        return f"the omnibed control process lost the agent or ended (its log: {self.log})"

    def close(self) -> None:
        self.file.close()
        self.sock.close()


class ControlAgents:
    """Agents leased from the user's control process, whose socket is in `directory`."""

    def __init__(self, directory: Path, idle: float) -> None:
        self.directory = directory
        self.idle = idle

    @contextlib.contextmanager
    def lease(
        self, scope: str, pnodes: Sequence[str], endpoints_of: EndpointsOf, known_hosts: Path
    ) -> Iterator[dict[str, AgentConnection]]:
        """One running agent per pnode for the `with` block; `endpoints_of(pnodes)` is asked
        only for those the control process has no connection to. PreflightError names the
        pnodes where no agent could be started."""
        os.close(open_private_dir(self.directory))  # refused here once, not per pnode
        leased: dict[str, _Leased] = {}
        try:
            answers = for_each({p: p for p in pnodes}, lambda p, _: self._lease(scope, p))
            problems: dict[str, list[str]] = {}
            missing = []
            for pnode, answer in answers.items():
                if isinstance(answer, BaseException):
                    problems[pnode] = [str(answer)]
                    continue
                leased[pnode] = answer[0]
                if answer[1].get("need"):
                    missing.append(pnode)
            if missing and not problems:
                endpoints = endpoints_of(missing)
                given = for_each(
                    {p: leased[p] for p in missing},
                    lambda p, agent: _give(agent, endpoints[p], known_hosts),
                )
                problems = {p: [str(r)] for p, r in given.items() if isinstance(r, BaseException)}
            if problems:
                raise PreflightError(problems)
            yield dict(leased)
        finally:
            for agent in leased.values():
                agent.close()

    def _lease(self, scope: str, pnode: str) -> tuple[_Leased, dict[str, Any]]:
        """A connection leasing `pnode`'s agent and the control process's first answer; a
        control process that was ending is replaced once."""
        for _ in range(2):
            agent = _Leased(self._dial(), self.directory / LOG)
            try:
                answer = agent.send({"lease": f"{scope}\0{pnode}"})
            except OSError:
                answer = {}
            if answer.get("ok"):
                agent.label = answer["label"]
                agent.sock.settimeout(None)
                return agent, answer
            if answer.get("need") or answer.get("error"):
                if answer.get("error"):
                    agent.close()
                    raise EmulatorError(answer["error"])
                return agent, answer
            agent.close()
        raise EmulatorError(
            f"the omnibed control process did not answer (its log: {self.directory / LOG}): "
            "run the command again"
        )

    def forget(self, scope: str) -> None:
        """End the agents of every lease scope that starts with `scope` and a NUL (those of
        a released reservation: its folder), if a control process runs."""
        fd = open_private_dir(self.directory)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(FORGET_TIMEOUT)
                try:
                    sock.connect(_path(fd, SOCKET))
                except (FileNotFoundError, ConnectionRefusedError):
                    return
                sock.sendall(json.dumps({"forget": scope}).encode() + b"\n")
                sock.makefile("rb").readline()
        finally:
            os.close(fd)

    def _dial(self) -> socket.socket:
        """A connection to the control process, started first if none listens."""
        fd = open_private_dir(self.directory)
        try:
            sock = _connect(fd)
            if sock is None:
                with _locked(fd):
                    sock = _connect(fd) or _start(fd, self.directory, self.idle)
            sock.settimeout(HANDSHAKE_TIMEOUT)
            return sock
        finally:
            os.close(fd)


def _give(agent: _Leased, endpoint: SSHEndpoint, known_hosts: Path) -> None:
    """Tell the control process how to reach the pnode of the lease `agent` waits for."""
    answer = agent.send({"endpoint": endpoint.to_json(), "known_hosts": str(known_hosts)})
    if not answer.get("ok"):
        raise EmulatorError(answer.get("error") or "the omnibed control process went away")
    agent.label = answer["label"]
    agent.sock.settimeout(None)


def _connect(dir_fd: int) -> socket.socket | None:
    """A connection to the socket in `dir_fd`; None if no process listens there."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(_path(dir_fd, SOCKET))
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        return None
    return sock


@contextlib.contextmanager
def _locked(dir_fd: int) -> Iterator[None]:
    """The directory's lock file held, so that one command at a time starts the process."""
    fd = os.open(_path(dir_fd, LOCK), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _start(dir_fd: int, directory: Path, idle: float) -> socket.socket:
    """Bind a fresh socket in `dir_fd` (over a stale one), start the control process on it,
    and return a connection to it (answered as soon as the process runs)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(SOCKET, dir_fd=dir_fd)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(_path(dir_fd, SOCKET))
        os.chmod(_path(dir_fd, SOCKET), 0o600)
        listener.listen(128)
        inode = os.stat(SOCKET, dir_fd=dir_fd, follow_symlinks=False).st_ino
        log = os.open(_path(dir_fd, LOG),
                      os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            process = subprocess.Popen(
                [sys.executable, "-I", "-m", "omnibed.emulator.control_process",
                 str(listener.fileno()), str(inode), repr(idle), str(directory)],
                pass_fds=(listener.fileno(),), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=log, cwd="/", start_new_session=True,
            )  # fmt: skip
        finally:
            os.close(log)
        # reaped here if it ends first; otherwise it outlives this command, as intended
        threading.Thread(target=process.wait, daemon=True).start()
    finally:
        listener.close()
    sock = _connect(dir_fd)
    if sock is None:
        raise EmulatorError(f"the omnibed control process could not be started in {directory}")
    return sock


def remove_stale_socket(directory: Path) -> bool:
    """Remove the control socket no process listens on (its process was killed); whether
    there was one."""
    if not (directory / SOCKET).exists():
        return False
    fd = open_private_dir(directory)
    try:
        with _locked(fd):
            sock = _connect(fd)
            if sock is not None:
                sock.close()
                return False
            with contextlib.suppress(FileNotFoundError):
                os.unlink(SOCKET, dir_fd=fd)
            return True
    finally:
        os.close(fd)
