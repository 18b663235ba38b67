"""Finding providers: built-in ones and those of installed third-party distributions.

Nothing happens at import time. :func:`load_providers` builds a pluggy manager, registers
the built-in provider modules through the same hook third parties use, then loads each
entry point of the ``omnibed`` group on its own, so one broken plugin is reported
(as a :class:`PluginLoadError`) instead of stopping omnibed.
``OMNIBED_DISABLE_PLUGIN_AUTOLOAD=1`` skips third-party plugins.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from importlib.metadata import entry_points

import pluggy

from omnibed.core import hookspecs
from omnibed.core.errors import PluginLoadError, UsageError
from omnibed.core.provider import Provider

BUILTIN_PLUGINS = (
    "omnibed.providers.local",
    "omnibed.providers.grid5000",
    "omnibed.providers.cloudlab",
    "omnibed.providers.chameleon",
)


@dataclass
class ProviderRegistry:
    """The providers found, by testbed name, with the distribution each came from."""

    providers: dict[str, type[Provider]] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    errors: list[PluginLoadError] = field(default_factory=list)

    def get(self, name: str) -> type[Provider]:
        """The provider class for `name`; a UsageError lists the known ones."""
        try:
            return self.providers[name]
        except KeyError:
            known = ", ".join(sorted(self.providers)) or "none"
            raise UsageError(
                f"unknown testbed {name!r}; known testbeds: {known} (see `omnibed providers`)"
            ) from None


def make_plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


def load_providers(*, autoload: bool | None = None) -> ProviderRegistry:
    """Register built-in and installed provider plugins and collect their provider classes."""
    if autoload is None:
        autoload = os.environ.get("OMNIBED_DISABLE_PLUGIN_AUTOLOAD", "") in ("", "0")
    pm = make_plugin_manager()
    registry = ProviderRegistry()
    sources: dict[object, str] = {}
    for module_name in BUILTIN_PLUGINS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name == module_name:  # not in this build of omnibed
                continue
            registry.errors.append(PluginLoadError(module_name, error))
            continue
        pm.register(module, name=module_name)
        sources[module] = "omnibed (built-in)"
    if autoload:
        for entry_point in entry_points(group=hookspecs.PROJECT):
            dist = entry_point.dist.name if entry_point.dist else entry_point.value
            try:
                plugin = entry_point.load()
                if pm.is_registered(plugin):
                    continue
                pm.register(plugin, name=f"{dist}:{entry_point.name}")
            except Exception as error:  # a third party's bug must not stop omnibed
                registry.errors.append(PluginLoadError(f"{dist}:{entry_point.name}", error))
                continue
            sources[plugin] = dist
    pm.check_pending()
    for impl in pm.hook.omnibed_register_providers.get_hookimpls():
        source = sources.get(impl.plugin, "unknown")
        try:
            provider_classes = impl.function() or []
        except Exception as error:
            registry.errors.append(PluginLoadError(impl.plugin_name, error))
            continue
        if not isinstance(provider_classes, list | tuple):
            why = f"its hook returned {provider_classes!r}, not a list of provider classes"
            registry.errors.append(PluginLoadError(source, TypeError(why)))
            continue
        for provider_class in provider_classes:
            _add(registry, provider_class, source)
    return registry


def _add(registry: ProviderRegistry, provider_class: type[Provider], source: str) -> None:
    name = getattr(provider_class, "name", None)
    if not (isinstance(provider_class, type) and issubclass(provider_class, Provider) and name):
        registry.errors.append(
            PluginLoadError(source, TypeError(f"{provider_class!r} is not a named Provider"))
        )
        return
    if name in registry.providers:
        registry.errors.append(
            PluginLoadError(source, ValueError(f"testbed name {name!r} is already taken"))
        )
        return
    registry.providers[name] = provider_class
    registry.sources[name] = source
