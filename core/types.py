"""The plain, frozen values that cross the provider interface.

All datetimes are tz-aware UTC (see :mod:`omnibed.core.timeutil`); constructors refuse
naive ones so a provider cannot leak local time into omnibed.
"""

from __future__ import annotations

import enum
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any

from omnibed.core.timeutil import require_utc


class Tri(enum.StrEnum):
    """A fact that may be unknown until probed."""

    YES = "yes"
    NO = "no"
    UNKNOWN = "unknown"


class NicRole(enum.StrEnum):
    CONTROL = "control"  # carries the SSH session; never re-parented by the emulator
    EXPERIMENT = "experiment"  # a data-plane NIC the testbed gives every node
    EXTRA = "extra"  # an additional link reserved with --extra-nics


class Source(enum.StrEnum):
    """Where a NIC fact came from."""

    API = "testbed-api"
    TABLE = "static-table"
    PROBE = "runtime-probe"


class ReservationState(enum.StrEnum):
    PENDING = "pending"  # recorded in the ledger, testbed not answered yet
    WAITING = "waiting"  # accepted by the testbed, resources not ready
    READY = "ready"
    ERROR = "error"
    RELEASED = "released"
    UNKNOWN = "unknown"


class Capability(enum.StrEnum):
    """Verbs and features a provider may or may not offer."""

    SNAPSHOT = "snapshot"
    EXTEND = "extend"
    ADVANCE_RESERVATION = "advance_reservation"
    EXTRA_NICS = "extra_nics"
    ROOT = "root"


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def check_reservation_name(name: str) -> str:
    """Return `name` if it is safe as a reservation name, raise ValueError otherwise.

    A name becomes a directory under omnibed's home and a label on the testbed, so it is
    1 to 63 ASCII letters, digits, `-`, `_` or `.`, starting with a letter or a digit:
    never a path, never `..`, never an option.
    """
    if isinstance(name, str) and _NAME.fullmatch(name):
        return name
    shown = repr(name) if len(repr(name)) <= 40 else repr(name)[:36] + "..."
    raise ValueError(
        f"reservation name {shown} is not allowed: use 1 to 63 letters, digits, '-', '_'"
        " or '.', starting with a letter or a digit"
    )


def _frozen(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True, slots=True)
class SSHEndpoint:
    """How to log in to a machine: jump hosts are tried in order before `host`."""

    host: str
    port: int = 22
    user: str = "root"
    key_file: str | None = None
    jumps: tuple[SSHEndpoint, ...] = ()

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"SSH port {self.port} is not in 1..65535")

    def label(self) -> str:
        """`user@host:port` for messages (never a secret)."""
        return f"{self.user}@{self.host}:{self.port}"

    def to_json(self) -> dict[str, Any]:
        """Host, port, user, key file (a path, never a key) and jumps, as JSON values."""
        return {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "key_file": self.key_file,
            "jumps": [jump.to_json() for jump in self.jumps],
        }


@dataclass(frozen=True, slots=True)
class Nic:
    """One network interface of a node and what it lets through."""

    name: str
    mac: str
    role: NicRole
    mtu: int = 1500
    addresses: tuple[str, ...] = ()
    rate_mbps: int | None = None
    foreign_mac: Tri = Tri.UNKNOWN
    multicast: Tri = Tri.UNKNOWN
    sources: Mapping[str, Source] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sources", _frozen(self.sources))

    def to_json(self) -> dict[str, Any]:
        """Every fact of the NIC, enums as their values, `sources` by fact name."""
        return {
            "name": self.name,
            "role": self.role.value,
            "mac": self.mac,
            "mtu": self.mtu,
            "addresses": list(self.addresses),
            "rate_mbps": self.rate_mbps,
            "foreign_mac": self.foreign_mac.value,
            "multicast": self.multicast.value,
            "sources": {fact: source.value for fact, source in self.sources.items()},
        }


