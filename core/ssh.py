"""SSH to reserved nodes with paramiko: per-reservation key and known_hosts, jump hosts, fan-out.

Host keys are checked against the reservation's known_hosts file: keys a provider announced
are written there before first contact (`announce_host_keys`); otherwise the first key seen
for `host` (or `[host]:port` when the port is not 22) is appended to it. A different key
later raises `HostKeyMismatch`. The file uses the
OpenSSH format, so `ssh -o UserKnownHostsFile=<file>` (see `ssh_command_line`) shares it.
Every file written here is 0600 in directories that are 0700.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import select
import shlex
import socket
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from threading import Lock, Thread

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from omnibed.core.errors import HostKeyMismatch, SSHError, UsageError
from omnibed.core.timeutil import seconds_setting
from omnibed.core.types import SSHEndpoint

KEY_NAME = "id_ed25519"
UNREACHABLE = 255  # exit status of a node that could not be reached, as with OpenSSH's `ssh`
DEAD_AFTER = 60  # s a node's connection may go unanswered before omnibed gives the node up

OutputCallback = Callable[[str, str, bytes], None]  # (node, "stdout" | "stderr", bytes)

# paramiko logs what omnibed reports itself (e.g. "Secsh channel 0 open FAILED"): without a
# handler of its own, Python would print those records on the user's terminal.
logging.getLogger("paramiko").addHandler(logging.NullHandler())


@dataclass(frozen=True)
class KeyPair:
    private_path: Path
    public_openssh: str  # "ssh-ed25519 AAAA... comment", ready for authorized_keys


@dataclass(frozen=True)
class CommandResult:
    """A command's exit status and its output bytes exactly as the node sent them."""

    node: str
    exit_status: int
    stdout_bytes: bytes
    stderr_bytes: bytes

    @property
    def stdout(self) -> str:
        """stdout as text (bytes that are not UTF-8 replaced)."""
        return self.stdout_bytes.decode(errors="replace")

    @property
    def stderr(self) -> str:
        """stderr as text (bytes that are not UTF-8 replaced)."""
        return self.stderr_bytes.decode(errors="replace")


def _private_directory(directory: Path) -> None:
    """Create `directory` and its missing parents 0700; `directory` itself is made 0700."""
    for missing in reversed([directory, *directory.parents]):
        if not missing.exists():
            missing.mkdir(mode=0o700, exist_ok=True)
    directory.chmod(0o700)


