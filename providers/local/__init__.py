"""The `local` testbed: pnodes are network namespaces on this machine with a real sshd."""

from __future__ import annotations

from omnibed.providers.local.provider import LocalProvider

from omnibed import hookimpl

__all__ = ["LocalProvider", "omnibed_register_providers"]


@hookimpl
def omnibed_register_providers() -> list[type[LocalProvider]]:
    return [LocalProvider]
