"""The platform model: units, the YAML shape of the issue, and every refusal with its message."""

from __future__ import annotations

from pathlib import Path

import pytest

from omnibed.core.errors import PlatformError
from omnibed.emulator.agent.state import Shaping
from omnibed.emulator.model import (
    IfaceSpec,
    LinkSpec,
    Network,
    Platform,
    VNodeSpec,
    load_platform,
    parse_loss,
    parse_rate,
    parse_time,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

ISSUE_YAML = """
networks:
  - {name: vnetwork, cidr: 192.168.0.0/22, mode: auto}
nodes:
  - name: vnode-{i}
    per_pnode: 1
    ifaces:
      - name: if0
        network: vnetwork
        address: auto
        output: {rate: 100mbit}
        input: {rate: 100mbit, delay: 10ms}
"""


@pytest.mark.parametrize(
    ("text", "bps"),
    [
        ("100mbit", 100_000_000),
        ("100Mbit", 100_000_000),
        ("1gbit", 1_000_000_000),
        ("512kbit", 512_000),
        ("1.5mbit", 1_500_000),
        ("2mibit", 2 * 1024 * 1024),
        ("9600bit", 9600),
        ("9600", 9600),
        (10_000_000, 10_000_000),
        (2.5e6, 2_500_000),
    ],
)
def test_rates_are_bits_per_second(text: object, bps: int) -> None:
    assert parse_rate(text) == bps


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("100mbps", "ambiguous"),
        ("100MBps", "ambiguous"),
        ("100furlongs", "unknown unit"),
        ("fast", "not a number"),
        ("0mbit", "at least 1 bit/s"),
        (-5, "negative"),
        (True, "not a number"),
    ],
)
def test_bad_rates_say_why(text: object, message: str) -> None:
    with pytest.raises(PlatformError, match=message):
        parse_rate(text)


def test_ambiguous_rate_suggests_the_bit_spelling() -> None:
    with pytest.raises(PlatformError, match="100mbit"):
        parse_rate("100mbps")


@pytest.mark.parametrize(
    ("text", "ms"),
    [("10ms", 10.0), ("1s", 1000.0), ("500us", 0.5), ("0.25ms", 0.25), (7, 7.0), ("3", 3.0)],
)
def test_times_are_milliseconds(text: object, ms: float) -> None:
    assert parse_time(text) == pytest.approx(ms)


def test_bad_time() -> None:
    with pytest.raises(PlatformError, match="unknown unit 'h'"):
        parse_time("1h")


@pytest.mark.parametrize(("text", "pct"), [("1%", 1.0), ("0.1%", 0.1), (5, 5.0), ("100%", 100.0)])
def test_loss_is_a_percentage(text: object, pct: float) -> None:
    assert parse_loss(text) == pytest.approx(pct)


@pytest.mark.parametrize(("text", "message"), [("101%", "more than 100"), ("1ms", "percentage")])
def test_bad_loss(text: object, message: str) -> None:
    with pytest.raises(PlatformError, match=message):
        parse_loss(text)


def test_linkspec_parses_into_shaping() -> None:
    spec = LinkSpec(rate="10mbit", delay="5ms", jitter="1ms", loss="0.5%")
    assert spec.shaping() == Shaping(rate_bps=10_000_000, delay_ms=5.0, jitter_ms=1.0, loss_pct=0.5)
    assert LinkSpec(rate="1gbit").shaping().needs_netem() is False


def test_issue_yaml_shape_loads() -> None:
    platform = load_platform(ISSUE_YAML)
    assert platform.networks == (Network("vnetwork", "192.168.0.0/22", "auto"),)
    (node,) = platform.nodes
    assert (node.name, node.per_pnode, node.pnode) == ("vnode-{i}", 1, None)
    (iface,) = node.ifaces
    assert iface.output == LinkSpec(rate=100_000_000)
    assert iface.input == LinkSpec(rate=100_000_000, delay=10.0)
    assert platform.vxlan_port == 4789


def test_the_same_platform_from_python() -> None:
    built = Platform(
        networks=[Network("vnetwork", "192.168.0.0/22")],
        nodes=[
            VNodeSpec(
                "vnode-{i}",
                per_pnode=1,
                ifaces=[
                    IfaceSpec(
                        "if0",
                        "vnetwork",
                        output=LinkSpec(rate="100mbit"),
                        input=LinkSpec(rate="100mbit", delay="10ms"),
                    )
                ],
            )
        ],
    )
    assert built == load_platform(ISSUE_YAML)


@pytest.mark.parametrize("name", ["listing1", "bridge", "vxlan", "shaped", "delay"])
def test_examples_load(name: str) -> None:
    platform = load_platform(EXAMPLES / f"{name}.yaml")
    assert platform.nodes


