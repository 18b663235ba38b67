"""Fixtures of the container vnode tests: the `omnibed` command in a session's own home, and
one image built by `omnibed image build` for the whole session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

OMNIBED = str(Path(sys.executable).with_name("omnibed"))
IMAGE_PACKAGES = "openssh-server,python3"


def omnibed(home: Path, *args: str) -> subprocess.CompletedProcess:
    """Run `omnibed ARGS` with OMNIBED_HOME=home; the result, whatever its exit status."""
    env = {**os.environ, "OMNIBED_HOME": str(home), "COLUMNS": "200"}
    return subprocess.run([OMNIBED, *args], env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="session")
def image_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An omnibed home whose cache holds the image `vnode` (bookworm, openssh-server, python3)."""
    home = tmp_path_factory.mktemp("omnibed-home")
    built = omnibed(home, "image", "build", "vnode", "--packages", IMAGE_PACKAGES)
    assert built.returncode == 0, built.stderr
    return home
