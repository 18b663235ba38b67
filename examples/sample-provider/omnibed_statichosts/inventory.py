"""The inventory: the hosts this testbed is made of, read from a YAML (or JSON) file.

    hosts:
      - name: alpha                  # unique; the node id is statichosts:<name>
        host: 192.0.2.10
        port: 22                     # optional, default 22
        user: root                   # optional, default root; must be uid 0
        key: ~/.ssh/id_ed25519       # the private key that logs in there today
        authorized_keys: /root/.ssh/authorized_keys   # optional; this is the default
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from omnibed.core.errors import UsageError
from omnibed.core.types import SSHEndpoint


@dataclass(frozen=True, slots=True)
class Host:
    name: str
    host: str
    key: str
    port: int = 22
    user: str = "root"
    authorized_keys: str | None = None

    def admin(self) -> SSHEndpoint:
        """How the provider itself logs in: with the inventory key."""
        return SSHEndpoint(host=self.host, port=self.port, user=self.user, key_file=self.key)


def load_inventory(path: Path) -> dict[str, Host]:
    """The hosts of `path` by name; a UsageError says which entry is wrong and why."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as error:
        raise UsageError(
            f"cannot read the statichosts inventory {path} ({error.strerror}): write one "
            "(see omnibed_statichosts.inventory) or set OMNIBED_STATICHOSTS_INVENTORY"
        ) from None
    except yaml.YAMLError as error:
        raise UsageError(f"{path} is not valid YAML: {error}") from None
    entries = data.get("hosts") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise UsageError(f"{path} must hold a non-empty list under `hosts:`")
    hosts: dict[str, Host] = {}
    for index, entry in enumerate(entries):
        where = f"{path}: hosts[{index}]"
        if not isinstance(entry, dict) or not {"name", "host", "key"} <= set(entry):
            raise UsageError(f"{where} needs at least name, host and key")
        unknown = set(entry) - {"name", "host", "port", "user", "key", "authorized_keys"}
        if unknown:
            raise UsageError(f"{where} has unknown field(s): {', '.join(sorted(unknown))}")
        try:
            host = Host(
                name=str(entry["name"]),
                host=str(entry["host"]),
                key=str(Path(str(entry["key"])).expanduser()),
                port=int(entry.get("port", 22)),
                user=str(entry.get("user", "root")),
                authorized_keys=entry.get("authorized_keys"),
            )
            host.admin()  # validates the port
        except (TypeError, ValueError) as error:
            raise UsageError(f"{where}: {error}") from None
        if host.name in hosts:
            raise UsageError(f"{where}: the name {host.name!r} is used twice")
        hosts[host.name] = host
    return hosts
