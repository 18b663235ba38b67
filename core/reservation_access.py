"""What the emulator needs from one reservation, and nothing more.

The emulator builds a virtual platform on a reservation's nodes through this protocol, so
it never depends on the application layer that keeps reservations (the ledger, the keys,
the providers): :meth:`omnibed.api.Omnibed.access` gives one for a reservation name.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from omnibed.core.types import Nic, Node, SSHEndpoint


class ReservationAccess(Protocol):
    """One ready reservation: its nodes, their NICs, and how to log in to them as root."""

    @property
    def name(self) -> str:
        """The reservation's name."""
        ...

    @property
    def state_dir(self) -> Path:
        """The reservation's own folder (0700, removed on release), for what the emulator
        keeps between processes."""
        ...

    @property
    def known_hosts(self) -> Path:
        """The known_hosts file that checks the nodes' host keys (and container vnodes')."""
        ...

    @property
    def reservation_id(self) -> str:
        """The testbed's id of the reservation (names what the emulator makes on pnodes)."""
        ...

    @property
    def key_file(self) -> Path:
        """The reservation's private SSH key (container vnodes authorise its public half)."""
        ...

    @property
    def public_key(self) -> str:
        """The public half of `key_file`, in OpenSSH's one-line format."""
        ...

    def nodes(self) -> list[Node]:
        """The reservation's nodes, as the testbed lists them."""
        ...

    def nics(self, nodes: Sequence[Node]) -> dict[str, list[Nic]]:
        """Node id -> the NICs of each of `nodes`."""
        ...

    def root_endpoints(self, nodes: Sequence[Node] | None = None) -> dict[str, SSHEndpoint]:
        """Node id -> an endpoint that logs in as root with the reservation's key, for
        `nodes` (default: every node of the reservation)."""
        ...

    def root_endpoint(self, node_id: str) -> SSHEndpoint:
        """An endpoint that logs in as root to node `node_id` only."""
        ...
