"""Fixtures: a fake OpenStack cloud and a Chameleon provider whose credentials point at it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from omnibed.providers.chameleon import ChameleonProvider
from tests.fakes.openstack import FakeOpenStack
from tests.providers.chameleon.support import CLOUDS_YAML


@pytest.fixture
def cloud() -> Iterator[FakeOpenStack]:
    with FakeOpenStack() as fake:
        yield fake


@pytest.fixture
def home(tmp_path: Path, cloud: FakeOpenStack, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An $OMNIBED_HOME; clouds.yaml (an application credential) points at the fake."""
    for name in [n for n in __import__("os").environ if n.startswith("OS_")]:
        monkeypatch.delenv(name)
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text(CLOUDS_YAML.format(auth_url=cloud.auth_url))
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(clouds))
    (tmp_path / "providers" / "chameleon").mkdir(parents=True)
    return tmp_path


@pytest.fixture
def provider(home: Path) -> ChameleonProvider:
    return ChameleonProvider(home / "providers" / "chameleon")
