"""The coordinator: builds, inspects and removes a virtual platform on a reservation's pnodes.

`up` gathers the pnodes' facts from the provider, starts the agent on every pnode over SSH,
probes whether the underlay passes foreign MACs, plans, runs the preflight everywhere
(nothing changed if anything is missing), records the plan, then applies on all pnodes in
parallel; a failure anywhere tears down every pnode and raises ApplyError naming what
failed where. The plan is kept in the reservation's directory so `status`, `exec` and `down`
work from another process, and so `omnibed release` can tear the platform down first.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omnibed.core.errors import ApplyError, EmulatorError, PreflightError, UsageError
from omnibed.core.provider import Progress, no_progress
from omnibed.core.reservation_access import ReservationAccess
from omnibed.core.types import Node, SSHEndpoint

from .agent import ops
from .bundle import build
from .model import Platform
from .modes import PnodeFacts, ProbeResult, probe_targets
from .planner import NetworkPlan, Plan, VnodePlan, check_fits, plan
from .transport import AgentConnection, AgentSession, for_each

PLAN_FILE = "emulation.json"
PROBE_TIMEOUT = 2.0
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
    vnode: str
    exit_status: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class PnodeStatus:
    """What one pnode's agent found of the platform, or why it could not be asked."""

    complete: bool = False
    absent: bool = False
    error: str | None = None

    def problem(self) -> str | None:
        """What is wrong with the platform on this pnode, for a warning; None if nothing."""
        if self.error is not None:
            return self.error
        if self.absent:
            return "its part of the platform is missing: `omnibed emulate down` then `up` again"
        if not self.complete:
            return "its part of the platform is incomplete: `omnibed emulate down` then `up`"
        return None

    def to_json(self) -> dict[str, Any]:
        if self.error is not None:
            return {"error": self.error}
        return {"complete": self.complete, "absent": self.absent}