def _write_private(path: Path, data: bytes) -> None:
    """Create `path` (0600, never through a symlink nor over an existing file) with `data`."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def ensure_keypair(directory: Path) -> KeyPair:
    """Create `directory` (0700) holding an ed25519 `id_ed25519` + `.pub` (0600); reuse one."""
    _private_directory(directory)
    private_path = directory / KEY_NAME
    if private_path.exists():
        key = serialization.load_ssh_private_key(private_path.read_bytes(), password=None)
    else:
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        _write_private(private_path, pem)
    private_path.chmod(0o600)
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()
    public_openssh = f"{public} omnibed-{directory.name}"
    public_path = directory / f"{KEY_NAME}.pub"
    if not public_path.exists():
        _write_private(public_path, (public_openssh + "\n").encode())
    public_path.chmod(0o600)
    return KeyPair(private_path=private_path, public_openssh=public_openssh)


def public_key_of(key_file: str) -> str:
    """The `type base64` public half of the private key `key_file`, for authorized_keys."""
    key = paramiko.PKey.from_path(key_file)
    return f"{key.get_name()} {key.get_base64()}"


def _mismatch(name: str, host: str, known_hosts: Path) -> HostKeyMismatch:
    return HostKeyMismatch(
        f"the host key of {name} differs from the one recorded in {known_hosts} (announced "
        "by the testbed, or seen at first contact): if the node was reinstalled, delete its "
        "line from that file; otherwise someone may be intercepting the connection",
        host=host,
    )


def _open_known_hosts(known_hosts: Path) -> int:
    """`known_hosts` opened for appending, created 0600 (in a 0700 directory) if missing."""
    if not known_hosts.parent.exists():
        _private_directory(known_hosts.parent)
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(known_hosts, flags, 0o600)
    os.fchmod(fd, 0o600)
    return fd


def _record_host_key(known_hosts: Path, hostname: str, key: paramiko.PKey, host: str) -> None:
    """Append `key` for `hostname` unless already known; a different known key is a mismatch.

    The file is locked (flock) while read and appended, so parallel first contacts from
    threads or processes neither lose nor duplicate lines.
    """
    fd = _open_known_hosts(known_hosts)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        known = paramiko.HostKeys(str(known_hosts)).lookup(hostname)
        if known is None:
            os.write(fd, f"{hostname} {key.get_name()} {key.get_base64()}\n".encode())
        elif known.get(key.get_name()) != key:
            raise _mismatch(hostname, host, known_hosts)
    finally:
        os.close(fd)


def known_host_name(endpoint: SSHEndpoint) -> str:
    """The name of `endpoint` in known_hosts: `host`, or `[host]:port` off port 22."""
    return endpoint.host if endpoint.port == 22 else f"[{endpoint.host}]:{endpoint.port}"


def announce_host_keys(known_hosts: Path, endpoint: SSHEndpoint, keys: Sequence[str]) -> None:
    """Make `known_hosts` hold exactly `keys` (`type base64` each) for `endpoint`'s host and
    port, so that logins there check them instead of trusting the first key shown.

    For keys a provider knows from a source other than the connection (it made them, or
    its testbed's API lists them). Without `keys` nothing changes. The file (0600, never a
    symlink) is locked while rewritten, as first contacts lock it, and rewritten only if
    it changes.
    """
    if not keys:
        return
    name = known_host_name(endpoint)
    ours = [f"{name} {' '.join(key.split()[:2])}" for key in keys]
    if not known_hosts.parent.exists():
        _private_directory(known_hosts.parent)
    fd = os.open(known_hosts, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "r+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        os.fchmod(fd, 0o600)
        lines = handle.read().splitlines()
        wanted = [line for line in lines if name not in line.split(" ", 1)[0].split(",")]
        wanted += ours
        if wanted != lines:
            handle.seek(0)
            handle.truncate()
            handle.write("".join(line + "\n" for line in wanted))


class _RecordFirstContact(paramiko.MissingHostKeyPolicy):
    """Accept an unknown host by recording its key in the reservation's known_hosts."""

    def __init__(self, known_hosts: Path, host: str) -> None:
        self.known_hosts = known_hosts
        self.host = host

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        _record_host_key(self.known_hosts, hostname, key, self.host)


class _ChainedClient(paramiko.SSHClient):
    """An SSHClient that closes the jump-host clients its transport runs through."""

    def __init__(self) -> None:
        super().__init__()
        self.jump_clients: list[paramiko.SSHClient] = []

    def close(self) -> None:
        transport = self.get_transport()
        super().close()
        if transport is not None:  # its thread still closes its channel through the jumps
            transport.join(timeout=5)
        for jump in reversed(self.jump_clients):
            jump.close()
        self.jump_clients = []


def _key_words(endpoint: SSHEndpoint) -> str:
    if endpoint.key_file:
        return f"the key {endpoint.key_file}"
    return "the SSH agent and default keys (~/.ssh/id_*)"


def _login(
    client: paramiko.SSHClient,
    endpoint: SSHEndpoint,
    known_hosts: Path,
    sock: paramiko.Channel | None,
    timeout: float,
) -> None:
    client.set_missing_host_key_policy(_RecordFirstContact(known_hosts, endpoint.host))
    if known_hosts.exists():
        client.load_host_keys(str(known_hosts))
    where = f"{endpoint.host}:{endpoint.port}"
    try:
        client.connect(
            endpoint.host,
            port=endpoint.port,
            username=endpoint.user,
            key_filename=endpoint.key_file,
            allow_agent=endpoint.key_file is None,
            look_for_keys=endpoint.key_file is None,
            sock=sock,
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
            channel_timeout=timeout,
        )
    except paramiko.BadHostKeyException as exc:
        raise _mismatch(known_host_name(endpoint), endpoint.host, known_hosts) from exc
    except paramiko.AuthenticationException as exc:
        raise SSHError(
            f"{endpoint.label()} refused the login with {_key_words(endpoint)} ({exc}): check "
            f"that the public key is in ~{endpoint.user}/.ssh/authorized_keys on {endpoint.host}",
            host=endpoint.host,
        ) from exc
    except TimeoutError as exc:
        raise SSHError(
            f"no SSH answer from {where} within {timeout:g}s: check that the node is up and "
            "that sshd listens on that port",
            host=endpoint.host,
        ) from exc
    except OSError as exc:
        raise SSHError(
            f"cannot reach {where} ({exc}): check the address, the port and that the node is up",
            host=endpoint.host,
        ) from exc
    except paramiko.SSHException as exc:
        raise SSHError(
            f"SSH to {where} failed ({exc}): check that an SSH server answers there",
            host=endpoint.host,
        ) from exc


