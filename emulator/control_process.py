"""The user's control process: keeps SSH connections and agents open between commands.

Started by :mod:`.control` as `python -I -m omnibed.emulator.control_process FD INODE IDLE
DIRECTORY`, FD being the listening unix socket it was handed (file INODE in DIRECTORY). One
SSH connection per pnode, its python3 checked once; agents run on channels of it, each
leased to one command at a time and kept (at most KEEP per pnode) for the next. It ends,
closing them all, after IDLE seconds with no lease, or once a `forget` left it nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paramiko

from omnibed.core import ssh
from omnibed.core.errors import OmnibedError
from omnibed.core.types import SSHEndpoint

from .bundle import Bundle, build
from .control import SOCKET, _locked, open_private_dir
from .transport import AgentSession, ByteStream, check_python

KEEP = 2  # idle agents kept per pnode
WAKE = 0.5  # s between two checks of idleness


class _Link:
    """One SSH connection to a pnode, shared by its agents."""

    def __init__(self, endpoint: SSHEndpoint, known_hosts: Path, bundle: Bundle) -> None:
        self.endpoint = endpoint
        self.known_hosts = known_hosts
        self.bundle = bundle
        self.client = ssh.connect(endpoint, known_hosts)  # with keepalives (ssh.DEAD_AFTER)
        try:
            check_python(self.client, endpoint.label())
        except BaseException:
            self.client.close()
            raise

    def alive(self) -> bool:
        transport = self.client.get_transport()
        return transport is not None and transport.is_active()

    def agent(self) -> AgentSession:
        return AgentSession(self.endpoint, self.known_hosts, bundle=self.bundle,
                            client=self.client)


class Pool:
    """Links and idle agents by lease key (`scope\\0pnode`), and the leases under way."""

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle  # built once: every agent this process starts runs it
        self.lock = threading.Lock()
        self.links: dict[str, _Link] = {}
        self.idle: dict[str, list[AgentSession]] = {}
        self.linking: dict[str, threading.Lock] = {}
        self.leases = 0
        self.last_used = time.monotonic()
        self.released = False  # a forget left nothing to keep

    @contextlib.contextmanager
    def leasing(self) -> Iterator[None]:
        with self.lock:
            self.leases += 1
            self.released = False
        try:
            yield
        finally:
            with self.lock:
                self.leases -= 1
                self.last_used = time.monotonic()

    def done(self, idle: float) -> bool:
        """Whether to end: nothing leased, and idle for `idle` s or all released."""
        with self.lock:
            if self.leases:
                return False
            return self.released or time.monotonic() - self.last_used > idle

    def agent(
        self, key: str, endpoint: SSHEndpoint | None = None, known_hosts: Path | None = None
    ) -> AgentSession | None:
        """A running agent for `key`: an idle one, or one started on its link (opened with
        `endpoint` if there is none); None if a link is needed and `endpoint` is not given."""
        with self.lock:
            kept = self.idle.get(key, [])
            while kept:
                agent = kept.pop()
                if agent.alive():
                    return agent
                _close(agent)
            gate = self.linking.setdefault(key, threading.Lock())
        with gate:  # one login per pnode at a time
            link = self.links.get(key)
            if link is None or not link.alive():
                if endpoint is None or known_hosts is None:
                    return None
                link = _Link(endpoint, known_hosts, self.bundle)
                with self.lock:
                    old, self.links[key] = self.links.get(key), link
                if old is not None:
                    old.client.close()
        return link.agent()

    def give_back(self, key: str, agent: AgentSession, healthy: bool) -> None:
        with self.lock:
            kept = self.idle.setdefault(key, [])
            if healthy and key in self.links and len(kept) < KEEP and agent.alive():
                kept.append(agent)
                return
        _close(agent)

    def forget(self, scope: str) -> int:
        """Close the links and idle agents of `scope`; how many links that was."""
        prefix = scope + "\0"
        with self.lock:
            keys = [key for key in self.links if key.startswith(prefix)]
            links = [self.links.pop(key) for key in keys]
            agents = [a for key in keys for a in self.idle.pop(key, [])]
            self.released = not self.links
        for agent in agents:
            _close(agent)
        for link in links:
            link.client.close()
        return len(links)

    def close(self) -> None:
        with self.lock:
            agents = [a for kept in self.idle.values() for a in kept]
            links = list(self.links.values())
            self.idle.clear()
            self.links.clear()
        for agent in agents:
            _close(agent)
        for link in links:
            link.client.close()


def _close(agent: AgentSession) -> None:
    with contextlib.suppress(Exception):  # an agent already gone needs no closing
        agent.close()


def _read(stream: ByteStream) -> dict[str, Any]:
    line = stream.readline()
    return json.loads(line) if line.endswith(b"\n") else {}


def _send(stream: ByteStream, message: dict[str, Any]) -> None:
    stream.write(json.dumps(message).encode() + b"\n")
    stream.flush()


def _endpoint(data: dict[str, Any]) -> SSHEndpoint:
    return SSHEndpoint(
        host=str(data["host"]), port=int(data["port"]), user=str(data["user"]),
        key_file=data["key_file"], jumps=tuple(_endpoint(jump) for jump in data["jumps"]),
    )  # fmt: skip


def serve_one(pool: Pool, conn: socket.socket) -> None:
    """Answer one command's connection: a forget, or a lease relayed until it closes."""
    with conn, conn.makefile("rwb") as stream:
        hello = _read(stream)
        if "forget" in hello:
            _send(stream, {"ok": True, "closed": pool.forget(str(hello["forget"]))})
            return
        if "lease" not in hello:
            return
        key = str(hello["lease"])
        with pool.leasing():
            try:
                agent = pool.agent(key)
                if agent is None:
                    _send(stream, {"need": "endpoint"})
                    given = _read(stream)
                    if not given:
                        return
                    agent = pool.agent(key, _endpoint(given["endpoint"]),
                                       Path(given["known_hosts"]))
            except (OmnibedError, paramiko.SSHException, OSError) as exc:
                with contextlib.suppress(OSError):
                    _send(stream, {"error": str(exc)})
                return
            assert agent is not None
            try:
                _send(stream, {"ok": True, "label": agent.label})
            except OSError:
                pool.give_back(key, agent, healthy=True)
                return
            pool.give_back(key, agent, healthy=_relay(stream, agent))


