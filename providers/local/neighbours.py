"""The host's neighbour tables, sized for the local pnodes that share them.

A machine's kernel keeps at most gc_thresh3 neighbour entries (ARP, IPv6 neighbour
discovery): 1,024 by default, collected from gc_thresh2 (512) on, never below gc_thresh1
(128). The local testbed's pnodes are namespaces of the host's kernel, whose tables are one
for all namespaces and sized only from the host's: left alone, 32 pnodes share what one
machine has, and an emulation over them (each pnode resolving every other VXLAN endpoint, its
vnodes resolving theirs) overflows it, so packets to unresolved neighbours are dropped.
`make_room` gives the host and every local pnode alive a machine's default share.
"""

from __future__ import annotations

import re
from pathlib import Path

from omnibed.core.errors import ProviderError
from omnibed.providers.local.underlay import PREFIX, list_netns

MACHINE_DEFAULTS = {"gc_thresh1": 128, "gc_thresh2": 512, "gc_thresh3": 1024}
TABLES = (Path("/proc/sys/net/ipv4/neigh/default"), Path("/proc/sys/net/ipv6/neigh/default"))
PNODE_NETNS = re.compile(rf"^{PREFIX}[0-9a-f]{{6}}-[0-9]+$")


def make_room() -> None:
    """Raise each threshold of the host's neighbour tables to its machine default times
    (1 + local pnodes alive), never lowering one; ProviderError if the host refuses."""
    machines = 1 + sum(1 for name in list_netns() if PNODE_NETNS.match(name))
    for table in TABLES:
        for name, default in MACHINE_DEFAULTS.items():
            path = table / name
            try:
                if int(path.read_text()) < default * machines:
                    path.write_text(f"{default * machines}\n")
            except (OSError, ValueError) as exc:
                raise ProviderError(
                    f"cannot size the host's neighbour table for {machines - 1} local pnodes "
                    f"({path}: {exc}); run omnibed as root on a host that lets it set sysctls",
                    provider="local",
                ) from exc
