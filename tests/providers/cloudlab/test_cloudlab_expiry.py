"""A CloudLab sliver that expires under the user: the fake aggregate reaps it as ProtoGENI
does (nodes freed, later calls answer SEARCHFAILED, or EXPIRED once the slice is gone too),
and every omnibed command on it says so in one line, without a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from omnibed.core.errors import ReservationNotFound
from omnibed.core.types import ReservationRequest
from omnibed.providers.cloudlab import CloudLabProvider
from tests.fakes.protogeni import FakeProtoGENI

OMNIBED = str(Path(sys.executable).with_name("omnibed"))


def omnibed(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMNIBED_HOME": str(home), "COLUMNS": "200"}
    return subprocess.run([OMNIBED, *args], env=env, capture_output=True, text=True,
                          timeout=120)


def test_the_provider_sees_an_expired_sliver_as_gone(
    provider: CloudLabProvider, fake: FakeProtoGENI
) -> None:
    request = ReservationRequest(name="expiring", nodes=1, duration=timedelta(hours=1))
    reservation = provider.wait(provider.reserve(request), timeout=30)
    fake.expire("expiring")
    assert provider.find("expiring") is None
    assert fake.live() == []  # reaped, its node freed
    with pytest.raises(ReservationNotFound, match="expired or deleted"):
        provider.wait(reservation, timeout=5)
    with pytest.raises(ReservationNotFound, match="expiring"):
        provider.list_nodes(reservation)
    with pytest.raises(ReservationNotFound, match="expiring"):
        provider.extend(reservation, reservation.end + timedelta(hours=1))
    provider.release(reservation)  # nothing left to delete: not an error


@pytest.mark.parametrize("slice_too", [False, True], ids=["sliver", "sliver-and-slice"])
def test_commands_on_an_expired_sliver_say_so_in_one_line(
    fake: FakeProtoGENI, tmp_path: Path, passphrase: str, slice_too: bool
) -> None:
    home = tmp_path / "home"
    fake.write_config(home / "providers" / "cloudlab")
    made = omnibed(home, "reserve", "--testbed", "cloudlab", "--name", "gone")
    assert made.returncode == 0, made.stderr
    fake.expire("gone", slice_too=slice_too)
    for args in (["nodes", "gone"], ["run", "gone", "--", "hostname"],
                 ["extend", "gone", "--by", "1h"]):
        failed = omnibed(home, *args)
        assert failed.returncode == 1, (args, failed.stdout, failed.stderr)
        assert "Traceback" not in failed.stderr
        assert failed.stderr.count("\n") == 1 and "gone" in failed.stderr, failed.stderr
        assert "no sliver" in failed.stderr or "expired" in failed.stderr, failed.stderr
        assert "credential" not in failed.stderr.lower(), failed.stderr
    released = omnibed(home, "release", "gone")
    assert (released.returncode, released.stdout) == (0, "released gone\n"), released.stderr
    assert "gone" not in omnibed(home, "ls").stdout
    assert fake.live() == []
