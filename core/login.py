"""How a provider logs in to a reservation's nodes, and the two root steps providers share.

omnibed gives every verb that may log in to a node (`root_access`, `nic_capabilities`,
`snapshot`) the reservation's :class:`Login`. Most testbeds turn a user login into root
the same way: :func:`authorise_root` adds the reservation's key to root's authorized_keys
from a login that can become root, and :func:`verify_root` checks that a login runs as
uid 0.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from omnibed.core.errors import SSHError
from omnibed.core.types import SSHEndpoint

if TYPE_CHECKING:  # paramiko is imported by the helpers that log in, not by `omnibed --help`
    from omnibed.core import ssh

ROOT_AUTHORIZED_KEYS = "~root/.ssh/authorized_keys"

# $1: the authorized_keys line, $2: the key's base64 (any line holding it goes, whatever
# its options: e.g. a `command="Please login as ..."` one), $3: the file (default root's)
_AUTHORISE = (
    'umask 077 && f=${3:-' + ROOT_AUTHORIZED_KEYS + '} && mkdir -p "${f%/*}" && touch "$f"'
    ' && { grep -vF -- "$2" "$f"; printf "%s\\n" "$1"; } > "$f.omnibed" && mv -f "$f.omnibed" "$f"'
)


@dataclass(frozen=True, slots=True)
class Login:
    """The reservation's own credentials for its nodes.

    `key_file`: its private key (0600). `public_key`: the public half as one OpenSSH line
    (`type base64 comment`), what goes in authorized_keys. `known_hosts`: the file that
    checks the nodes' host keys, for every `omnibed.core.ssh` call on the reservation's
    nodes (the keys a provider announced on `Node.host_keys` are already in it; any other
    host is recorded at first contact and checked after).
    """

    key_file: Path
    public_key: str
    known_hosts: Path

    @classmethod
    def of(cls, keys: ssh.KeyPair, known_hosts: Path) -> Login:
        """The Login of a key pair made by :func:`omnibed.core.ssh.ensure_keypair`."""
        return cls(keys.private_path, keys.public_openssh, known_hosts)

    def endpoint(self, endpoint: SSHEndpoint, user: str | None = None) -> SSHEndpoint:
        """`endpoint` logging in with this key, as `user` (default: the endpoint's own)."""
        return replace(endpoint, user=user or endpoint.user, key_file=str(self.key_file))


def authorise_root(
    endpoint: SSHEndpoint,
    public_key: str,
    known_hosts: Path,
    *,
    become: str = "sudo -n",
    authorized_keys: str = "",
    node: str = "",
    fix: str = "",
) -> None:
    """Log in to `endpoint` and, through the `become` command, make root's authorized_keys
    hold `public_key` (one OpenSSH line) once, with no options.

    Idempotent. Any other line holding the same key (e.g. one with a forced command that
    refuses root) is dropped; other keys are kept. `become` is what runs a command as
    root there (`sudo -n`, `sudo-g5k`, or "" when `endpoint` is root already);
    `authorized_keys` names another file than root's. Raises SSHError, ending with `fix`,
    when the login or the command fails.
    """
    from omnibed.core import ssh

    blob = public_key.split()[1]
    command = shlex.join(["sh", "-c", _AUTHORISE, "sh", public_key.strip(), blob,
                          authorized_keys])
    result = ssh.run(endpoint, f"{become} {command}".strip(), known_hosts, node=node,
                     timeout=120)
    if result.exit_status != 0:
        why = result.stderr.strip() or f"exit {result.exit_status}"
        raise SSHError(
            f"installing the reservation's key for root on {node or endpoint.host}"
            f" ({endpoint.label()}) failed: {why}" + (f"; {fix}" if fix else ""),
            host=endpoint.host,
        )


def verify_root(endpoint: SSHEndpoint, known_hosts: Path, *, node: str = "", fix: str = ""
                ) -> None:
    """Return if `endpoint` logs in and runs commands as uid 0 (`id -u` prints 0).

    Otherwise raise SSHError, ending with `fix`; a refused or unreachable login raises the
    SSHError of :func:`omnibed.core.ssh.run`, a changed host key its HostKeyMismatch.
    """
    from omnibed.core import ssh

    result = ssh.run(endpoint, "id -u", known_hosts, node=node, timeout=60)
    uid = result.stdout.strip()
    if result.exit_status != 0 or uid != "0":
        raise SSHError(
            f"{endpoint.label()} on {node or endpoint.host} does not run commands as root"
            f" (`id -u` gave {uid[:40]!r}, exit {result.exit_status})"
            + (f": {fix}" if fix else ""),
            host=endpoint.host,
        )
