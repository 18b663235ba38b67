"""The agent for real: each test's "pnode" is a throwaway network namespace, the agent is the
bundle run by the system python3 in isolated mode (no venv, no pyroute2 installed there)."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import io
import os
import stat
import subprocess
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from omnibed.emulator import agent as agent_package
from omnibed.emulator.agent import ops
from omnibed.emulator.agent.state import Bridge, PnodeState, Shaping, Trunk, Viface, Vxlan
from omnibed.emulator.bundle import PACKAGE, Bundle, build
from omnibed.emulator.transport import LocalAgentSession

SYSTEM_PYTHON = "/usr/bin/python3"
AGENT = Path(agent_package.__file__).resolve().parent


def test_bundle_carries_the_whole_agent_package() -> None:
    with zipfile.ZipFile(io.BytesIO(build().data)) as archive:
        carried = {name for name in archive.namelist() if name.startswith(f"{PACKAGE}/")}
        sources = {f"{PACKAGE}/{path.name}" for path in AGENT.glob("*.py")}
        assert carried == sources | {f"{name}c" for name in sources}
        assert f"{PACKAGE}/containers.py" in carried
        for name in sources:  # each module's bytecode is of its own source, for this python
            source, compiled = archive.read(name), archive.read(f"{name}c")
            assert compiled[:4] == importlib.util.MAGIC_NUMBER
            assert compiled[8:16] == importlib.util.source_hash(source), name


def test_bundle_is_deterministic_and_named_by_its_sha256() -> None:
    first = build()
    build.cache_clear()
    second = build()
    assert second is not first and second == first
    assert first.sha256 == hashlib.sha256(first.data).hexdigest()
    assert first.remote_name == f"omnibed-agent-{first.sha256[:16]}.pyz"


@pytest.fixture(scope="module")
def agent_bundle() -> Bundle:
    return build()


def _sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True)


class Pnodes:
    """Throwaway namespaces acting as pnodes, agents in them, all removed at the end."""

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle
        self.tag = uuid.uuid4().hex[:6]
        self.names: list[str] = []
        self.agents: list[LocalAgentSession] = []
        self.states: list[tuple[LocalAgentSession, PnodeState]] = []
        self.made = 0

    def pnode(self) -> str:
        name = f"oa{self.tag}p{len(self.names)}"
        _sh("ip", "netns", "add", name)
        self.names.append(name)
        _sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def agent(self, pnode: str) -> LocalAgentSession:
        session = LocalAgentSession(netns=pnode, python=SYSTEM_PYTHON, bundle=self.bundle)
        self.agents.append(session)
        return session

    def state(
        self, pnode: str, networks: int = 1, per_network: int = 2, **kw: object
    ) -> PnodeState:
        """`networks` bridges with `per_network` vnodes each, addresses 10.<net>.0.<n>/24."""
        self.made += 1
        k = self.made
        group = 0x0A000000 + int(self.tag, 16) % 0xFFFF * 16 + k
        bridges, vifaces = [], []
        for net in range(networks):
            bridges.append(Bridge(name=f"br{net}", network=f"net{net}", mtu=1500))
            for i in range(per_network):
                vnode = f"{pnode}n{net}v{i}"
                vifaces.append(
                    Viface(vnode=vnode, netns=vnode, ifname="if0", host_ifname=f"h{net}v{i}",
                           mac=f"02:00:00:{k:02x}:{net:02x}:{i + 1:02x}",
                           address=f"10.{50 + net}.0.{i + 1 + 10 * k}/24",
                           bridge=f"br{net}", mtu=1500)
                )
        state = PnodeState(
            instance=f"t{self.tag}", pnode=pnode, group=group,
            namespaces=tuple(v.netns for v in vifaces), bridges=tuple(bridges),
            vifaces=tuple(vifaces),
        )
        return replace(state, **kw)  # type: ignore[arg-type]

    def track(self, session: LocalAgentSession, state: PnodeState) -> PnodeState:
        self.states.append((session, state))
        return state

    def cleanup(self) -> None:
        for session, state in self.states:
            try:
                session.request(ops.TEARDOWN, state=state.to_json())
            except Exception:  # the agent may be gone: remove by hand below
                pass
            for name in state.namespaces:
                _sh("ip", "netns", "del", name, check=False)
        for session in self.agents:
            session.close()
        for name in self.names:
            _sh("ip", "netns", "del", name, check=False)


@pytest.fixture
def pnodes(agent_bundle: Bundle) -> Iterator[Pnodes]:
    made = Pnodes(agent_bundle)
    try:
        yield made
    finally:
        made.cleanup()


# ICMP echo over a raw socket (this machine has no ping binary): exit 0 on a reply
PING = """
import os, select, socket, struct, sys, time
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xFFFF)
    return ~(s + (s >> 16)) & 0xFFFF
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
ident = os.getpid() & 0xFFFF
for seq in range(3):
    body = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + b"omnibed!"
    sock.sendto(body[:2] + struct.pack("!H", csum(body)) + body[4:], (sys.argv[1], 0))
    end = time.time() + 1
    while select.select([sock], [], [], max(0, end - time.time()))[0]:
        data = sock.recv(2048)
        icmp = data[(data[0] & 15) * 4:]
        if icmp[0] == 0 and struct.unpack("!H", icmp[4:6])[0] == ident:
            sys.exit(0)
