"""omnibed provider `statichosts`: claim hosts of a fixed inventory you can SSH into as root."""

from __future__ import annotations

from omnibed import hookimpl
from omnibed_statichosts.provider import StaticHostsProvider

__all__ = ["StaticHostsProvider", "omnibed_register_providers"]


@hookimpl
def omnibed_register_providers() -> list[type[StaticHostsProvider]]:
    return [StaticHostsProvider]
