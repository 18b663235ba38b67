"""Fixtures: a throwaway CloudLab PKI, the fake ProtoGENI aggregate, a provider aimed at it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from omnibed.providers.cloudlab import CloudLabProvider
from tests.fakes.protogeni import PKI, FakeProtoGENI, make_pki

MAX_SLICE_LIFE = timedelta(days=3)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("cloudlab-pki"))


@pytest.fixture
def passphrase(pki: PKI, monkeypatch: pytest.MonkeyPatch) -> str:
    """The portal key's passphrase, given the documented way (environment variable)."""
    monkeypatch.setenv("OMNIBED_CLOUDLAB_PASSPHRASE", pki.passphrase)
    return pki.passphrase


@pytest.fixture
def fake(pki: PKI) -> Iterator[FakeProtoGENI]:
    with FakeProtoGENI(pki, max_slice_life=MAX_SLICE_LIFE) as server:
        yield server


@pytest.fixture
def state_dir(tmp_path: Path, fake: FakeProtoGENI) -> Path:
    state = tmp_path / "providers" / "cloudlab"
    fake.write_config(state)
    return state


@pytest.fixture
def provider(state_dir: Path, passphrase: str) -> CloudLabProvider:
    return CloudLabProvider(state_dir)