def test_example_modes_and_shaping() -> None:
    assert load_platform(EXAMPLES / "bridge.yaml").networks[0].mode == "bridge"
    assert load_platform(EXAMPLES / "vxlan.yaml").networks[0].mode == "vxlan"
    shaped = load_platform(EXAMPLES / "shaped.yaml")
    shapings = [s for n in shaped.nodes for i in n.ifaces for s in (i.output, i.input) if s]
    assert shapings and all(s.rate and s.delay is None and s.loss is None for s in shapings)
    delayed = load_platform(EXAMPLES / "delay.yaml")
    assert any(
        i.output and i.output.shaping().needs_netem() for n in delayed.nodes for i in n.ifaces
    )


def test_path_as_string_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(ISSUE_YAML)
    assert load_platform(str(path)) == load_platform(path)
    with pytest.raises(PlatformError, match="cannot read platform file"):
        load_platform(str(tmp_path / "absent.yaml"))


def test_error_in_a_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(ISSUE_YAML.replace("100mbit}", "100mbps}", 1))
    where = r"bad\.yaml:11:24: nodes\[0\]\.ifaces\[0\]\.output\.rate: rate '100mbps'"
    with pytest.raises(PlatformError, match=where):
        load_platform(path)


def test_invalid_yaml() -> None:
    with pytest.raises(PlatformError, match="not valid YAML"):
        load_platform("networks: [\n  {name: x")


def _platform(**changes: object) -> dict:
    node = {"name": "v{i}", "per_pnode": 1, "ifaces": [{"name": "if0", "network": "net"}]}
    data = {"networks": [{"name": "net", "cidr": "10.0.0.0/24"}], "nodes": [node]}
    data.update(changes)
    return data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_platform(vxlan_prot=1), r"unknown key 'vxlan_prot'.*did you mean 'vxlan_port'"),
        (
            _platform(networks=[{"name": "net", "cidr": "10.0.0.0/24", "mdoe": "auto"}]),
            r"networks\[0\]: unknown key 'mdoe'.*did you mean 'mode'",
        ),
        (
            _platform(nodes=[{"name": "a", "ifaces": [{"name": "i", "network": "net", "x": 1}]}]),
            r"nodes\[0\]\.ifaces\[0\]: unknown key 'x'",
        ),
        (
            _platform(
                nodes=[
                    {"name": "a", "ifaces": [{"name": "i", "network": "net", "input": {"rat": 1}}]}
                ]
            ),
            r"nodes\[0\]\.ifaces\[0\]\.input: unknown key 'rat'.*did you mean 'rate'",
        ),
        (
            _platform(nodes=[{"name": "a", "ifaces": [{"name": "i", "network": "nett"}]}]),
            r"vnode 'a' iface 'i': unknown vnetwork 'nett'",
        ),
        (
            _platform(networks=[{"name": "net"}]),
            r"networks\[0\]: missing key 'cidr'",
        ),
        (_platform(nodes=[]), "no vnodes"),
        (_platform(vxlan_port=70000), "vxlan_port 70000"),
        (_platform(networks=[{"name": "net", "cidr": "10.0.0.0/33"}]), "not a network"),
        (
            _platform(networks=[{"name": "net", "cidr": "10.0.0.1/24"}]),
            "did you mean 10.0.0.0/24",
        ),
        (_platform(networks=[{"name": "net", "cidr": "10.0.0.0/24", "mode": "gre"}]), "mode 'gre'"),
        ([1, 2], "expected a mapping"),
    ],
)
def test_bad_yaml_says_which_key_and_where(data: object, message: str) -> None:
    with pytest.raises(PlatformError, match=message):
        load_platform(data)  # type: ignore[arg-type]


def test_unknown_network_lists_the_known_ones() -> None:
    data = _platform(nodes=[{"name": "a", "ifaces": [{"name": "i", "network": "nett"}]}])
    with pytest.raises(PlatformError, match=r"unknown vnetwork 'nett' \(known: 'net'\)"):
        load_platform(data)


def test_duplicate_network_names() -> None:
    nets = [Network("a", "10.0.0.0/24"), Network("a", "10.0.1.0/24")]
    with pytest.raises(PlatformError, match="two vnetworks are called 'a'"):
        Platform(nets, [VNodeSpec("v")])


def test_duplicate_vnode_names() -> None:
    with pytest.raises(PlatformError, match="two vnodes are called 'v'"):
        Platform([], [VNodeSpec("v"), VNodeSpec("v")])


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("10.0.0.0/22", "10.0.2.0/24"),
        ("10.0.0.0/24", "10.0.0.0/24"),
        ("10.0.0.0/24", "10.0.0.128/25"),
    ],
)
def test_overlapping_networks(first: str, second: str) -> None:
    nets = [Network("a", first), Network("b", second)]
    with pytest.raises(PlatformError, match=rf"'a' \({first}\) and 'b' \({second}\) overlap"):
        Platform(nets, [VNodeSpec("v")])