@dataclass(frozen=True, slots=True)
class Node:
    """A reserved machine; `id` is stable and never just a host name.

    `host_keys`: the SSH host keys of `ssh`'s host and port (`type base64` each) when the
    provider knows them from elsewhere than the connection (it made them, or its testbed's
    API lists them); omnibed writes them to the reservation's known_hosts before it logs
    in, so they are checked rather than trusted at first contact.

    `arch` is the CPU architecture as `uname -m` names it (`x86_64`, `aarch64`, `ppc64le`),
    `hardware` the testbed's hardware type or cluster (`gros`, `d430`, `compute_skylake`),
    `site` where the node is (a Grid'5000 site, a CloudLab aggregate, a Chameleon region);
    each is "" when the provider does not know it.
    """

    id: str
    hostname: str
    ssh: SSHEndpoint
    addresses: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)
    host_keys: tuple[str, ...] = ()
    arch: str = ""
    hardware: str = ""
    site: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "extra", _frozen(self.extra))
        object.__setattr__(self, "host_keys", tuple(self.host_keys))
        for key in self.host_keys:
            if len(key.split()) != 2:
                raise ValueError(f"a host key is `type base64`, not {key[:40]!r}")

    def to_json(self) -> dict[str, Any]:
        """The node and how to reach it: `ssh` and `jumps` as `user@host:port` labels,
        `endpoint` whole, `host_keys` as given (the provider's `extra` is left out: it need
        not be JSON)."""
        return {
            "id": self.id,
            "hostname": self.hostname,
            "addresses": list(self.addresses),
            "ssh": self.ssh.label(),
            "jumps": [jump.label() for jump in self.ssh.jumps],
            "endpoint": self.ssh.to_json(),
            "host_keys": list(self.host_keys),
            "arch": self.arch,
            "hardware": self.hardware,
            "site": self.site,
        }


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a provider declares it can do, so callers and the conformance suite can skip."""

    supported: frozenset[Capability] = frozenset()
    max_extra_nics: int = 0
    options: Mapping[str, str] = field(default_factory=dict)  # -o key -> what it does

    def __post_init__(self) -> None:
        object.__setattr__(self, "supported", frozenset(self.supported))
        object.__setattr__(self, "options", _frozen(self.options))

    def __contains__(self, capability: object) -> bool:
        return capability in self.supported


@dataclass(frozen=True, slots=True)
class ReservationRequest:
    """What the user asks for; `extra` holds the provider-specific `-o key=value` options.

    `token` is made afresh for each request: the ledger row records it, so the process that
    recorded a reservation undoes only its own, never that of another process that won
    the same name.
    """

    name: str
    nodes: int
    duration: timedelta
    start: datetime | None = None
    image: str | None = None
    site: str | None = None
    extra_nics: int = 0
    public_key: str | None = None  # the reservation's own key, installed for root
    extra: Mapping[str, str] = field(default_factory=dict)
    token: str = field(default_factory=lambda: secrets.token_hex(16))

    def __post_init__(self) -> None:
        check_reservation_name(self.name)
        if self.nodes < 1:
            raise ValueError(f"a reservation needs at least one node, not {self.nodes}")
        if self.duration <= timedelta(0):
            raise ValueError("the walltime must be positive")
        if self.extra_nics < 0:
            raise ValueError("--extra-nics cannot be negative")
        if self.start is not None:
            require_utc(self.start)
        object.__setattr__(self, "extra", _frozen(self.extra))


@dataclass(frozen=True, slots=True)
class Reservation:
    """A reservation as the testbed knows it: enough to find it again after a crash."""

    provider: str
    id: str
    name: str
    start: datetime
    end: datetime
    state: ReservationState
    site: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        require_utc(self.start)
        require_utc(self.end)
        object.__setattr__(self, "extra", _frozen(self.extra))

    def to_json(self) -> dict[str, Any]:
        """Every field, times in ISO 8601; :meth:`from_json` reads it back (the ledger keeps
        reservations this way, so a field is only ever added, with a default)."""
        return {
            "provider": self.provider,
            "id": self.id,
            "name": self.name,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "state": self.state.value,
            "site": self.site,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Reservation:
        """The reservation :meth:`to_json` wrote; KeyError, ValueError or TypeError if
        `data` is not one."""
        return cls(
            provider=data["provider"],
            id=data["id"],
            name=data["name"],
            start=datetime.fromisoformat(data["start"]),
            end=datetime.fromisoformat(data["end"]),
            state=ReservationState(data["state"]),
            site=data["site"],
            extra=data["extra"],
        )
