"""Manifest -> Node/Nic conversion on a real CloudLab manifest, and the error mapping."""

from __future__ import annotations

import inspect
from pathlib import Path

import geni.aggregate.apis as apis
import geni.aggregate.pgutil as pgutil
import pytest
from geni.aggregate.exceptions import AMError
from geni.rspec.pgmanifest import Manifest

from omnibed.core.errors import (
    OmnibedError,
    ProviderError,
    ReservationError,
    ReservationNotFound,
)
from omnibed.core.types import NicRole, ReservationState, Tri
from omnibed.providers.cloudlab import _convert
from omnibed.providers.cloudlab._errors import map_geni_errors

FIXTURE = Path(__file__).parents[2] / "fixtures" / "cloudlab"
MANIFEST = FIXTURE / "manifest_utah_c6525-100g_2node_link.xml"


@pytest.fixture
def manifest() -> Manifest:
    return Manifest(xml=MANIFEST.read_text())


def test_real_manifest_ids_are_client_ids_not_host_names(manifest: Manifest) -> None:
    nodes = _convert.to_nodes(manifest, "ingino")
    assert [node.id for node in nodes] == ["node0", "node1"]
    node0 = nodes[0]
    assert node0.hostname == "node0.ingino-259075.cs244-oncache-PG0.utah.cloudlab.us"
    assert (node0.ssh.host, node0.ssh.port, node0.ssh.user) == (
        "amd269.utah.cloudlab.us", 22, "ingino"
    )
    assert node0.addresses == ("128.110.219.180", "10.10.1.1")
    assert node0.extra["sliver_type"] == "raw-pc"


def test_real_manifest_nics(manifest: Manifest) -> None:
    control, experiment = _convert.to_nics(manifest, "node1")
    assert control.role is NicRole.CONTROL and control.addresses == ("128.110.219.191",)
    assert experiment.role is NicRole.EXPERIMENT  # the profile's own link, not --extra-nics
    assert experiment.mac == "0c:42:a1:63:9e:3c"
    assert experiment.addresses == ("10.10.1.2/24",)
    assert experiment.foreign_mac is Tri.YES


def test_status_conversion() -> None:
    status = {
        "geni_status": "failed",
        "geni_expires": "2026-01-02T03:04:05Z",
        "geni_resources": [
            {"geni_urn": "urn:a", "geni_status": "ready", "geni_error": ""},
            {"geni_urn": "urn:b", "geni_status": "failed", "geni_error": "no boot"},
        ],
    }
    assert _convert.state_of(status) is ReservationState.ERROR
    assert _convert.state_of({"geni_status": "weird"}) is ReservationState.UNKNOWN
    assert _convert.status_errors(status) == "urn:b: no boot"
    assert _convert.progress_line(status) == "1/2 resources ready (failed)"
    assert _convert.expiration(status).isoformat() == "2026-01-02T03:04:05+00:00"
    assert _convert.normalize_mac("0C:42:A1:8B:31:78") == "0c:42:a1:8b:31:78"
    assert _convert.normalize_mac("bogus") == ""


def _geni_error_classes() -> list[type[AMError]]:
    found = set()
    for module in (apis, pgutil):
        for _, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, AMError):
                found.add(value)
    return sorted(found, key=lambda cls: cls.__name__)


@pytest.mark.parametrize("error_class", _geni_error_classes(), ids=lambda c: c.__name__)
def test_every_geni_error_class_becomes_an_omnibed_error(error_class: type[AMError]) -> None:
    response = {"code": {"geni_code": 2, "am_type": "protogeni", "am_code": 2}, "output": "x"}
    with pytest.raises(OmnibedError), map_geni_errors("testing"):
        raise error_class("x", response)


@pytest.mark.parametrize(
    ("code", "expected"),
    [(26, ReservationError), (14, ReservationError), (28, ReservationError),
     (12, ReservationNotFound), (2, ProviderError)],
)
def test_protogeni_codes(code: int, expected: type[Exception]) -> None:
    response = {"code": {"geni_code": code, "am_type": "protogeni", "am_code": code},
                "output": "said the AM"}
    with pytest.raises(expected) as caught, map_geni_errors("testing"):
        pgutil.raiseError(response)
    assert caught.value.testbed_message.startswith("said the AM")
