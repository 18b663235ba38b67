"""The coordinator: builds, inspects and removes a virtual platform on a reservation's pnodes.

`up` gathers the pnodes' facts from the provider, starts the agent on every pnode over SSH,
probes whether the underlay passes foreign MACs, plans, runs the preflight everywhere
(nothing changed if anything is missing), records the plan, then applies on all pnodes in
parallel; a failure anywhere tears down every pnode and raises ApplyError naming what
failed where. The plan is kept in the reservation's directory so `status`, `exec` and `down`
work from another process, and so `omnibed release` can tear the platform down first.

Container vnodes (docs/containers.md): after the network, each pnode gets the images its
vnodes use (uploaded over SFTP unless the pnode has that sha256 already), starts their
containers, and `up` returns once every `ssh: true` vnode accepted a root login through its
pnode with its recorded host key (:mod:`.vnode_ssh`; the logins start with the containers,
each waits for its vnode's sshd); `reachable_after` is how long `up`
took until then. A failure at any step removes everything from every pnode.
"""

from __future__ import annotations

import base64
import functools
import json
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from omnibed.core.errors import ApplyError, EmulatorError, PreflightError, UsageError
from omnibed.core.kit import write_json
from omnibed.core.provider import Progress, no_progress
from omnibed.core.reservation_access import ReservationAccess
from omnibed.core.types import Node, SSHEndpoint

from . import timeline
from .agent import ops
from .agent.state import FROZEN, RUNNING, STOPPED, Route, Shaping, Viface
from .image_refs import ImageRef, resolve
from .model import Platform, parse_loss, parse_rate, parse_time
from .modes import PnodeFacts, ProbeResult, probe_targets
from .planner import (
    Containers,
    NetworkPlan,
    Plan,
    VnodePlan,
    check_fits,
    container_prefix,
    plan,
)
from .transport import AgentConnection, Agents, DirectAgents, for_each

# (pnode, step, done, total): how far one pnode is in a step of `up`, e.g. ("p1",
# "vnodes built", 3, 8) or ("p1", "MiB of image debian uploaded", 12, 40)
PnodeCount = Callable[[str, str, int, int], None]


def no_count(pnode: str, step: str, done: int, total: int) -> None:
    """The default `count` callback: says nothing."""

PLAN_FILE = "emulation.json"
# beside the plan once a timeline was scheduled: the keys of the timelines' actions already
# folded into the plan (timeline.fold)
FOLDED_FILE = "timelines-folded.json"
PROBE_TIMEOUT = 2.0
T = TypeVar("T")
# A TCP connection to the discard port: refused or accepted means the address answered.
# Only python3 is sure to be on a pnode (no ping needed).
_REACH = """
import socket, sys
for attempt in range(3):
    try:
        socket.create_connection((sys.argv[1], 9), timeout=1).close()
    except ConnectionRefusedError:
        pass
    except OSError:
        continue
    sys.exit(0)
sys.exit(1)
"""


@dataclass(frozen=True)
class VnodeResult:
    """A command's exit status in a vnode and its output bytes exactly as it wrote them."""

    vnode: str
    exit_status: int
    stdout: bytes
    stderr: bytes


@dataclass(frozen=True)
class PnodeStatus:
    """What one pnode's agent found of the platform, or why it could not be asked."""

    complete: bool = False
    absent: bool = False
    error: str | None = None
    containers_error: str | None = None  # the agent could not report its containers

    def problem(self) -> str | None:
        """What is wrong with the platform on this pnode, for a warning; None if nothing."""
        if self.error is not None:
            return self.error
        if self.absent:
            return "its part of the platform is missing: `omnibed emulate down` then `up` again"
        if not self.complete:
            return "its part of the platform is incomplete: `omnibed emulate down` then `up`"
        if self.containers_error is not None:
            return f"its containers could not be listed: {self.containers_error}"
        return None

    def to_json(self) -> dict[str, Any]:
        if self.error is not None:
            return {"error": self.error}
        report: dict[str, Any] = {"complete": self.complete, "absent": self.absent}
        if self.containers_error is not None:
            report["containers_error"] = self.containers_error
        return report


