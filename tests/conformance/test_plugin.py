"""The pytest plugin every omnibed user loads: cheap to import, and guiding when misused."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

HEAVY = ("omnibed.conformance.suite", "omnibed.core.provider", "omnibed.core.types", "paramiko")


def test_plugin_is_loaded_without_importing_omnibed_core(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        f"""
        import sys

        def test_plugin_is_there(pytestconfig):
            assert pytestconfig.pluginmanager.has_plugin("omnibed")

        def test_nothing_heavy_imported():
            assert [name for name in {HEAVY!r} if name in sys.modules] == []
        """
    )
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=2)


def test_missing_provider_fixture_says_what_to_write(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        from omnibed.conformance import ProviderConformance

        class TestMine(ProviderConformance):
            pass
        """
    )
    result = pytester.runpytest("-k", "test_wait_returns_ready")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*needs a fixture named omnibed_provider*"])


def test_every_rule_is_written_in_its_docstring() -> None:
    from omnibed.conformance import ProviderConformance

    tests = [name for name in dir(ProviderConformance) if name.startswith("test_")]
    assert len(tests) >= 15
    for name in tests:
        doc = getattr(ProviderConformance, name).__doc__
        assert doc and doc.strip(), f"{name} states no rule"
