"""The planner and the mode decision: pure functions, checked on their outputs."""

from __future__ import annotations

import ipaddress
import itertools
import json
from pathlib import Path

import pytest

from omnibed.cli.app import exit_status
from omnibed.core.errors import OmnibedError, PlatformError
from omnibed.core.types import Nic, NicRole, Node, SSHEndpoint, Tri
from omnibed.emulator.agent.state import PnodeState, Shaping
from omnibed.emulator.model import (
    IfaceSpec,
    LinkSpec,
    Network,
    Platform,
    VNodeSpec,
    load_platform,
)
from omnibed.emulator.modes import PnodeFacts, ProbeResult, probe_targets
from omnibed.emulator.planner import (
    BRIDGE_VIFACES,
    FLOOD_BACKLOG,
    MAX_CHAIN,
    MAX_PORTS,
    Plan,
    bridge_chain,
    check_fits,
    instance_tag,
    link_group,
    plan,
    vni_base,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def control(i: int, foreign: Tri = Tri.YES, mtu: int = 1500) -> Nic:
    return Nic(
        "eth0",
        f"52:54:00:00:00:{i:02x}",
        NicRole.CONTROL,
        mtu=mtu,
        addresses=(f"10.0.0.{i + 1}/24",),
        foreign_mac=foreign,
        multicast=Tri.YES,
    )


def nic(
    name: str,
    i: int,
    role: NicRole,
    foreign: Tri,
    multicast: Tri = Tri.YES,
    mtu: int = 1500,
    addresses: tuple[str, ...] = (),
) -> Nic:
    mac = f"52:54:00:{int(name[-1]):02x}:00:{i:02x}"
    return Nic(name, mac, role, mtu, addresses, None, foreign, multicast)


def facts(i: int, *nics: Nic, ctl: Nic | None = None) -> PnodeFacts:
    return PnodeFacts(f"p{i}", f"10.0.0.{i + 1}", (ctl or control(i), *nics))


def simple(per_pnode: int = 1, cidr: str = "192.168.0.0/22", mode: str = "auto") -> Platform:
    return Platform(
        [Network("net", cidr, mode)],
        [VNodeSpec("v{i}", per_pnode=per_pnode, ifaces=[IfaceSpec("if0", "net")])],
    )


def only_network(p: Plan):
    (network,) = p.networks
    return network


# --- Listing 1, placement, addresses --------------------------------------------------


@pytest.mark.parametrize("per_pnode", [1, 3])
def test_listing1_plans_for_two_pnodes(per_pnode: int) -> None:
    text = (
        (EXAMPLES / "listing1.yaml").read_text().replace("per_pnode: 2", f"per_pnode: {per_pnode}")
    )
    p = plan(load_platform(text), [facts(0), facts(1)], "listing1")
    n = per_pnode
    assert [v.name for v in p.vnodes] == [f"vnode-{i}" for i in range(2 * n)]
    assert [v.pnode for v in p.vnodes] == ["p0"] * n + ["p1"] * n
    assert [v.ifaces[0].address for v in p.vnodes] == [
        f"192.168.0.{i}/22" for i in range(1, 2 * n + 1)
    ]
    for state, pnode in zip(p.states, ("p0", "p1"), strict=True):
        assert state.pnode == pnode
        assert len(state.namespaces) == len(state.vifaces) == n
        assert [b.network for b in state.bridges] == ["vnetwork"]
        assert {v.bridge for v in state.vifaces} == {state.bridges[0].name}


def test_auto_addresses_skip_network_broadcast_and_given_ones() -> None:
    platform = Platform(
        [Network("net", "10.1.0.0/29")],
        [
            VNodeSpec("fixed", pnode=0, ifaces=[IfaceSpec("if0", "net", address="10.1.0.2")]),
            VNodeSpec("v{i}", per_pnode=2, ifaces=[IfaceSpec("if0", "net")]),
        ],
    )
    p = plan(platform, [facts(0), facts(1)], "addr")
    addresses = {v.name: v.ifaces[0].address for v in p.vnodes}
    assert addresses == {
        "fixed": "10.1.0.2/29",
        "v0": "10.1.0.1/29",
        "v1": "10.1.0.3/29",
        "v2": "10.1.0.4/29",
        "v3": "10.1.0.5/29",
    }


def test_cidr_fully_used_then_too_small() -> None:
    two = [facts(0), facts(1)]
    p = plan(simple(per_pnode=3, cidr="10.2.0.0/29"), two, "fits")  # 6 usable addresses
    assert sorted(v.ifaces[0].address for v in p.vnodes)[-1] == "10.2.0.6/29"
    with pytest.raises(PlatformError, match=r"needs 8 addresses .* only 6 usable; use a larger"):
        plan(simple(per_pnode=4, cidr="10.2.0.0/29"), two, "small")


def test_point_to_point_cidr_uses_both_addresses() -> None:
    p = plan(simple(per_pnode=1, cidr="10.3.0.0/31"), [facts(0), facts(1)], "p2p")
    assert [v.ifaces[0].address for v in p.vnodes] == ["10.3.0.0/31", "10.3.0.1/31"]


def test_given_address_on_a_vnode_per_pnode_is_refused() -> None:
    platform = Platform(
        [Network("net", "10.0.0.0/24")],
        [VNodeSpec("v{i}", per_pnode=1, ifaces=[IfaceSpec("if0", "net", address="10.0.0.9")])],
    )
    with pytest.raises(PlatformError, match="10.0.0.9 is given to both v0 and v1"):
        plan(platform, [facts(0), facts(1)], "dup")


def test_placement_by_index_id_and_automatic() -> None:
    platform = Platform(
        [],
        [
            VNodeSpec("a", pnode=1),
            VNodeSpec("b", pnode="p2"),
            VNodeSpec("c", pnode="0"),
            VNodeSpec("d"),
            VNodeSpec("e"),
        ],
    )
    p = plan(platform, [facts(0), facts(1), facts(2)], "place")
    assert {v.name: v.pnode for v in p.vnodes} == {
        "a": "p1",
        "b": "p2",
        "c": "p0",
        "d": "p0",  # every pnode holds one: the first
        "e": "p1",
    }


@pytest.mark.parametrize(
    ("ref", "message"),
    [(2, r"pnode 2 does not exist; .* 2 pnodes \(0\.\.1\)"), ("p9", "not one of the reserved")],
)
def test_bad_pnode_reference(ref: object, message: str) -> None:
    with pytest.raises(PlatformError, match=message):
        plan(Platform([], [VNodeSpec("a", pnode=ref)]), [facts(0), facts(1)], "ref")  # type: ignore[arg-type]


def test_expanded_names_must_stay_unique() -> None:
    platform = Platform([], [VNodeSpec("v{i}", per_pnode=2), VNodeSpec("v3")])
    with pytest.raises(PlatformError, match="two vnodes are called 'v3'"):
        plan(platform, [facts(0), facts(1)], "names")


def test_bad_pnode_lists() -> None:
    with pytest.raises(PlatformError, match="no pnode"):
        plan(simple(), [], "x")
    with pytest.raises(PlatformError, match="not unique"):
        plan(simple(), [facts(0), facts(0)], "x")


# --- MACs, names, VNIs, groups --------------------------------------------------------


@pytest.fixture(scope="module")
def big() -> Plan:
    """1,002 vnodes with two ifaces each, on 3 pnodes."""
    platform = Platform(
        [Network("a", "10.8.0.0/16"), Network("b", "10.9.0.0/16")],
        [
            VNodeSpec(
                "vnode-{i}", per_pnode=334, ifaces=[IfaceSpec("if0", "a"), IfaceSpec("if1", "b")]
            )
        ],
    )
    return plan(platform, [facts(0), facts(1), facts(2)], "big-instance")


def test_macs_are_locally_administered_unicast_and_unique(big: Plan) -> None:
    macs = [i.mac for v in big.vnodes for i in v.ifaces]
    assert len(macs) == 2004 == len(set(macs))
    for mac in macs:
        first = int(mac.split(":")[0], 16)
        assert first & 0x02, mac  # locally administered
        assert not first & 0x01, mac  # unicast
        assert len(mac.split(":")) == 6


def test_macs_are_stable_per_instance_and_differ_between_instances() -> None:
    two = [facts(0), facts(1)]
    first = [v.ifaces[0].mac for v in plan(simple(2), two, "one").vnodes]
    again = [v.ifaces[0].mac for v in plan(simple(2), two, "one").vnodes]
    other = [v.ifaces[0].mac for v in plan(simple(2), two, "two").vnodes]
    assert first == again
    assert not set(first) & set(other)


def test_link_names_fit_ifnamsiz_and_are_unique(big: Plan) -> None:
    for state in big.states:
        links = [v.host_ifname for v in state.vifaces]
        links += [b.name for b in state.bridges] + [x.name for x in state.vxlans]
        assert all(0 < len(name) <= 15 for name in links), max(links, key=len)
        assert len(links) == len(set(links))
        assert all(name.startswith("ob" + instance_tag("big-instance")) for name in links)
    every_host_ifname = [v.host_ifname for s in big.states for v in s.vifaces]
    assert len(every_host_ifname) == len(set(every_host_ifname)) == 2004


def test_namespaces_unique_across_pnodes_and_instances(big: Plan) -> None:
    names = [ns for s in big.states for ns in s.namespaces]
    assert len(names) == len(set(names)) == 1002
    other = plan(simple(2), [facts(0), facts(1)], "other-instance")
    assert not set(names) & {ns for s in other.states for ns in s.namespaces}
    vnode = big.vnode("vnode-400")
    assert vnode.pnode == "p1"
    assert vnode.netns == f"ob-{instance_tag('big-instance')}-p1-vnode-400"


def test_vnis_one_per_network_24_bit_same_on_every_pnode() -> None:
    platform = Platform(
        [Network("a", "10.8.0.0/24", "vxlan"), Network("b", "10.9.0.0/24", "vxlan")],
        [VNodeSpec("v{i}", per_pnode=1, ifaces=[IfaceSpec("if0", "a"), IfaceSpec("if1", "b")])],
    )
    p = plan(platform, [facts(0), facts(1), facts(2)], "vni")
    base = vni_base("vni")
    assert base % 256 == 0 and 0 < base and base + 255 < 2**24
    assert [n.vni for n in p.networks] == [base, base + 1]
    for state in p.states:
        assert [(x.network, x.vni) for x in state.vxlans] == [("a", base), ("b", base + 1)]
    assert vni_base("vni") != vni_base("another")


def test_group_is_per_instance_and_nonzero() -> None:
    p = plan(simple(), [facts(0), facts(1)], "grp")
    assert {s.group for s in p.states} == {link_group("grp")}
    assert 0 < link_group("grp") < 2**31
    assert link_group("grp") != link_group("grp2")


# --- VXLAN details --------------------------------------------------------------------


def test_vxlan_remotes_are_every_other_pnode_and_port_is_configurable() -> None:
    platform = Platform(
        [Network("net", "10.0.0.0/24")],
        [VNodeSpec("v{i}", per_pnode=1, ifaces=[IfaceSpec("if0", "net")])],
        vxlan_port=14789,
    )
    p = plan(platform, [facts(0), facts(1), facts(2)], "remotes")
    for i, state in enumerate(p.states):
        (vx,) = state.vxlans
        assert vx.local == f"10.0.0.{i + 1}"
        assert sorted(vx.remotes) == sorted(f"10.0.0.{j + 1}" for j in range(3) if j != i)
        assert (vx.port, vx.dev, vx.bridge) == (14789, "eth0", state.bridges[0].name)
        assert state.bridges[0].uplink is None


@pytest.mark.parametrize(
    ("mtus", "expected"), [((1500, 1500), 1450), ((9000, 1500), 1450), ((9000, 9000), 8950)]
)
def test_vxlan_mtu_is_the_smallest_underlay_minus_50(mtus: tuple[int, int], expected: int) -> None:
    pnodes = [facts(i, ctl=control(i, mtu=m)) for i, m in enumerate(mtus)]
    p = plan(simple(), pnodes, "mtu")
    assert only_network(p).mtu == expected
    assert {v.mtu for s in p.states for v in s.vifaces} == {expected}
    assert {x.mtu for s in p.states for x in s.vxlans} == {expected}
    assert {b.mtu for s in p.states for b in s.bridges} == {expected}


def test_vxlan_mtu_over_ipv6_is_minus_70() -> None:
    pnodes = [
        PnodeFacts(
            f"p{i}",
            f"fd00::{i + 1}",
            (Nic("eth0", "52:54:00:00:00:01", NicRole.CONTROL, 1500, (f"fd00::{i + 1}/64",)),),
        )
        for i in range(2)
    ]
    assert only_network(plan(simple(), pnodes, "v6")).mtu == 1430


def test_vxlan_over_an_experiment_nic_with_addresses_in_one_subnet() -> None:
    def exp(i: int, subnet: str) -> Nic:
        return nic(
            "eth1", i, NicRole.EXPERIMENT, Tri.NO, addresses=(f"{subnet}.{i + 1}/24",), mtu=9000
        )

    p = plan(simple(), [facts(0, exp(0, "172.30.0")), facts(1, exp(1, "172.30.0"))], "exp")
    network = only_network(p)
    assert network.mode == "vxlan" and network.nics == {"p0": "eth1", "p1": "eth1"}
    assert network.mtu == 8950 and "experiment NIC" in network.reason
    assert p.state("p0").vxlans[0].remotes == ("172.30.0.2",)
    # experiment NICs in different subnets: back to the control NIC
    p = plan(simple(), [facts(0, exp(0, "172.30.0")), facts(1, exp(1, "172.31.0"))], "exp")
    assert only_network(p).nics == {"p0": "eth0", "p1": "eth0"}


# --- the mode decision table ----------------------------------------------------------

# (foreign_mac of the candidate NIC, extra NIC present, probe) -> (mode, uplink, words in reason)
# With the extra NIC present the candidate is eth1 with role EXTRA; without it, eth1 is an
# EXPERIMENT NIC. The control NIC eth0 always passes foreign MACs and must never be chosen.
# Multicast (yes/no) must change nothing: VXLAN is unicast.
TABLE = {
    (Tri.YES, True, "ok"): ("bridge", "eth1", "extra NIC"),
    (Tri.YES, True, "failed"): ("vxlan", "eth0", "runtime probe saw eth1 drop"),
    (Tri.YES, True, "absent"): ("bridge", "eth1", "provider, not probed"),
    (Tri.NO, True, "ok"): ("bridge", "eth1", "runtime probe; the provider said no"),
    (Tri.NO, True, "failed"): ("vxlan", "eth0", "runtime probe saw eth1 drop"),
    (Tri.NO, True, "absent"): ("vxlan", "eth0", "eth1 drops foreign MACs"),
    (Tri.UNKNOWN, True, "ok"): ("bridge", "eth1", "runtime probe; the provider said unknown"),
    (Tri.UNKNOWN, True, "failed"): ("vxlan", "eth0", "runtime probe saw eth1 drop"),
    (Tri.UNKNOWN, True, "absent"): ("vxlan", "eth0", "unknown and not probed"),
    (Tri.YES, False, "ok"): ("bridge", "eth1", "experiment NIC"),
    (Tri.YES, False, "failed"): ("vxlan", "eth0", "runtime probe saw eth1 drop"),
    (Tri.YES, False, "absent"): ("bridge", "eth1", "provider, not probed"),
    (Tri.NO, False, "ok"): ("bridge", "eth1", "runtime probe; the provider said no"),
    (Tri.NO, False, "failed"): ("vxlan", "eth0", "runtime probe saw eth1 drop"),
    (Tri.NO, False, "absent"): ("vxlan", "eth0", "eth1 drops foreign MACs"),
    (Tri.UNKNOWN, False, "ok"): ("bridge", "eth1", "runtime probe; the provider said unknown"),
    (Tri.UNKNOWN, False, "failed"): ("vxlan", "eth0", "runtime probe saw eth1 drop"),
    (Tri.UNKNOWN, False, "absent"): ("vxlan", "eth0", "unknown and not probed"),
}
PROBES = {
    "ok": ProbeResult(True, True, "eth1"),
    "failed": ProbeResult(False, False, "eth1"),
    "absent": None,
}


def test_the_table_covers_every_combination() -> None:
    assert set(TABLE) == set(itertools.product(Tri, (True, False), PROBES))


@pytest.mark.parametrize("multicast", [Tri.YES, Tri.NO])
@pytest.mark.parametrize(("foreign", "extra", "probed"), list(TABLE))
def test_decision_table(foreign: Tri, extra: bool, probed: str, multicast: Tri) -> None:
    role = NicRole.EXTRA if extra else NicRole.EXPERIMENT
    pnodes = [facts(i, nic("eth1", i, role, foreign, multicast)) for i in range(2)]
    result = PROBES[probed]
    probe = None if result is None else {"p0": result, "p1": result}
    network = only_network(plan(simple(), pnodes, "table", probe=probe))
    mode, uplink, words = TABLE[(foreign, extra, probed)]
    assert network.mode == mode
    assert network.nics == {"p0": uplink, "p1": uplink}
    assert words in network.reason
    assert "multicast" not in network.reason or mode == "vxlan"
    if mode == "vxlan":
        assert network.reason.startswith("unicast VXLAN over the control NIC")


@pytest.mark.parametrize("lost", [(True, False), (False, True)])
def test_half_a_probe_is_a_failure(lost: tuple[bool, bool]) -> None:
    pnodes = [facts(i, nic("eth1", i, NicRole.EXTRA, Tri.YES)) for i in range(2)]
    probe = {"p0": ProbeResult(True, True, "eth1"), "p1": ProbeResult(*lost, "eth1")}
    network = only_network(plan(simple(), pnodes, "half", probe=probe))
    assert network.mode == "vxlan"
    which = "source" if not lost[0] else "destination"
    assert f"p1: the runtime probe saw eth1 drop foreign {which} MACs" in network.reason


def test_a_probe_of_another_nic_does_not_count() -> None:
    pnodes = [facts(i, nic("eth1", i, NicRole.EXTRA, Tri.UNKNOWN)) for i in range(2)]
    probe = {p: ProbeResult(True, True, "eth7") for p in ("p0", "p1")}
    assert only_network(plan(simple(), pnodes, "other", probe=probe)).mode == "vxlan"


def test_control_nic_only_means_vxlan_even_if_it_passes_foreign_macs() -> None:
    network = only_network(plan(simple(), [facts(0), facts(1)], "baremetal"))
    assert network.mode == "vxlan"
    assert network.nics == {"p0": "eth0", "p1": "eth0"}
    assert "no NIC besides the control NIC eth0, which is never a bridge uplink" in network.reason


def test_extra_nic_preferred_over_experiment() -> None:
    pnodes = [
        facts(
            i, nic("eth1", i, NicRole.EXPERIMENT, Tri.YES), nic("eth2", i, NicRole.EXTRA, Tri.YES)
        )
        for i in range(2)
    ]
    network = only_network(plan(simple(), pnodes, "prefer"))
    assert (network.mode, network.nics) == ("bridge", {"p0": "eth2", "p1": "eth2"})
    assert "extra NIC" in network.reason


def test_one_role_for_all_pnodes() -> None:
    pnodes = [
        facts(
            0, nic("eth1", 0, NicRole.EXPERIMENT, Tri.YES), nic("eth2", 0, NicRole.EXTRA, Tri.YES)
        ),
        facts(1, nic("eth1", 1, NicRole.EXPERIMENT, Tri.YES)),
    ]
    network = only_network(plan(simple(), pnodes, "role"))
    assert (network.mode, network.nics) == ("bridge", {"p0": "eth1", "p1": "eth1"})


def test_one_pnode_needs_no_uplink() -> None:
    network = only_network(plan(simple(2), [facts(0)], "single"))
    assert (network.mode, network.nics, network.mtu) == ("bridge", {"p0": None}, 1500)
    assert "only pnode p0" in network.reason


def test_vnetwork_on_one_of_two_pnodes_stays_local() -> None:
    platform = Platform(
        [Network("net", "10.0.0.0/24")],
        [VNodeSpec(n, pnode=0, ifaces=[IfaceSpec("if0", "net")]) for n in "ab"],
    )
    p = plan(platform, [facts(0), facts(1)], "local")
    assert only_network(p).mode == "bridge"
    assert p.state("p0").bridges[0].uplink is None
    assert p.state("p1").bridges == () and p.state("p1").namespaces == ()


def test_a_nic_bridges_one_vnetwork_the_next_goes_vxlan() -> None:
    platform = Platform(
        [Network("a", "10.8.0.0/24"), Network("b", "10.9.0.0/24")],
        [VNodeSpec("v{i}", per_pnode=1, ifaces=[IfaceSpec("if0", "a"), IfaceSpec("if1", "b")])],
    )
    one = [facts(i, nic("eth1", i, NicRole.EXTRA, Tri.YES)) for i in range(2)]
    a, b = plan(platform, one, "share").networks
    assert (a.mode, a.nics["p0"]) == ("bridge", "eth1")
    assert (b.mode, b.nics["p0"]) == ("vxlan", "eth0")
    assert "eth1 is already the uplink of another vnetwork" in b.reason
    two = [
        facts(i, nic("eth1", i, NicRole.EXTRA, Tri.YES), nic("eth2", i, NicRole.EXTRA, Tri.YES))
        for i in range(2)
    ]
    a, b = plan(platform, two, "share").networks
    assert (a.mode, a.nics["p0"], b.mode, b.nics["p0"]) == ("bridge", "eth1", "bridge", "eth2")


def test_vxlan_underlay_avoids_a_nic_taken_by_a_bridge() -> None:
    platform = Platform(
        [Network("a", "10.8.0.0/24"), Network("b", "10.9.0.0/24", "vxlan")],
        [VNodeSpec("v{i}", per_pnode=1, ifaces=[IfaceSpec("if0", "a"), IfaceSpec("if1", "b")])],
    )
    pnodes = [
        facts(i, nic("eth1", i, NicRole.EXTRA, Tri.YES, addresses=(f"172.30.0.{i + 1}/24",)))
        for i in range(2)
    ]
    a, b = plan(platform, pnodes, "taken").networks
    assert (a.mode, a.nics["p0"], b.mode, b.nics["p0"]) == ("bridge", "eth1", "vxlan", "eth0")


def test_probe_targets() -> None:
    pnodes = [
        facts(
            0,
            nic("eth1", 0, NicRole.EXPERIMENT, Tri.UNKNOWN),
            nic("eth2", 0, NicRole.EXTRA, Tri.YES),
        ),
        facts(1, nic("eth1", 1, NicRole.EXPERIMENT, Tri.NO), nic("eth2", 1, NicRole.EXTRA, Tri.NO)),
        facts(2, nic("eth1", 2, NicRole.EXPERIMENT, Tri.UNKNOWN)),
        facts(3),
    ]
    assert probe_targets(pnodes) == {"p0": "eth2", "p2": "eth1"}


# --- forced modes ---------------------------------------------------------------------


def dropping() -> list[PnodeFacts]:
    return [facts(i, nic("eth1", i, NicRole.EXPERIMENT, Tri.NO)) for i in range(2)]


def test_forced_bridge_on_a_dropping_underlay_is_refused_with_the_reason() -> None:
    with pytest.raises(PlatformError) as err:
        plan(simple(mode="bridge"), dropping(), "forced")
    text = str(err.value)
    assert "asks for mode: bridge" in text
    assert "eth1 drops foreign MACs" in text
    assert "--force" in text


def test_forced_bridge_with_force_is_planned_and_flagged() -> None:
    p = plan(simple(mode="bridge"), dropping(), "forced", force=True)
    network = only_network(p)
    assert network.mode == "bridge" and network.unreachable_expected
    assert network.nics == {"p0": "eth1", "p1": "eth1"}  # never eth0
    assert p.unreachable_expected == ("net",)
    assert "expected not to reach" in p.summary()
    control_only = plan(simple(mode="bridge"), [facts(0), facts(1)], "forced", force=True)
    assert only_network(control_only).nics == {"p0": None, "p1": None}


def test_forced_bridge_on_unknown_nics_is_built_and_says_so() -> None:
    pnodes = [facts(i, nic("eth1", i, NicRole.EXTRA, Tri.UNKNOWN)) for i in range(2)]
    network = only_network(plan(simple(mode="bridge"), pnodes, "unknown"))
    assert (network.mode, network.nics["p1"], network.unreachable_expected) == (
        "bridge",
        "eth1",
        False,
    )
    assert "foreign-MAC support not known" in network.reason


def test_forced_bridge_refused_when_the_probe_failed() -> None:
    pnodes = [facts(i, nic("eth1", i, NicRole.EXTRA, Tri.YES)) for i in range(2)]
    probe = {"p0": ProbeResult(False, True, "eth1")}
    with pytest.raises(PlatformError, match="runtime probe saw eth1 drop"):
        plan(simple(mode="bridge"), pnodes, "probe", probe=probe)


def test_forced_vxlan_always_works() -> None:
    bridgeable = [facts(i, nic("eth1", i, NicRole.EXTRA, Tri.YES)) for i in range(2)]
    for pnodes in (bridgeable, dropping(), [facts(0)]):
        network = only_network(plan(simple(mode="vxlan"), pnodes, "vx"))
        assert network.mode == "vxlan"
        assert "asks for mode: vxlan" in network.reason


# --- shaping, JSON, summary -----------------------------------------------------------


def test_shaping_goes_to_the_right_direction() -> None:
    iface = IfaceSpec(
        "if0",
        "net",
        output=LinkSpec(rate="10mbit"),
        input=LinkSpec(rate="1gbit", delay="5ms", loss="1%"),
    )
    platform = Platform([Network("net", "10.0.0.0/24")], [VNodeSpec("v", ifaces=[iface])])
    p = plan(platform, [facts(0)], "shape")
    (viface,) = p.state("p0").vifaces
    assert viface.output == Shaping(rate_bps=10_000_000)
    assert viface.input == Shaping(rate_bps=1_000_000_000, delay_ms=5.0, loss_pct=1.0)
    assert p.state("p0").kernel_needs() == {"veth", "bridge", "sch_tbf", "sch_netem"}


def test_rate_only_example_needs_no_netem_and_delay_example_does() -> None:
    two = [facts(0), facts(1)]
    shaped = plan(load_platform(EXAMPLES / "shaped.yaml"), two, "shaped")
    assert all(
        "sch_netem" not in s.kernel_needs() and "sch_tbf" in s.kernel_needs() for s in shaped.states
    )
    delayed = plan(load_platform(EXAMPLES / "delay.yaml"), two, "delay")
    assert all("sch_netem" in s.kernel_needs() for s in delayed.states)


def test_json_round_trip() -> None:
    pnodes = [facts(i, nic("eth1", i, NicRole.EXTRA, Tri.YES)) for i in range(2)]
    platform = Platform(
        [Network("a", "10.8.0.0/24"), Network("b", "10.9.0.0/24", "vxlan")],
        [
            VNodeSpec(
                "v{i}",
                per_pnode=2,
                ifaces=[
                    IfaceSpec("if0", "a", output=LinkSpec(rate="10mbit")),
                    IfaceSpec("if1", "b"),
                ],
            )
        ],
    )
    p = plan(platform, pnodes, "json")
    text = json.dumps(p.to_json())
    assert Plan.from_json(json.loads(text)) == p
    for state in p.states:
        assert PnodeState.from_json(json.loads(json.dumps(state.to_json()))) == state


def test_summary_names_modes_and_reasons() -> None:
    p = plan(simple(2), [facts(0), facts(1)], "sum")
    text = p.summary()
    assert "vnetwork net (192.168.0.0/22): vxlan" in text
    assert f"VNI {vni_base('sum')}" in text and "MTU 1450" in text
    assert "why: unicast VXLAN over the control NIC" in text
    assert "pnode p1: 2 vnodes" in text
    assert p.reasons()["net"].startswith("vxlan: unicast VXLAN")


def test_pnode_facts_from_a_provider_node() -> None:
    node = Node(
        "n1", "n1.example", SSHEndpoint("192.0.2.1", port=2201), addresses=("198.51.100.7",)
    )
    with_control = PnodeFacts.from_node(node, [control(4)])
    assert with_control.address == "10.0.0.5"  # the control NIC's, never the forwarded SSH host
    assert PnodeFacts.from_node(node, []).address == "198.51.100.7"
    bare = Node("n2", "n2", SSHEndpoint("192.0.2.1"))
    with pytest.raises(OmnibedError, match="no address on its control NIC"):
        PnodeFacts.from_node(bare, [])


def test_addresses_in_the_plan_are_inside_their_cidr(big: Plan) -> None:
    for v in big.vnodes:
        for i in v.ifaces:
            iface = ipaddress.ip_interface(i.address)
            assert iface.network == ipaddress.ip_network(
                "10.8.0.0/16" if i.network == "a" else "10.9.0.0/16"
            )


def test_check_fits_counts_instead_of_expanding() -> None:
    huge = simple(per_pnode=10_000, cidr="10.0.0.0/8")
    with pytest.raises(PlatformError, match="1000000 vnodes .* at most 100000") as refused:
        check_fits(huge, 100)  # a million vnodes: refused by arithmetic, nothing expanded
    assert refused.value.where == "nodes"


def test_check_fits_before_the_pnode_ids_are_known() -> None:
    platform = Platform(nodes=[VNodeSpec("a", pnode="pnode-9"), VNodeSpec("b", pnode=3)])
    check_fits(platform, 4)  # a node id cannot be checked before reserving
    with pytest.raises(PlatformError, match="pnode 3 does not exist") as refused:
        check_fits(platform, 2)
    assert refused.value.where == "nodes[1].pnode"
    with pytest.raises(PlatformError, match="'pnode-9' is not one of the reserved pnodes"):
        check_fits(platform, ["p0", "p1", "p2", "p3"])


def test_a_pnode_without_a_control_address_is_a_testbed_failure_not_bad_input() -> None:
    """The provider gave too little (exit status 1), the user's platform is not at fault."""
    node = Node("p0", "p0.example", SSHEndpoint("192.0.2.1"))
    with pytest.raises(OmnibedError, match="no address on its control NIC") as caught:
        PnodeFacts.from_node(node, [Nic("eth0", "52:54:00:00:00:01", NicRole.CONTROL)])
    assert exit_status(caught.value) == 1


def test_a_pnode_without_a_control_nic_is_a_testbed_failure_not_bad_input() -> None:
    bare = PnodeFacts("p0", "10.0.0.1", (nic("eth1", 0, NicRole.EXTRA, Tri.NO),))
    other = PnodeFacts("p1", "10.0.0.2", (nic("eth1", 1, NicRole.EXTRA, Tri.NO),))
    with pytest.raises(OmnibedError, match="lists no control NIC") as caught:
        plan(simple(), [bare, other], "bare")
    assert exit_status(caught.value) == 1


# --- a vnetwork wider than one bridge -----------------------------------------------------


def one_pnode_lan(vnodes: int, mode: str = "auto", ifaces: int = 1) -> Platform:
    lan = [IfaceSpec(f"if{j}", "lan") for j in range(ifaces)]
    return Platform(
        [Network("lan", "10.0.0.0/8", mode)], [VNodeSpec("v{i}", per_pnode=vnodes, ifaces=lan)]
    )


def test_a_vnetwork_that_fits_one_bridge_gets_one_bridge_and_no_trunk() -> None:
    state = plan(one_pnode_lan(BRIDGE_VIFACES), [facts(0)], "fits").state("p0")
    assert [b.name for b in state.bridges] == [f"ob{instance_tag('fits')}b0"]
    assert state.trunks == ()
    assert {v.bridge for v in state.vifaces} == {state.bridges[0].name}


def test_a_broadcast_never_queues_more_frames_than_the_backlog_takes() -> None:
    """A chain floods at most two bridges at each step, each with its vifaces and at most
    two trunks and an uplink."""
    assert 2 * (BRIDGE_VIFACES + 3) < FLOOD_BACKLOG


@pytest.mark.parametrize(
    ("vnodes", "count"), [(BRIDGE_VIFACES + 1, 2), (1100, 3), (2000, 5), (10_000, 21)]
)
def test_a_wider_vnetwork_is_a_chain_of_bridges_filled_evenly(vnodes: int, count: int) -> None:
    state = plan(one_pnode_lan(vnodes), [facts(0)], "wide").state("p0")
    assert len(state.bridges) == count and {b.network for b in state.bridges} == {"lan"}
    held = {b.name: 0 for b in state.bridges}
    for v in state.vifaces:
        held[v.bridge] += 1  # a KeyError: a viface on a bridge the state does not declare
    assert sum(held.values()) == vnodes
    assert max(held.values()) <= BRIDGE_VIFACES and max(held.values()) - min(held.values()) <= 1
    names = [b.name for b in state.bridges]
    assert [(t.bridge, t.parent) for t in state.trunks] == list(
        zip(names[1:], names[:-1], strict=True)
    )
    links = [v.host_ifname for v in state.vifaces] + names
    links += [end for t in state.trunks for end in (t.name, t.peer)]
    assert len(links) == len(set(links))
    assert all(len(name) <= 15 and name.startswith(f"ob{instance_tag('wide')}") for name in links)


def test_the_uplink_and_the_vxlan_go_on_the_first_bridge_only() -> None:
    pnodes = [facts(i, nic("eth1", i, NicRole.EXTRA, Tri.YES)) for i in range(2)]
    bridged = plan(one_pnode_lan(1100), pnodes, "uplink").state("p0")
    assert [b.uplink for b in bridged.bridges] == ["eth1", None, None]
    vxlan = plan(one_pnode_lan(1100, mode="vxlan"), pnodes, "overlay").state("p1")
    assert [x.bridge for x in vxlan.vxlans] == [vxlan.bridges[0].name]
    assert {t.mtu for t in vxlan.trunks} == {b.mtu for b in vxlan.bridges} == {1450}


def test_two_ifaces_of_a_vnode_on_one_vnetwork_count_as_two_ports() -> None:
    state = plan(one_pnode_lan(BRIDGE_VIFACES, ifaces=2), [facts(0)], "two").state("p0")
    assert len(state.bridges) == 2 and len(state.trunks) == 1


def test_bridge_chain_names_fit_ifnamsiz_at_the_longest_chain() -> None:
    chain = bridge_chain("abcdef", 255, "lan", 1500, None, MAX_PORTS)
    assert len(chain.bridges) == MAX_CHAIN
    names = [b.name for b in chain.bridges] + [e for t in chain.trunks for e in (t.name, t.peer)]
    assert max(len(name) for name in names) <= 15 and len(names) == len(set(names))
    assert chain.bridge_of(MAX_PORTS - 1) == chain.bridges[-1].name


def test_check_fits_refuses_more_vifaces_than_a_chain_of_bridges_holds() -> None:
    ifaces = -(-(MAX_PORTS + 1) // 10_000)
    too_wide = one_pnode_lan(10_000, ifaces=ifaces)
    words = f"'lan' would put {ifaces * 10_000} .* {MAX_PORTS}"
    with pytest.raises(PlatformError, match=words) as e:
        check_fits(too_wide, 1)
    assert e.value.where == "networks[0]"
    check_fits(one_pnode_lan(10_000), 1)  # the most vnodes a pnode holds, in one vnetwork


def test_trunks_survive_the_json_round_trip() -> None:
    state = plan(one_pnode_lan(1100), [facts(0)], "json").state("p0")
    assert PnodeState.from_json(json.loads(json.dumps(state.to_json()))) == state
