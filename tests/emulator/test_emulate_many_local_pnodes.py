"""`emulate up` over 32 local pnodes passes its connectivity check (issue 15).

Over VXLAN each pnode resolves the 31 other endpoints and the check's vnodes resolve each
other: about 2,000 neighbour entries in the host's one shared table, which held 1,024 before
the local testbed sized it for its pnodes. One vnode per pnode is enough to need them;
tests/local/test_local_neighbours.py shows the same overflow with two pnodes.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from omnibed.api import Omnibed
from omnibed.emulator.coordinator import Emulator
from omnibed.emulator.model import load_platform

pytestmark = [pytest.mark.root, pytest.mark.slow]

PNODES = 32
ONE_PER_PNODE = """
networks:
  - {name: lan, cidr: 10.80.0.0/16}
nodes:
  - name: v{i}
    per_pnode: 1
    ifaces:
      - {name: if0, network: lan}
"""


def test_every_vnode_reaches_every_pnode_over_vxlan_on_32_pnodes(tmp_path: Path) -> None:
    api = Omnibed(home=tmp_path / "home")
    request = api.make_request("local", nodes=PNODES, walltime=timedelta(hours=1))
    api.reserve("local", request)
    try:
        api.wait(request.name)
        emulator = Emulator(api.access(request.name))
        plan = emulator.up(load_platform(ONE_PER_PNODE))
        try:
            assert [network.mode for network in plan.networks] == ["vxlan"]
            checks = emulator.connectivity()
            failed = [(check.source, check.target) for check in checks if not check.ok]
            assert len(checks) == PNODES * (PNODES - 1) and failed == []
        finally:
            emulator.down()
    finally:
        api.release(request.name)
