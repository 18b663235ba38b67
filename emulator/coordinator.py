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
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from omnibed.core.api import Omnibed
from omnibed.core.errors import ApplyError, EmulatorError, PreflightError, UsageError
from omnibed.core.provider import Progress, no_progress

from .model import Platform
from .modes import PnodeFacts, ProbeResult, probe_targets
from .planner import Plan, plan
from .transport import AgentConnection, AgentSession, for_each

PLAN_FILE = "emulation.json"
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
    vnode: str
    exit_status: int
    stdout: str
    stderr: str


class Emulator:
    """The virtual platform of one reservation."""

    def __init__(self, api: Omnibed, reservation: str) -> None:
        self.api = api
        self.reservation = reservation
        api.entry(reservation)  # UsageError if unknown
        self.plan_path = api.reservation_dir(reservation) / PLAN_FILE

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
        nodes = self.api.nodes(self.reservation)
        nics = self.api.nics(self.reservation)
        facts = [PnodeFacts.from_node(node, nics[node.id]) for node in nodes]
        progress("starting the agent on every pnode")
        with self._sessions() as sessions:
            progress("probing whether the underlay passes foreign MACs")
            probe = _probe(sessions, facts)
            the_plan = plan(platform, facts, self.reservation, probe=probe, force=force)
            progress("preflight on every pnode")
            _preflight(sessions, the_plan)
            self._save(the_plan)
            progress(f"building {len(the_plan.vnodes)} vnodes")
            failures = _errors(_on_all(sessions, "apply", the_plan))
            if failures:
                rollback = _errors(_on_all(sessions, "teardown", the_plan))
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
            failures = _errors(_on_all(sessions, "teardown", the_plan))
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

    def status(self) -> dict[str, Any]:
        """Vnodes, their pnode and addresses, and the mode of every vnetwork with its reason."""
        the_plan = self._require()
        with self._sessions() as sessions:
            present = _on_all(sessions, "status", the_plan)
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
                for n in the_plan.networks
            ],
            "vnodes": [
                {
                    "name": v.name,
                    "pnode": v.pnode,
                    "netns": v.netns,
                    "ifaces": {i.name: {"address": i.address, "mac": i.mac} for i in v.ifaces},
                }
                for v in the_plan.vnodes
            ],
            "pnodes": {
                pnode: (
                    {"error": str(result)}
                    if isinstance(result, BaseException)
                    else {"complete": result.get("complete"), "absent": result.get("absent")}
                )
                for pnode, result in present.items()
            },
        }

    def exec(
        self, vnodes: list[str] | None, argv: list[str], *, timeout: float | None = None
    ) -> dict[str, VnodeResult]:
        """Run `argv` in each vnode (all when None), in parallel across pnodes."""
        the_plan = self._require()
        targets = [the_plan.vnode(name) for name in vnodes] if vnodes else list(the_plan.vnodes)
        by_pnode: dict[str, list] = {}
        for vnode in targets:
            by_pnode.setdefault(vnode.pnode, []).append(vnode)
        with self._sessions(only=set(by_pnode)) as sessions:

            def run_there(pnode: str, session: AgentConnection) -> dict[str, VnodeResult]:
                results = {}
                for vnode in by_pnode[pnode]:
                    reply = session.call("exec", netns=vnode.netns, argv=argv, timeout=timeout)
                    results[vnode.name] = VnodeResult(
                        vnode.name, reply["exit_status"], reply["stdout"], reply["stderr"]
                    )
                return results

            outcome = _each(sessions, run_there)
        results: dict[str, VnodeResult] = {}
        for pnode, result in outcome.items():
            if isinstance(result, BaseException):
                for vnode in by_pnode[pnode]:
                    results[vnode.name] = VnodeResult(vnode.name, 255, "", f"{result}\n")
            else:
                results.update(result)
        return {v.name: results[v.name] for v in targets}

    def connectivity(self) -> list[dict[str, Any]]:
        """Ping, in every vnetwork, from one vnode per pnode to one vnode on each other pnode."""
        the_plan = self._require()
        probes = []
        for network in the_plan.networks:
            firsts: dict[str, tuple[str, str]] = {}
            for vnode in the_plan.vnodes:
                for iface in vnode.ifaces:
                    if iface.network == network.name and vnode.pnode not in firsts:
                        firsts[vnode.pnode] = (vnode.name, iface.address.split("/")[0])
            for src_pnode, (src, _) in firsts.items():
                for dst_pnode, (dst, address) in firsts.items():
                    if dst_pnode != src_pnode:
                        probes.append((network.name, src, dst, address))
        checks = []
        for network, src, dst, address in probes:
            result = self.exec([src], ["python3", "-I", "-c", _REACH, address])[src]
            checks.append(
                {"network": network, "from": src, "to": dst, "ok": result.exit_status == 0}
            )
        return checks

    # -- sessions ---------------------------------------------------------------------------

    def _sessions(self, only: set[str] | None = None) -> _Sessions:
        endpoints = self.api.root_endpoints(self.reservation)
        if only is not None:
            endpoints = {p: e for p, e in endpoints.items() if p in only}
        return _Sessions(endpoints, self.api.known_hosts(self.reservation))


class _Sessions:
    """One agent per pnode, opened in parallel; a pnode that cannot run it is named."""

    def __init__(self, endpoints: Mapping[str, Any], known_hosts: Path) -> None:
        self.endpoints = endpoints
        self.known_hosts = known_hosts
        self.sessions: dict[str, AgentConnection] = {}

    def __enter__(self) -> dict[str, AgentConnection]:
        def open_one(pnode: str) -> AgentConnection:
            return AgentSession(self.endpoints[pnode], self.known_hosts)

        with ThreadPoolExecutor(max_workers=max(1, min(32, len(self.endpoints)))) as pool:
            futures = {p: pool.submit(open_one, p) for p in self.endpoints}
            problems = {}
            for pnode, future in futures.items():
                error = future.exception()
                if error is None:
                    self.sessions[pnode] = future.result()
                else:
                    problems[pnode] = [str(error)]
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


def _each(
    sessions: Mapping[str, AgentConnection], fn: Callable[[str, AgentConnection], T]
) -> dict[str, T | BaseException]:
    """`fn(pnode, session)` on every pnode in parallel; results or exceptions by pnode."""
    return for_each({pnode: pnode for pnode in sessions}, lambda p: fn(p, sessions[p]))


def _on_all(sessions: Mapping[str, AgentConnection], op: str, the_plan: Plan) -> dict:
    """Send `op` with each pnode's own state to every pnode."""
    return _each(sessions, lambda p, s: s.call(op, state=the_plan.state(p).to_json()))


def _errors(outcome: Mapping[str, Any]) -> dict[str, str]:
    return {p: str(r) for p, r in outcome.items() if isinstance(r, BaseException)}


def _preflight(sessions: Mapping[str, AgentConnection], the_plan: Plan) -> None:
    outcome = _on_all(sessions, "preflight", the_plan)
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
        mac = sessions[receiver].call("probe-listen", nic=targets[receiver], nonce=nonce)["mac"]
        sessions[sender].call("probe-send", nic=targets[sender], peer_mac=mac, nonce=nonce)
        arrived = sessions[receiver].call("probe-collect", nonce=nonce, timeout=PROBE_TIMEOUT)
        results[receiver] = ProbeResult(
            foreign_src_ok="src" in arrived["arrived"],
            foreign_dst_ok="dst" in arrived["arrived"],
            nic=targets[receiver],
        )
    return results
