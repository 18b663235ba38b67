"""When a failed reserve cannot release what it made, the user is told it is still live and
how to release it, and the ledger keeps it for `omnibed release` or `omnibed gc`.

Driven through the `omnibed` command against the fake Grid'5000 API on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.grid5000 import FakeGrid5000

OMNIBED = str(Path(sys.executable).with_name("omnibed"))
NANCY = ["-o", "site=nancy", "-o", "cluster=gros", "-o", "poll=0.05"]
CLIENT_TIMEOUT = 1.0


@pytest.fixture
def fake() -> Iterator[FakeGrid5000]:
    with FakeGrid5000(step=0.2) as server:
        yield server


@pytest.fixture
def env(tmp_path: Path, fake: FakeGrid5000) -> dict[str, str]:
    config = fake.write_config(tmp_path / "python-grid5000.yaml", timeout=CLIENT_TIMEOUT)
    env = {**os.environ, "OMNIBED_HOME": str(tmp_path / "home"), "COLUMNS": "200",
           "OMNIBED_GRID5000_CONFIG": str(config)}
    return env


def omnibed(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([OMNIBED, *args], env=env, capture_output=True, text=True, timeout=120)


def assert_told_still_live(result: subprocess.CompletedProcess, name: str) -> None:
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "still live" in lines[0] and f"`omnibed release {name}`" in lines[0], lines[0]


def listed(env: dict[str, str]) -> list[tuple[str, str | None]]:
    return [(row["name"], row["id"]) for row in json.loads(omnibed(env, "ls", "--json").stdout)]


def test_reserve_whose_answer_is_lost_and_whose_release_fails(fake, env) -> None:
    """The job is made but its answer comes too late; deleting it fails too."""
    fake.faults.delay("POST", r"/jobs$", CLIENT_TIMEOUT + 1)
    fake.faults.fail(
        "DELETE", r"/jobs/\d+$", status=503, message="OAR server unreachable", times=2
    )
    result = omnibed(env, "reserve", "--testbed", "grid5000", *NANCY, "--name", "g5k-lost")
    assert_told_still_live(result, "g5k-lost")
    [job] = fake.live_jobs()
    assert listed(env) == [("g5k-lost", str(job))]
    released = omnibed(env, "release", "g5k-lost")
    assert released.returncode == 0, released.stderr
    assert fake.live_jobs() == [] and listed(env) == []


def test_wait_and_release_both_fail_then_gc_releases(fake, env) -> None:
    """The testbed answers 503 while waiting and while releasing: `gc` releases it later."""
    fake.faults.fail("GET", r"/jobs/\d+$", status=503, message="OAR server unreachable", times=2)
    result = omnibed(env, "reserve", "--testbed", "grid5000", *NANCY, "--name", "g5k-stuck")
    assert_told_still_live(result, "g5k-stuck")
    [job] = fake.live_jobs()
    assert listed(env) == [("g5k-stuck", str(job))]
    collected = omnibed(env, "gc")
    assert "released g5k-stuck" in collected.stdout, collected.stderr
    assert fake.live_jobs() == [] and listed(env) == []


def test_gc_goes_on_past_a_reservation_it_cannot_release(fake, env) -> None:
    """One testbed refusing one release must not keep `gc` from collecting the others."""
    for name in ("g5k-a", "g5k-b"):
        fake.faults.fail("GET", r"/jobs/\d+$", status=503, message="OAR down", times=2)
        assert_told_still_live(
            omnibed(env, "reserve", "--testbed", "grid5000", *NANCY, "--name", name), name)
    jobs = dict(listed(env))
    fake.faults.fail("DELETE", rf"/jobs/{jobs['g5k-a']}$", status=503, message="OAR down",
                     times=None)
    collected = omnibed(env, "gc")
    assert collected.returncode == 1, collected.stderr
    assert "released g5k-b" in collected.stdout, collected.stdout
    [line] = collected.stderr.strip().splitlines()
    assert line.startswith("error:") and "g5k-a" in line and "omnibed gc" in line, line
    assert listed(env) == [("g5k-a", jobs["g5k-a"])]
    assert fake.live_jobs() == [int(jobs["g5k-a"])]