@dataclass(frozen=True)
class EmulationStatus:
    """The platform of a reservation as planned, and what each pnode has of it."""

    reservation: str
    networks: tuple[NetworkPlan, ...]
    vnodes: tuple[VnodePlan, ...]
    pnodes: Mapping[str, PnodeStatus]

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
                    "ifaces": {i.name: {"address": i.address, "mac": i.mac} for i in v.ifaces},
                }
                for v in self.vnodes
            ],
            "pnodes": {pnode: status.to_json() for pnode, status in self.pnodes.items()},
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

    def __init__(self, access: ReservationAccess) -> None:
        self.access = access
        self.reservation = access.name
        self.plan_path = access.state_dir / PLAN_FILE

    # -- lifecycle ------------------------------------------------------------------------

    def up(
        self, platform: Platform, *, force: bool = False, progress: Progress = no_progress
    ) -> Plan:
        """Build `platform`; on any failure nothing is left on any pnode."""
        if self.plan_path.exists():
            raise UsageError(
                f"{self.reservation} already runs a platform: "
                f"`omnibed emulate down {self.reservation}` first"
            )
        progress("reading the pnodes' NICs")
        nodes = self.access.nodes()
        check_fits(platform, [node.id for node in nodes])  # before any agent starts
        nics = self.access.nics(nodes)
        facts = [PnodeFacts.from_node(node, nics[node.id]) for node in nodes]
        progress("starting the agent on every pnode")
        with self._sessions(nodes) as sessions:
            progress("probing whether the underlay passes foreign MACs")
            probe = _probe(sessions, facts)
            the_plan = plan(platform, facts, self.reservation, probe=probe, force=force)
            progress("preflight on every pnode")
            _preflight(sessions, the_plan)
            self._save(the_plan)
            progress(f"building {len(the_plan.vnodes)} vnodes")
            failures = _errors(_on_all(sessions, ops.APPLY, the_plan))
            if failures:
                rollback = _errors(_on_all(sessions, ops.TEARDOWN, the_plan))
                if not rollback:
                    self.plan_path.unlink()
                raise ApplyError(failures, rolled_back=not rollback)
        return the_plan

    def down(self) -> list[str]:
        """Remove the platform from every pnode; idempotent; the vnodes that were removed."""
        the_plan = self.load()
        if the_plan is None:
            return []
        with self._sessions() as sessions:
            failures = _errors(_on_all(sessions, ops.TEARDOWN, the_plan))
        if failures:
            raise EmulatorError(
                "teardown failed, run `omnibed emulate down` again:\n  "
                + "\n  ".join(f"{p}: {why}" for p, why in failures.items())
            )
        self.plan_path.unlink()
        return [v.name for v in the_plan.vnodes]

    def load(self) -> Plan | None:
        if not self.plan_path.exists():
            return None
        return Plan.from_json(json.loads(self.plan_path.read_text()))

    def _save(self, the_plan: Plan) -> None:
        self.plan_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.plan_path.write_text(json.dumps(the_plan.to_json()))

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
        and what each pnode has of the platform."""
        the_plan = self._require()
        with self._sessions() as sessions:
            present = _on_all(sessions, ops.STATUS, the_plan)
        return EmulationStatus(
            reservation=self.reservation,
            networks=the_plan.networks,
            vnodes=the_plan.vnodes,
            pnodes={
                pnode: (
                    PnodeStatus(error=str(result))
                    if isinstance(result, BaseException)
                    else PnodeStatus(
                        complete=bool(result.get("complete")), absent=bool(result.get("absent"))
                    )
                )
                for pnode, result in present.items()
            },
        )

    def exec(
        self, vnodes: list[str] | None, argv: list[str], *, timeout: float | None = None
    ) -> dict[str, VnodeResult]:
        """Run `argv` in each vnode (all when None), in parallel across pnodes."""
        the_plan = self._require()
        targets = [the_plan.vnode(name) for name in vnodes] if vnodes else list(the_plan.vnodes)
        results = self._run([(vnode, argv) for vnode in targets], timeout)
        return {vnode.name: result for vnode, result in zip(targets, results, strict=True)}

    def connectivity(self) -> list[Reachability]:
        """Ping, in every vnetwork, from one vnode per pnode to one vnode on each other pnode."""
        the_plan = self._require()
        probes = []
        for network in the_plan.networks:
            firsts: dict[str, tuple[VnodePlan, str]] = {}
            for vnode in the_plan.vnodes:
                for iface in vnode.ifaces:
                    if iface.network == network.name and vnode.pnode not in firsts:
                        firsts[vnode.pnode] = (vnode, iface.address.split("/")[0])
            for src_pnode, (src, _) in firsts.items():
                for dst_pnode, (dst, address) in firsts.items():
                    if dst_pnode != src_pnode:
                        probes.append((network.name, src, dst, address))
        results = self._run(
            [(src, ["python3", "-I", "-c", _REACH, address]) for _, src, _, address in probes]
        )
        return [
            Reachability(network, src.name, dst.name, ok=result.exit_status == 0)
            for (network, src, dst, _), result in zip(probes, results, strict=True)
        ]

    def _run(
        self, jobs: list[tuple[VnodePlan, list[str]]], timeout: float | None = None
    ) -> list[VnodeResult]:
        """Each job's argv in its vnode, in order per pnode and in parallel across pnodes, over
        one agent per pnode; a pnode that fails gives exit status 255 to its jobs."""
        if not jobs:
            return []
        by_pnode: dict[str, list[int]] = {}
        for index, (vnode, _) in enumerate(jobs):
            by_pnode.setdefault(vnode.pnode, []).append(index)
        nodes = [node for node in self.access.nodes() if node.id in by_pnode]
        with self._sessions(nodes) as sessions:

            def run_there(pnode: str, session: AgentConnection) -> list[VnodeResult]:
                results = []
                for index in by_pnode[pnode]:
                    vnode, argv = jobs[index]
                    reply = session.call(ops.EXEC, netns=vnode.netns, argv=argv, timeout=timeout)
                    results.append(
                        VnodeResult(
                            vnode.name, reply["exit_status"], reply["stdout"], reply["stderr"]
                        )
                    )
                return results

            outcome = for_each(sessions, run_there)
        results: dict[int, VnodeResult] = {}
        for pnode, indexes in by_pnode.items():
            result = outcome[pnode]
            for k, index in enumerate(indexes):
                name = jobs[index][0].name
                if isinstance(result, BaseException):
                    results[index] = VnodeResult(name, 255, "", f"{result}\n")
                else:
                    results[index] = result[k]
        return [results[index] for index in range(len(jobs))]

    # -- sessions ---------------------------------------------------------------------------

    def _sessions(self, nodes: Sequence[Node] | None = None) -> _Sessions:
        """Agents on `nodes` (default: every pnode of the reservation)."""
        return _Sessions(self.access.root_endpoints(nodes), self.access.known_hosts)


class _Sessions:
    """One agent per pnode, opened in parallel; a pnode that cannot run it is named."""

    def __init__(self, endpoints: Mapping[str, SSHEndpoint], known_hosts: Path) -> None:
        self.endpoints = endpoints
        self.known_hosts = known_hosts
        self.sessions: dict[str, AgentConnection] = {}

    def __enter__(self) -> dict[str, AgentConnection]:
        bundle = build()
        opened = for_each(
            self.endpoints,
            lambda _, endpoint: AgentSession(endpoint, self.known_hosts, bundle=bundle),
        )
        problems = {}
        for pnode, result in opened.items():
            if isinstance(result, BaseException):
                problems[pnode] = [str(result)]
            else:
                self.sessions[pnode] = result
        if problems:
            self.__exit__()
            raise PreflightError(problems)
        return self.sessions

    def __exit__(self, *exc: object) -> None:
        for session in self.sessions.values():
            try:
                session.close()
            except Exception:  # closing a broken channel must not hide the real error
                pass


def _on_all(sessions: Mapping[str, AgentConnection], op: str, the_plan: Plan) -> dict:
    """Send `op` with each pnode's own state to every pnode."""
    return for_each(sessions, lambda p, s: s.call(op, state=the_plan.state(p).to_json()))