@dataclass(frozen=True)
class EmulationStatus:
    """The platform of a reservation as planned, and what each pnode has of it."""

    reservation: str
    networks: tuple[NetworkPlan, ...]
    vnodes: tuple[VnodePlan, ...]
    pnodes: Mapping[str, PnodeStatus]
    containers: Mapping[str, Mapping[str, Any]]  # container name -> what its runtime reports
    vifaces: Mapping[str, tuple[Viface, ...]] = field(default_factory=dict)  # by vnode
    runs: Mapping[str, str] = field(default_factory=dict)  # vnode -> recorded, when not running
    routes: Mapping[str, tuple[Route, ...]] = field(default_factory=dict)  # by vnode
    forwarding: frozenset[str] = frozenset()  # vnodes that forward between their vnetworks

    def run(self, vnode: VnodePlan) -> str:
        """running, stopped or frozen: a container vnode's as its runtime reports it (or
        what the runtime says instead: absent, created, unknown), else as recorded."""
        if vnode.container is None:
            return self.runs.get(vnode.name, RUNNING)
        state = str(self.containers.get(vnode.container, {}).get("state", "unknown"))
        return {"running": RUNNING, "paused": FROZEN, "stopped": STOPPED}.get(state, state)

    def iface(self, vnode: VnodePlan, name: str) -> Viface | None:
        """The viface `name` of `vnode` with its current shaping and link state."""
        return next((v for v in self.vifaces.get(vnode.name, ()) if v.ifname == name), None)

    def container(self, vnode: VnodePlan) -> dict[str, Any] | None:
        """A container vnode's image, limits and runtime state; None for a netns-only one."""
        if vnode.container is None:
            return None
        return {
            "name": vnode.container,
            "image": vnode.image,
            "cpus": list(vnode.cpus),
            "share": vnode.share,
            "memory": vnode.memory,
            "ssh": vnode.ssh,
            **self.containers.get(vnode.container, {"state": "unknown"}),
        }

    def to_json(self) -> dict[str, Any]:
        """Each vnetwork's mode and why, each vnode's pnode, netns and addresses, and
        each pnode's status (`omnibed emulate status --json`)."""
        return {
            "reservation": self.reservation,
            "networks": [
                {
                    "name": n.name,
                    "cidr": n.cidr,
                    "mode": n.mode,
                    "reason": n.reason,
                    "mtu": n.mtu,
                    "vni": n.vni,
                    "port": n.port,
                    "nics": n.nics,
                    "unreachable_expected": n.unreachable_expected,
                }
                for n in self.networks
            ],
            "vnodes": [
                {
                    "name": v.name,
                    "pnode": v.pnode,
                    "netns": v.netns,
                    "ifaces": {
                        i.name: {"address": i.address, "mac": i.mac, **self._live(v, i.name)}
                        for i in v.ifaces
                    },
                    "container": self.container(v),
                    "run": self.run(v),
                    "forward": v.name in self.forwarding,
                    "routes": [{"to": r.to, "via": r.via} for r in self.routes.get(v.name, ())],
                }
                for v in self.vnodes
            ],
            "pnodes": {pnode: status.to_json() for pnode, status in self.pnodes.items()},
        }

    def _live(self, vnode: VnodePlan, name: str) -> dict[str, Any]:
        """An iface's link state and shaping per direction, for the JSON report."""
        viface = self.iface(vnode, name)
        if viface is None:
            return {}
        return {
            "link": "up" if viface.up else "down",
            "output": asdict(viface.output),
            "input": asdict(viface.input),
        }


@dataclass(frozen=True)
class Reachability:
    """Whether, in `network`, vnode `source` reached vnode `target` on another pnode."""

    network: str
    source: str
    target: str
    ok: bool


