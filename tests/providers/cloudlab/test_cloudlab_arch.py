"""Each CloudLab node's CPU architecture, from its hardware type (the manifest has no other
word for it, and list_nodes logs in nowhere)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from omnibed.core.types import ReservationRequest
from omnibed.providers.cloudlab import CloudLabProvider
from tests.fakes.protogeni import FakeProtoGENI

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBxjYLMc7WmNLp0Vq1Dn2bR2Gqv5cM2xZ3bJ0bXx8kq1 res"


@pytest.mark.parametrize(("hardware", "arch"), [
    ("m400", "aarch64"),  # Utah: APM X-Gene ARMv8
    ("ibm8335", "ppc64le"),  # Clemson: IBM POWER8NVL
    ("c6525-100g", "x86_64"),  # Utah: AMD EPYC Rome
])
def test_nodes_report_the_architecture_of_their_hardware_type(
        provider: CloudLabProvider, fake: FakeProtoGENI, hardware: str, arch: str) -> None:
    fake.hardware_types = (*fake.hardware_types, "m400", "ibm8335")
    name = f"arch-{hardware}"
    ready = provider.wait(provider.reserve(ReservationRequest(
        name=name, nodes=2, duration=timedelta(hours=2), public_key=KEY,
        extra={"hardware_type": hardware})), timeout=60)
    nodes = provider.list_nodes(ready)
    assert [(node.hardware, node.arch) for node in nodes] == [(hardware, arch)] * 2
    provider.release(ready)


def test_a_type_omnibed_has_no_public_record_of_is_unknown(
        provider: CloudLabProvider, fake: FakeProtoGENI) -> None:
    fake.hardware_types = ("sm110p-new",)
    ready = provider.wait(provider.reserve(ReservationRequest(
        name="arch-unknown", nodes=1, duration=timedelta(hours=2), public_key=KEY,
        extra={"hardware_type": "sm110p-new"})), timeout=60)
    assert [(n.hardware, n.arch) for n in provider.list_nodes(ready)] == [("sm110p-new", "")]
    provider.release(ready)
