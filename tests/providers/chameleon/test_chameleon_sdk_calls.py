"""omnibed calls openstacksdk only in ways the installed openstacksdk does not deprecate."""

from __future__ import annotations

import warnings
from pathlib import Path

from omnibed.providers.chameleon import _credentials
from omnibed.providers.chameleon._client import ChameleonClient
from tests.fakes.openstack import FakeOpenStack
from tests.providers.chameleon.support import request

# What openstacksdk says of an argument its caller passes.
CALLER_DEPRECATION = "The ignore_missing parameter of all find_* proxy methods is deprecated"


def test_lookups_use_no_deprecated_argument_and_tell_missing_from_present(
    home: Path, cloud: FakeOpenStack, provider
) -> None:
    ready = provider.wait(provider.reserve(request("sdk")), timeout=60)
    client = ChameleonClient(_credentials.resolve({"cloud": "fake-chameleon"}), "CHI@UC", 30)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")  # past the pytest configuration's filters
        servers = client.servers_tagged("omnibed_reservation", ready.id)
        assert len(servers) == 2 and all(client.server(server) for server in servers)
        assert client.server("no-such-server") is None
    # Not recorded: openstacksdk's Image.find passes ignore_missing=True to itself.
    assert client.image("no-such-image") is None
    assert client.image("CC-Ubuntu22.04") is not None
    provider.release(ready)
    assert [str(w.message) for w in seen if CALLER_DEPRECATION in str(w.message)] == []
