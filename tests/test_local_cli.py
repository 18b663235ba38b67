"""The local testbed end to end through the `omnibed` command, as a user drives it.

Each profile: reserve 3 nodes, run `id -u` as root over real SSH, read the NICs, release,
and nothing is left: no namespace, no link, no process, no ledger entry. Interrupting
`reserve-and-run` (SIGINT, or SIGKILL followed by `omnibed gc`) leaves nothing either.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.fakes.sshd import FakeSSHD

pytestmark = pytest.mark.root

OMNIBED = str(Path(sys.executable).with_name("omnibed"))

EXPECTED_CONTROL = {  # profile -> (foreign_mac, multicast) of the control NIC
    "baremetal": ("yes", "yes"),
    "xen": ("no", "yes"),
    "kvm": ("no", "yes"),
    "nomcast": ("no", "no"),
}


def omnibed(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMNIBED_HOME": str(home), "COLUMNS": "200"}
    result = subprocess.run([OMNIBED, *args], env=env, capture_output=True, text=True, timeout=180)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def leftovers(reservation_id: str) -> list[str]:
    """Namespaces and root-namespace links whose name carries the reservation's id."""
    ns = json.loads(
        subprocess.run(["ip", "-j", "netns", "list"], capture_output=True, text=True).stdout or "[]"
    )
    links = json.loads(
        subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True).stdout
    )
    names = [n["name"] for n in ns] + [link["ifname"] for link in links]
    return [name for name in names if reservation_id in name]


def reservation_id(home: Path) -> str:
    listed = json.loads(omnibed(home, "ls", "--json").stdout)
    assert len(listed) == 1 and listed[0]["id"], listed
    return listed[0]["id"]


def processes_matching(marker: str) -> list[str]:
    found = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True)
    return found.stdout.split()


def assert_nothing_left(home: Path, made: str, marker: str = "") -> None:
    assert json.loads(omnibed(home, "ls", "--json").stdout) == []
    assert leftovers(made) == [], "namespaces or links left behind"
    if marker:
        assert processes_matching(marker) == [], "processes left behind"


@pytest.mark.parametrize("profile", sorted(EXPECTED_CONTROL))
def test_profile_reserve_run_nics_release(tmp_path: Path, profile: str) -> None:
    name = f"cli-{profile}-{uuid.uuid4().hex[:4]}"
    omnibed(
        tmp_path,
        "reserve",
        "--testbed",
        "local",
        "--nodes",
        "3",
        "--name",
        name,
        "-o",
        f"profile={profile}",
    )
    made = reservation_id(tmp_path)
    assert len(leftovers(made)) >= 4  # the switch, 3 pnodes and the host link
    try:
        listed = json.loads(omnibed(tmp_path, "ls", "--json").stdout)
        assert [(e["name"], e["state"]) for e in listed] == [(name, "ready")]
        nodes = json.loads(omnibed(tmp_path, "nodes", name, "--json").stdout)
        assert len(nodes) == 3
        ran = omnibed(tmp_path, "run", name, "--", "id", "-u")
        for node in nodes:
            assert f"[{node['id']}] 0" in ran.stdout
        nics = json.loads(omnibed(tmp_path, "nics", name, "--json").stdout)
        assert set(nics) == {node["id"] for node in nodes}
        for node_nics in nics.values():
            control = [nic for nic in node_nics if nic["role"] == "control"]
            assert len(control) == 1
            assert (control[0]["foreign_mac"], control[0]["multicast"]) == (
                EXPECTED_CONTROL[profile]
            )
    finally:
        omnibed(tmp_path, "release", name)
    assert_nothing_left(tmp_path, made)


def test_run_reports_failing_nodes(tmp_path: Path) -> None:
    result = omnibed(
        tmp_path,
        "reserve-and-run",
        "--testbed",
        "local",
        "--nodes",
        "2",
        "--shell",
        "exit 7",
        check=False,
    )
    assert result.returncode == 7  # the first non-zero exit status
    assert "0/2 succeeded" in result.stderr and "succeeded" not in result.stdout
    assert json.loads(omnibed(tmp_path, "ls", "--json").stdout) == []


