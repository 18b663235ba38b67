"""The conformance suite provider authors run against their own testbed.

Subclass :class:`ProviderConformance` in a test module and define an ``omnibed_provider``
fixture returning your provider; ``pytest`` then checks every rule of the provider contract
(see ``docs/writing-a-provider.md``). The suite is imported on first use only, because the
pytest plugin beside it is loaded by every pytest run where omnibed is installed.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ProviderConformance"]


def __getattr__(name: str) -> Any:
    if name == "ProviderConformance":
        from omnibed.conformance.suite import ProviderConformance

        return ProviderConformance
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
