"""Fixtures: a throwaway CloudLab PKI, the fake ProtoGENI aggregate, a provider aimed at it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from omnibed.providers.cloudlab import CloudLabProvider

from tests.fakes.protogeni import PKI, FakeProtoGENI, make_pki


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("cloudlab-pki"))


@pytest.fixture
def passphrase(pki: PKI, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("OMNIBED_CLOUDLAB_PASSPHRASE", pki.passphrase)
    return pki.passphrase


@pytest.fixture
def fake(pki: PKI) -> Iterator[FakeProtoGENI]:
    with FakeProtoGENI(pki, max_slice_life=__import__("datetime").timedelta(days=3)) as server:
        yield server


@pytest.fixture
def provider(tmp_path: Path, fake: FakeProtoGENI, passphrase: str) -> CloudLabProvider:
    state = tmp_path / "providers" / "cloudlab"
    fake.write_config(state)
    return CloudLabProvider(state)
