"""Bad platform files through the real `omnibed` CLI: each one gets one line on stderr and
exit status 2, and nothing is built (no namespace, no link, no saved plan, no reservation).

The files are those an adversarial reviewer tried: malformed YAML, YAML tags, alias bombs,
bad cidrs, impossible rates and times, hostile names, unknown keys and huge vnode counts.
They run against one local-testbed reservation shared by the module, so a file the CLI
wrongly accepted would really be built, and be seen.
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from omnibed.api import Omnibed
from omnibed.emulator.coordinator import PLAN_FILE
from omnibed.emulator.planner import MAX_PORTS, instance_tag, link_group

pytestmark = pytest.mark.root

OMNIBED = str(Path(sys.executable).with_name("omnibed"))
CLI_MEMORY_LIMIT = 1 << 30  # address space given to the CLI for the huge vnode counts


def platform(iface: str = "{name: if0, network: lan}", node: str = "", cidr: str = "10.9.0.0/24"):
    """A valid platform of two vnodes per pnode, with `iface` and extra `node` keys."""
    return (
        f"networks:\n  - {{name: lan, cidr: {cidr}}}\n"
        f"nodes:\n  - name: v{{i}}\n    per_pnode: 2\n{node}    ifaces:\n      - {iface}\n"
    )


def with_rate(rate: str) -> str:
    return platform(f"{{name: if0, network: lan, output: {{rate: {rate}}}}}")


def named(vnode: str) -> str:
    return f"nodes:\n  - name: {vnode}\n"


def per_pnode(count: str) -> str:
    return platform(node=f"    per_pnode: {count}\n").replace("    per_pnode: 2\n", "", 1)


def wider_than_a_chain_of_bridges() -> str:
    """10,000 vnodes per pnode with 63 ifaces each on one vnetwork: more vifaces than its
    chain of bridges on a pnode holds."""
    ifaces = "\n      - ".join(f"{{name: if{j}, network: lan}}" for j in range(63))
    wide = per_pnode("10000").replace("{name: if0, network: lan}", ifaces)
    return wide.replace("10.9.0.0/24", "10.0.0.0/8")


LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + k)}: &{chr(98 + k)} [{', '.join([f'*{chr(97 + k)}'] * 9)}]\n" for k in range(8)
)
MERGES = "a: &a {k0: 1, k1: 1, k2: 1, k3: 1}\n" + "".join(
    f"{chr(98 + k)}: &{chr(98 + k)} {{<<: [{', '.join([f'*{chr(97 + k)}'] * 9)}]}}\n"
    for k in range(8)
)
PWNED = "/tmp/omnibed-test-yaml-tag-ran"

# (id, file content, words the one line must hold)
BAD: list[tuple[str, str | bytes, list[str]]] = [
    # malformed YAML: one line with line:column
    ("unclosed-flow", "nodes: [ {name: a\n", ["not valid YAML", ".yaml:2:1:"]),
    ("tab-indent", "nodes:\n\t- name: a\n", ["not valid YAML", ".yaml:2:1:"]),
    ("mapping-in-scalar", "nodes: a: b\n", ["not valid YAML", ".yaml:1:9:"]),
    ("unterminated-string", 'nodes:\n  - name: "a\n', ["not valid YAML", ".yaml:3:1:"]),
    ("not-utf8", b"nodes:\n  - name: \xff\xfe\n", ["not valid YAML", "invalid start byte"]),
    ("nul-byte", "nodes:\n  - name: a\x00b\n", ["not valid YAML", "special characters"]),
    ("empty", "", ["expected a mapping", "nodes"]),
    ("top-level-list", "- a\n- b\n", ["expected a mapping"]),
    ("two-documents", "nodes: []\n---\nnodes: []\n", ["not valid YAML", "single document"]),
    ("duplicate-key", named("a") + "nodes: []\n", ["duplicate key 'nodes'", ".yaml:3:1:"]),
    # YAML tags: only plain mappings, lists and scalars
    ("python-apply", f"nodes: !!python/object/apply:os.system ['touch {PWNED}']\n", ["tag"]),
    ("python-name", "nodes: !!python/name:os.system\n", ["tag", "python/name"]),
    ("python-new", "nodes: !!python/object/new:os.system [id]\n", ["tag"]),
    ("custom-tag", "nodes:\n  - !vnode {name: a}\n", ["tag", "!vnode"]),
    ("binary-name", "nodes:\n  - name: !!binary aGVsbG8=\n", ["tag '!!binary'", ".yaml:2:11:"]),
    # alias bombs, cycles, nesting
    ("billion-laughs", LAUGHS + "nodes: *i\n", ["aliases", "expand"]),
    ("merge-bomb", MERGES + "nodes: []\n", ["aliases", "expand"]),
    ("recursive-alias", "nodes: &n [*n]\n", ["nested"]),
    ("deep-nesting", "nodes: " + "[" * 5000 + "]" * 5000 + "\n", ["nested"]),
    # cidrs
    (
        "overlapping-cidrs",
        "networks:\n  - {name: a, cidr: 10.0.0.0/24}\n  - {name: b, cidr: 10.0.0.128/25}\n"
        + named("v"),
        ["networks[1]", "overlap"],
    ),
    ("host-bits-set", platform(cidr="10.9.0.1/24"), ["networks[0].cidr", "10.9.0.0/24"]),
    ("not-a-cidr", platform(cidr="banana"), ["networks[0].cidr", "not a network"]),
    ("bad-octet", platform(cidr="300.0.0.0/8"), ["networks[0].cidr", "not a network"]),
    ("too-small-cidr", platform(cidr="10.9.0.0/30"), ["bad.yaml: networks[0].cidr", "larger"]),
    ("host-cidr", platform(cidr="10.9.0.7/32"), ["bad.yaml: networks[0].cidr", "larger"]),
    # rates, times, loss
    ("rate-zero", with_rate("0"), ["nodes[0].ifaces[0].output.rate", "at least 1 bit/s"]),
    ("rate-inf", with_rate(".inf"), ["nodes[0].ifaces[0].output.rate", "finite"]),
    ("rate-nan", with_rate(".nan"), ["nodes[0].ifaces[0].output.rate", "finite"]),
    ("rate-negative", with_rate("-5"), ["output.rate", "negative"]),
    ("rate-negative-unit", with_rate("-5mbit"), ["output.rate", "not a number"]),
    ("rate-exponent", with_rate("1e9mbit"), ["output.rate", "not a number"]),
    ("rate-too-fast", with_rate("1000000000mbit"), ["output.rate", "at most"]),
    ("rate-float-huge", with_rate("1.0e+300"), ["output.rate", "at most"]),
    ("rate-bytes", with_rate("100mbps"), ["output.rate", "ambiguous"]),
    ("rate-bool", with_rate("true"), ["output.rate", "not a number"]),
    (
        "delay-inf",
        platform("{name: if0, network: lan, input: {delay: .inf}}"),
        ["nodes[0].ifaces[0].input.delay", "finite"],
    ),
    (
        "delay-huge",
        platform("{name: if0, network: lan, input: {delay: 99999999s}}"),
        ["input.delay", "at most"],
    ),
    (
        "jitter-negative",
        platform("{name: if0, network: lan, input: {jitter: -1}}"),
        ["input.jitter", "negative"],
    ),
    (
        "loss-nan",
        platform("{name: if0, network: lan, input: {loss: .nan}}"),
        ["input.loss", "finite"],
    ),
    ("loss-over-100", platform("{name: if0, network: lan, input: {loss: 101%}}"), ["100%"]),
    # names
    ("vnode-space", named('"a b"'), ["nodes[0].name", "not valid"]),
    ("vnode-slash", named("../../etc"), ["nodes[0].name", "not valid"]),
    ("vnode-shell", named('"a;rm -rf /"'), ["nodes[0].name", "not valid"]),
    ("vnode-subshell", named('"$(reboot)"'), ["nodes[0].name", "not valid"]),
    ("vnode-long-unicode", named("é" * 300), ["nodes[0].name", "not valid"]),
    ("vnode-300-chars", named("a" * 300), ["nodes[0].name", "not valid"]),
    ("vnode-markup", named('"[/]"'), ["nodes[0].name", "'[/]'"]),
    ("vnode-newline", named('"a\\nb"'), ["nodes[0].name", "not valid"]),
    (
        "vnode-index-overflows",
        platform().replace("v{i}", "v" * 62 + "{i}").replace("per_pnode: 2", "per_pnode: 6"),
        ["v{i}", "63"],
    ),
    (
        "vnetwork-space",
        "networks:\n  - {name: 'my lan', cidr: 10.0.0.0/24}\n" + named("v"),
        ["networks[0].name", "not valid"],
    ),
    ("iface-utf8-bytes", platform("{name: ééééééééé, network: lan}"), ["ifaces[0].name", "bytes"]),
    ("iface-16-chars", platform("{name: abcdefghijklmnop, network: lan}"), ["ifaces[0].name"]),
    ("iface-slash", platform("{name: if/0, network: lan}"), ["ifaces[0].name", "'/'"]),
    ("iface-colon", platform("{name: 'eth0:1', network: lan}"), ["ifaces[0].name"]),
    ("iface-dotdot", platform("{name: '..', network: lan}"), ["ifaces[0].name"]),
    ("iface-tab", platform('{name: "if\\t0", network: lan}'), ["ifaces[0].name"]),
    # unknown keys and structure
    ("unknown-top-key", "node:\n  - name: a\n", ["unknown key 'node'", "did you mean 'nodes'"]),
    ("unknown-iface-key", platform("{name: if0, network: lan, adress: auto}"), ["ifaces[0]"]),
    (
        "unknown-link-key",
        platform("{name: if0, network: lan, output: {bandwidth: 1mbit}}"),
        ["nodes[0].ifaces[0].output", "unknown key 'bandwidth'"],
    ),
    ("unknown-vnetwork", platform("{name: if0, network: wan}"), ["unknown vnetwork 'wan'"]),
    (
        "bad-mode",
        "networks:\n  - {name: a, cidr: 10.0.0.0/24, mode: tunnel}\n" + named("v"),
        ["networks[0].mode", "tunnel"],
    ),
    ("bad-vxlan-port", "vxlan_port: 70000\n" + named("v"), ["vxlan_port", "70000"]),
    ("pnode-absent", named("v") + "    pnode: 5\n", ["pnode 5 does not exist"]),
    # vnode counts
    ("per-pnode-zero", per_pnode("0"), ["nodes[0].per_pnode", "at least 1"]),
    ("per-pnode-negative", per_pnode("-1"), ["nodes[0].per_pnode", "at least 1"]),
    ("per-pnode-word", per_pnode("many"), ["nodes[0].per_pnode", "whole number"]),
    ("per-pnode-fraction", per_pnode("1.5"), ["nodes[0].per_pnode", "whole number"]),
    ("per-pnode-50000", per_pnode("50000"), ["nodes[0].per_pnode", "at most"]),
    ("per-pnode-900000", per_pnode("900000"), ["nodes[0].per_pnode", "at most"]),
    ("per-pnode-100000000", per_pnode("100000000"), ["nodes[0].per_pnode", "at most"]),
    ("bridge-ports", wider_than_a_chain_of_bridges(), ["lan", "630000", f"{MAX_PORTS}"]),
]


@pytest.fixture(scope="module")
def reservation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Omnibed, str]]:
    """One local-testbed reservation of two pnodes for the whole module."""
    api = Omnibed(home=tmp_path_factory.mktemp("home"))
    request = api.make_request(
        "local", nodes=2, walltime=timedelta(hours=1), options={"profile": "xen"}
    )
    api.reserve("local", request)
    try:
        api.wait(request.name)
        yield api, request.name
    finally:
        api.release(request.name)


def omnibed(home: Path, *args: str, memory: int | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMNIBED_HOME": str(home), "COLUMNS": "200"}

    def limit() -> None:
        if memory is not None:
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    return subprocess.run(
        [OMNIBED, *args], env=env, capture_output=True, text=True, timeout=300, preexec_fn=limit
    )


def assert_one_line(result: subprocess.CompletedProcess, words: list[str]) -> None:
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith("error: "), lines[0]
    assert len(lines[0]) < 400, lines[0]
    for word in words:
        assert word in lines[0], lines[0]


def built_anything(api: Omnibed, name: str) -> list[str]:
    """What the emulation of `name` left: vnode namespaces, links of its group, its plan."""
    found = []
    listing = subprocess.run(["ip", "-j", "netns", "list"], capture_output=True, text=True)
    found += [
        ns["name"]
        for ns in json.loads(listing.stdout or "[]")
        if ns["name"].startswith(f"ob-{instance_tag(name)}-")
    ]
    group = str(link_group(name))
    for node in api.nodes(name):
        links = subprocess.run(
            ["ip", "-j", "-n", node.hostname, "link", "show"], capture_output=True, text=True
        )
        found += [link["ifname"] for link in json.loads(links.stdout) if link.get("group") == group]
    if (api.reservation_dir(name) / PLAN_FILE).exists():
        found.append(PLAN_FILE)
    return found


@pytest.mark.parametrize(("content", "words"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_platform_is_refused_in_one_line_before_anything_is_built(
    reservation: tuple[Omnibed, str], tmp_path: Path, content: str | bytes, words: list[str]
) -> None:
    api, name = reservation
    path = tmp_path / "bad.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    result = omnibed(api.home, "emulate", "up", name, str(path), memory=CLI_MEMORY_LIMIT)
    assert_one_line(result, words)
    assert not os.path.exists(PWNED)
    assert built_anything(api, name) == []


def test_yaml_errors_name_the_line_and_column(reservation: tuple[Omnibed, str], tmp_path: Path):
    api, name = reservation
    path = tmp_path / "bad.yaml"
    path.write_text(platform("{name: if0, network: lan, output: {rate: .inf}}"))
    result = omnibed(api.home, "emulate", "up", name, str(path))
    assert_one_line(result, [])
    assert re.search(r"bad\.yaml:7:\d+: nodes\[0\]\.ifaces\[0\]\.output\.rate: ", result.stderr)


@pytest.mark.parametrize("count", ["900000", "100000000"])
def test_reserve_and_run_refuses_a_bad_platform_before_reserving(tmp_path: Path, count: str):
    path = tmp_path / "huge.yaml"
    path.write_text(per_pnode(count))
    result = omnibed(
        tmp_path,
        "reserve-and-run",
        "--testbed",
        "local",
        "--nodes",
        "2",
        "--platform",
        str(path),
        "--",
        "true",
        memory=CLI_MEMORY_LIMIT,
    )
    assert_one_line(result, ["nodes[0].per_pnode", "at most"])
    assert json.loads(omnibed(tmp_path, "ls", "--json").stdout) == []


def test_reserve_and_run_refuses_a_plan_that_does_not_fit_before_reserving(tmp_path: Path):
    path = tmp_path / "small.yaml"
    path.write_text(platform(cidr="10.9.0.0/29"))  # 6 addresses for 2 x 4 vnodes
    result = omnibed(
        tmp_path, "reserve-and-run", "--testbed", "local", "--nodes", "4", "--platform",
        str(path), "--", "true",
    )  # fmt: skip
    assert_one_line(result, ["lan", "use a larger cidr"])
    assert json.loads(omnibed(tmp_path, "ls", "--json").stdout) == []


def test_exec_in_an_unknown_vnode_is_bad_input(reservation: tuple[Omnibed, str], tmp_path: Path):
    api, name = reservation
    path = tmp_path / "good.yaml"
    path.write_text(platform())
    assert omnibed(api.home, "emulate", "up", name, str(path)).returncode == 0
    try:
        result = omnibed(api.home, "emulate", "exec", name, "no-such-vnode", "--", "true")
        assert_one_line(result, ["no vnode 'no-such-vnode'", "v0"])
        assert omnibed(api.home, "emulate", "exec", name, "v3", "--", "true").returncode == 0
    finally:
        assert omnibed(api.home, "emulate", "down", name).returncode == 0
    assert built_anything(api, name) == []
