"""The CloudLab provider (geni-lib); registered through the same hook as third parties."""

from __future__ import annotations

from omnibed import hookimpl
from omnibed.providers.cloudlab.provider import CloudLabProvider

__all__ = ["CloudLabProvider", "omnibed_register_providers"]


@hookimpl
def omnibed_register_providers() -> list[type[CloudLabProvider]]:
    return [CloudLabProvider]
