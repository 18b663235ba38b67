"""omnibed: reserve machines on research testbeds and emulate virtual platforms on them.

Third-party providers mark their hook implementations with :data:`hookimpl`.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "hookimpl"]


def __getattr__(name: str) -> Any:
    """`hookimpl` loads pluggy at first use, not with every `omnibed` command."""
    if name == "hookimpl":
        from omnibed.core.hookspecs import hookimpl

        return hookimpl
    raise AttributeError(f"module 'omnibed' has no attribute {name!r}")
