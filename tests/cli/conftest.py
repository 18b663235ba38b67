"""One platform really built on the local testbed through the CLI (root only), shared by the
CLI tests of commands that need a reservation."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cli.support import TWO_NETWORKS, Built, omnibed


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    home = tmp_path_factory.mktemp("built")
    platform = home / "two-networks.yaml"
    platform.write_text(TWO_NETWORKS)
    reserved = omnibed(home, "reserve", "-t", "local", "-n", "2", "--extra-nics", "1")
    assert reserved.returncode == 0, reserved.stderr
    name = reserved.stdout.strip()
    try:
        up = omnibed(home, "emulate", "up", name, str(platform))
        assert up.returncode == 0, up.stderr
        yield Built(home, name, platform, reserved, up)
    finally:
        released = omnibed(home, "release", name)
        assert released.returncode == 0, released.stderr
