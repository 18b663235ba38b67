"""The `local` testbed: pnodes are network namespaces on this machine with a real sshd."""

from __future__ import annotations

from omnibed import hookimpl
from omnibed.providers.local.provider import LocalProvider

__all__ = ["LocalProvider", "omnibed_register_providers"]


@hookimpl
def omnibed_register_providers() -> list[type[LocalProvider]]:
    return [LocalProvider]
