"""The Grid'5000 provider (REST API through python-grid5000, the `grid5000` extra)."""

from __future__ import annotations

from omnibed import hookimpl
from omnibed.core.provider import Provider
from omnibed.providers.grid5000.provider import Grid5000Provider

__all__ = ["Grid5000Provider", "omnibed_register_providers"]


@hookimpl
def omnibed_register_providers() -> list[type[Provider]]:
    return [Grid5000Provider]