def _relay(stream: ByteStream, agent: AgentSession) -> bool:
    """Pass request lines to `agent` and its replies back until the command closes the
    connection; whether the agent is still fit for another lease."""
    while True:
        try:
            line = stream.readline()
        except OSError:
            return True
        if not line.endswith(b"\n"):  # closed (a partial line is never sent on)
            return True
        try:
            reply = agent.exchange(line)
        except Exception:  # the agent or its channel broke: it is not kept
            return False
        if not reply:
            return False
        try:
            stream.write(reply)
            stream.flush()
        except OSError:  # the command went away; the agent answered and is fit
            return True


def _same_user(conn: socket.socket) -> bool:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _, uid, _ = struct.unpack("3i", creds)
    return uid == os.geteuid()


def serve(listener: socket.socket, inode: int, idle: float, directory: Path) -> None:
    """Accept commands until idle; then close everything and remove the socket if it is
    still this process's."""
    pool = Pool(build())
    listener.settimeout(WAKE)
    try:
        while not pool.done(idle):
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            if not _same_user(conn):
                conn.close()
                continue
            conn.settimeout(None)
            threading.Thread(target=serve_one, args=(pool, conn), daemon=True).start()
    finally:
        listener.close()
        pool.close()
        fd = open_private_dir(directory)
        try:
            with _locked(fd):
                info = os.stat(SOCKET, dir_fd=fd, follow_symlinks=False)
                if info.st_ino == inode:
                    os.unlink(SOCKET, dir_fd=fd)
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)


def main() -> None:
    fd, inode, idle, directory = sys.argv[1:5]
    listener = socket.socket(fileno=int(fd))
    serve(listener, int(inode), float(idle), Path(directory))


if __name__ == "__main__":
    main()