def _start_long_run(home: Path) -> tuple[subprocess.Popen, str, str]:
    seconds = str(3000 + uuid.uuid4().int % 1000)  # a unique sleep to find its processes
    command = f"exec sleep {seconds}"  # a pnode's files are its own: watch its processes
    env = {**os.environ, "OMNIBED_HOME": str(home)}
    # SIGINT as a terminal delivers it, even when this test runs from a background job,
    # which starts with SIGINT ignored and would pass that on to the CLI
    process = subprocess.Popen(
        ["env", "--default-signal=INT",
         OMNIBED, "reserve-and-run", "--testbed", "local", "--nodes", "3", "--shell", command],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_until_running(process, f"sleep {seconds}", 3)
    return process, f"sleep {seconds}", reservation_id(home)


def _wait_until_running(process: subprocess.Popen, marker: str, nodes: int) -> None:
    """Return once `marker` (a command line) runs on `nodes` nodes; fail if the CLI ended
    or 120 s went by first."""
    deadline = time.monotonic() + 120
    while len(processes_matching(f"^{marker}$")) < nodes:  # not the CLI's own argv
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"the command never started on {nodes} nodes"
        time.sleep(0.2)


def _stderr_at_exit(process: subprocess.Popen, timeout: float = 120) -> str:
    """The CLI's stderr once it exited; one still running after `timeout` s gets SIGTERM
    (it releases what it reserved) before the test fails, so that no pnode outlives it."""
    try:
        return process.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        process.terminate()
        process.communicate(timeout=120)
        raise


def test_sigint_while_the_command_runs_releases_everything(tmp_path: Path) -> None:
    process, marker, made = _start_long_run(tmp_path / "home")
    process.send_signal(signal.SIGINT)
    stderr = _stderr_at_exit(process)
    assert process.returncode != 0
    assert "released" in stderr
    assert_nothing_left(tmp_path / "home", made, marker)


def test_sigterm_releases_everything(tmp_path: Path) -> None:
    process, marker, made = _start_long_run(tmp_path / "home")
    process.terminate()
    stderr = _stderr_at_exit(process)
    assert "released" in stderr
    assert_nothing_left(tmp_path / "home", made, marker)


def test_a_pnode_cut_off_mid_command_ends_the_run_naming_it(tmp_path: Path) -> None:
    """A node that stops answering without closing its connection (cut off, or rebooted at
    the end of a walltime) must end `omnibed run` once it has been silent for
    OMNIBED_DEAD_NODE_AFTER seconds, naming it, instead of leaving the user waiting forever."""
    name = f"cli-cut-{uuid.uuid4().hex[:4]}"
    omnibed(tmp_path, "reserve", "--testbed", "local", "--nodes", "1", "--name", name)
    marker = f"sleep {3000 + uuid.uuid4().int % 1000}"
    env = {**os.environ, "OMNIBED_HOME": str(tmp_path), "OMNIBED_DEAD_NODE_AFTER": "6"}
    process = subprocess.Popen([OMNIBED, "run", name, "--", "exec", *marker.split()], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_until_running(process, marker, 1)
        pnode = f"{reservation_id(tmp_path)}-1"  # the local testbed's namespace of pnode-1
        subprocess.run(["ip", "-n", pnode, "link", "set", "eth0", "down"], check=True)
        stderr = _stderr_at_exit(process, timeout=60)
        assert process.returncode != 0
        assert "no exit status from pnode-1" in stderr, stderr
        assert "Traceback" not in stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        omnibed(tmp_path, "release", name)
    assert processes_matching(f"^{marker}$") == []


def test_sigkill_then_gc_releases_everything(tmp_path: Path) -> None:
    home = tmp_path / "home"
    process, marker, made = _start_long_run(home)
    process.kill()
    process.communicate(timeout=60)
    listed = json.loads(omnibed(home, "ls", "--json").stdout)
    assert len(listed) == 1, "the killed run's reservation must still be in the ledger"
    collected = omnibed(home, "gc")
    assert f"released {listed[0]['name']}" in collected.stdout
    assert_nothing_left(home, made, marker)


def test_ssh_snapshot_and_image_through_the_cli(tmp_path: Path) -> None:
    name, image = f"cli-img-{uuid.uuid4().hex[:4]}", f"img-{uuid.uuid4().hex[:6]}"
    omnibed(tmp_path, "reserve", "--testbed", "local", "--nodes", "1", "--name", name)
    try:
        env = {**os.environ, "OMNIBED_HOME": str(tmp_path)}
        shell = subprocess.run(
            [OMNIBED, "ssh", name, "pnode-1"],
            env=env,
            capture_output=True,
            text=True,
            input='id -u; echo kept > "$OMNIBED_NODE_DIR/result.txt"\n',
            timeout=60,
        )
        assert shell.returncode == 0, shell.stderr
        assert shell.stdout.split() == ["0"]
        saved = omnibed(tmp_path, "snapshot", name, "pnode-1", image)
        assert image in saved.stdout
    finally:
        omnibed(tmp_path, "release", name)
    ran = omnibed(
        tmp_path,
        "reserve-and-run",
        "--testbed",
        "local",
        "-o",
        f"image={image}",
        "--shell",
        'cat "$OMNIBED_NODE_DIR/result.txt"',
    )
    assert (ran.returncode, ran.stdout) == (0, "kept\n")  # one node: its output as it is


def test_gc_releases_expired_reservations(tmp_path: Path) -> None:
    name = f"cli-exp-{uuid.uuid4().hex[:4]}"
    omnibed(tmp_path, "reserve", "--testbed", "local", "--walltime", "1s", "--name", name)
    made = reservation_id(tmp_path)
    kept = f"cli-kept-{uuid.uuid4().hex[:4]}"
    omnibed(tmp_path, "reserve", "--testbed", "local", "--walltime", "1h", "--name", kept)
    try:
        time.sleep(1.5)
        collected = omnibed(tmp_path, "gc")
        assert f"released {name} (expired)" in collected.stdout
        assert kept not in collected.stdout
        assert [e["name"] for e in json.loads(omnibed(tmp_path, "ls", "--json").stdout)] == [kept]
        assert leftovers(made) == []
    finally:
        omnibed(tmp_path, "release", kept)


def test_ssh_from_a_home_with_a_space_checks_the_host_key(tmp_path: Path) -> None:
    """OpenSSH splits unquoted paths at spaces: the key must still be recorded (0600) in the
    reservation's known_hosts, and a changed key there must still be refused."""
    home = tmp_path / "my omnibed home"
    name = f"cli-sp-{uuid.uuid4().hex[:4]}"
    omnibed(home, "reserve", "--testbed", "local", "--nodes", "1", "--name", name)
    env = {**os.environ, "OMNIBED_HOME": str(home)}

    def login() -> subprocess.CompletedProcess:
        return subprocess.run([OMNIBED, "ssh", name, "pnode-1"], env=env, capture_output=True,
                              text=True, input="id -u\n", timeout=60)

    try:
        first = login()
        assert first.returncode == 0, first.stderr
        assert first.stdout.split() == ["0"]
        known_hosts = home / "reservations" / name / "known_hosts"
        [recorded] = known_hosts.read_text().splitlines()
        assert os.stat(known_hosts).st_mode & 0o777 == 0o600
        assert sorted(p.name for p in tmp_path.iterdir()) == ["my omnibed home"]
        # an impostor takes the pnode's address: the key the local testbed recorded for it,
        # at this path with a space, is what refuses it
        [record] = [json.loads(path.read_text())
                    for path in (home / "providers" / "local").glob("*/reservation.json")]
        [pnode] = record["nodes"]
        sshd_pid = int((Path(pnode["dir"]) / "sshd.pid").read_text())
        os.kill(sshd_pid, signal.SIGTERM)
        while Path(f"/proc/{sshd_pid}").exists():  # it frees the address when gone
            time.sleep(0.05)
        impostor = FakeSSHD([], address=pnode["address"], netns=pnode["netns"]).start()
        try:
            assert impostor.host_key.split()[1] not in recorded
            refused = login()
        finally:
            impostor.stop()
        assert refused.returncode == 255
        assert "HOST IDENTIFICATION HAS CHANGED" in refused.stderr
    finally:
        omnibed(home, "release", name)
