"""A vnode's run state changed in place: stop, start, freeze, thaw. Nothing else on the
pnode is touched.

A stopped vnode has every interface down, so that nothing reaches it and it reaches
nothing; a container vnode also loses every process (its init is killed, as by a power
cut). Started again, each interface gets back its recorded link state (`Viface.up`) and a
container runs its bundle anew: its files are kept (its overlay), its processes start
afresh, as after a reboot. A frozen container vnode has its processes frozen by the
freezer cgroup (the runtime's pause) and its network untouched; a namespace-only vnode has
no processes of its own, so frozen it has its interfaces down like a stopped one. Thawed,
everything is as before. Each function takes the vnode's container (None for a
namespace-only vnode) and its vifaces, and raises ContainerError or ApplyFailure naming
what failed. Python 3.9 compatible; stdlib only.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from .containers import ContainerError, ContainerSpec, Runtime, _runc_error
from .live import set_link
from .state import ACTIONS, Viface

STOP_TIMEOUT = 10.0  # seconds for a killed init to be gone


def stop(runtime: Runtime, container: ContainerSpec | None, vifaces: Sequence[Viface]) -> None:
    """Every interface down; the container's processes killed (a frozen one thawed first,
    so that its init can act on the signal and end)."""
    _links(vifaces, up=False)
    if container is None:
        return
    status = _status(runtime, container.name)
    if status == "paused":
        _runc(runtime, container.name, "resume", container.name)
        status = "running"
    if status in ("running", "created"):
        _runc(runtime, container.name, "kill", container.name, "KILL")
        _wait_stopped(runtime, container.name)


def start(runtime: Runtime, container: ContainerSpec | None, vifaces: Sequence[Viface]) -> None:
    """Each interface back to its recorded link state; the container run anew when it is
    not running (its stopped remains deleted first)."""
    _links([v for v in vifaces if v.up], up=True)
    if container is None:
        return
    status = _status(runtime, container.name)
    if status == "running":
        return
    if status != "absent":
        _runc(runtime, container.name, "delete", "--force", container.name)
    runtime._run(container)


def freeze(runtime: Runtime, container: ContainerSpec | None, vifaces: Sequence[Viface]) -> None:
    """The container's processes frozen; a namespace-only vnode's interfaces down."""
    if container is None:
        _links(vifaces, up=False)
    elif _status(runtime, container.name) != "paused":
        _runc(runtime, container.name, "pause", container.name)


def thaw(runtime: Runtime, container: ContainerSpec | None, vifaces: Sequence[Viface]) -> None:
    """The container's processes thawed; a namespace-only vnode's interfaces back to their
    recorded link state."""
    if container is None:
        _links([v for v in vifaces if v.up], up=True)
    elif _status(runtime, container.name) == "paused":
        _runc(runtime, container.name, "resume", container.name)


def change(
    runtime: Runtime, action: str, container: ContainerSpec | None, vifaces: Sequence[Viface]
) -> str:
    """Apply `action` (stop, start, freeze or thaw) to one vnode; the run state it is in."""
    if action not in ACTIONS:
        raise ValueError(f"action {action!r} is not one of {', '.join(ACTIONS)}")
    {"stop": stop, "start": start, "freeze": freeze, "thaw": thaw}[action](
        runtime, container, vifaces
    )
    return ACTIONS[action]


def _links(vifaces: Sequence[Viface], up: bool) -> None:
    for viface in vifaces:
        set_link(viface.netns, viface.ifname, up)


def _status(runtime: Runtime, name: str) -> str:
    """The runtime's status of container `name`: created, running, paused, stopped or absent."""
    return str(runtime.state(name).get("status", "absent"))


def _runc(runtime: Runtime, name: str, *argv: str) -> None:
    """The runtime run with `argv` about container `name`; ContainerError with its message
    if it fails."""
    done = runtime._runc(*argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise ContainerError(name, _runc_error(done.stderr + done.stdout))


def _wait_stopped(runtime: Runtime, name: str) -> None:
    deadline = time.monotonic() + STOP_TIMEOUT
    while _status(runtime, name) not in ("stopped", "absent"):
        if time.monotonic() > deadline:
            raise ContainerError(name, f"still running {STOP_TIMEOUT:g} s after SIGKILL")
        time.sleep(0.02)
