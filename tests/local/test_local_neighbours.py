"""Each local pnode holds as many neighbour (ARP) entries as a machine of its own.

The pnodes of the local testbed share the host's kernel, whose neighbour tables are one for
all network namespaces, capped by the host's gc_thresh3 (1,024 by default). An emulation over
32 pnodes needs about 2,000 entries at once (each pnode resolves the 31 other VXLAN endpoints,
and the connectivity check's vnodes resolve each other), so every vnode-to-vnode check failed
there while each real machine would have held its share. Here two pnodes each add 600 entries,
which one machine holds alone, and which overflowed the host's table before; the entries
stay until the release removes the pnodes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from omnibed.core import ssh
from omnibed.core.types import Reservation
from omnibed.providers.local import LocalProvider
from tests.local.support import needs_root, run_as_root

pytestmark = needs_root

ENTRIES = 600  # over half of a machine's default table (1,024), under all of it


def test_every_pnode_holds_a_machines_worth_of_neighbours(
    provider: LocalProvider, keypair: ssh.KeyPair, reserve: Callable[..., Reservation],
    tmp_path: Path,
) -> None:
    reservation = reserve(nodes=2)
    fill = (
        f"for i in $(seq 1 {ENTRIES}); do "
        "echo neigh add 100.64.$((i / 256)).$((i % 256)) "
        "lladdr 02:00:00:00:00:01 dev eth0 nud stale; "
        "done | ip -batch - && ip -4 neigh show to 100.64.0.0/16 dev eth0 | wc -l"
    )
    results = run_as_root(provider, reservation, keypair, fill, tmp_path / "known_hosts")
    for node, result in results.items():
        assert result.stdout.split() == [str(ENTRIES)], (node, result.stderr[-300:])
