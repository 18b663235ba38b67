"""A real OpenSSH sshd for tests: own temp directory, host key, authorized keys and port.

Needs root (sshd refuses to serve other users' logins otherwise). It can run inside a
network namespace (`netns=`) and serves as a jump host (TCP forwarding allowed unless
`tcp_forwarding=False`). `stop()`
kills the sshd it started and the session processes that sshd forked, nothing else.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from omnibed.providers.local import cgroups

SSHD = "/usr/sbin/sshd"
START_TIMEOUT = 20.0


class PortTaken(RuntimeError):
    """The port chosen for sshd was bound by another process first."""


def free_port(address: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on at `address` right now."""
    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as probe:
        probe.bind((address, 0))
        return probe.getsockname()[1]


def _children(pid: int) -> list[int]:
    """Every live descendant of `pid` (read from /proc), children before grandchildren."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: list[int] = []
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        kids = [child for child, ppid in parents.items() if ppid == parent]
        found += kids
        frontier += kids
    return found


def session_processes(sshd: FakeSSHD) -> list[int]:
    """The processes `sshd` forked for its connections, and theirs."""
    assert sshd.process is not None, "sshd is not started"
    return _children(sshd.process.pid)


class FakeSSHD:
    """`with FakeSSHD([public_key]) as sshd:` logs root in on `sshd.host:sshd.port` with that key.

    `host_key` is the server's public key line ("ssh-ed25519 AAAA..."). `netns` runs sshd
    with `ip netns exec NETNS` (the port then defaults to 22: nothing in the namespace
    competes for it). `user_home` sets HOME and `path` sets PATH for the sessions.
    `kex_algorithms` (OpenSSH's KexAlgorithms list) limits the key exchanges it accepts.
    `log()` returns sshd's log.
    """

    def __init__(
        self,
        authorized_keys: list[str],
        address: str = "127.0.0.1",
        port: int | None = None,
        netns: str | None = None,
        user_home: str | None = None,
        log_level: str = "VERBOSE",
        path: str | None = None,
        tcp_forwarding: bool = True,
        kex_algorithms: str | None = None,
    ) -> None:
        self.tcp_forwarding = tcp_forwarding
        self.kex_algorithms = kex_algorithms
        self.authorized_keys = list(authorized_keys)
        self.host = address
        self.port = port if port is not None else (22 if netns else free_port(address))
        self.port_is_ours = port is None and not netns  # may be taken again before sshd binds
        self.netns = netns
        self.user_home = user_home
        self.path = path
        self.log_level = log_level
        self.host_key = ""
        self.directory: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None

    def _config(self, directory: Path) -> str:
        lines = [
            f"ListenAddress {self.host}:{self.port}" if ":" not in self.host
            else f"ListenAddress [{self.host}]:{self.port}",
            f"HostKey {directory / 'ssh_host_ed25519_key'}",
            f"PidFile {directory / 'sshd.pid'}",
            f"AuthorizedKeysFile {directory / 'authorized_keys'}",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "StrictModes no",
            "UsePAM no",
            f"AllowTcpForwarding {'yes' if self.tcp_forwarding else 'no'}",
            "X11Forwarding no",
            "PrintMotd no",
            "Subsystem sftp internal-sftp",
            f"LogLevel {self.log_level}",
        ]
        if self.kex_algorithms:
            lines.append(f"KexAlgorithms {self.kex_algorithms}")
        session_env = {"HOME": self.user_home, "PATH": self.path}
        settings = " ".join(f"{k}={v}" for k, v in session_env.items() if v)
        if settings:  # sshd honours only the first SetEnv line: one line for all
            lines.append(f"SetEnv {settings}")
        return "\n".join(lines) + "\n"

    def start(self) -> FakeSSHD:
        """Start sshd and return once it listens (its pid file is written after binding).

        A port this fake chose, taken by another process before sshd bound it, is chosen again.
        """
        for _ in range(4):
            try:
                return self._start()
            except PortTaken:
                self.port = free_port(self.host)
        return self._start()

    def _start(self) -> FakeSSHD:
        if self.process is not None:
            raise RuntimeError(f"sshd on {self.host}:{self.port} is already started")
        Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
        directory = self.directory = Path(tempfile.mkdtemp(prefix="omnibed-sshd-"))
        key = directory / "ssh_host_ed25519_key"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(key)],
            check=True,
        )
        self.host_key = key.with_suffix(".pub").read_text().strip()
        (directory / "authorized_keys").write_text("".join(k + "\n" for k in self.authorized_keys))
        config = directory / "sshd_config"
        config.write_text(self._config(directory))
        # A cgroup of its own, so stop() also finds sessions orphaned by a closed client.
        self.cgroup_id = f"fake-sshd-{directory.name}"
        launcher = cgroups.launcher(cgroups.create(self.cgroup_id))
        prefix = [*launcher, *(["ip", "netns", "exec", self.netns] if self.netns else [])]
        log = directory / "sshd.log"
        self.process = subprocess.Popen(
            [*prefix, SSHD, "-D", "-f", str(config), "-E", str(log)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        pid_file = directory / "sshd.pid"
        deadline = time.monotonic() + START_TIMEOUT
        while not (pid_file.exists() and pid_file.read_text().strip()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                text = self.log()
                self.stop()
                if self.port_is_ours and "Address already in use" in text:
                    raise PortTaken(text)
                raise RuntimeError(f"sshd on {self.host}:{self.port} did not start:\n{text}")
            time.sleep(0.05)
        return self

    def log(self) -> str:
        """What sshd logged so far."""
        if self.directory is None:
            return ""
        log = self.directory / "sshd.log"
        return log.read_text(errors="replace") if log.exists() else ""

    def stop(self) -> None:
        """Kill this sshd and the session processes it forked; remove its directory."""
        if self.process is not None:
            victims = [self.process.pid, *_children(self.process.pid)]
            for pid in victims:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.process.wait()
            self.process = None
            cgroups.kill_all(self.cgroup_id)
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def __enter__(self) -> FakeSSHD:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
