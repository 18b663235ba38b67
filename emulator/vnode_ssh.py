"""SSH logins as root to container vnodes, through their pnode, with checked host keys.

Each `ssh: true` vnode gets an ed25519 host key made here, on the user's side; its public
half is recorded in the reservation's known_hosts under the name `VNODE.vnode.omnibed`
before the vnode starts, and every login checks it (never accepted at first contact).
A login goes through the pnode as jump host: the pnode runs RELAY, which enters the vnode's
network namespace and joins its stdin and stdout to the vnode's sshd on 127.0.0.1:22, so
no route from the pnode into the vnetworks is needed. paramiko (`connect`) and OpenSSH
(`command_line`, as a ProxyCommand) take that path. `wait_reachable`, which logs in to every
vnode, starts one MANY_RELAY per pnode instead: it listens on the pnode's 127.0.0.1 and each
login is a direct-tcpip channel to it (no process started per login); a pnode whose sshd
forbids TCP forwarding gets a RELAY per login.
"""

from __future__ import annotations

import fcntl
import os
import shlex
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from omnibed.core import ssh
from omnibed.core.errors import EmulatorError
from omnibed.core.types import SSHEndpoint

from .agent import nsutil
from .planner import Plan, VnodePlan

ALIAS_SUFFIX = ".vnode.omnibed"
SSH_PORT = 22
REACH_TIMEOUT = 120.0
# logins under way at once: more per pnode than its vnodes start at once (8) keeps its cores
# busy; more than that mostly wait for sshds not yet started, and that waiting takes CPU
# from the starts
LOGINS, LOGINS_PER_PNODE = 32, 16
# run on the pnode as root: argv[1] is the vnode's network namespace (a path); with argv[2]
# `ack`, it writes `+` once connected to the vnode's sshd, before anything from the sshd
RELAY = """
import ctypes, os, socket, sys, threading
fd = os.open(sys.argv[1], os.O_RDONLY)
if ctypes.CDLL(None, use_errno=True).setns(fd, 0x40000000) != 0:
    sys.exit("cannot enter " + sys.argv[1] + ": " + os.strerror(ctypes.get_errno()))
conn = socket.create_connection(("127.0.0.1", 22), timeout=10)
conn.settimeout(None)
out = sys.stdout.buffer
if sys.argv[2:] == ["ack"]:
    out.write(b"+")
    out.flush()
def upstream():
    while True:
        data = os.read(0, 65536)
        if not data:
            break
        conn.sendall(data)
    conn.shutdown(socket.SHUT_WR)
threading.Thread(target=upstream, daemon=True).start()
while True:
    data = conn.recv(65536)
    if not data:
        break
    out.write(data)
    out.flush()
"""
# run on the pnode as root: argv[1:] are network namespaces (paths). Prints the port it
# listens on (the pnode's 127.0.0.1); each connection there names, in its first line, the
# index of a namespace, gets `+` once connected to the sshd on 127.0.0.1:22 in it (waiting up
# to 2 s for it to listen, trying again at growing intervals: a vnode still starting costs
# little), and is joined to that sshd. Exits when its stdin ends.
MANY_RELAY = """
import ctypes, os, socket, sys, threading, time
setns = ctypes.CDLL(None, use_errno=True).setns
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen(128)
print(server.getsockname()[1], flush=True)
def pump(source, sink):
    try:
        while True:
            data = source.recv(65536)
            if not data:
                break
            sink.sendall(data)
        sink.shutdown(socket.SHUT_WR)
    except OSError:
        pass
def serve(conn):
    try:
        line = b""
        while not line.endswith(b"\\n") and len(line) < 12:
            byte = conn.recv(1)
            if not byte:
                raise OSError("no vnode index")
            line += byte
        fd = os.open(sys.argv[1 + int(line)], os.O_RDONLY)
        try:  # this thread only: the others stay in the pnode's namespace
            if setns(fd, 0x40000000) != 0:
                raise OSError(ctypes.get_errno(), "setns")
        finally:
            os.close(fd)
        pause, deadline = 0.02, time.monotonic() + 2
        while True:  # the vnode may still be starting: its sshd listens soon
            try:
                vnode = socket.create_connection(("127.0.0.1", 22), timeout=10)
                break
            except ConnectionRefusedError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(pause)
                pause = min(0.2, pause * 2)
        vnode.settimeout(None)
        conn.sendall(b"+")
    except (OSError, ValueError, IndexError):
        conn.close()
        return
    upstream = threading.Thread(target=pump, args=(conn, vnode), daemon=True)
    upstream.start()
    pump(vnode, conn)
    upstream.join()
    vnode.close()
    conn.close()
def end():
    while os.read(0, 65536):
        pass
    os._exit(0)
threading.Thread(target=end, daemon=True).start()
while True:
    conn, _ = server.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


def alias(vnode: str) -> str:
    """The name of `vnode`'s host key in the reservation's known_hosts."""
    return f"{vnode}{ALIAS_SUFFIX}"


def new_host_key() -> str:
    """A fresh ed25519 host key, as OpenSSH private key text."""
    key = Ed25519PrivateKey.generate()
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()


def public_line(private_key: str) -> str:
    """`ssh-ed25519 AAAA...` of an OpenSSH private key text."""
    key = serialization.load_ssh_private_key(private_key.encode(), password=None)
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )


def _rewrite_known_hosts(known_hosts: Path, lines: Sequence[str]) -> None:
    """Drop every vnode line of `known_hosts`, then add `lines`; under the same lock
    (flock) as omnibed's first-contact recording."""
    known_hosts.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(known_hosts, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with os.fdopen(os.dup(fd), "r+") as file:
            kept = [
                line
                for line in file.read().splitlines()
                if not line.split(" ", 1)[0].endswith(ALIAS_SUFFIX)
            ]
            file.seek(0)
            file.truncate()
            file.write("".join(f"{line}\n" for line in [*kept, *lines]))
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def record_host_keys(known_hosts: Path, the_plan: Plan) -> None:
    """Record the public host key of every `ssh: true` vnode of `the_plan` (replacing those
    of an earlier platform)."""
    lines = [
        f"{alias(spec.hostname)} {public_line(spec.host_key)}"
        for state in the_plan.states
        for spec in state.containers
        if spec.ssh
    ]
    _rewrite_known_hosts(known_hosts, lines)


def forget_host_keys(known_hosts: Path) -> None:
    if known_hosts.exists():
        _rewrite_known_hosts(known_hosts, [])


def relay_command(vnode: VnodePlan, ack: bool = False) -> str:
    """The pnode's shell command that joins its stdin/stdout to `vnode`'s sshd (`ack`:
    writing `+` first, once connected)."""
    return shlex.join(
        ["python3", "-I", "-c", RELAY, nsutil.path(vnode.netns), *(["ack"] if ack else [])]
    )


def connect(
    pnode: paramiko.SSHClient,
    vnode: VnodePlan,
    known_hosts: Path,
    key_file: str,
    timeout: float = 30,
) -> paramiko.SSHClient:
    """A root login to `vnode` through the logged-in `pnode`; its host key must be the one
    recorded. Raises paramiko.BadHostKeyException or paramiko.SSHException (e.g. sshd
    not listening yet)."""
    transport = pnode.get_transport()
    assert transport is not None
    channel = transport.open_session(timeout=timeout)
    channel.exec_command(relay_command(vnode))
    pkey = paramiko.PKey.from_path(key_file)
    return _login(channel, vnode, paramiko.HostKeys(str(known_hosts)), pkey, timeout)


def _login(
    sock: paramiko.Channel | _Held,
    vnode: VnodePlan,
    host_keys: paramiko.HostKeys,
    pkey: paramiko.PKey,
    timeout: float,
) -> paramiko.SSHClient:
    """A root login to `vnode` over `sock` (a channel to its sshd) with `pkey`; its host key
    must be its entry in `host_keys`. Closes `sock` when the login fails."""
    client = paramiko.SSHClient()
    for kind, key in (host_keys.lookup(alias(vnode.name)) or {}).items():
        client.get_host_keys().add(alias(vnode.name), kind, key)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        client.connect(
            alias(vnode.name),
            port=SSH_PORT,
            username="root",
            pkey=pkey,
            allow_agent=False,
            look_for_keys=False,
            sock=sock,  # type: ignore[arg-type]  # a _Held is a channel to paramiko
            transport_factory=VnodeTransport,  # type: ignore[arg-type]  # a Transport
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
        )
    except BaseException:
        _close(client, sock)
        raise
    return client


class VnodeTransport(paramiko.Transport):
    """paramiko's Transport asking for ecdh-sha2-nistp256 first: a vnode's sshd computes it
    with OpenSSL and curve25519 with OpenSSH's own portable code, which cost a fifth more
    CPU per login here. The other key exchanges follow, for an sshd that refuses it. The
    login travels inside the pnode's SSH connection, whose key exchange stays paramiko's
    first choice."""

    _preferred_kex = ("ecdh-sha2-nistp256", *(
        kex for kex in paramiko.Transport._preferred_kex  # type: ignore[attr-defined]
        if kex != "ecdh-sha2-nistp256"
    ))  # fmt: skip


class _Held:
    """A channel as the socket of a login whose closing is left to `_close`: paramiko's
    transport closes its socket while its own thread may still write to it, and data on a
    channel after its close makes the pnode's sshd drop the whole connection ("data packet
    referred to nonexistent channel"), every other login through it with it."""

    def __init__(self, channel: paramiko.Channel) -> None:
        self.channel = channel

    def __getattr__(self, name: str) -> Any:
        return getattr(self.channel, name)

    def close(self) -> None:
        """Left to `_close`."""


def _close(client: paramiko.SSHClient, sock: paramiko.Channel | _Held) -> None:
    """Close `client`, then, once its transport's thread has stopped, the channel under it."""
    transport = client.get_transport()
    client.close()
    if transport is not None and transport.is_alive():
        transport.join(10)
    (sock.channel if isinstance(sock, _Held) else sock).close()


class _Relays:
    """One MANY_RELAY per pnode, started once; `channel(vnode)` is a new connection to the
    vnode's sshd through it (a direct-tcpip channel to the relay's port, then the vnode's
    index), returned once the relay reached that sshd. A pnode whose sshd refuses TCP
    forwarding gets a RELAY process per login."""

    def __init__(self, clients: Mapping[str, paramiko.SSHClient], vnodes: Sequence[VnodePlan]):
        self.clients = clients
        self.index: dict[str, int] = {}  # vnode name -> its index in its pnode's relay
        # pnode -> (the relay's channel, its port), or None without one
        self.relays: dict[str, tuple[paramiko.Channel, int] | None] = {}
        for pnode, client in clients.items():
            mine = [v for v in vnodes if v.pnode == pnode]
            self.index.update({v.name: i for i, v in enumerate(mine)})
            self.relays[pnode] = self._start(client, mine)

    @staticmethod
    def _start(
        client: paramiko.SSHClient, vnodes: Sequence[VnodePlan]
    ) -> tuple[paramiko.Channel, int] | None:
        transport = client.get_transport()
        assert transport is not None
        channel = transport.open_session(timeout=30)
        paths = [nsutil.path(v.netns) for v in vnodes]
        channel.exec_command(shlex.join(["python3", "-I", "-c", MANY_RELAY, *paths]))
        channel.settimeout(30)
        try:
            port = int(channel.makefile("rb").readline())
            transport.open_channel(  # refused by a pnode that forbids TCP forwarding
                "direct-tcpip", ("127.0.0.1", port), ("127.0.0.1", 0), timeout=30
            ).close()
        except (paramiko.SSHException, OSError, ValueError):
            channel.close()
            return None
        return channel, port

    def channel(self, vnode: VnodePlan, timeout: float) -> _Held:
        transport = self.clients[vnode.pnode].get_transport()
        assert transport is not None
        relay = self.relays[vnode.pnode]
        if relay is None:
            channel = transport.open_session(timeout=timeout)
            channel.exec_command(relay_command(vnode, ack=True))
        else:
            channel = transport.open_channel(
                "direct-tcpip", ("127.0.0.1", relay[1]), ("127.0.0.1", 0), timeout=timeout
            )
            channel.sendall(f"{self.index[vnode.name]}\n".encode())
        # nothing more is sent before the relay reached the sshd: data sent while the
        # pnode's sshd closes the channel makes it drop the whole connection (paramiko
        # sends it after the close, "data packet referred to nonexistent channel")
        channel.settimeout(timeout)
        if channel.recv(1) != b"+":
            channel.close()
            raise OSError("its sshd does not accept connections yet")
        return _Held(channel)

    def close(self) -> None:
        for relay in self.relays.values():
            if relay is not None:
                relay[0].close()  # its stdin ends: the relay exits


def wait_reachable(
    pnodes: Mapping[str, SSHEndpoint],
    vnodes: Sequence[VnodePlan],
    known_hosts: Path,
    key_file: str,
    timeout: float = REACH_TIMEOUT,
    stop: threading.Event | None = None,
) -> None:
    """Return once every vnode of `vnodes` accepted a root login and ran `true`; an
    EmulatorError names the first that did not within `timeout` seconds, or, once `stop`
    is set, within a few seconds. The vnodes may still be starting."""
    stop = stop or threading.Event()
    deadline = time.monotonic() + timeout
    clients = {p: ssh.connect(pnodes[p], known_hosts) for p in {v.pnode for v in vnodes}}
    host_keys = paramiko.HostKeys(str(known_hosts))  # read once: N logins, N lines each
    pkey = paramiko.PKey.from_path(key_file)

    def login(vnode: VnodePlan) -> None:
        last = "no answer"
        while time.monotonic() < deadline and not stop.is_set():
            try:
                sock = relays.channel(vnode, 30)
                client = _login(sock, vnode, host_keys, pkey, 30)
            except paramiko.BadHostKeyException:
                raise EmulatorError(
                    f"vnode {vnode.name} answered SSH with a host key other than the one "
                    f"omnibed made for it (recorded in {known_hosts}): something else listens "
                    "there"
                ) from None
            except (paramiko.SSHException, OSError, EOFError) as exc:
                last = str(exc) or type(exc).__name__
                time.sleep(0.2)
                continue
            try:
                _, stdout, _ = client.exec_command("true")
                if stdout.channel.recv_exit_status() == 0:
                    return
                last = "`true` failed after the login"
            finally:
                _close(client, sock)
        raise EmulatorError(
            f"vnode {vnode.name} did not answer an SSH login within {timeout:g} s ({last}): "
            f"`omnibed emulate status` shows whether it runs"
        )

    try:
        relays = _Relays(clients, vnodes)
        try:
            workers = max(1, min(LOGINS, LOGINS_PER_PNODE * len(clients), len(vnodes)))
            with ThreadPoolExecutor(workers) as pool:
                pending = {pool.submit(login, v) for v in vnodes}
                try:
                    while pending and not stop.is_set():
                        done, pending = wait(pending, timeout=0.2, return_when=FIRST_EXCEPTION)
                        for future in done:
                            future.result()  # raises the first failure
                finally:
                    if pending:  # ending the pnode connections ends the logins under way
                        for client in clients.values():
                            client.close()
            if pending:
                raise EmulatorError("the wait for the vnodes' SSH logins was stopped")
        finally:
            relays.close()
    finally:
        for client in clients.values():
            client.close()


def command_line(
    pnode: SSHEndpoint, vnode: VnodePlan, known_hosts: Path, key_file: str
) -> list[str]:
    """The OpenSSH argv of a root login to `vnode` through `pnode` (append a command, or
    none for a shell); the vnode's host key must be the recorded one."""
    proxy = [*ssh.ssh_command_line(pnode, known_hosts), relay_command(vnode)]
    return [
        "ssh",
        "-p", str(SSH_PORT),
        "-l", "root",
        "-o", f"UserKnownHostsFile={ssh._openssh_path(known_hosts)}",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "StrictHostKeyChecking=yes",
        "-o", f"HostKeyAlias={alias(vnode.name)}",
        "-o", f"IdentityFile={ssh._openssh_path(key_file)}",
        "-o", "IdentitiesOnly=yes",
        # ssh expands %-tokens in ProxyCommand
        "-o", "ProxyCommand=" + shlex.join(proxy).replace("%", "%%"),
        alias(vnode.name),
    ]  # fmt: skip
