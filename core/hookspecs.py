"""The omnibed hook specifications: the only place plugins meet omnibed.

A plugin is a module or object with functions marked ``@omnibed.hookimpl`` whose names
match a spec below, exposed through the ``omnibed`` entry-point group::

    [project.entry-points.omnibed]
    mytestbed = "mytestbed.plugin"
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from omnibed.core.provider import Provider

PROJECT = "omnibed"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def omnibed_register_providers() -> list[type[Provider]]:  # type: ignore[empty-body]
    """Return the provider classes this plugin contributes.

    Each class subclasses :class:`omnibed.core.provider.Provider`, sets a unique
    ``name`` (the value of ``--testbed``) and declares its ``capabilities``. The hook is
    called once per plugin manager; every implementation's list is merged. Importing the
    plugin module must be cheap: import testbed SDKs inside the provider's methods.
    """