def test_disjoint_networks_are_fine() -> None:
    nets = [Network("a", "10.0.0.0/24"), Network("b", "10.0.1.0/24")]
    assert len(Platform(nets, [VNodeSpec("v")]).networks) == 2


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("10.0.1.5", r"10\.0\.1\.5 is outside vnetwork 'net' \(10\.0\.0\.0/24\)"),
        ("10.0.0.0", "network or broadcast"),
        ("10.0.0.255", "network or broadcast"),
        ("10.0.0.5/24", "without prefix"),
        ("10.0.0.300", "not an IP address"),
    ],
)
def test_bad_explicit_addresses(address: str, message: str) -> None:
    node = VNodeSpec("v", ifaces=[IfaceSpec("if0", "net", address="auto")])
    with pytest.raises(PlatformError, match=message):
        Platform(
            [Network("net", "10.0.0.0/24")],
            [node, VNodeSpec("w", ifaces=[IfaceSpec("if0", "net", address=address)])],
        )


def test_same_explicit_address_twice() -> None:
    nodes = [VNodeSpec(n, ifaces=[IfaceSpec("if0", "net", address="10.0.0.7")]) for n in "ab"]
    with pytest.raises(PlatformError, match="10.0.0.7 is already given to vnode 'a'"):
        Platform([Network("net", "10.0.0.0/24")], nodes)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "v", "per_pnode": 2}, r"needs '\{i\}' in the name"),
        ({"name": "v{i}", "per_pnode": 0}, "at least 1"),
        ({"name": "v{i}", "per_pnode": 1, "pnode": 0}, "not both"),
        ({"name": "v{i}"}, "only expands with per_pnode"),
        ({"name": "v", "pnode": -1}, "must be an index"),
        ({"name": "bad name"}, "not valid"),
        ({"name": "x" * 64}, "not valid"),
        (
            {"name": "v{i}", "per_pnode": 2, "ifaces": [IfaceSpec("if0", "n", address="1.2.3.4")]},
            "would be given to 2 vnodes",
        ),
        ({"name": "v", "ifaces": [IfaceSpec("a", "n"), IfaceSpec("a", "n")]}, "two ifaces"),
    ],
)
def test_bad_vnode_specs(kwargs: dict, message: str) -> None:
    with pytest.raises(PlatformError, match=message):
        VNodeSpec(**kwargs)


@pytest.mark.parametrize("name", ["", "a" * 16, "lo", "a/b", "a b"])
def test_bad_iface_names(name: str) -> None:
    with pytest.raises(PlatformError, match="not a valid Linux interface name"):
        IfaceSpec(name, "net")


def test_any_existing_file_and_one_line_yaml(tmp_path: Path) -> None:
    path = tmp_path / "platform.txt"
    path.write_text(ISSUE_YAML)
    assert load_platform(str(path)) == load_platform(ISSUE_YAML)
    one_line = "{nodes: [" + ", ".join(f"{{name: v{i}}}" for i in range(40)) + "]}"
    assert len(load_platform(one_line).nodes) == 40


def test_iface_names_are_measured_in_bytes() -> None:
    assert IfaceSpec("é" * 7, "net").name == "é" * 7  # 14 bytes
    with pytest.raises(PlatformError, match="1 to 15 bytes in UTF-8") as refused:
        IfaceSpec("é" * 8, "net")  # 8 characters, 16 bytes
    assert refused.value.where == "name"


def test_small_aliases_still_load() -> None:
    platform = load_platform(
        """
networks: [{name: net, cidr: 10.0.0.0/24}]
nodes:
  - name: a
    ifaces: [{name: if0, network: net, output: &wan {rate: 10mbit, delay: 5ms}, input: *wan}]
"""
    )
    (iface,) = platform.nodes[0].ifaces
    assert iface.output == iface.input == LinkSpec(rate=10_000_000, delay=5.0)


def test_an_alias_bomb_is_refused_with_its_place() -> None:
    levels = ["a: &a [x, x, x, x, x, x, x, x, x]"] + [
        f"{chr(98 + k)}: &{chr(98 + k)} [{', '.join([f'*{chr(97 + k)}'] * 9)}]" for k in range(8)
    ]
    with pytest.raises(PlatformError, match=r"^platform:\d+:\d+: its aliases expand to more"):
        load_platform("\n".join(levels) + "\nnodes: *i\n")
