"""The real OpenSSH server of each pnode, run inside the pnode's namespaces.

Everything it needs lives in the pnode's directory: host key, authorized keys, config, pid
file and log. Root logs in with a key only; the session gets `OMNIBED_NODE_DIR=/`, the root
of the pnode's own filesystem (see :mod:`.rootfs`), kept for scripts written when a pnode
had a writable directory only.

sshd joins the pnode's network namespace, gets a UTS namespace of its own (hostname = the
pnode's namespace name) and a mount namespace whose root is the pnode's own filesystem;
/run/netns there is the host's, so a namespace a session makes (an emulator vnode) is one
the host can enter too.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

from omnibed.core.errors import ProviderError
from omnibed.providers.local import rootfs
from omnibed.providers.local.shell import run
from omnibed.providers.local.underlay import NETNS_DIR

SSHD = Path("/usr/sbin/sshd")
HOST_KEY = "ssh_host_ed25519_key"
AUTHORIZED_KEYS = "authorized_keys"
CONFIG = "sshd_config"
PID_FILE = "sshd.pid"
LOG = "sshd.log"
PORT = 22


def prepare(node_dir: Path, address: str, public_key: str | None) -> Path:
    """Write host key, authorized keys and sshd_config into `node_dir`; return the config."""
    node_dir.mkdir(parents=True, exist_ok=True)
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"omnibed-local {address}",
        "-f", str(node_dir / HOST_KEY))
    keys = node_dir / AUTHORIZED_KEYS
    keys.touch(mode=0o600)
    if public_key:
        authorize(node_dir, public_key)
    config = node_dir / CONFIG
    config.write_text(
        "\n".join(
            [
                f"ListenAddress {address}:{PORT}",
                f'HostKey "{node_dir / HOST_KEY}"',
                f'PidFile "{node_dir / PID_FILE}"',
                f'AuthorizedKeysFile "{keys}"',
                "PermitRootLogin prohibit-password",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "StrictModes no",
                "UseDNS no",
                "PrintMotd no",
                "MaxStartups 100:30:200",
                "MaxSessions 100",
                'SetEnv "OMNIBED_NODE_DIR=/"',
                "Subsystem sftp internal-sftp",
                "",
            ]
        )
    )
    return config


def authorize(node_dir: Path, public_key: str) -> None:
    """Add `public_key` (one OpenSSH line) to the pnode's authorized keys unless already there
    (with whatever comment)."""
    keys = node_dir / AUTHORIZED_KEYS
    line = public_key.strip()
    present = keys.read_text().splitlines() if keys.exists() else []
    if " ".join(line.split()[:2]) not in {" ".join(p.split()[:2]) for p in present}:
        with open(keys, "a") as handle:
            handle.write(line + "\n")
        keys.chmod(0o600)


def host_public_key(node_dir: Path) -> str:
    """The pnode's host key as `type base64` (for a known_hosts line)."""
    return " ".join((node_dir / f"{HOST_KEY}.pub").read_text().split()[:2])


def start(netns: str, node_dir: Path, prefix: list[str]) -> None:
    """Start sshd in `netns`, hostname `netns`, on the pnode's own root filesystem (made by
    `rootfs.prepare`), as a daemon (it outlives this process).

    `prefix` is put before the command (e.g. to enter the reservation's cgroup).
    """
    run(*prefix, "nsenter", f"--net={NETNS_DIR / netns}", "unshare", "--uts",
        *rootfs.enter(node_dir), "sh", "-c", 'hostname "$0" && exec "$@"', netns,
        str(SSHD), "-f", str(node_dir / CONFIG), "-E", str(node_dir / LOG))


def wait_accepting(address: str, node_dir: Path, timeout: float = 20.0) -> None:
    """Return once the sshd on `address` answers with its SSH banner; raise after `timeout` s."""
    deadline = time.monotonic() + timeout
    last_error: OSError | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((address, PORT), timeout=2) as connection:
                if connection.recv(64).startswith(b"SSH-"):
                    return
        except OSError as error:
            last_error = error
        time.sleep(0.05)
    log_file = node_dir / LOG
    log = log_file.read_text()[-500:] if log_file.exists() else ""
    raise ProviderError(
        f"the sshd of {address} did not answer within {timeout:.0f} s ({last_error}); "
        f"its log says: {log or 'nothing'}",
        provider="local",
        testbed_message=log or None,
    )
