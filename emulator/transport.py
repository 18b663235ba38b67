"""Talking to the agent: over SSH on a pnode (AgentSession) or as a local process.

AgentSession uploads the bundle over SFTP to /tmp/omnibed-agent-<hash>.pyz unless that file
is already there (the name is the content hash; uploads land under a temporary name and are
renamed, so a present file is complete), checks `python3 --version` >= 3.9, then runs
`python3 -I <bundle>` on an SSH channel and exchanges JSON lines with it.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, Self, TypeVar

import paramiko

from omnibed.core import ssh
from omnibed.core.errors import EmulatorError, SSHError
from omnibed.core.types import SSHEndpoint

from .bundle import Bundle, build

MIN_PYTHON = (3, 9)
REMOTE_DIR = "/tmp"
A = TypeVar("A")
T = TypeVar("T")


class AgentError(EmulatorError):
    """The agent on `pnode` refused `op`; `reply` is its answer (error, errno, object...)."""

    def __init__(self, pnode: str, op: str, reply: Mapping[str, Any]) -> None:
        super().__init__(f"{pnode}: {op} failed: {reply.get('error')}")
        self.pnode = pnode
        self.op = op
        self.reply = dict(reply)


class AgentConnection:
    """One running agent reached through a pair of byte streams."""

    def __init__(self, label: str, writer: IO[bytes], reader: IO[bytes]) -> None:
        self.label = label
        self._writer = writer
        self._reader = reader

    def request(self, op: str, **args: Any) -> dict[str, Any]:
        """Send one request and return the agent's reply, whether ok or not."""
        try:
            self._writer.write(json.dumps({"op": op, **args}).encode() + b"\n")
            self._writer.flush()
            line = self._reader.readline()
        except OSError as exc:
            raise SSHError(f"{self.label}: agent channel broke during {op}: {exc}") from exc
        if not line:
            raise SSHError(
                f"{self.label}: the agent exited during {op}: {self._stderr_tail()}"
            )
        return json.loads(line)

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        """`request`, raising AgentError when the reply is not ok."""
        reply = self.request(op, **args)
        if not reply.get("ok"):
            raise AgentError(self.label, op, reply)
        return reply

    def _stderr_tail(self) -> str:
        return "(no diagnostics)"

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalAgentSession(AgentConnection):
    """The agent as a subprocess of this machine (tests, benchmarks, the local testbed)."""

    def __init__(
        self, *, netns: str | None = None, python: str = "python3", bundle: Bundle | None = None
    ) -> None:
        path = (bundle or build()).path
        argv = [python, "-I", str(path)] + (["--netns", netns] if netns else [])
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        super().__init__(f"local agent{' in ' + netns if netns else ''}", self.proc.stdin,
                         self.proc.stdout)

    def _stderr_tail(self) -> str:
        self.proc.wait(timeout=10)
        assert self.proc.stderr is not None
        return self.proc.stderr.read().decode(errors="replace")[-2000:] or "(no stderr)"

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


class AgentSession(AgentConnection):
    """The agent on the pnode behind `endpoint`, installed and started over SSH."""

    def __init__(
        self,
        endpoint: SSHEndpoint,
        known_hosts: Path,
        *,
        bundle: Bundle | None = None,
        timeout: float = 30,
    ) -> None:
        bundle = bundle or build()
        self.client = ssh.connect(endpoint, known_hosts, timeout)
        label = endpoint.label()
        try:
            _check_python(self.client, label)
            remote = _upload(self.client, bundle)
            self.channel = self.client.get_transport().open_session()
            self.channel.exec_command(f"python3 -I {remote}")
        except BaseException:
            self.client.close()
            raise
        super().__init__(label, self.channel.makefile("wb"), self.channel.makefile("rb"))

    def _stderr_tail(self) -> str:
        data = self.channel.makefile_stderr("rb").read()
        return data.decode(errors="replace")[-2000:] or "(no stderr)"

    def close(self) -> None:
        try:
            self.channel.shutdown_write()
            self.channel.recv_exit_status()
        finally:
            self.client.close()


def _check_python(client: paramiko.SSHClient, label: str) -> None:
    _, stdout, stderr = client.exec_command("python3 --version")
    text = (stdout.read() + stderr.read()).decode(errors="replace").strip()
    found = re.search(r"Python (\d+)\.(\d+)", text)
    if found is None:
        raise EmulatorError(
            f"{label}: python3 is missing ({text or 'no output'}); the omnibed agent needs "
            "python3 >= 3.9 on every pnode: install it or use an image that has it"
        )
    version = (int(found.group(1)), int(found.group(2)))
    if version < MIN_PYTHON:
        raise EmulatorError(
            f"{label}: python3 is {found.group(0)}, the omnibed agent needs >= 3.9: "
            "use a newer image or install a newer python3"
        )


def _upload(client: paramiko.SSHClient, bundle: Bundle) -> str:
    remote = f"{REMOTE_DIR}/{bundle.remote_name}"
    sftp = client.open_sftp()
    try:
        try:
            if sftp.stat(remote).st_size == bundle.path.stat().st_size:
                return remote
        except OSError:
            pass
        partial = f"{remote}.part"
        sftp.put(str(bundle.path), partial)
        sftp.posix_rename(partial, remote)
    finally:
        sftp.close()
    return remote


def for_each(
    items: Mapping[str, A], fn: Callable[[str, A], T]
) -> dict[str, T | BaseException]:
    """`fn(key, item)` for every item in parallel; {key: result or the exception it raised}."""
    if not items:
        return {}
    with ThreadPoolExecutor(max_workers=min(32, len(items))) as pool:
        futures = {key: pool.submit(fn, key, item) for key, item in items.items()}
        out: dict[str, T | BaseException] = {}
        for key, future in futures.items():
            exc = future.exception()
            out[key] = exc if exc is not None else future.result()
        return out
