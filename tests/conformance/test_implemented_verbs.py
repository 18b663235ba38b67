"""`omnibed providers` lists the verbs each provider offers, read from code and capabilities."""

from __future__ import annotations

from omnibed.core.provider import VERBS, implemented_verbs
from omnibed.core.types import Capabilities, Capability
from omnibed.providers.local import LocalProvider
from omnibed_statichosts import StaticHostsProvider

BASIC = [verb for verb in VERBS if verb not in ("snapshot", "extend")]


def test_local_offers_every_verb() -> None:
    assert implemented_verbs(LocalProvider) == list(VERBS)


def test_statichosts_offers_extend_but_not_snapshot() -> None:
    assert implemented_verbs(StaticHostsProvider) == [*BASIC[:-1], "extend", "release"]


def test_an_override_without_its_capability_is_not_offered() -> None:
    class Undeclared(StaticHostsProvider):
        capabilities = Capabilities(supported=frozenset({Capability.ROOT}))

    assert "extend" not in implemented_verbs(Undeclared)


def test_a_declared_capability_without_its_method_is_not_offered() -> None:
    class Boastful(StaticHostsProvider):
        capabilities = Capabilities(supported=frozenset({Capability.SNAPSHOT, Capability.EXTEND}))

    verbs = implemented_verbs(Boastful)
    assert "snapshot" not in verbs and "extend" in verbs
