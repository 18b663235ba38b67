"""omnibed: reserve machines on research testbeds and emulate virtual platforms on them.

Third-party providers mark their hook implementations with :data:`hookimpl`.
"""

from omnibed.core.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["__version__", "hookimpl"]
