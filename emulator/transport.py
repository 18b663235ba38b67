"""Talking to the agent: over SSH on a pnode (AgentSession) or as a local process.

AgentSession checks `python3 --version` >= MIN_PYTHON on the pnode, then starts the launcher
(launcher.py) on an SSH channel: it keeps the bundle in AGENT_DIR, a directory only root can
write, receives it over that channel when it is missing or damaged, checks its sha256 on the
pnode and runs it; the agent then exchanges JSON lines on the same channel.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Self, TypeVar

from omnibed.core.errors import EmulatorError, PreflightError, SSHError
from omnibed.core.types import SSHEndpoint

from .agent import MIN_PYTHON, launcher

if TYPE_CHECKING:  # paramiko and pyroute2 load only where an agent is started here
    import paramiko

    from .bundle import Bundle

AGENT_DIR = "/var/lib/omnibed/agent"  # on every pnode: root's, mode 0700
LAUNCHER = Path(launcher.__file__).read_text()
A = TypeVar("A")
T = TypeVar("T")


class AgentError(EmulatorError):
    """The agent on `pnode` refused `op`; `reply` is its answer (error, errno, object...)."""

    def __init__(self, pnode: str, op: str, reply: Mapping[str, Any]) -> None:
        super().__init__(f"{pnode}: {op} failed: {reply.get('error')}")
        self.pnode = pnode
        self.op = op
        self.reply = dict(reply)


class ByteStream(Protocol):
    """One end of an agent's channel: a pipe, or a file of an SSH channel."""

    def write(self, data: bytes, /) -> object: ...

    def flush(self) -> object: ...

    def readline(self) -> bytes: ...


class _Closed:
    """The streams of a closed session: any use is an OSError."""

    def write(self, data: bytes, /) -> object:
        raise OSError("the agent session is closed")

    def flush(self) -> object:
        raise OSError("the agent session is closed")

    def readline(self) -> bytes:
        raise OSError("the agent session is closed")


class AgentConnection:
    """One running agent reached through a pair of byte streams."""

    def __init__(self, label: str, writer: ByteStream, reader: ByteStream) -> None:
        self.label = label
        self._writer = writer
        self._reader = reader

    def request(self, op: str, **args: Any) -> dict[str, Any]:
        """Send one request and return the agent's reply, whether ok or not."""
        try:
            line = self.exchange(json.dumps({"op": op, **args}).encode() + b"\n")
        except OSError as exc:
            raise SSHError(f"{self.label}: agent channel broke during {op}: {exc}") from exc
        if not line:
            raise SSHError(
                f"{self.label}: the agent exited during {op}: {self._stderr_tail()}"
            )
        return json.loads(line)

    def exchange(self, line: bytes) -> bytes:
        """Send one request line as it is; its reply line, or b"" if the agent is gone."""
        self._writer.write(line)
        self._writer.flush()
        return self._reader.readline()

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
    """The agent as a subprocess of this machine (tests, benchmarks), run from memory."""

    def __init__(
        self, *, netns: str | None = None, python: str = "python3", bundle: Bundle | None = None
    ) -> None:
        from .bundle import build

        fd = os.memfd_create("omnibed-agent.pyz")
        try:
            with open(fd, "wb", closefd=False) as archive:
                archive.write((bundle or build()).data)
            argv = [python, "-I", f"/proc/self/fd/{fd}"] + (["--netns", netns] if netns else [])
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                pass_fds=(fd,),
            )
        finally:
            os.close(fd)
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
    """The agent on the pnode behind `endpoint`, installed and started over SSH.

    With `client` (an SSH connection to that pnode whose python3 was checked, see
    `check_python`), the agent runs on a new channel of it, which `close` leaves open;
    otherwise the session logs in, checks python3, and logs out at `close`.
    """

    def __init__(
        self,
        endpoint: SSHEndpoint,
        known_hosts: Path,
        *,
        bundle: Bundle | None = None,
        timeout: float = 30,
        agent_dir: str = AGENT_DIR,
        client: paramiko.SSHClient | None = None,
    ) -> None:
        from omnibed.core import ssh

        from .bundle import build

        bundle = bundle or build()
        self.owns_client = client is None
        self.client = client or ssh.connect(endpoint, known_hosts, timeout)
        label = endpoint.label()
        try:
            if self.owns_client:
                check_python(self.client, label)
            transport = self.client.get_transport()
            assert transport is not None  # a connected client always has one
            self.channel = transport.open_session()
            writer, reader = self.channel.makefile("wb"), self.channel.makefile("rb")
            super().__init__(label, writer, reader)
            self._launch(bundle, agent_dir)
        except BaseException:
            self._end()
            raise

    def _launch(self, bundle: Bundle, agent_dir: str) -> None:
        """Run the launcher; send the bundle if it asks; return once the agent runs."""
        args = [agent_dir, bundle.remote_name, bundle.sha256, str(len(bundle.data))]
        self.channel.exec_command(shlex.join(["python3", "-I", "-c", LAUNCHER, *args]))
        said = self._reader.readline()
        if said == b"send\n":
            self._writer.write(bundle.data)
            self._writer.flush()
            said = self._reader.readline()
        if said != b"run\n":
            why = said.decode(errors="replace").strip().removeprefix("refused: ")
            why = why or self._stderr_tail().strip().splitlines()[-1]
            raise EmulatorError(f"{self.label}: the omnibed agent was not started: {why}")

    def _stderr_tail(self) -> str:
        data = self.channel.makefile_stderr("rb").read()
        return data.decode(errors="replace")[-2000:] or "(no stderr)"

    def alive(self) -> bool:
        """Whether the agent may still answer: its channel and SSH connection are open."""
        transport = self.client.get_transport()
        return (
            transport is not None and transport.is_active() and not self.channel.closed
            and not self.channel.exit_status_ready()
        )

    def close(self) -> None:
        try:
            self.channel.shutdown_write()
            self.channel.recv_exit_status()
        finally:
            self._end()

    def _end(self) -> None:
        """Close the channel, and the SSH connection if this session opened it."""
        if hasattr(self, "channel"):
            self.channel.close()
        if self.owns_client:
            self.client.close()
            # paramiko's files flush their buffer when finalised: they go now, not in a later
            # garbage collection (at exit, when a failure's traceback holds this session)
            # that may finalise the buffer first ("Exception ignored in BufferedFile.__del__")
            self._writer = self._reader = _Closed()


