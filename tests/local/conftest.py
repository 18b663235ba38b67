"""Fixtures of the local testbed's root tests: a provider in a temp state dir, a key pair
and reservations with unique names, released at the end."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from omnibed.core import ssh
from omnibed.core.types import Reservation, ReservationRequest
from omnibed.providers.local import LocalProvider


@pytest.fixture
def provider(tmp_path: Path) -> LocalProvider:
    return LocalProvider(tmp_path / "state")


@pytest.fixture
def keypair(tmp_path: Path) -> ssh.KeyPair:
    return ssh.ensure_keypair(tmp_path / "keys")


@pytest.fixture
def reserve(
    provider: LocalProvider, keypair: ssh.KeyPair, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Reservation]]:
    """reserve(nodes=3, extra_nics=0, **options): a reservation with a unique name."""
    made: list[Reservation] = []

    def make(nodes: int = 3, extra_nics: int = 0, **options: str) -> Reservation:
        name = f"t-{request.node.name[:30]}-{uuid.uuid4().hex[:6]}"
        reservation = provider.reserve(
            ReservationRequest(
                name=name, nodes=nodes, duration=timedelta(hours=1), extra_nics=extra_nics,
                public_key=keypair.public_openssh, extra=options,
            )
        )
        made.append(reservation)
        return reservation

    try:
        yield make
    finally:
        for reservation in made:
            provider.release(reservation)