class Emulator:
    """The virtual platform of one reservation (`Omnibed.access(name)` gives `access`)."""

    def __init__(self, access: ReservationAccess, agents: Agents | None = None) -> None:
        """`agents`: where commands get their agents (default: each starts its own)."""
        self.access = access
        self.agents: Agents = agents or DirectAgents()
        self.reservation = access.name
        self.plan_path = access.state_dir / PLAN_FILE
        self.folded_path = access.state_dir / FOLDED_FILE
        # seconds from the start of the last `up` until its container vnodes ran and every
        # `ssh: true` one answered SSH; None without container vnodes
        self.reachable_after: float | None = None
        # the timeline of the platform file, once `up` started it
        self.scheduled: timeline.Schedule | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def up(
        self,
        platform: Platform,
        *,
        force: bool = False,
        install: bool = False,
        progress: Progress = no_progress,
        count: PnodeCount = no_count,
    ) -> Plan:
        """Build `platform`; on any failure nothing is left on any pnode. `install`: the
        pnodes of container vnodes that lack their runtime (crun or runc) get it from their
        package manager before the preflight (which otherwise names them). `progress` gets
        each step, `count` each pnode's image bytes uploaded and vnodes built."""
        from . import vnode_ssh  # paramiko: only for what logs in

        started = time.monotonic()
        self.reachable_after = None
        if self.plan_path.exists():
            raise UsageError(
                f"{self.reservation} already runs a platform: "
                f"`omnibed emulate down {self.reservation}` first"
            )
        images = resolve(platform)  # before any agent starts: bad images are bad input
        progress("reading the pnodes' NICs")
        nodes = self.access.nodes()
        check_fits(platform, [node.id for node in nodes])  # before any agent starts
        nics = self.access.nics(nodes)
        facts = [PnodeFacts.from_node(node, nics[node.id]) for node in nodes]
        progress("starting the agent on every pnode")
        with self._sessions([node.id for node in nodes], nodes) as sessions:
            progress("probing whether the underlay passes foreign MACs")
            probe = _probe(sessions, facts)
            containers = self._containers(sessions, images) if images else None
            the_plan = plan(
                platform, facts, self.reservation, probe=probe, force=force, containers=containers
            )
            timeline.resolve(platform.events, the_plan, time.time() + timeline.START_LEAD)
            if install and containers is not None:
                progress("installing the container runtime where it is missing")
                _install_runtime(sessions, the_plan)
            progress("preflight on every pnode")
            _preflight(sessions, the_plan)
            self._save(the_plan)
            known_hosts = self.access.known_hosts
            vnode_ssh.record_host_keys(known_hosts, the_plan)
            try:
                self._build(sessions, the_plan, images, progress, count)
                if platform.events:
                    progress("starting the platform's timeline")
                    self._note_timeline()
                    self.scheduled = timeline.start(sessions, the_plan, platform.events)
            except BaseException as failure:
                rollback = _errors(_on_all(sessions, ops.TEARDOWN, the_plan))
                if not rollback:
                    self.plan_path.unlink()
                    self.folded_path.unlink(missing_ok=True)
                    vnode_ssh.forget_host_keys(known_hosts)
                elif isinstance(failure, ApplyError):
                    raise ApplyError(failure.failures, rolled_back=False) from None
                raise
        if any(v.container for v in the_plan.vnodes):
            self.reachable_after = time.monotonic() - started
        return the_plan

    def _containers(
        self, sessions: Mapping[str, AgentConnection], images: Mapping[str, ImageRef]
    ) -> Containers:
        """What the planner needs for container vnodes, from each pnode's agent."""
        from . import vnode_ssh  # paramiko: only for what logs in

        hello = for_each(sessions, lambda _, session: session.call(ops.HELLO))
        problems = {p: [str(r)] for p, r in hello.items() if isinstance(r, BaseException)}
        if problems:
            raise PreflightError(problems)
        return Containers(
            images=images,
            cores={pnode: int(reply["cpus"]) for pnode, reply in hello.items()},  # type: ignore[index]
            prefix=container_prefix(self.access.reservation_id),
            authorized_keys=self.access.public_key,
            new_host_key=vnode_ssh.new_host_key,
        )

    def _build(
        self,
        sessions: Mapping[str, AgentConnection],
        the_plan: Plan,
        images: Mapping[str, ImageRef],
        progress: Progress,
        count: PnodeCount,
    ) -> None:
        """Network, images, containers, SSH: raises (ApplyError, ...) at the first failure."""
        from . import vnode_ssh  # paramiko: only for what logs in

        boxes = {s.pnode: s for s in the_plan.states if s.containers}
        vnodes = {s.pnode: sum(v.pnode == s.pnode for v in the_plan.vnodes)
                  for s in the_plan.states}  # fmt: skip

        def built(pnode: str) -> None:
            count(pnode, "vnodes built", vnodes[pnode], vnodes[pnode])

        if boxes:
            progress("uploading images to the pnodes that lack them")
            by_sha = {ref.sha256: ref for ref in images.values()}
            endpoints = self.access.root_endpoints()
            known_hosts = self.access.known_hosts
            failures = _errors(
                for_each(
                    boxes,
                    lambda p, state: _upload(
                        sessions[p], endpoints[p], known_hosts,
                        [by_sha[sha] for sha in sorted({c.sha256 for c in state.containers})],
                        lambda step, done, total: count(p, step, done, total),
                    ),
                )
            )  # fmt: skip
            if failures:
                raise ApplyError(failures, rolled_back=True)
        progress(f"building {len(the_plan.vnodes)} vnodes")
        for pnode, total in vnodes.items():
            count(pnode, "vnodes built", 0, total)

        def apply(pnode: str, session: AgentConnection) -> None:
            session.call(ops.APPLY, state=the_plan.state(pnode).to_json())
            if pnode not in boxes:  # container vnodes are built once they run
                built(pnode)

        failures = _errors(for_each(sessions, apply))
        if failures:
            raise ApplyError(failures, rolled_back=True)
        if not boxes:
            return
        with_ssh = [v for v in the_plan.vnodes if v.ssh]
        progress(
            "starting the container vnodes (unpacking each image once per pnode)"
            + (f", logging in to the {len(with_ssh)} with sshd as they start" if with_ssh else "")
        )
        with ThreadPoolExecutor(max_workers=1) as logins:
            stop = threading.Event()
            reachable = None if not with_ssh else logins.submit(
                vnode_ssh.wait_reachable,
                self.access.root_endpoints(),
                with_ssh,
                self.access.known_hosts,
                str(self.access.key_file),
                stop=stop,
            )  # fmt: skip
            def start(pnode: str, session: AgentConnection) -> None:
                session.call(ops.CONTAINERS_START, state=boxes[pnode].to_json())
                built(pnode)

            failures = _errors(for_each({p: sessions[p] for p in boxes}, start))
            if failures:
                stop.set()
                raise ApplyError(failures, rolled_back=True)
            if reachable:
                progress(f"waiting until {len(with_ssh)} vnodes answer SSH")
                reachable.result()

    def down(self) -> list[str]:
        """Remove the platform from every pnode; idempotent; the vnodes that were removed."""
        from . import vnode_ssh  # paramiko: only for what logs in

        the_plan = self.load()
        if the_plan is None:
            return []
        with self._sessions(the_plan.pnodes) as sessions:
            failures = _errors(_on_all(sessions, ops.TEARDOWN, the_plan))
        if failures:
            raise EmulatorError(
                "teardown failed, run `omnibed emulate down` again:\n  "
                + "\n  ".join(f"{p}: {why}" for p, why in failures.items())
            )
        self.plan_path.unlink()
        self.folded_path.unlink(missing_ok=True)
        vnode_ssh.forget_host_keys(self.access.known_hosts)
        return [v.name for v in the_plan.vnodes]

    def load(self) -> Plan | None:
        if not self.plan_path.exists():
            return None
        return Plan.from_json(json.loads(self.plan_path.read_text()))

    def _save(self, the_plan: Plan) -> None:
        """Write the plan 0600, atomically: it holds the vnodes' SSH host keys."""
        write_json(self.plan_path, the_plan.to_json())

    def _note_timeline(self) -> None:
        """Record that the platform has timelines whose changes are to be folded in."""
        if not self.folded_path.exists():
            write_json(self.folded_path, {"folded": []})

    def _asked(self, the_plan: Plan, pnodes: Sequence[str]) -> list[str]:
        """The pnodes a command needs agents on: `pnodes`, or every pnode of the platform
        when it has timelines whose changes may have to be folded in."""
        return list(the_plan.pnodes) if self.folded_path.exists() else list(pnodes)

    def _folded(
        self,
        the_plan: Plan,
        sessions: Mapping[str, AgentConnection],
        reported: Mapping[str, list[dict[str, Any]]] | None = None,
    ) -> Plan:
        """`the_plan` with what the platform's timelines changed since it was saved
        (shaping, link states) folded in, each change once, saved when that changed it.
        `sessions`: every pnode's; `reported`: their timelines if already asked (a pnode
        that cannot be asked is left for a later command)."""
        if not self.folded_path.exists():
            return the_plan
        if reported is None:
            reported = timeline.reports(sessions, the_plan.instance, strict=False)
        folded = set(json.loads(self.folded_path.read_text())["folded"])
        before = len(folded)
        the_plan = timeline.fold(the_plan, reported, folded)
        if len(folded) != before:
            self._save(the_plan)
            write_json(self.folded_path, {"folded": sorted(folded)})
        return the_plan

    def _require(self) -> Plan:
        the_plan = self.load()
        if the_plan is None:
            raise UsageError(
                f"{self.reservation} runs no platform: "
                f"`omnibed emulate up {self.reservation} PLATFORM.yaml` first"
            )
        return the_plan

    # -- inspection -------------------------------------------------------------------------

    def status(self) -> EmulationStatus:
        """Vnodes, their pnode and addresses, the mode of every vnetwork with its reason,
        each container vnode's state, and what each pnode has of the platform."""
        the_plan = self._require()
        with self._sessions(the_plan.pnodes) as sessions:
            the_plan = self._folded(the_plan, sessions)
            present = _on_all(sessions, ops.STATUS, the_plan)
            boxed = {p: sessions[p] for p in sessions if the_plan.state(p).containers}
            running = for_each(
                boxed,
                lambda p, s: s.call(ops.CONTAINERS_STATUS, state=the_plan.state(p).to_json()),
            )
        containers: dict[str, dict[str, Any]] = {}
        for reply in running.values():
            if not isinstance(reply, BaseException):
                containers.update(reply["containers"])
        pnodes = {}
        for pnode, result in present.items():
            if isinstance(result, BaseException):
                pnodes[pnode] = PnodeStatus(error=str(result))
                continue
            listing = running.get(pnode)
            pnodes[pnode] = PnodeStatus(
                complete=bool(result.get("complete")),
                absent=bool(result.get("absent")),
                containers_error=str(listing) if isinstance(listing, BaseException) else None,
            )
        return EmulationStatus(
            reservation=self.reservation,
            networks=the_plan.networks,
            vnodes=the_plan.vnodes,
            pnodes=pnodes,
            containers=containers,
            vifaces=_vifaces_by_vnode(the_plan),
            runs={v: run for state in the_plan.states for v, run in state.run.items()},
            routes=_routes_by_vnode(the_plan),
            forwarding=frozenset(
                v.name for v in the_plan.vnodes if v.netns in the_plan.state(v.pnode).forwarding
            ),
        )

    def exec(
        self, vnodes: list[str] | None, argv: list[str], *, timeout: float | None = None
    ) -> dict[str, VnodeResult]:
        """Run `argv` in each vnode (all when None), in parallel across pnodes."""
        the_plan = self._require()
        targets = [the_plan.vnode(name) for name in vnodes] if vnodes else list(the_plan.vnodes)
        results = self._run([(vnode, argv) for vnode in targets], timeout)
        return {vnode.name: result for vnode, result in zip(targets, results, strict=True)}

    def ssh_command(self, vnode: str, command: str | None = None) -> list[str]:
        """The OpenSSH argv of a root login to container vnode `vnode` through its pnode,
        with its recorded host key; `command` (a shell string) runs instead of a shell."""
        from . import vnode_ssh  # paramiko: only for what logs in

        the_plan = self._require()
        target = the_plan.vnode(vnode)
        if not target.ssh:
            raise UsageError(
                f"vnode {vnode} runs no sshd (give it ssh: true and an image with "
                f"openssh-server): `omnibed emulate exec {self.reservation} {vnode} -- CMD`"
            )
        argv = vnode_ssh.command_line(
            self.access.root_endpoint(target.pnode),
            target,
            self.access.known_hosts,
            str(self.access.key_file),
        )
        return argv if command is None else [*argv, command]

    def copy(self, source: str, target: str) -> str:
        """Copy a file between here and an `ssh: true` vnode over SFTP through its pnode; one
        of `source` and `target` is `VNODE:PATH`. Returns the vnode's name."""
        from omnibed.core import ssh  # paramiko: only for what logs in

        from . import vnode_ssh

        the_plan = self._require()
        remote = [side for side in (source, target) if _vnode_side(side)]
        if len(remote) != 1:
            raise UsageError(
                f"give exactly one side as VNODE:PATH (e.g. vnode-0:/root/data), not "
                f"{source!r} and {target!r}"
            )
        name, path = remote[0].split(":", 1)
        vnode = the_plan.vnode(name)
        if not vnode.ssh:
            raise UsageError(f"vnode {name} runs no sshd: copying needs ssh: true")
        local = target if remote[0] == source else source
        if remote[0] == target and not Path(local).is_file():
            raise UsageError(f"no file {local} to copy")
        known_hosts = self.access.known_hosts
        pnode = ssh.connect(self.access.root_endpoint(vnode.pnode), known_hosts)
        try:
            key = str(self.access.key_file)
            client = vnode_ssh.connect(pnode, vnode, known_hosts, key)
            try:
                with client.open_sftp() as sftp:
                    if remote[0] == source:
                        sftp.get(path, local)
                    else:
                        sftp.put(local, path)
            except OSError as exc:
                raise EmulatorError(f"copying {source} to {target} failed: {exc}") from exc
            finally:
                client.close()
        finally:
            pnode.close()
        return name

    def connectivity(self) -> list[Reachability]:
        """Whether, in every vnetwork, one vnode per pnode reaches one vnode on the next
        pnode, in a ring: each pnode sends once and is reached once, and the pnodes check
        at the same time, so the check grows with neither the number of pnodes nor its
        square."""
        the_plan = self._require()
        probes = []
        for network in the_plan.networks:
            firsts: dict[str, tuple[VnodePlan, str]] = {}
            for vnode in the_plan.vnodes:
                for iface in vnode.ifaces:
                    if iface.network == network.name and vnode.pnode not in firsts:
                        firsts[vnode.pnode] = (vnode, iface.address.split("/")[0])
            ring = list(firsts.values())
            if len(ring) < 2:
                continue
            for index, (src, _) in enumerate(ring):
                dst, address = ring[(index + 1) % len(ring)]
                probes.append((network.name, src, dst, address))
        reach = ["python3", "-I", "-S", "-c", _REACH]  # -S: no site, a quarter of the start
        results = self._run(  # the pnode's python3 in the vnode's netns: images may lack it
            [(src, [*reach, address]) for _, src, _, address in probes], inside=False
        )
        return [
            Reachability(network, src.name, dst.name, ok=result.exit_status == 0)
            for (network, src, dst, _), result in zip(probes, results, strict=True)
        ]

    def _run(
        self,
        jobs: list[tuple[VnodePlan, list[str]]],
        timeout: float | None = None,
        *,
        inside: bool = True,
    ) -> list[VnodeResult]:
        """Each job's argv in its vnode (inside its container if it has one and `inside`,
        else in its network namespace), in order per pnode and in parallel across pnodes,
        over one agent per pnode; a pnode that fails gives exit status 255 to its jobs."""
        if not jobs:
            return []
        by_pnode: dict[str, list[int]] = {}
        for index, (vnode, _) in enumerate(jobs):
            by_pnode.setdefault(vnode.pnode, []).append(index)
        with self._sessions(list(by_pnode)) as sessions:

            def run_there(pnode: str, session: AgentConnection) -> list[VnodeResult]:
                results = []
                for index in by_pnode[pnode]:
                    vnode, argv = jobs[index]
                    if inside and vnode.container:
                        reply = session.call(
                            ops.CONTAINERS_EXEC, name=vnode.container, argv=argv, timeout=timeout
                        )
                    else:
                        reply = session.call(
                            ops.EXEC, netns=vnode.netns, argv=argv, timeout=timeout
                        )
                    results.append(VnodeResult(
                        vnode.name,
                        reply["exit_status"],
                        base64.b64decode(reply["stdout_base64"]),
                        base64.b64decode(reply["stderr_base64"]),
                    ))  # fmt: skip
                return results

            outcome = for_each(sessions, run_there)
        results: dict[int, VnodeResult] = {}
        for pnode, indexes in by_pnode.items():
            result = outcome[pnode]
            for k, index in enumerate(indexes):
                name = jobs[index][0].name
                if isinstance(result, BaseException):
                    results[index] = VnodeResult(name, 255, b"", f"{result}\n".encode())
                else:
                    results[index] = result[k]
        return [results[index] for index in range(len(jobs))]

    # -- live changes ------------------------------------------------------------------------

    def set(self, target: str, properties: Mapping[str, object]) -> Shaping:
        """Change the shaping of one direction of one viface in place; `target` is
        VNODE.IFACE.output or VNODE.IFACE.input, `properties` maps rate, delay, jitter or
        loss to a value in the platform file's units, or None to lift it. Its other
        properties stay; nothing else changes. The saved plan records the new shaping,
        which is returned. Bad input is a UsageError before anything changes; a kernel
        without what the shaping needs (sch_netem) a PreflightError, nothing changed."""
        the_plan = self._require()
        where, _, direction = target.rpartition(".")
        if direction not in ("output", "input"):
            raise UsageError(
                f"{target!r} does not end in .output or .input: write VNODE.IFACE.output "
                "(vnode -> network) or VNODE.IFACE.input (network -> vnode)"
            )
        viface = _viface(the_plan, where)
        _shaping(getattr(viface, direction), properties)  # bad input before any SSH
        pnode = the_plan.vnode(viface.vnode).pnode
        with self._sessions(self._asked(the_plan, [pnode])) as sessions:
            the_plan = self._folded(the_plan, sessions)
            viface = _viface(the_plan, where)
            shaping = _shaping(getattr(viface, direction), properties)
            if direction == "output":
                changed = replace(viface, output=shaping)
            else:
                changed = replace(viface, input=shaping)
            reply = sessions[pnode].call(ops.SHAPE, viface=asdict(changed), direction=direction)
        if reply["problems"]:
            raise PreflightError({pnode: reply["problems"]})
        self._save(_with_viface(the_plan, viface, changed))
        return shaping

    def link(self, target: str, up: bool) -> None:
        """Set the interface VNODE.IFACE (`target`) of a vnode up or down, in place."""
        the_plan = self._require()
        viface = _viface(the_plan, target)
        vnode = the_plan.vnode(viface.vnode)
        run = the_plan.state(vnode.pnode).run.get(vnode.name, RUNNING)
        if run == STOPPED or (run == FROZEN and vnode.container is None):
            again = "start" if run == STOPPED else "thaw"
            raise UsageError(
                f"vnode {vnode.name} is {run}, its interfaces down: "
                f"`omnibed emulate {again} {self.reservation} {vnode.name}` first"
            )
        with self._sessions(self._asked(the_plan, [vnode.pnode])) as sessions:
            the_plan = self._folded(the_plan, sessions)
            viface = _viface(the_plan, target)
            sessions[vnode.pnode].call(ops.LINK, netns=viface.netns, ifname=viface.ifname, up=up)
        self._save(_with_viface(the_plan, viface, replace(viface, up=up)))

    # -- run state ---------------------------------------------------------------------------

    def stop(self, vnodes: Sequence[str]) -> dict[str, str]:
        """Stop `vnodes` in place: every interface down and, for a container vnode, every
        process killed. {vnode: run state} of those named; the others untouched."""
        return self._change_run("stop", vnodes)

    def start(self, vnodes: Sequence[str]) -> dict[str, str]:
        """Start stopped `vnodes` again: interfaces back to their recorded link state, a
        container's init run anew (its files kept)."""
        return self._change_run("start", vnodes)

    def freeze(self, vnodes: Sequence[str]) -> dict[str, str]:
        """Freeze `vnodes`: a container's processes frozen (freezer cgroup), a
        namespace-only vnode's interfaces down."""
        return self._change_run("freeze", vnodes)

    def thaw(self, vnodes: Sequence[str]) -> dict[str, str]:
        """Thaw frozen `vnodes`: as they were before `freeze`."""
        return self._change_run("thaw", vnodes)

    def _change_run(self, action: str, names: Sequence[str]) -> dict[str, str]:
        """Apply `action` to each vnode of `names` on its pnode's agent (pnodes in parallel;
        the agent does only what is missing: `start` also restarts a container vnode that
        ended by itself); the saved plan records each change made. Bad input (unknown vnode,
        a move the vnode's state forbids) is a UsageError before anything changes; a
        failure on a pnode an EmulatorError naming it, the changes made before it recorded."""
        the_plan = self._require()
        if not names:
            raise UsageError(f"name at least one vnode to {action}")
        targets = [the_plan.vnode(name) for name in dict.fromkeys(names)]
        runs = {v.name: the_plan.state(v.pnode).run.get(v.name, RUNNING) for v in targets}
        for vnode in targets:
            first = _REFUSED.get((action, runs[vnode.name]))
            if first is not None:
                raise UsageError(
                    f"vnode {vnode.name} is {runs[vnode.name]}: "
                    f"`omnibed emulate {first} {self.reservation} {vnode.name}` first"
                )
        by_pnode: dict[str, list[VnodePlan]] = {}
        for vnode in targets:
            by_pnode.setdefault(vnode.pnode, []).append(vnode)
        done: dict[str, str] = {}
        failures: dict[str, str] = {}
        with self._sessions(self._asked(the_plan, list(by_pnode))) as sessions:
            reported = None
            if self.folded_path.exists():  # a timeline was scheduled: it may be running
                reported = timeline.reports(sessions, the_plan.instance, strict=False)
            the_plan = self._folded(the_plan, sessions, reported)
            if reported and action in ("stop", "freeze"):
                self._refuse_brought_up(action, targets, the_plan, reported)

            def change_there(pnode: str, session: AgentConnection) -> None:
                state = the_plan.state(pnode)
                for vnode in by_pnode[pnode]:
                    box = next((c for c in state.containers if c.name == vnode.container), None)
                    try:
                        reply = session.call(
                            ops.VNODE_RUN,
                            action=action,
                            container=None if box is None else asdict(box),
                            vifaces=[asdict(v) for v in state.vifaces if v.vnode == vnode.name],
                        )
                    except EmulatorError as exc:
                        failures[pnode] = f"{vnode.name}: {exc}"
                        return
                    done[vnode.name] = reply["run"]

            changing = {p: sessions[p] for p in by_pnode}
            for pnode, outcome in for_each(changing, change_there).items():
                if isinstance(outcome, BaseException):
                    failures.setdefault(pnode, str(outcome))
        self._save(_with_runs(the_plan, done))
        if failures:
            raise EmulatorError(
                f"{action} failed: "
                + "; ".join(f"{pnode}: {why}" for pnode, why in failures.items())
                + (f" ({', '.join(done)} did {action})" if done else " (nothing changed)")
            )
        return {v.name: done.get(v.name, runs[v.name]) for v in targets}

    def _refuse_brought_up(
        self,
        action: str,
        targets: Sequence[VnodePlan],
        the_plan: Plan,
        reported: Mapping[str, list[dict[str, Any]]],
    ) -> None:
        """UsageError when a running timeline has yet to bring up an interface that `action`
        takes down: a stopped vnode's, or a frozen namespace-only one's."""
        downed = {
            (v.netns, v.ifname): f"{v.vnode}.{v.ifname}"
            for vnode in targets
            if action == "stop" or vnode.container is None
            for v in the_plan.state(vnode.pnode).vifaces
            if v.vnode == vnode.name
        }
        for planned, netns, ifname in timeline.pending_link_ups(reported):
            if (netns, ifname) in downed:
                when = datetime.fromtimestamp(planned, UTC).isoformat(timespec="seconds")
                raise UsageError(
                    f"the platform's timeline brings {downed[netns, ifname]} up at {when}: "
                    f"`omnibed emulate events {self.reservation} --cancel` first, or {action} "
                    "it once that event ran (nothing changed)"
                )

    # -- timelines (emulator.timeline) -----------------------------------------------------

    def schedule(
        self, events: Sequence[timeline.Event], *, start: float | None = None
    ) -> timeline.Schedule:
        """Hand `events` to the pnodes' agents, which run them from their own clocks; relative
        times count from `start` (epoch seconds; default START_LEAD seconds from now). Every
        event is checked first: a PlatformError naming the first bad one, nothing scheduled."""
        the_plan = self._require()
        first = time.time() + timeline.START_LEAD if start is None else start
        timeline.resolve(events, the_plan, first)  # bad input before any SSH
        with self._sessions(the_plan.pnodes) as sessions:
            the_plan = self._folded(the_plan, sessions)  # shaping builds on what ran
            self._note_timeline()
            return timeline.start(sessions, the_plan, events, start)

    def events(self) -> list[timeline.Record]:
        """Every action of the platform's timelines: planned and actual time, outcome."""
        the_plan = self._require()
        with self._sessions(the_plan.pnodes) as sessions:
            reported = timeline.reports(sessions, the_plan.instance)
            self._folded(the_plan, sessions, reported)
        return timeline.records_of(reported)

    def cancel_events(self) -> int:
        """Stop the rest of the platform's timelines; how many pnode runners were stopped."""
        the_plan = self._require()
        with self._sessions(the_plan.pnodes) as sessions:
            return timeline.cancel(sessions, the_plan.instance)

    # -- sessions ---------------------------------------------------------------------------

    def _sessions(
        self, pnodes: Sequence[str], nodes: Sequence[Node] | None = None
    ) -> AbstractContextManager[dict[str, AgentConnection]]:
        """One agent per pnode of `pnodes` (`nodes`: the reservation's, if already listed)."""

        def endpoints_of(wanted: Sequence[str]) -> Mapping[str, SSHEndpoint]:
            listed = self.access.nodes() if nodes is None else nodes
            return self.access.root_endpoints([node for node in listed if node.id in wanted])

        scope = f"{self.access.state_dir}\0{self.access.reservation_id}"
        return self.agents.lease(scope, pnodes, endpoints_of, self.access.known_hosts)


