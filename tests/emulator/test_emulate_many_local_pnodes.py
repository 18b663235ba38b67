"""`emulate up` over 32 local pnodes: its connectivity check passes and every vnode reaches
every other (issue 15).

Over VXLAN each pnode resolves the 31 other endpoints and each vnode the 31 others: about
2,000 neighbour entries in the host's one shared table, which held 1,024 before the local
testbed sized it for its pnodes. One vnode per pnode is enough to need them;
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
# Tries every address given: a TCP connection to the discard port, refused or accepted, means
# the vnode answered; prints those that never did.
REACH_ALL = """
import socket, sys
for address in sys.argv[1:]:
    for attempt in range(3):
        try:
            socket.create_connection((address, 9), timeout=1).close()
        except ConnectionRefusedError:
            pass
        except OSError:
            continue
        break
    else:
        print(address)
"""
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
            assert len(checks) == PNODES and [c for c in checks if not c.ok] == []  # a ring
            addresses = {v.name: v.ifaces[0].address.split("/")[0] for v in plan.vnodes}
            results = emulator.exec(None, ["python3", "-c", REACH_ALL, *addresses.values()])
            unreached = {name: result.stdout.decode().split() for name, result in results.items()}
            assert unreached == {name: [] for name in addresses}
        finally:
            emulator.down()
    finally:
        api.release(request.name)
