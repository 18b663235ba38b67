"""Live changes to one viface of a running platform, in place: its shaping in one direction,
its link state. Nothing else on the pnode is touched.

`shape` replaces (or, for an empty Shaping, deletes) the root qdisc of the direction's
device: `ifname` inside the vnode's namespace for output, `host_ifname` on the pnode for
input, as `apply` installed it. `set_link` sets `ifname` up or down inside the namespace:
the vnode sees its link go down, its peers lose it. A namespace or link that does not
exist is an ApplyFailure (ENOENT, ENODEV); neither call creates anything else.
Python 3.9 compatible; stdlib only.
"""

from __future__ import annotations

import errno
import os

from . import nlbatch as nl
from . import nsutil
from .netlink_apply import ApplyFailure
from .preflight import explain, kernel_missing
from .shaping import offloads_off, qdisc_request
from .state import Shaping, Viface

DIRECTIONS = ("output", "input")


def _batch_in(netns: str) -> nl.Batch:
    """A netlink socket in existing namespace `netns`; the calling thread comes back home."""
    try:
        fd = os.open(nsutil.path(netns), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ApplyFailure(
            f"namespace {netns}", errno.ENOENT, f"namespace {netns} does not exist"
        ) from None
    home = nsutil.current_fd()
    try:
        nsutil.setns(fd)
        try:
            return nl.Batch()
        finally:
            nsutil.setns(home)
    finally:
        os.close(fd)
        os.close(home)


def _index(batch: nl.Batch, ifname: str, where: str) -> int:
    seq = batch.get_link(ifname, f"lookup {ifname}@{where}")
    reply = _flush(batch).get(seq)
    if reply is None:
        raise ApplyFailure(f"{ifname}@{where}", errno.ENODEV, f"no link {ifname} in {where}")
    return nl.link_index(reply)


def _flush(batch: nl.Batch) -> dict[int, bytes | None]:
    """Send what is queued; the kernel's refusal becomes an ApplyFailure naming it (nothing
    was changed: each send holds one request)."""
    try:
        return batch.flush()
    except nl.NetlinkFailure as exc:
        raise ApplyFailure(exc.what, exc.errno, str(exc)) from None


def _features(shaping: Shaping) -> set[str]:
    needs = {"sch_tbf"} if shaping.rate_bps is not None else set()
    return needs | ({"sch_netem"} if shaping.needs_netem() else set())


def add_shaping(batch: nl.Batch, index: int, shaping: Shaping, mtu: int, what: str) -> None:
    """Add to `batch` the request that gives interface `index` `shaping`: its root qdisc
    replaced, or removed when `shaping` is empty."""
    if shaping.is_empty():
        body = nl.root_qdisc_body(index)
        # no qdisc of ours there: ENOENT, or EINVAL on the default one
        batch.add(nl.RTM_DELQDISC, nl.SET, body, what, (errno.ENOENT, errno.EINVAL))
    else:
        batch.add(nl.RTM_NEWQDISC, nl.REPLACE, qdisc_request(index, shaping, mtu), what)


def shape(viface: Viface, direction: str) -> dict[str, object]:
    """Make `direction` of `viface` shaped as the viface says; problems lists the kernel
    features it lacks for that (then nothing is changed)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction {direction!r} is not one of {', '.join(DIRECTIONS)}")
    shaping: Shaping = getattr(viface, direction)
    problems = [explain(f) for f in sorted(kernel_missing(_features(shaping)))]
    if problems:
        return {"problems": problems}
    if direction == "output":
        batch, ifname, where = _batch_in(viface.netns), viface.ifname, viface.netns
    else:
        batch, ifname, where = nl.Batch(), viface.host_ifname, "the pnode"
    try:
        index = _index(batch, ifname, where)
        add_shaping(batch, index, shaping, viface.mtu, f"{direction} shaping on {ifname}@{where}")
        _flush(batch)
        if not shaping.is_empty():  # qdiscs see wire-sized packets, as after apply
            offloads_off(batch.fileno(), ifname)
    finally:
        batch.close()
    return {"problems": []}


def set_link(netns: str, ifname: str, up: bool) -> dict[str, object]:
    """Set `ifname` in namespace `netns` up or down."""
    batch = _batch_in(netns)
    try:
        index = _index(batch, ifname, netns)
        state = "up" if up else "down"
        batch.add(nl.RTM_NEWLINK, nl.SET, nl.link_body(index=index, up=up),
                  f"{ifname}@{netns} {state}")  # fmt: skip
        _flush(batch)
    finally:
        batch.close()
    return {}
