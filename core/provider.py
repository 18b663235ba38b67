"""The provider interface every testbed implements, built-in or third-party.

A provider is constructed cheaply (no network, no credentials read) so that listing and
`omnibed doctor` always work; credentials are loaded at the first testbed call and a
problem with them raises :class:`~omnibed.core.errors.CredentialsError`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from omnibed.core.errors import NotSupported
from omnibed.core.types import (
    Capabilities,
    Capability,
    Nic,
    Node,
    Reservation,
    ReservationRequest,
    SSHEndpoint,
)

if TYPE_CHECKING:  # omnibed.core.login imports paramiko: listing providers does not need it
    from omnibed.core.login import Login

Progress = Callable[[str], None]
"""Called with a short human-readable status line during long waits."""

VERBS = (
    "reserve",
    "wait",
    "find",
    "list_nodes",
    "root_access",
    "nic_capabilities",
    "snapshot",
    "extend",
    "release",
)

_OPTIONAL_VERBS = {"snapshot": Capability.SNAPSHOT, "extend": Capability.EXTEND}


@dataclass(frozen=True, slots=True)
class Check:
    """One line of `omnibed doctor`: what was checked, whether it is fine, how to fix it."""

    what: str
    ok: bool
    detail: str = ""
    fix: str = ""


def no_progress(_: str) -> None:
    """The default `progress` callback: says nothing."""




class Provider(ABC):
    """A testbed. Subclasses set `name` and `capabilities` and implement the verbs.

    Contract (checked by :mod:`omnibed.conformance`):

    - every datetime in and out is tz-aware UTC;
    - `reserve` under a name that already exists returns that reservation (no duplicate);
    - `wait` returns a READY reservation, raises ProviderError on the testbed's error state
      and ProviderTimeout after `timeout` seconds;
    - `list_nodes` ids are stable across calls and never just a host name;
    - `root_access` returns an endpoint that logs in as uid 0 with `login.key_file`;
    - `release` is idempotent: releasing a released reservation is not an error.
    """

    name: ClassVar[str]
    capabilities: ClassVar[Capabilities] = Capabilities()
    description: ClassVar[str] = ""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir

    @classmethod
    def doctor(cls, state_dir: Path) -> list[Check]:
        """What this provider needs (packages, credentials, privileges) and whether it is there."""
        return []

    @abstractmethod
    def reserve(self, request: ReservationRequest) -> Reservation:
        """Ask the testbed for resources; return at once (see `wait`)."""

    @abstractmethod
    def wait(
        self, reservation: Reservation, *, timeout: float = 3600, progress: Progress = no_progress
    ) -> Reservation:
        """Block until the reservation is READY; report progress; raise on error or timeout."""

    @abstractmethod
    def find(self, name: str) -> Reservation | None:
        """The live reservation called `name` on the testbed, or None."""

    @abstractmethod
    def list_nodes(self, reservation: Reservation) -> list[Node]:
        """The reserved nodes, in a stable order, with their SSH endpoints."""

    @abstractmethod
    def root_access(self, reservation: Reservation, node: Node, login: Login) -> SSHEndpoint:
        """Do what the testbed needs so that `login.key_file` logs in as root; return that
        endpoint. SSH to the node checks host keys with `login.known_hosts`."""

    @abstractmethod
    def nic_capabilities(self, reservation: Reservation, node: Node, login: Login) -> list[Nic]:
        """The node's NICs: at least one CONTROL NIC, with tri-state foreign_mac/multicast.

        `login` is the reservation's (the one given to root_access), for providers that
        must log in to read the NICs."""

    def snapshot(self, reservation: Reservation, node: Node, image: str, login: Login) -> str:
        """Save the node's disk as an image; return the id `-o image=` accepts later.

        `login` is the reservation's (the one given to root_access), for providers that
        must log in to make the image."""
        raise NotSupported(self.name, "snapshot")

    def extend(self, reservation: Reservation, end: datetime) -> Reservation:
        """Move the reservation's end; return it with the end the testbed actually granted."""
        raise NotSupported(self.name, "extend")

    @abstractmethod
    def release(self, reservation: Reservation) -> None:
        """Free everything the reservation made; idempotent."""


def implemented_verbs(provider_class: type[Provider]) -> list[str]:
    """The verbs `provider_class` really offers: implemented (not abstract, not the NotSupported
    default) and, for snapshot and extend, also declared in its capabilities."""
    verbs = []
    for verb in VERBS:
        method = getattr(provider_class, verb)
        if getattr(method, "__isabstractmethod__", False):
            continue
        capability = _OPTIONAL_VERBS.get(verb)
        if capability is not None and (
            method is getattr(Provider, verb) or capability not in provider_class.capabilities
        ):
            continue
        verbs.append(verb)
    return verbs