def _dead_after() -> int:
    """Seconds a node may stay silent: $OMNIBED_DEAD_NODE_AFTER, or DEAD_AFTER."""
    return round(seconds_setting("OMNIBED_DEAD_NODE_AFTER", DEAD_AFTER, 4))


def _give_up_when_silent(client: paramiko.SSHClient, dead_after: int) -> None:
    """End `client`'s connection once its node has answered nothing for about `dead_after`
    seconds (cut off, or rebooted at the end of a walltime, with no FIN sent), so that what
    waits on it fails naming the node instead of waiting forever. A node busy with a long,
    quiet command still answers: its kernel acknowledges the keepalives.

    SSH keepalives go every `dead_after` / 2 seconds on every hop; on a direct TCP
    connection the kernel gives up after `dead_after` seconds without an acknowledgement
    (TCP_USER_TIMEOUT, with TCP keepalives while nothing else is sent). Through a jump host,
    the jump host's own TCP decides when a dead node's channel ends.
    """
    transport = client.get_transport()
    assert transport is not None  # a connected client always has one
    transport.set_keepalive(max(1, dead_after // 2))
    sock = transport.sock
    if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, max(1, dead_after // 2))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, dead_after // 8))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 4)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, dead_after * 1000)


def _tunnel(
    jump: paramiko.SSHClient, via: SSHEndpoint, target: SSHEndpoint, timeout: float
) -> paramiko.Channel:
    """A direct-tcpip channel from the jump host `via` to `target`, as `ssh -J` opens."""
    transport = jump.get_transport()
    assert transport is not None  # a connected client always has one
    try:
        return transport.open_channel(
            "direct-tcpip", (target.host, target.port), ("127.0.0.1", 0), timeout=timeout
        )
    except paramiko.SSHException as exc:
        raise SSHError(
            f"jump host {via.label()} could not open a connection to "
            f"{target.host}:{target.port} ({exc}): check that the address is reachable from the "
            "jump host and that its sshd allows TCP forwarding",
            host=target.host,
        ) from exc


def connect(
    endpoint: SSHEndpoint, known_hosts: Path, timeout: float = 30
) -> paramiko.SSHClient:
    """Log in to `endpoint` through its `jumps` in order (each hop with its own user/port/key).

    Every hop's host key is recorded at first contact and checked after. The returned
    client keeps the jump connections alive and closes them on `close()`. Raises
    `SSHError` (or `HostKeyMismatch`) saying what to check. A jump's own `jumps` are ignored.
    """
    hops = [*endpoint.jumps, endpoint]
    dead_after = _dead_after()  # a bad $OMNIBED_DEAD_NODE_AFTER is refused before any login
    clients: list[_ChainedClient] = []
    try:
        for index, hop in enumerate(hops):
            sock = _tunnel(clients[-1], hops[index - 1], hop, timeout) if clients else None
            client = _ChainedClient()
            clients.append(client)
            _login(client, hop, known_hosts, sock, timeout)
            _give_up_when_silent(client, dead_after)
    except BaseException:
        for client in reversed(clients):
            client.close()
        raise
    final = clients.pop()
    final.jump_clients = list(clients)
    return final


@contextlib.contextmanager
def open_sftp(
    endpoint: SSHEndpoint, known_hosts: Path, timeout: float = 30
) -> Iterator[paramiko.SFTPClient]:
    """An SFTP session on `endpoint` (jumps honoured), closed with its SSH connection."""
    client = connect(endpoint, known_hosts, timeout)
    try:
        sftp = client.open_sftp()
        try:
            yield sftp
        finally:
            sftp.close()
    finally:
        client.close()


class _Stream:
    """One output stream of a command: kept whole, and each piece handed on as it comes."""

    def __init__(self, emit: Callable[[bytes], None] | None) -> None:
        self.emit = emit
        self.parts: list[bytes] = []

    def feed(self, data: bytes) -> None:
        self.parts.append(data)
        if self.emit is not None and data:
            self.emit(data)

    def data(self) -> bytes:
        return b"".join(self.parts)


def _execute(
    client: paramiko.SSHClient,
    endpoint: SSHEndpoint,
    command: str,
    node: str,
    timeout: float | None,
    on_output: OutputCallback | None,
) -> CommandResult:
    transport = client.get_transport()
    assert transport is not None
    out = _Stream(None if on_output is None else lambda data: on_output(node, "stdout", data))
    err = _Stream(None if on_output is None else lambda data: on_output(node, "stderr", data))
    deadline = None if timeout is None else time.monotonic() + timeout
    channel = transport.open_session()
    try:
        channel.exec_command(command)
        channel.shutdown_write()  # empty stdin, as with `ssh host cmd </dev/null`
        while True:
            while channel.recv_ready():
                out.feed(channel.recv(65536))
            while channel.recv_stderr_ready():
                err.feed(channel.recv_stderr(65536))
            if channel.eof_received or channel.closed:
                if not (channel.recv_ready() or channel.recv_stderr_ready()):
                    break
                continue
            wait = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
            if wait <= 0:
                raise SSHError(
                    f"the command did not finish within {timeout:g}s on {endpoint.label()}",
                    host=endpoint.host,
                )
            select.select([channel], [], [], wait)
        status = channel.recv_exit_status()
    finally:
        channel.close()
    if status == -1:  # the session ended without an exit status
        status = UNREACHABLE
        err.feed(_no_exit_status(endpoint, node).encode())
    return CommandResult(node, status, out.data(), err.data())


def _no_exit_status(endpoint: SSHEndpoint, node: str) -> str:
    """Why a command on `node` may have ended with no exit status, and what to do."""
    who = endpoint.label() if node == endpoint.host else f"{node} ({endpoint.label()})"
    return (
        f"no exit status from {who}: the command was killed, or the connection dropped "
        f"(omnibed gives a node up once it has answered nothing for {_dead_after()} s, "
        "OMNIBED_DEAD_NODE_AFTER); check that the node is up and reachable, then run the "
        "command again\n"
    )


def run(
    endpoint: SSHEndpoint,
    command: str,
    known_hosts: Path,
    *,
    node: str = "",
    timeout: float | None = None,
    on_output: OutputCallback | None = None,
) -> CommandResult:
    """Run `command` on `endpoint`; hand its output to `on_output(node, stream, bytes)` as
    it comes, byte for byte (pieces are not lines).

    `timeout` bounds the command (the login has its own 30 s). Raises `SSHError` when the
    node cannot be reached, the login is refused or the command outlives `timeout`; its
    message starts with `node` when given.
    """
    try:
        return _run(endpoint, command, known_hosts, node, timeout, on_output)
    except SSHError as exc:
        if not node:
            raise
        raise type(exc)(f"{node}: {exc}", host=exc.host) from exc


def _run(
    endpoint: SSHEndpoint,
    command: str,
    known_hosts: Path,
    node: str,
    timeout: float | None,
    on_output: OutputCallback | None,
) -> CommandResult:
    """`run`, with errors that do not name the node (`run_many` prefixes its lines with it)."""
    client = connect(endpoint, known_hosts)
    try:
        return _execute(client, endpoint, command, node or endpoint.host, timeout, on_output)
    except (paramiko.SSHException, OSError) as exc:
        raise SSHError(
            f"the SSH session to {endpoint.label()} broke while running the command ({exc})",
            host=endpoint.host,
        ) from exc
    finally:
        client.close()


def run_many(
    endpoints: Mapping[str, SSHEndpoint],
    command: str,
    known_hosts: Path,
    *,
    on_output: OutputCallback | None = None,
    timeout: float | None = None,
    max_parallel: int = 32,
) -> dict[str, CommandResult]:
    """Run `command` on every node in parallel; a node that fails to connect gets exit 255.

    `on_output(node, stream, bytes)` gets each node's output as it comes, one call at a
    time (never concurrently); the error of an unreachable node also reaches it, as a
    stderr line.
    """
    emit_lock = Lock()

    def emit(node: str, stream: str, data: bytes) -> None:
        assert on_output is not None
        with emit_lock:
            on_output(node, stream, data)

    def one(node: str, endpoint: SSHEndpoint) -> CommandResult:
        callback = None if on_output is None else emit
        try:
            return _run(endpoint, command, known_hosts, node, timeout, callback)
        except SSHError as exc:
            why = f"{exc}\n".encode()
            if callback is not None:
                callback(node, "stderr", why)
            return CommandResult(node, UNREACHABLE, b"", why)

    futures = {node: Future[CommandResult]() for node in endpoints}
    todo = deque(endpoints.items())

    def work() -> None:
        while True:
            try:
                node, endpoint = todo.popleft()
            except IndexError:
                return
            if futures[node].set_running_or_notify_cancel():
                try:
                    futures[node].set_result(one(node, endpoint))
                except BaseException as exc:
                    futures[node].set_exception(exc)

    # Daemon threads, not a ThreadPoolExecutor, whose threads the interpreter joins at exit:
    # on Ctrl-C or SIGTERM this returns at once so the caller can release the nodes, and a
    # node gone silent (its connection open, nothing coming) must not then hold the exit.
    for _ in range(max(1, min(max_parallel, len(endpoints)))):
        Thread(target=work, name="omnibed-ssh", daemon=True).start()
    try:
        return {node: future.result() for node, future in futures.items()}
    finally:
        for future in futures.values():
            future.cancel()


def _openssh_path(path: str | Path) -> str:
    """`path` as an OpenSSH option value read literally: double-quoted (OpenSSH splits
    option values at spaces) and with `%` doubled (OpenSSH expands %-tokens in paths).

    OpenSSH also expands `${VAR}` in paths, with no way to escape it: such a path is refused.
    """
    text = str(Path(path).absolute())
    if "${" in text:
        raise UsageError(
            f"OpenSSH would read ${{...}} in {text} as an environment variable: "
            "use an omnibed home (OMNIBED_HOME) whose path has no `${`"
        )
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return f'"{escaped}"'


def _hop_options(endpoint: SSHEndpoint, known_hosts: Path) -> list[str]:
    options = [
        "-p", str(endpoint.port),
        "-l", endpoint.user,
        "-o", f"UserKnownHostsFile={_openssh_path(known_hosts)}",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "StrictHostKeyChecking=accept-new",
        "-o", "HashKnownHosts=no",
    ]
    if endpoint.key_file:
        options += ["-o", f"IdentityFile={_openssh_path(endpoint.key_file)}",
                    "-o", "IdentitiesOnly=yes"]
    return options


def _proxy_option(
    jumps: tuple[SSHEndpoint, ...], target: SSHEndpoint, known_hosts: Path
) -> list[str]:
    """`-o ProxyCommand=ssh ... -W target jump` reaching `target` through the last of `jumps`."""
    if not jumps:
        return []
    *before, last = jumps
    host = f"[{target.host}]" if ":" in target.host else target.host
    argv = [
        "ssh",
        *_hop_options(last, known_hosts),
        *_proxy_option(tuple(before), last, known_hosts),
        "-W", f"{host}:{target.port}",
        last.host,
    ]
    # ssh expands %-tokens in ProxyCommand: escape them once per level of nesting
    return ["-o", "ProxyCommand=" + shlex.join(argv).replace("%", "%%")]


def ssh_command_line(endpoint: SSHEndpoint, known_hosts: Path) -> list[str]:
    """The OpenSSH `ssh` argv logging in to `endpoint` (append a command, or none).

    It shares the reservation's known_hosts (first contact accepted, changed keys refused;
    created here 0600, as OpenSSH would create it readable by all) and reaches the node
    through its jumps with nested ProxyCommands, so each hop keeps its own port, user and
    key, unlike `-J`. Raises UsageError for a path OpenSSH cannot take literally.
    """
    argv = [
        "ssh",
        *_hop_options(endpoint, known_hosts),
        *_proxy_option(endpoint.jumps, endpoint, known_hosts),
        endpoint.host,
    ]
    os.close(_open_known_hosts(known_hosts))
    return argv