def _viface(the_plan: Plan, where: str) -> Viface:
    """The viface VNODE.IFACE names (vnode and iface names may hold dots); UsageError
    naming what exists when there is none."""
    for state in the_plan.states:
        for viface in state.vifaces:
            if f"{viface.vnode}.{viface.ifname}" == where:
                return viface
    for vnode in the_plan.vnodes:
        if where.startswith(f"{vnode.name}."):
            ifaces = ", ".join(i.name for i in vnode.ifaces) or "none"
            raise UsageError(
                f"vnode {vnode.name} has no iface {where[len(vnode.name) + 1 :]!r}: "
                f"its ifaces are {ifaces}"
            )
    raise UsageError(
        f"{where!r} names no vnode's iface in emulation {the_plan.instance}: write "
        f"VNODE.IFACE as `omnibed emulate status {the_plan.instance}` lists them"
    )


# property of the platform file -> (field of Shaping, parser of its value)
SHAPING_FIELDS: dict[str, tuple[str, Callable[[object], float]]] = {
    "rate": ("rate_bps", parse_rate),
    "delay": ("delay_ms", lambda value: parse_time(value, "delay")),
    "jitter": ("jitter_ms", lambda value: parse_time(value, "jitter")),
    "loss": ("loss_pct", parse_loss),
}