def _errors(outcome: Mapping[str, Any]) -> dict[str, str]:
    return {p: str(r) for p, r in outcome.items() if isinstance(r, BaseException)}


def _preflight(sessions: Mapping[str, AgentConnection], the_plan: Plan) -> None:
    outcome = _on_all(sessions, ops.PREFLIGHT, the_plan)
    missing = {
        pnode: [str(result)] if isinstance(result, BaseException) else result["problems"]
        for pnode, result in outcome.items()
    }
    missing = {pnode: problems for pnode, problems in missing.items() if problems}
    if missing:
        raise PreflightError(missing)


def _probe(
    sessions: Mapping[str, AgentConnection], facts: list[PnodeFacts]
) -> dict[str, ProbeResult]:
    """Each pnode with a candidate NIC listens while the next one sends it the two frames."""
    targets = probe_targets(facts)
    pnodes = [f.id for f in facts if f.id in targets]
    if len(pnodes) < 2:
        return {}
    results = {}
    for index, receiver in enumerate(pnodes):
        sender = pnodes[(index + 1) % len(pnodes)]
        nonce = secrets.token_hex(8)
        mac = sessions[receiver].call(ops.PROBE_LISTEN, nic=targets[receiver], nonce=nonce)["mac"]
        sessions[sender].call(ops.PROBE_SEND, nic=targets[sender], peer_mac=mac, nonce=nonce)
        arrived = sessions[receiver].call(ops.PROBE_COLLECT, nonce=nonce, timeout=PROBE_TIMEOUT)
        results[receiver] = ProbeResult(
            foreign_src_ok="src" in arrived["arrived"],
            foreign_dst_ok="dst" in arrived["arrived"],
            nic=targets[receiver],
        )
    return results