def check_python(client: paramiko.SSHClient, label: str) -> None:
    """EmulatorError unless the pnode behind `client` has python3 >= MIN_PYTHON."""
    _, stdout, stderr = client.exec_command("python3 --version")
    text = (stdout.read() + stderr.read()).decode(errors="replace").strip()
    found = re.search(r"Python (\d+)\.(\d+)", text)
    oldest = "{}.{}".format(*MIN_PYTHON)
    if found is None:
        raise EmulatorError(
            f"{label}: python3 is missing ({text or 'no output'}); the omnibed agent needs "
            f"python3 >= {oldest} on every pnode: install it or use an image that has it"
        )
    version = (int(found.group(1)), int(found.group(2)))
    if version < MIN_PYTHON:
        raise EmulatorError(
            f"{label}: python3 is {found.group(0)}, the omnibed agent needs >= {oldest}: "
            "use a newer image or install a newer python3"
        )


EndpointsOf = Callable[[Sequence[str]], Mapping[str, SSHEndpoint]]


class Agents(Protocol):
    """Where a command gets one running agent per pnode for a while (a lease)."""

    def lease(
        self, scope: str, pnodes: Sequence[str], endpoints_of: EndpointsOf, known_hosts: Path
    ) -> contextlib.AbstractContextManager[dict[str, AgentConnection]]:
        """Agents of `pnodes` of the reservation `scope` names; `endpoints_of(pnodes)` tells
        how to log in to those that need it."""
        ...


class DirectAgents:
    """Agents started for one lease and ended with it, by this process itself."""

    @contextlib.contextmanager
    def lease(
        self,
        scope: str,
        pnodes: Sequence[str],
        endpoints_of: EndpointsOf,
        known_hosts: Path,
    ) -> Iterator[dict[str, AgentConnection]]:
        """One agent per pnode, started in parallel; PreflightError names the pnodes where
        none could be."""
        from .bundle import build

        bundle = build()
        opened = for_each(
            endpoints_of(pnodes),
            lambda _, endpoint: AgentSession(endpoint, known_hosts, bundle=bundle),
        )
        sessions = {p: s for p, s in opened.items() if not isinstance(s, BaseException)}
        try:
            problems = {p: [str(s)] for p, s in opened.items() if isinstance(s, BaseException)}
            if problems:
                raise PreflightError(problems)
            yield dict(sessions)
        finally:
            for session in sessions.values():
                try:
                    session.close()
                except Exception:  # closing a broken channel must not hide the real error
                    pass


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
