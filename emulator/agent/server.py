"""The omnibed agent: runs as root on a pnode and applies PnodeStates, speaking JSON lines.

One reply line per request line; the ops and their fields are listed in ops.py.
Run as `python3 -I bundle.pyz [--netns NAME]` or `python -m omnibed.emulator.agent.server`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from . import lifecycle, live, nsutil, ops, probe, timeline, vroutes
from .containers import ContainerError, ContainerSpec, Runtime, tarball_path
from .netlink_apply import Applier, ApplyFailure, status, teardown
from .preflight import preflight
from .state import PnodeState, Viface


class Agent:
    """The request handlers; one instance per agent process."""

    def __init__(self) -> None:
        self.listeners: dict[str, probe.Listener] = {}
        self.runtime = Runtime()
        self.handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            ops.HELLO: self.hello,
            ops.PREFLIGHT: lambda r: {"problems": preflight(_state(r))},
            ops.APPLY: self.apply,
            ops.TEARDOWN: self.teardown,
            ops.STATUS: lambda r: status(_state(r)),
            ops.PROBE_LISTEN: self.probe_listen,
            ops.PROBE_SEND: lambda r: probe.send(r["nic"], r["peer_mac"], r["nonce"]),
            ops.PROBE_COLLECT: self.probe_collect,
            ops.EXEC: self.exec,
            ops.CONTAINERS_PREFLIGHT: lambda r: {
                "problems": self.runtime.preflight(_state(r).containers, bool(r["placed"]))
            },
            ops.CONTAINERS_INSTALL: lambda r: {"problems": self.runtime.install()},
            ops.CONTAINERS_IMAGE: self.containers_image,
            ops.CONTAINERS_START: lambda r: {"started": self.runtime.start(_state(r).containers)},
            ops.CONTAINERS_STATUS: lambda r: {
                "containers": self.runtime.status([c.name for c in _state(r).containers])
            },
            ops.CONTAINERS_EXEC: lambda r: self.runtime.exec(
                r["name"], [str(a) for a in r["argv"]], r.get("timeout")
            ),
            ops.CONTAINERS_REMOVE: lambda r: {"removed": self.runtime.remove(r["names"])},
            ops.SHAPE: lambda r: live.shape(Viface.from_json(r["viface"]), str(r["direction"])),
            ops.LINK: lambda r: live.set_link(str(r["netns"]), str(r["ifname"]), bool(r["up"])),
            ops.VNODE_RUN: self.vnode_run,
            ops.TIMELINE_PREPARE: lambda r: timeline.prepare(
                str(r["instance"]), str(r["id"]), list(r["actions"])
            ),
            ops.TIMELINE_GO: lambda r: timeline.go(
                str(r["instance"]), str(r["id"]), float(r["start"])
            ),
            ops.TIMELINE_STATUS: lambda r: {"timelines": timeline.records(str(r["instance"]))},
            ops.TIMELINE_CANCEL: lambda r: {
                "cancelled": timeline.cancel(str(r["instance"]), r.get("id"))
            },
        }

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        handler = self.handlers.get(op) if isinstance(op, str) else None
        if handler is None:
            known = ", ".join(ops.ALL)
            return {"ok": False, "error": f"unknown op {op!r} (known: {known})", "errno": None}
        try:
            return {"ok": True, **handler(request)}
        except ApplyFailure as exc:
            return {
                "ok": False,
                "error": str(exc),
                "errno": exc.errno,
                "object": exc.what,
                "rolled_back": exc.rolled_back,
            }
        except ContainerError as exc:
            return {"ok": False, "error": str(exc), "errno": None, "object": exc.name}
        except (OSError, KeyError, ValueError, TypeError, subprocess.SubprocessError) as exc:
            return {"ok": False, "error": f"{op}: {exc!r}", "errno": getattr(exc, "errno", None)}

    def hello(self, request: dict[str, Any]) -> dict[str, Any]:
        import pyroute2

        return {
            "python": sys.version.split()[0],
            "pyroute2": getattr(pyroute2, "__version__", "unknown"),
            "pid": os.getpid(),
            "euid": os.geteuid(),
            "cpus": os.cpu_count() or 1,
            "machine": os.uname().machine,
        }

    def apply(self, request: dict[str, Any]) -> dict[str, Any]:
        """The state's network, then its forwarding and routes (all removed if they fail)."""
        state = _state(request)
        done = Applier(state).run()
        try:
            vroutes.apply(state)
        except ApplyFailure:
            teardown(state)
            raise
        return done

    def teardown(self, request: dict[str, Any]) -> dict[str, Any]:
        """The state's timelines first (they change its links), its containers (they hold
        its namespaces), then its network."""
        state = _state(request)
        timeline.cancel(state.instance, remove=True)
        removed = self.runtime.remove([c.name for c in state.containers])
        return {**teardown(state), "removed_containers": removed}

    def vnode_run(self, request: dict[str, Any]) -> dict[str, Any]:
        box = request.get("container")
        container = None if box is None else ContainerSpec.from_json(box)
        vifaces = [Viface.from_json(v) for v in request["vifaces"]]
        return {"run": lifecycle.change(self.runtime, str(request["action"]), container, vifaces)}

    def containers_image(self, request: dict[str, Any]) -> dict[str, Any]:
        sha256 = request["sha256"]
        if not isinstance(sha256, str) or not re.fullmatch("[0-9a-f]{64}", sha256):
            raise ValueError(f"bad image sha256 {sha256!r}")
        os.makedirs(self.runtime.images_dir, mode=0o700, exist_ok=True)
        os.chmod(self.runtime.root, 0o700)
        os.chmod(self.runtime.images_dir, 0o700)
        return {"present": self.runtime.has_image(sha256), "path": tarball_path(sha256)}

    def probe_listen(self, request: dict[str, Any]) -> dict[str, Any]:
        listener = probe.Listener(request["nic"], request["nonce"])
        self.listeners[request["nonce"]] = listener
        return {"mac": listener.mac}

    def probe_collect(self, request: dict[str, Any]) -> dict[str, Any]:
        listener = self.listeners.pop(request["nonce"])
        return {"arrived": listener.collect(float(request.get("timeout", 2.0)))}

    def exec(self, request: dict[str, Any]) -> dict[str, Any]:
        target = nsutil.path(request["netns"])
        fd = os.open(target, os.O_RDONLY | os.O_CLOEXEC)
        try:
            done = subprocess.run(
                [str(a) for a in request["argv"]],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=request.get("timeout"),
                preexec_fn=lambda: nsutil.setns(fd),  # the agent is single-threaded here
            )
        finally:
            os.close(fd)
        return ops.exec_reply(done)


def _state(request: dict[str, Any]) -> PnodeState:
    return PnodeState.from_json(request["state"])


def serve(lines: Any, out: Any) -> None:
    """Answer each JSON line of `lines` with one JSON line on `out` until EOF."""
    agent = Agent()
    for line in lines:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("a request is a JSON object")
        except ValueError as exc:
            reply: dict[str, Any] = {"ok": False, "error": f"bad request: {exc}", "errno": None}
        else:
            reply = agent.handle(request)
        out.write(json.dumps(reply) + "\n")
        out.flush()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="omnibed-agent", description=__doc__.split("\n")[0])
    parser.add_argument("--netns", help="serve from inside this named network namespace")
    args = parser.parse_args(argv)
    if args.netns:
        fd = os.open(nsutil.path(args.netns), os.O_RDONLY | os.O_CLOEXEC)
        nsutil.setns(fd)
        os.close(fd)
    # stdout is the protocol channel: anything else printing goes to stderr
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    serve(sys.stdin, out)


if __name__ == "__main__":
    main()