def _shaping(current: Shaping, properties: Mapping[str, object]) -> Shaping:
    """`current` with `properties` (platform-file names and units; None lifts one) applied;
    UsageError (PlatformError) naming the first bad one."""
    if not properties:
        raise UsageError(f"give at least one property to set: {', '.join(SHAPING_FIELDS)}")
    changes: dict[str, Any] = {}
    for key, value in properties.items():
        if key not in SHAPING_FIELDS:
            raise UsageError(
                f"unknown property {key!r}: the shaping properties are {', '.join(SHAPING_FIELDS)}"
            )
        field, parse = SHAPING_FIELDS[key]
        changes[field] = None if value is None else parse(value)
    return replace(current, **changes)


# (action, run state) -> the action the vnode needs first
_REFUSED = {("start", FROZEN): "thaw", ("freeze", STOPPED): "start", ("thaw", STOPPED): "start"}


def _with_runs(the_plan: Plan, runs: Mapping[str, str]) -> Plan:
    """`the_plan` with vnodes `runs` recorded in those run states."""
    states = []
    for state in the_plan.states:
        run = dict(state.run)
        for vnode in the_plan.vnodes:
            if vnode.pnode == state.pnode and vnode.name in runs:
                run.pop(vnode.name, None)
                if runs[vnode.name] != RUNNING:
                    run[vnode.name] = runs[vnode.name]
        states.append(replace(state, run=run))
    return replace(the_plan, states=tuple(states))