sys.exit(1)
"""


def _ping(agent: LocalAgentSession, netns: str, address: str) -> dict:
    ip = address.split("/")[0]
    return agent.call(ops.EXEC, netns=netns, argv=[SYSTEM_PYTHON, "-c", PING, ip], timeout=20)


def stdout(reply: dict) -> str:
    """The stdout of an exec reply, as text."""
    return base64.b64decode(reply["stdout_base64"]).decode()


def _netns_links(pnode: str) -> list[str]:
    out = _sh("ip", "-n", pnode, "-o", "link", "show").stdout
    return sorted(line.split(":")[1].strip().split("@")[0] for line in out.splitlines())


@pytest.mark.root
def test_bundle_runs_isolated_without_pyroute2_on_the_system(pnodes: Pnodes) -> None:
    assert _sh(SYSTEM_PYTHON, "-I", "-c", "import pyroute2", check=False).returncode != 0
    reply = pnodes.agent(pnodes.pnode()).call(ops.HELLO)
    assert reply["pyroute2"] == "0.9.7" and reply["euid"] == 0


@pytest.mark.root
def test_apply_ping_idempotent_teardown(pnodes: Pnodes) -> None:
    pnode = pnodes.pnode()
    agent = pnodes.agent(pnode)
    state = pnodes.track(agent, pnodes.state(pnode, networks=2, per_network=2))
    assert agent.call(ops.PREFLIGHT, state=state.to_json())["problems"] == []

    first = agent.call(ops.APPLY, state=state.to_json())
    assert first["created_namespaces"] == 4
    a, b, c, d = state.vifaces
    assert _ping(agent, a.netns, b.address)["exit_status"] == 0  # same bridge
    assert _ping(agent, c.netns, d.address)["exit_status"] == 0
    assert _ping(agent, a.netns, "10.51.0.1/24")["exit_status"] != 0  # other network
    links = _netns_links(pnode)

    again = agent.call(ops.APPLY, state=state.to_json())
    assert again == {"ok": True, "created_namespaces": 0, "created_links": 0}
    assert _netns_links(pnode) == links
    assert agent.call(ops.STATUS, state=state.to_json())["complete"] is True
    assert _ping(agent, b.netns, a.address)["exit_status"] == 0

    assert agent.call(ops.TEARDOWN, state=state.to_json())["removed_namespaces"] == 4
    status = agent.call(ops.STATUS, state=state.to_json())
    assert status["absent"] is True and status["group_links"] == []
    assert _netns_links(pnode) == ["lo"]
    assert not set(state.namespaces) & set(os.listdir("/run/netns"))
    assert agent.call(ops.TEARDOWN, state=state.to_json())["removed_namespaces"] == 0


@pytest.mark.root
def test_rate_shaping_is_in_the_kernel(pnodes: Pnodes) -> None:
    pnode = pnodes.pnode()
    agent = pnodes.agent(pnode)
    base = pnodes.state(pnode, per_network=1)
    shaped = replace(base.vifaces[0], output=Shaping(rate_bps=10_000_000),
                     input=Shaping(rate_bps=100_000_000))
    state = pnodes.track(agent, replace(base, vifaces=(shaped,)))
    agent.call(ops.APPLY, state=state.to_json())

    def tbf_rate(netns: str, ifname: str) -> int:
        with IPRoute(netns=netns) as ipr:
            index = ipr.link("get", ifname=ifname)[0]["index"]
            qdiscs = [q for q in ipr.get_qdiscs(index=index) if q.get("TCA_KIND") == "tbf"]
        assert len(qdiscs) == 1
        return qdiscs[0].get_nested("TCA_OPTIONS", "TCA_TBF_PARMS")["rate"]

    assert tbf_rate(pnode, shaped.host_ifname) == 100_000_000 // 8  # input
    assert tbf_rate(shaped.netns, shaped.ifname) == 10_000_000 // 8  # output
    features = stdout(agent.call(ops.EXEC, netns=shaped.netns, argv=["ethtool", "-k", "if0"]))
    assert "generic-segmentation-offload: off" in features


@pytest.mark.root
def test_preflight_refuses_delay_without_netem_and_changes_nothing(pnodes: Pnodes) -> None:
    pnode = pnodes.pnode()
    agent = pnodes.agent(pnode)
    base = pnodes.state(pnode, per_network=1)
    delayed = replace(base.vifaces[0], input=Shaping(rate_bps=10**7, delay_ms=10))
    state = pnodes.track(agent, replace(base, vifaces=(delayed,)))
    problems = agent.call(ops.PREFLIGHT, state=state.to_json())["problems"]
    assert any(
        p.startswith("sch_netem (needed for delay/jitter/loss) is not available") for p in problems
    ), problems
    assert _netns_links(pnode) == ["lo"]
    assert not set(state.namespaces) & set(os.listdir("/run/netns"))
    assert agent.call(ops.PREFLIGHT, state=base.to_json())["problems"] == []


@pytest.mark.root
@pytest.mark.parametrize("collide", ["bridge", "second-veth", "trunk"])
def test_failure_rolls_back_everything_created(pnodes: Pnodes, collide: str) -> None:
    pnode = pnodes.pnode()
    agent = pnodes.agent(pnode)
    state = pnodes.track(agent, chained(pnodes.state(pnode, per_network=3)))
    squatter = {"bridge": state.bridges[0].name, "second-veth": state.vifaces[1].host_ifname,
                "trunk": state.trunks[0].peer}[collide]
    _sh("ip", "-n", pnode, "link", "add", squatter, "type", "veth", "peer", "name", "sq1")

    reply = agent.request(ops.APPLY, state=state.to_json())
    assert reply["ok"] is False and reply["rolled_back"] is True
    assert reply["errno"] == 17  # EEXIST
    assert _netns_links(pnode) == sorted(["lo", squatter, "sq1"])  # the squatter untouched
    assert not set(state.namespaces) & set(os.listdir("/run/netns"))


def chained(state: PnodeState) -> PnodeState:
    """`state` with its last viface moved onto a second bridge, trunked to the first."""
    first = state.bridges[0]
    second = replace(first, name=f"{first.name}c")
    trunk = Trunk(f"{first.name}d", f"{first.name}u", second.name, first.name, first.mtu)
    moved = replace(state.vifaces[-1], bridge=second.name)
    return replace(state, bridges=(*state.bridges, second), trunks=(trunk,),
                   vifaces=(*state.vifaces[:-1], moved))


@pytest.mark.root
def test_a_trunk_joins_two_bridges_into_one_segment(pnodes: Pnodes) -> None:
    pnode = pnodes.pnode()
    agent = pnodes.agent(pnode)
    state = pnodes.track(agent, chained(pnodes.state(pnode, per_network=2)))
    agent.call(ops.APPLY, state=state.to_json())
    a, b = state.vifaces
    assert a.bridge != b.bridge
    assert _ping(agent, a.netns, b.address)["exit_status"] == 0
    trunk = state.trunks[0]
    masters = _sh("ip", "-n", pnode, "-o", "link", "show", "group", str(state.group)).stdout
    assert f"{trunk.name}@{trunk.peer}:" in masters and f"master {trunk.bridge} " in masters
    assert f"{trunk.peer}@{trunk.name}:" in masters and f"master {trunk.parent} " in masters
    agent.call(ops.TEARDOWN, state=state.to_json())
    assert _netns_links(pnode) == ["lo"]


@pytest.mark.root
def test_bridge_ports_on_the_pnode_carry_no_ipv6(pnodes: Pnodes) -> None:
    """Host-side veths and trunk ends are bridge ports: IPv6 off on them, so the pnode holds
    no IPv6 route per port (with one each, every link going up or down walked them all:
    apply and teardown of N vnodes grew with N squared)."""
    pnode = pnodes.pnode()
    agent = pnodes.agent(pnode)
    state = pnodes.track(agent, chained(pnodes.state(pnode, per_network=3)))
    agent.call(ops.APPLY, state=state.to_json())
    a, b, c = state.vifaces
    assert _ping(agent, a.netns, c.address)["exit_status"] == 0  # across the trunk
    ports = {v.host_ifname for v in state.vifaces}
    ports |= {end for t in state.trunks for end in (t.name, t.peer)}
    routes = _sh("ip", "-n", pnode, "-6", "route", "show", "table", "all").stdout.splitlines()
    assert [r for r in routes if set(r.split()) & ports] == []
    for port in sorted(ports):
        disabled = _sh("ip", "netns", "exec", pnode, "sysctl", "-n",
                       f"net.ipv6.conf.{port}.disable_ipv6").stdout.strip()
        assert disabled == "1", port


@pytest.mark.root
def test_vxlan_unicast_carries_ping_between_pnodes(pnodes: Pnodes) -> None:
    pa, pb = pnodes.pnode(), pnodes.pnode()
    _sh("ip", "link", "add", f"oa{pnodes.tag}u", "netns", pa, "type", "veth",
        "peer", "name", "u0", "netns", pb)
    _sh("ip", "-n", pa, "link", "set", f"oa{pnodes.tag}u", "name", "u0")
    underlay = {pa: "10.77.0.1", pb: "10.77.0.2"}
    states = {}
    for pnode, local in underlay.items():
        _sh("ip", "-n", pnode, "addr", "add", f"{local}/24", "dev", "u0")
        _sh("ip", "-n", pnode, "link", "set", "u0", "up")
        remote = next(a for p, a in underlay.items() if p != pnode)
        base = pnodes.state(pnode, per_network=1)
        vx = Vxlan(name="vx0", network="net0", vni=4242, port=4789, dev="u0", local=local,
                   remotes=(remote,), bridge="br0", mtu=1450)
        viface = replace(base.vifaces[0], mtu=1450)
        states[pnode] = replace(base, vxlans=(vx,), vifaces=(viface,),
                                bridges=(replace(base.bridges[0], mtu=1450),))
    agents = {p: pnodes.agent(p) for p in underlay}
    for pnode, state in states.items():
        pnodes.track(agents[pnode], state)
        agents[pnode].call(ops.APPLY, state=state.to_json())
    a, b = states[pa].vifaces[0], states[pb].vifaces[0]
    assert _ping(agents[pa], a.netns, b.address)["exit_status"] == 0
    fdb = _sh("bridge", "-n", pa, "fdb", "show", "dev", "vx0").stdout
    assert "00:00:00:00:00:00 dst 10.77.0.2" in fdb
    assert agents[pa].call(ops.APPLY, state=states[pa].to_json())["created_links"] == 0


@pytest.mark.root
def test_probe_sees_a_plain_link_pass_foreign_macs(pnodes: Pnodes) -> None:
    pa, pb = pnodes.pnode(), pnodes.pnode()
    _sh("ip", "link", "add", f"oa{pnodes.tag}q", "netns", pa, "type", "veth",
        "peer", "name", "q0", "netns", pb)
    _sh("ip", "-n", pa, "link", "set", f"oa{pnodes.tag}q", "name", "q0", "up")
    _sh("ip", "-n", pb, "link", "set", "q0", "up")
    listener, sender = pnodes.agent(pa), pnodes.agent(pb)
    nonce = uuid.uuid4().hex
    mac = listener.call(ops.PROBE_LISTEN, nic="q0", nonce=nonce)["mac"]
    sent = sender.call(ops.PROBE_SEND, nic="q0", peer_mac=mac, nonce=nonce)
    assert sent["foreign_src"] != mac
    assert listener.call(ops.PROBE_COLLECT, nonce=nonce, timeout=5)["arrived"] == ["src", "dst"]

    # a nonce nobody sent: nothing arrives, the probe does not report what it did not see
    other = uuid.uuid4().hex
    listener.call(ops.PROBE_LISTEN, nic="q0", nonce=other)
    sender.call(ops.PROBE_SEND, nic="q0", peer_mac=mac, nonce=nonce)
    assert listener.call(ops.PROBE_COLLECT, nonce=other, timeout=1)["arrived"] == []


@pytest.mark.root
def test_exec_and_errors_are_replies(pnodes: Pnodes) -> None:
    pnode = pnodes.pnode()
    agent = pnodes.agent(pnode)
    state = pnodes.track(agent, pnodes.state(pnode, per_network=1))
    agent.call(ops.APPLY, state=state.to_json())
    out = agent.call(ops.EXEC, netns=state.namespaces[0], argv=["ip", "-o", "-4", "addr"])
    assert out["exit_status"] == 0 and state.vifaces[0].address in stdout(out)
    assert agent.request(ops.EXEC, netns="oa-no-such-ns", argv=["true"])["errno"] == 2
    assert agent.request("frobnicate")["ok"] is False
    bad_group = replace(state, group=0)
    assert "group 0" in agent.request(ops.TEARDOWN, state=bad_group.to_json())["error"]


@pytest.mark.root
def test_agent_session_over_ssh_uploads_once_and_answers(
    agent_bundle: Bundle, tmp_path: Path
) -> None:
    from omnibed.core import ssh
    from omnibed.core.types import SSHEndpoint
    from omnibed.emulator.transport import AgentSession
    from tests.fakes.sshd import FakeSSHD

    keys = ssh.ensure_keypair(tmp_path / "keys")
    directory = tmp_path / "agent"
    remote = directory / agent_bundle.remote_name
    with FakeSSHD([keys.public_openssh]) as sshd:
        endpoint = SSHEndpoint(host=sshd.host, port=sshd.port, key_file=str(keys.private_path))
        known_hosts = tmp_path / "known_hosts"
        with AgentSession(endpoint, known_hosts, bundle=agent_bundle,
                          agent_dir=str(directory)) as session:
            assert session.call(ops.HELLO)["pyroute2"] == "0.9.7"
            uploaded = remote.stat().st_mtime_ns
            empty = PnodeState(instance="t", pnode="local", group=99)
            assert session.call(ops.PREFLIGHT, state=empty.to_json())["problems"] == []
        assert remote.read_bytes() == agent_bundle.data
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        assert stat.S_IMODE(remote.stat().st_mode) == 0o600
        with AgentSession(endpoint, known_hosts, bundle=agent_bundle,
                          agent_dir=str(directory)) as session:
            assert session.request("nope")["ok"] is False
        assert remote.stat().st_mtime_ns == uploaded  # not sent again
        assert [p.name for p in directory.iterdir()] == [agent_bundle.remote_name]


@pytest.mark.root
@pytest.mark.parametrize("mode", ["vxlan", "bridge"])
def test_a_vnetwork_wider_than_one_bridge_stays_one_segment(pnodes: Pnodes, mode: str) -> None:
    """1,100 vnodes of one vnetwork on one pnode (more than a Linux bridge's 1,023 ports)
    and one on another pnode, over VXLAN or bridged onto an extra NIC: the remote vnode
    reaches the first vnode on each bridge and the last one (each ARP request is flooded
    over every bridge: none may be lost on the way), and vnodes on different bridges
    reach each other."""
    from omnibed.core.types import Nic, NicRole, Tri
    from omnibed.emulator.model import IfaceSpec, Network, Platform, VNodeSpec
    from omnibed.emulator.modes import PnodeFacts
    from omnibed.emulator.planner import plan

    pa, pb = pnodes.pnode(), pnodes.pnode()
    _sh("ip", "link", "add", f"oa{pnodes.tag}u", "netns", pa, "type", "veth",
        "peer", "name", "u0", "netns", pb)
    _sh("ip", "-n", pa, "link", "set", f"oa{pnodes.tag}u", "name", "u0")
    facts = []
    for k, pnode in enumerate((pa, pb)):
        address = f"10.77.0.{k + 1}"
        _sh("ip", "-n", pnode, "addr", "add", f"{address}/24", "dev", "u0")
        _sh("ip", "-n", pnode, "link", "set", "u0", "up")
        mac = _sh("ip", "-n", pnode, "-br", "link", "show", "u0").stdout.split()[2]
        nic = Nic("u0", mac, NicRole.EXTRA, 1500, (f"{address}/24",), foreign_mac=Tri.YES)
        facts.append(PnodeFacts(pnode, address, (nic,)))
    lan = [IfaceSpec("if0", "lan")]
    platform = Platform(
        [Network("lan", "10.60.0.0/20", mode)],
        [VNodeSpec(f"a{i}", pnode=0, ifaces=lan) for i in range(1100)]
        + [VNodeSpec("b0", pnode=1, ifaces=lan)],
    )
    planned = plan(platform, facts, f"wide-{pnodes.tag}-{mode}")
    assert planned.networks[0].mode == mode
    states = {p: planned.state(p) for p in (pa, pb)}
    first_on = {}  # bridge -> its first vnode's viface
    for v in states[pa].vifaces:
        first_on.setdefault(v.bridge, v)
    assert len(first_on) > 1  # more than one bridge holds the vnetwork on pa
    agents = {p: pnodes.agent(p) for p in (pa, pb)}
    for pnode, state in states.items():
        pnodes.track(agents[pnode], state)
        assert agents[pnode].call(ops.PREFLIGHT, state=state.to_json())["problems"] == []
        agents[pnode].call(ops.APPLY, state=state.to_json())

    remote, first, last = states[pb].vifaces[0], states[pa].vifaces[0], states[pa].vifaces[-1]
    for v in [*first_on.values(), last]:
        assert _ping(agents[pb], remote.netns, v.address)["exit_status"] == 0, v.vnode
    assert _ping(agents[pa], first.netns, last.address)["exit_status"] == 0
    assert _ping(agents[pa], last.netns, remote.address)["exit_status"] == 0
    again = agents[pa].call(ops.APPLY, state=states[pa].to_json())
    assert (again["created_namespaces"], again["created_links"]) == (0, 0)
    assert agents[pa].call(ops.STATUS, state=states[pa].to_json())["complete"] is True

    for pnode, state in states.items():
        agents[pnode].call(ops.TEARDOWN, state=state.to_json())
        assert agents[pnode].call(ops.STATUS, state=state.to_json())["absent"] is True
        assert _netns_links(pnode) == ["lo", "u0"]
