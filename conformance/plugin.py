"""The omnibed pytest plugin (entry point ``pytest11``): default fixtures of the suite.

pytest loads this module in every run of anyone who has omnibed installed, so it imports
nothing of omnibed at module level; each fixture imports what it needs when it runs. Users
override a fixture by defining one of the same name in their conftest.py or test module:

- ``omnibed_provider`` (required): the :class:`~omnibed.core.provider.Provider` under test;
- ``omnibed_request``: the template request (name prefix, node count, walltime, options);
- ``omnibed_key``: the reservation's key pair (``private_path``, ``public_openssh``);
- ``omnibed_failing_request``: a request the testbed puts into its error state;
- ``omnibed_pending_request``: a request that stays not-READY for a while;
- ``omnibed_wait_timeout``: the longest the suite waits for a reservation (seconds);
- ``omnibed_live_resources``: a callable listing what the testbed still holds for a
  reservation, asked of the testbed itself; ``None`` (the default) leaves the release rules
  with ``find`` alone, and they say so with a warning.
"""

from __future__ import annotations

from typing import Any

import pytest

pytest.register_assert_rewrite("omnibed.conformance.suite")


@pytest.fixture
def omnibed_provider() -> Any:
    """The provider under test; a provider author must define this fixture."""
    pytest.fail(
        "the omnibed conformance suite needs a fixture named omnibed_provider returning your "
        "Provider instance; define it in conftest.py (see docs/writing-a-provider.md)",
        pytrace=False,
    )


@pytest.fixture
def omnibed_request() -> Any:
    """One node for one hour; the suite gives each reservation a unique name from this one."""
    from datetime import timedelta

    from omnibed.core.types import ReservationRequest

    return ReservationRequest(name="conformance", nodes=1, duration=timedelta(hours=1))


@pytest.fixture
def omnibed_key(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A fresh ed25519 key pair; its public half is installed for root by the reservation."""
    from omnibed.core.ssh import ensure_keypair

    return ensure_keypair(tmp_path_factory.mktemp("omnibed-key"))


@pytest.fixture
def omnibed_failing_request() -> Any:
    """A request the testbed turns into its error state; unknown unless the author says."""
    pytest.skip(
        reason="no omnibed_failing_request fixture: define one returning a request your "
        "testbed puts into its error state to check that wait raises on it"
    )


@pytest.fixture
def omnibed_pending_request() -> Any:
    """A request that is not READY for a while; None lets the suite use a future start."""
    return None


@pytest.fixture
def omnibed_wait_timeout() -> float:
    """The longest the suite waits for a reservation to become READY, in seconds."""
    return 1800.0


@pytest.fixture
def omnibed_live_resources() -> Any:
    """``reservation -> list[str]``: what the testbed still holds for that reservation (one
    line per machine, lease, key...), found by asking the testbed, never the provider's own
    records; None when the run cannot ask, and the release rules then check ``find`` only."""
    return None