def _routes_by_vnode(the_plan: Plan) -> dict[str, tuple[Route, ...]]:
    found: dict[str, list[Route]] = {}
    for state in the_plan.states:
        for route in state.routes:
            found.setdefault(route.vnode, []).append(route)
    return {vnode: tuple(routes) for vnode, routes in found.items()}


def _vifaces_by_vnode(the_plan: Plan) -> dict[str, tuple[Viface, ...]]:
    found: dict[str, list[Viface]] = {}
    for state in the_plan.states:
        for viface in state.vifaces:
            found.setdefault(viface.vnode, []).append(viface)
    return {vnode: tuple(vifaces) for vnode, vifaces in found.items()}


def _with_viface(the_plan: Plan, old: Viface, new: Viface) -> Plan:
    """`the_plan` with viface `old` replaced by `new` in its pnode's state."""
    states = tuple(
        replace(state, vifaces=tuple(new if v == old else v for v in state.vifaces))
        for state in the_plan.states
    )
    return replace(the_plan, states=states)


def _on_all(sessions: Mapping[str, AgentConnection], op: str, the_plan: Plan) -> dict:
    """Send `op` with each pnode's own state to every pnode."""
    return for_each(sessions, lambda p, s: s.call(op, state=the_plan.state(p).to_json()))


