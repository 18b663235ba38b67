"""SSH logins as root to container vnodes, through their pnode, with checked host keys.

Each `ssh: true` vnode gets an ed25519 host key made here, on the user's side; its public
half is recorded in the reservation's known_hosts under the name `VNODE.vnode.omnibed`
before the vnode starts, and every login checks it (never accepted at first contact).
A login goes through the pnode as jump host: the pnode runs RELAY, which enters the vnode's
network namespace and joins its stdin and stdout to the vnode's sshd on 127.0.0.1:22, so
no route from the pnode into the vnetworks is needed. paramiko (`connect`, `wait_reachable`)
and OpenSSH (`command_line`, as a ProxyCommand) take the same path.
"""

from __future__ import annotations

import fcntl
import os
import shlex
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

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
# run on the pnode as root: argv[1] is the vnode's network namespace (a path)
RELAY = """
import ctypes, os, socket, sys, threading
fd = os.open(sys.argv[1], os.O_RDONLY)
if ctypes.CDLL(None, use_errno=True).setns(fd, 0x40000000) != 0:
    sys.exit("cannot enter " + sys.argv[1] + ": " + os.strerror(ctypes.get_errno()))
conn = socket.create_connection(("127.0.0.1", 22), timeout=10)
conn.settimeout(None)
def upstream():
    while True:
        data = os.read(0, 65536)
        if not data:
            break
        conn.sendall(data)
    conn.shutdown(socket.SHUT_WR)
threading.Thread(target=upstream, daemon=True).start()
out = sys.stdout.buffer
while True:
    data = conn.recv(65536)
    if not data:
        break
    out.write(data)
    out.flush()
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


def relay_command(vnode: VnodePlan) -> str:
    """The pnode's shell command that joins its stdin/stdout to `vnode`'s sshd."""
    return shlex.join(["python3", "-I", "-c", RELAY, nsutil.path(vnode.netns)])


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
    client = paramiko.SSHClient()
    client.load_host_keys(str(known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        client.connect(
            alias(vnode.name),
            port=SSH_PORT,
            username="root",
            key_filename=key_file,
            allow_agent=False,
            look_for_keys=False,
            sock=channel,
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
        )
    except BaseException:
        client.close()
        channel.close()
        raise
    return client


def wait_reachable(
    pnodes: Mapping[str, SSHEndpoint],
    vnodes: Sequence[VnodePlan],
    known_hosts: Path,
    key_file: str,
    timeout: float = REACH_TIMEOUT,
) -> None:
    """Return once every vnode of `vnodes` accepted a root login and ran `true`; an
    EmulatorError names the first that did not within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    clients = {p: ssh.connect(pnodes[p], known_hosts) for p in {v.pnode for v in vnodes}}

    def login(vnode: VnodePlan) -> None:
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                client = connect(clients[vnode.pnode], vnode, known_hosts, key_file)
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
                client.close()
        raise EmulatorError(
            f"vnode {vnode.name} did not answer an SSH login within {timeout:g} s ({last}): "
            f"`omnibed emulate status` shows whether it runs"
        )

    try:
        with ThreadPoolExecutor(max_workers=max(1, min(32, len(vnodes)))) as pool:
            for future in [pool.submit(login, v) for v in vnodes]:
                future.result()
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
