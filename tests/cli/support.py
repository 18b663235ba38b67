"""Helpers of the CLI tests: running `omnibed` as a user does, with its state in a folder."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

OMNIBED = str(Path(sys.executable).with_name("omnibed"))
TWO_NETWORKS = """\
networks:
  - {name: lan, cidr: 10.81.0.0/24}
  - {name: wan, cidr: 10.82.0.0/24}
nodes:
  - name: node-{i}
    per_pnode: 1
    ifaces:
      - {name: if0, network: lan}
      - {name: if1, network: wan, output: {rate: 10mbit}}
"""


def omnibed(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`omnibed ARGS` with stdout and stderr pipes, its state under `home`."""
    return subprocess.run(
        [OMNIBED, *args],
        env={**os.environ, "OMNIBED_HOME": str(home), "COLUMNS": "200", **env},
        capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
    )  # fmt: skip


@dataclass(frozen=True)
class Built:
    """A local reservation of two pnodes running TWO_NETWORKS."""

    home: Path
    name: str
    platform: Path
    reserved: subprocess.CompletedProcess[str]  # what `omnibed reserve` printed
    up: subprocess.CompletedProcess[str]  # what `omnibed emulate up` printed