def _errors(outcome: Mapping[str, Any]) -> dict[str, str]:
    return {p: str(r) for p, r in outcome.items() if isinstance(r, BaseException)}


def _preflight(sessions: Mapping[str, AgentConnection], the_plan: Plan) -> None:
    def check(pnode: str, session: AgentConnection) -> list[str]:
        state = the_plan.state(pnode).to_json()
        problems = session.call(ops.PREFLIGHT, state=state)["problems"]
        if the_plan.state(pnode).containers:
            reply = session.call(ops.CONTAINERS_PREFLIGHT, state=state, placed=False)
            problems += reply["problems"]
        return problems

    outcome = for_each(sessions, check)
    missing = {
        pnode: [str(result)] if isinstance(result, BaseException) else result
        for pnode, result in outcome.items()
    }
    missing = {pnode: problems for pnode, problems in missing.items() if problems}
    if missing:
        raise PreflightError(missing)


def _install_runtime(sessions: Mapping[str, AgentConnection], the_plan: Plan) -> None:
    """The container runtime (crun or runc) from the package manager of every pnode of
    container vnodes that lacks it; PreflightError names the pnodes where that failed."""
    boxed = {p: s for p, s in sessions.items() if the_plan.state(p).containers}
    outcome = for_each(boxed, lambda _, session: session.call(ops.CONTAINERS_INSTALL))
    failed = {
        pnode: [str(result)] if isinstance(result, BaseException) else result["problems"]
        for pnode, result in outcome.items()
    }
    failed = {pnode: problems for pnode, problems in failed.items() if problems}
    if failed:
        raise PreflightError(failed)


