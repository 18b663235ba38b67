"""Providers are found through the `omnibed` entry-point group, built-in and third-party alike."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from omnibed.core.errors import UsageError
from omnibed.core.plugins import load_providers

OMNIBED = str(Path(sys.executable).with_name("omnibed"))

PLUGIN = """
from omnibed import hookimpl
from omnibed.core.provider import Provider
from omnibed.core.types import Capabilities, Capability


class {cls}(Provider):
    name = "{name}"
    capabilities = Capabilities({{Capability.EXTEND}}, options={{"flavour": "what to eat"}})

    def reserve(self, request): ...
    def wait(self, reservation, *, timeout=3600, progress=None): ...
    def find(self, name): ...
    def list_nodes(self, reservation): ...
    def root_access(self, reservation, node, login): ...
    def nic_capabilities(self, reservation, node, login): ...
    def extend(self, reservation, end): ...
    def release(self, reservation): ...


@hookimpl
def omnibed_register_providers():
    return [{cls}]
"""


def _install_distribution(tmp_path: Path, dist: str, module: str, source: str) -> Path:
    """pip-install a one-module distribution with an `omnibed` entry point into a target dir."""
    project = tmp_path / dist
    project.mkdir()
    (project / f"{module}.py").write_text(source)
    (project / "pyproject.toml").write_text(
        textwrap.dedent(f"""
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "{dist}"
        version = "1.0"
        [project.entry-points.omnibed]
        {module} = "{module}"
        [tool.setuptools]
        py-modules = ["{module}"]
        """)
    )
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(project),
        ],
        check=True,
    )
    return target


def _providers_json(site: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run(
        [OMNIBED, "providers", "--json"], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout)


def test_builtin_local_provider_is_registered_through_the_hook() -> None:
    registry = load_providers(autoload=False)
    assert "local" in registry.providers
    assert registry.sources["local"] == "omnibed (built-in)"


def test_unknown_testbed_lists_the_known_ones() -> None:
    registry = load_providers(autoload=False)
    with pytest.raises(UsageError, match="known testbeds: .*local"):
        registry.get("nowhere")


def test_installed_third_party_provider_is_listed(tmp_path: Path) -> None:
    source = PLUGIN.format(cls="PicnicProvider", name="picnic")
    site = _install_distribution(tmp_path, "omnibed-picnic", "omnibed_picnic", source)
    listing = _providers_json(site)
    picnic = next(p for p in listing["providers"] if p["name"] == "picnic")
    assert picnic["source"] == "omnibed-picnic"
    assert picnic["capabilities"] == ["extend"]
    assert "snapshot" not in picnic["verbs"] and "extend" in picnic["verbs"]
    assert picnic["options"] == {"flavour": "what to eat"}


def test_broken_plugin_is_reported_without_hiding_the_others(tmp_path: Path) -> None:
    site = _install_distribution(
        tmp_path, "omnibed-broken", "omnibed_broken", "raise RuntimeError('bad wiring')\n"
    )
    listing = _providers_json(site)
    assert any(p["name"] == "local" for p in listing["providers"])
    assert any("omnibed-broken" in e and "bad wiring" in e for e in listing["errors"])


def test_duplicate_testbed_name_is_refused(tmp_path: Path) -> None:
    source = PLUGIN.format(cls="FakeLocal", name="local")
    site = _install_distribution(tmp_path, "omnibed-usurper", "omnibed_usurper", source)
    listing = _providers_json(site)
    local = next(p for p in listing["providers"] if p["name"] == "local")
    assert local["source"] == "omnibed (built-in)"
    assert any("already taken" in e for e in listing["errors"])


def test_a_hook_that_returns_a_class_instead_of_a_list_is_reported(tmp_path: Path) -> None:
    """Found by mypy: the hook's answer was iterated unchecked, so omnibed crashed."""
    source = PLUGIN.format(cls="LoneProvider", name="lone").replace(
        "return [LoneProvider]", "return LoneProvider"
    )
    site = _install_distribution(tmp_path, "omnibed-lone", "omnibed_lone", source)
    listing = _providers_json(site)
    assert any(p["name"] == "local" for p in listing["providers"])
    assert not any(p["name"] == "lone" for p in listing["providers"])
    assert any("omnibed-lone" in e and "not a list" in e for e in listing["errors"]), listing


BUGGY = PLUGIN.replace(
    "    def reserve(self, request): ...",
    "    def reserve(self, request):\n        raise RuntimeError('a bug in the buggy plugin')",
)


def test_an_unexpected_error_is_one_line_and_debug_shows_its_traceback(tmp_path: Path) -> None:
    site = _install_distribution(
        tmp_path, "omnibed-buggy", "omnibed_buggy", BUGGY.format(cls="Buggy", name="buggy")
    )
    env = {**os.environ, "PYTHONPATH": str(site), "OMNIBED_HOME": str(tmp_path / "home")}
    plain = subprocess.run(
        [OMNIBED, "reserve", "-t", "buggy"], env=env, capture_output=True, text=True
    )
    assert plain.returncode == 1, plain.stderr
    assert "Traceback" not in plain.stderr and plain.stderr.count("\n") == 1, plain.stderr
    assert "a bug in the buggy plugin" in plain.stderr and "--debug" in plain.stderr
    debug = subprocess.run(
        [OMNIBED, "--debug", "reserve", "-t", "buggy"], env=env, capture_output=True, text=True
    )
    assert debug.returncode == 1, debug.stderr
    assert "Traceback (most recent call last)" in debug.stderr, debug.stderr
    assert "RuntimeError: a bug in the buggy plugin" in debug.stderr
