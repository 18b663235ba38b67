"""What `omnibed run` and `omnibed emulate exec` print, as a script reading their output sees
it (stdout a pipe), on the local testbed through the `omnibed` command.

One target (a one-node reservation, one vnode): stdout and stderr are the remote command's
own bytes, never wrapped nor re-encoded, and the exit status is its exit status, as with
`ssh` or `docker exec`. Several targets: stdout holds only lines prefixed by the target, the
summary is on stderr, the exit status is the first non-zero one; `--json` gives each
target's output and status.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.root

OMNIBED = str(Path(sys.executable).with_name("omnibed"))
ONE_VNODE_PER_PNODE = """
networks:
  - {name: lan, cidr: 10.81.0.0/24}
nodes:
  - name: vnode-{i}
    per_pnode: 1
    ifaces:
      - {name: if0, network: lan}
"""
# Each program writes its payload to stdout and the payload reversed to stderr.
PAYLOADS = {
    "a 100 kB line": "b'x' * 100_000 + b'\\n'",
    "a line of 150 characters": "b'y' * 150 + b'\\n'",
    "binary output": "bytes(range(256)) + b'\\xff\\xfe\\r\\n\\x00tail'",
    "no final newline": "b'first line\\nno newline at the end'",
    "terminal markup": "b'[/] [red]not markup[/red] [bold] \\x1b[31m red \\x1b[0m\\n'",
}


def program(payload: str) -> str:
    return (f"import sys; data = {payload}; sys.stdout.buffer.write(data); "
            "sys.stdout.flush(); sys.stderr.buffer.write(data[::-1])")


def omnibed(home: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    """`omnibed ARGS` with stdout and stderr pipes, as bytes, at 80 columns."""
    env = {**os.environ, "OMNIBED_HOME": str(home), "COLUMNS": "80"}
    return subprocess.run([OMNIBED, *args], env=env, capture_output=True, timeout=300)


@dataclass(frozen=True)
class Bed:
    home: Path
    one: str  # one pnode running vnode-0
    two: str  # two pnodes, one vnode on each
    hosts: dict[str, str]  # pnode or vnode of `two` -> the hostname of its pnode
    addresses: dict[str, str]  # vnode of `two` -> its address


def _reserve(home: Path, nodes: int, platform: Path) -> str:
    name = f"out{nodes}-{uuid.uuid4().hex[:6]}"
    reserved = omnibed(home, "reserve", "--testbed", "local", "--nodes", str(nodes),
                       "--name", name)
    assert reserved.returncode == 0, reserved.stderr
    up = omnibed(home, "emulate", "up", name, str(platform))
    assert up.returncode == 0, up.stderr
    return name


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    home = tmp_path_factory.mktemp("home")
    platform = home / "platform.yaml"
    platform.write_text(ONE_VNODE_PER_PNODE)
    names = []
    try:
        names.append(_reserve(home, 1, platform))
        names.append(_reserve(home, 2, platform))
        nodes = json.loads(omnibed(home, "nodes", names[1], "--json").stdout)
        hosts = {node["id"]: node["hostname"] for node in nodes}
        status = json.loads(omnibed(home, "emulate", "status", names[1], "--json").stdout)
        for vnode in status["vnodes"]:
            hosts[vnode["name"]] = hosts[vnode["pnode"]]
        addresses = {v["name"]: v["ifaces"]["if0"]["address"].split("/")[0]
                     for v in status["vnodes"]}
        yield Bed(home, names[0], names[1], hosts, addresses)
    finally:
        for name in names:
            omnibed(home, "release", name)


def single_targets(bed: Bed) -> dict[str, list[str]]:
    """The two ways to reach one target: `run` on a one-node reservation, `emulate exec`."""
    return {"run": ["run", bed.one], "emulate exec": ["emulate", "exec", bed.two, "vnode-1"]}


@pytest.mark.parametrize("payload", sorted(PAYLOADS))
def test_one_target_gives_back_the_remote_bytes(bed: Bed, payload: str) -> None:
    code = program(PAYLOADS[payload])
    expected = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True)
    for how, args in single_targets(bed).items():
        got = omnibed(bed.home, *args, "--", "python3", "-c", code)
        assert got.returncode == 0, (how, got.stderr[-500:])
        assert got.stdout == expected.stdout, f"{how}: stdout differs"
        assert got.stderr == expected.stderr, f"{how}: stderr differs"


def test_one_target_exits_with_the_remote_status(bed: Bed) -> None:
    for how, args in single_targets(bed).items():
        got = omnibed(bed.home, *args, "--shell", "echo out; echo err >&2; exit 7")
        assert (got.returncode, got.stdout, got.stderr) == (7, b"out\n", b"err\n"), how


TARGETS = {"run": ("pnode-1", "pnode-2"), "emulate exec": ("vnode-0", "vnode-1")}


def several_targets(bed: Bed) -> dict[str, list[str]]:
    return {"run": ["run", bed.two], "emulate exec": ["emulate", "exec", bed.two, "all"]}


def _exit_by_target(bed: Bed, targets: tuple[str, str], first: int, second: int) -> str:
    """A shell line exiting `first` on the first of `targets` and `second` on the other."""
    return (f"echo out-$(hostname); echo err-$(hostname) >&2; "
            f"case $(hostname) in {bed.hosts[targets[0]]}) exit {first};; *) exit {second};; "
            "esac")


def test_several_targets_prefix_lines_and_keep_the_summary_off_stdout(bed: Bed) -> None:
    for how, args in several_targets(bed).items():
        who = TARGETS[how]
        got = omnibed(bed.home, *args, "--shell", _exit_by_target(bed, who, 5, 3))
        assert got.returncode == 5, (how, got.stderr)  # the first non-zero, not the least
        out = got.stdout.decode().splitlines()
        assert sorted(out) == sorted(f"[{target}] out-{bed.hosts[target]}" for target in who)
        err = got.stderr.decode()
        for target in who:
            assert f"[{target}] err-{bed.hosts[target]}\n" in err, (how, err)
        assert "0/2 succeeded" in err, (how, err)
        zero = omnibed(bed.home, *args, "--shell", _exit_by_target(bed, who, 0, 4))
        assert zero.returncode == 4, (how, zero.stderr)


def test_json_gives_each_target_its_output_and_status(bed: Bed) -> None:
    binary = PAYLOADS["binary output"]
    code = f"import sys; sys.stdout.buffer.write({binary}); print('to stderr', file=sys.stderr)"
    raw = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True).stdout
    for how, args in several_targets(bed).items():
        who = TARGETS[how]
        text = omnibed(bed.home, *args, "--json", "--shell", _exit_by_target(bed, who, 0, 6))
        assert text.returncode == 6, (how, text.stderr)
        report = json.loads(text.stdout)
        assert list(report) == list(who), how
        for target, status in zip(who, (0, 6), strict=True):
            host = bed.hosts[target]
            assert report[target] == {"exit_status": status, "stdout": f"out-{host}\n",
                                      "stderr": f"err-{host}\n"}, how
        binary_out = omnibed(bed.home, *args, "--json", "--", "python3", "-c", code)
        assert binary_out.returncode == 0, (how, binary_out.stderr)
        for target in who:
            got = json.loads(binary_out.stdout)[target]
            assert base64.b64decode(got["stdout_base64"]) == raw, how  # not UTF-8: base64
            assert "stdout" not in got and got["stderr"] == "to stderr\n", how


@pytest.mark.skipif(shutil.which("iperf3") is None, reason="iperf3 is not installed")
def test_iperf3_json_from_a_vnode_parses(bed: Bed) -> None:
    """The pnodes of the local testbed run this machine's programs: iperf3 is there too."""
    server = omnibed(bed.home, "emulate", "exec", bed.two, "vnode-1", "--",
                     "iperf3", "-s", "-D", "-1")
    assert server.returncode == 0, server.stderr
    client = omnibed(bed.home, "emulate", "exec", bed.two, "vnode-0", "--",
                     "iperf3", "-c", bed.addresses["vnode-1"], "-t", "1", "-J")
    assert client.returncode == 0, client.stderr
    report = json.loads(client.stdout)
    assert report["end"]["sum_received"]["bits_per_second"] > 0
