"""statichosts against omnibed's provider contract: the whole suite, inherited."""

from omnibed.conformance import ProviderConformance


class TestStaticHosts(ProviderConformance):
    pass
