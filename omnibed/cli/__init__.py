"""The `omnibed` command line: parse, call :class:`omnibed.api.Omnibed`, render.

Errors the user can fix are one line on stderr and exit status 2; testbed failures exit 1.
"""

from omnibed.cli.app import app, main

__all__ = ["app", "main"]