def _vnode_side(text: str) -> bool:
    """Whether `text` is `VNODE:PATH` (a local path with a ':' is written ./a:b)."""
    head, colon, _ = text.partition(":")
    return bool(colon) and "/" not in head and head != ""


def _in_mib(count: Callable[[str, int, int], None], step: str, done: int, size: int) -> None:
    """`count` of `step` with bytes `done` out of `size` in MiB (the total rounded up)."""
    count(step, done >> 20, -(-size >> 20))


def _upload(
    session: AgentConnection,
    endpoint: SSHEndpoint,
    known_hosts: Path,
    refs: Sequence[ImageRef],
    count: Callable[[str, int, int], None],
) -> list[str]:
    """Put each image of `refs` the pnode lacks into its root-only image directory, over
    SFTP as root (a partial name, renamed once whole; the agent checks its sha256 before
    unpacking); the names of those uploaded. `count(step, MiB sent, MiB in all)` as it goes."""
    from omnibed.core import ssh  # paramiko: only for what logs in

    sent = []
    for ref in refs:
        reply = session.call(ops.CONTAINERS_IMAGE, sha256=ref.sha256)
        if reply["present"]:
            continue
        partial = f"{reply['path']}.partial-{secrets.token_hex(4)}"
        with ssh.open_sftp(endpoint, known_hosts) as sftp:
            try:
                step = f"MiB of image {ref.name} uploaded"
                sftp.put(str(ref.path), partial, callback=functools.partial(_in_mib, count, step))
                sftp.posix_rename(partial, reply["path"])
            except BaseException:
                try:
                    sftp.remove(partial)
                except OSError:
                    pass
                raise
        sent.append(ref.name)
    return sent


def _probe(
    sessions: Mapping[str, AgentConnection], facts: list[PnodeFacts]
) -> dict[str, ProbeResult]:
    """Each pnode with a candidate NIC listens while the next one in a ring sends it the two
    frames: every pnode listens, then every one sends, then every one collects, each step on
    all pnodes at once, so the probe takes one collect timeout at most whatever their number."""
    targets = probe_targets(facts)
    pnodes = [f.id for f in facts if f.id in targets]
    if len(pnodes) < 2:
        return {}
    nonces = {pnode: secrets.token_hex(8) for pnode in pnodes}
    receiver_of = {pnodes[(i + 1) % len(pnodes)]: pnode for i, pnode in enumerate(pnodes)}
    probed = {pnode: sessions[pnode] for pnode in pnodes}
    macs = _all_or_raise(for_each(probed, lambda p, s: s.call(
        ops.PROBE_LISTEN, nic=targets[p], nonce=nonces[p])["mac"]))
    _all_or_raise(for_each(probed, lambda p, s: s.call(
        ops.PROBE_SEND, nic=targets[p], peer_mac=macs[receiver_of[p]],
        nonce=nonces[receiver_of[p]])))
    arrived = _all_or_raise(for_each(probed, lambda p, s: s.call(
        ops.PROBE_COLLECT, nonce=nonces[p], timeout=PROBE_TIMEOUT)["arrived"]))  # fmt: skip
    return {
        pnode: ProbeResult(
            foreign_src_ok="src" in arrived[pnode],
            foreign_dst_ok="dst" in arrived[pnode],
            nic=targets[pnode],
        )
        for pnode in pnodes
    }


def _all_or_raise(outcome: Mapping[str, T | BaseException]) -> dict[str, T]:
    """`outcome` of `for_each` if nothing failed; else the first failure is raised."""
    for result in outcome.values():
        if isinstance(result, BaseException):
            raise result
    return dict(outcome)  # type: ignore[arg-type]
