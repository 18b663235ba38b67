"""The Chameleon Cloud testbed: bare metal (CHI@UC, CHI@TACC) and KVM@TACC via OpenStack."""

from __future__ import annotations

from omnibed import hookimpl
from omnibed.providers.chameleon.provider import ChameleonProvider

__all__ = ["ChameleonProvider", "omnibed_register_providers"]


@hookimpl
def omnibed_register_providers() -> list[type[ChameleonProvider]]:
    return [ChameleonProvider]
