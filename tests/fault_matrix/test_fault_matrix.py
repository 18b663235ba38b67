"""The fault matrix: every step of a reservation x every fault x every testbed, through the
`omnibed` command against the fake testbeds on 127.0.0.1.

For each cell, the fault is aimed at the request the step makes on the testbed, the step
is run as a user runs it, and then:

- the user got one line on stderr that says what failed and what to do (`error: ...`,
  exit status 1, no traceback; a `released NAME` line may come before it; `run` says it
  per node, `[node] ...`, above its table of exit statuses), or, for a transient fault
  omnibed recovered from, the step worked;
- nothing that is live on the testbed is unknown to omnibed's ledger;
- once the testbed is well again, `omnibed gc` releases what a failed or killed reserve
  left, and `omnibed release` what the user kept: the fake then holds nothing.

A cell that cannot exist is skipped with the reason (e.g. an HTTP error on the local
testbed, whose steps are local commands). `pytest tests/fault_matrix` prints the matrix
(cells passed / applicable) at the end of the run.
"""

from __future__ import annotations

import re
import signal
import uuid
from pathlib import Path

import pytest

from omnibed.providers.local import rootfs
from tests.fakes.protogeni import PKI, make_pki
from tests.fault_matrix import beds
from tests.fault_matrix.beds import LATE, Bed

STEPS = ("reserve", "wait", "root access", "run", "snapshot", "extend", "release")
FAULTS = ("500", "persistent 500", "late answer", "dropped connection", "credentials",
          "SIGKILL + gc")
TESTBEDS = ("grid5000", "cloudlab", "chameleon", "local")

_API_FAULTS = FAULTS[:5]
_SSH_STEP = "runs over SSH, not through the testbed's API"
_ERROR_LINE = re.compile(r"^error: .+")
_RELEASED_LINE = re.compile(r"^released [\w.-]+$")
_WHAT_TO_DO = re.compile(r"retry|again|release|check|fix|download|wait|raise|reserve|"
                         r"`omnibed|ask for|pick", re.I)


def not_applicable(testbed: str, step: str, fault: str) -> str | None:
    """Why the cell cannot exist, or None."""
    ssh_fault = fault == "dropped connection" and (
        step in ("root access", "run") or (testbed == "grid5000" and step == "snapshot"))
    if testbed == "local" and step == "root access" and ssh_fault:
        return "local root access writes the pnode's authorized_keys here: no connection"
    if testbed == "local" and fault in _API_FAULTS and not ssh_fault:
        return "the local testbed's steps are local commands (namespaces, sshd): no API"
    if step in ("root access", "run") and fault in _API_FAULTS and not ssh_fault:
        return f"{step} {_SSH_STEP}"
    if testbed == "grid5000" and step == "snapshot" and fault in _API_FAULTS and not ssh_fault:
        return f"a Grid'5000 snapshot (tgz-g5k, kaenv3 on the frontend) {_SSH_STEP}"
    if testbed == "local" and step == "wait":
        return "the local testbed builds its pnodes in reserve: wait only reads the record"
    return None


def over_ssh(testbed: str, step: str) -> bool:
    """Whether the step logs in to the testbed's machines (its nodes, a frontend)."""
    remote = testbed != "local"
    return remote and (step in ("root access", "run")
                       or (testbed == "grid5000" and step == "snapshot"))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("cloudlab-pki"))


def _bed(testbed: str, step: str, tmp_path: Path, pki: PKI):
    if testbed == "local":
        return beds.local(tmp_path)
    nodes = over_ssh(testbed, step)
    if testbed == "cloudlab":
        return beds.cloudlab(tmp_path, pki, nodes)
    return getattr(beds, testbed)(tmp_path, nodes)


def _arm(bed: Bed, step: str, fault: str, name: str, marks: Path):
    if bed.testbed == "local":
        return _arm_local(bed, step, fault, name, marks)
    if over_ssh(bed.testbed, step):
        return _arm_ssh(bed, step, fault, name, marks)
    target = bed.targets[step]
    faults = bed.faults
    if fault == "500":
        return faults.fail(target.method, target.path, skip=target.skip)
    if fault == "persistent 500":
        return faults.fail(target.method, target.path, skip=target.skip, times=None)
    if fault == "late answer":
        return faults.delay(target.method, target.path, LATE, skip=target.skip)
    if fault == "dropped connection":
        return faults.drop(target.method, target.path, skip=target.skip)
    if fault == "credentials":
        return faults.revoke(target.method, target.path, skip=target.skip)
    assert fault == "SIGKILL + gc"  # held until the command is killed
    return faults.delay(target.method, target.path, 60, skip=target.skip)


def _arm_ssh(bed: Bed, step: str, fault: str, name: str, marks: Path):
    """Over SSH, a dropped connection is the sshd of the node (or Grid'5000 frontend) killed
    with its sessions: before root access logs in, while the command of `run` runs (it left
    its mark), once the frontend ran tgz-g5k. SIGKILL comes once the node saw root access
    log in, once the command runs, or once the frontend ran tgz-g5k."""
    if step == "snapshot":  # the Grid'5000 frontend, once it ran tgz-g5k
        assert bed.tools_log is not None and bed.node_sshd is not None
        if fault == "dropped connection":
            frontend = bed.node_sshd(name, "nancy")
            return beds.logged(bed.tools_log, "tgz-g5k", then=lambda: beds.kill_sshd(frontend))
        return beds.logged(bed.tools_log, "tgz-g5k")
    sshd = bed.sshd_of(name)
    if step == "root access":
        if fault == "dropped connection":
            beds.kill_sshd(sshd)
            return beds.done()
        return beds.sshd_saw_login(sshd)
    if fault == "dropped connection":
        return beds.appeared(marks / "ran", then=lambda: beds.kill_sshd(sshd))
    return beds.appeared(marks / "ran")


def _arm_local(bed: Bed, step: str, fault: str, name: str, marks: Path):
    testbed = bed.fake
    if fault == "dropped connection":  # the pnode's sshd is gone
        testbed.kill_sshd(name)
        return testbed.under_way(lambda: True)
    if step == "reserve":  # killed while it builds the pnodes
        return testbed.under_way(lambda: testbed.live() != [])
    if step == "run":  # killed while CMD runs
        return testbed.under_way(lambda: _running(f"mark-{name}"))
    record = bed.record(name)
    state = bed.home / "providers" / "local"
    if step == "root access":  # as it reads the pnode's authorized_keys
        return bed.kill_at("openat", Path(record["nodes"][0]["dir"]) / "authorized_keys")
    if step == "extend":  # as it writes the record's new end
        return bed.kill_at("openat", state / record["id"] / ".reservation.json.tmp")
    if step == "snapshot":  # the archive made, as it reads the pnode's files into it
        return bed.kill_at("openat", rootfs.upper(Path(record["nodes"][0]["dir"])))
    assert step == "release"  # pnodes gone, as it removes the reservation's directory
    return bed.kill_at("unlinkat", state / record["id"])


def _running(word: str) -> bool:
    """Whether a process of this machine has `word` among its arguments (local pnodes share
    the host's process table, not its files)."""
    for entry in Path("/proc").iterdir():
        try:
            if word.encode() in (entry / "cmdline").read_bytes().split(b"\0"):
                return True
        except OSError:
            continue
    return False


def _step_args(bed: Bed, step: str, name: str, marks: Path, by_reserve_and_run: bool
               ) -> list[str]:
    if by_reserve_and_run:
        return ["reserve-and-run", "--testbed", "local", "--nodes", "1", "--name", name, "--",
                "python3", "-c", "import time; time.sleep(300)", f"mark-{name}"]
    if step == "run" and over_ssh(bed.testbed, step):
        return ["run", name, "--shell", f"touch {marks}/ran; exec sleep 300"]
    if step in ("run", "root access"):  # root access is the first part of `run`
        return ["run", name, "--", "true"]
    if step in ("reserve", "wait"):
        return bed.reserve_args(name)
    if step == "extend":
        return ["extend", name, "--by", "1h"]
    if step == "release":
        return ["release", name]
    if step == "snapshot":
        return ["snapshot", name, bed.first_node(name), "omnibedfm"]
    raise AssertionError(step)


def assert_one_line(stderr: str) -> str:
    """The failure is told in one `error:` line (after a `released` line at most)."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if _ERROR_LINE.match(line)]
    others = [line for line in lines if not _ERROR_LINE.match(line)]
    assert len(errors) == 1, f"not one error line:\n{stderr}"
    assert all(_RELEASED_LINE.match(line) for line in others), f"more than one line:\n{stderr}"
    assert _WHAT_TO_DO.search(errors[0]), f"says not what to do: {errors[0]}"
    return errors[0]


def assert_node_line(stderr: str) -> None:
    """`run` on the one node of a reservation, which it could not reach: stderr is one
    line saying what failed and what to do, as `ssh` would print it (no table)."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and _WHAT_TO_DO.search(lines[0]), stderr


def assert_nothing_forgotten(bed: Bed, name: str) -> None:
    live = bed.live()
    assert not live or name in bed.ledger(), f"live on {bed.testbed} but not in the ledger: {live}"


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("testbed", TESTBEDS)
def test_cell(testbed: str, step: str, fault: str, tmp_path: Path, pki: PKI,
              record_property) -> None:
    record_property("cell", (testbed, step, fault))
    reason = not_applicable(testbed, step, fault)
    if reason:
        record_property("not_applicable", reason)
        pytest.skip(f"not applicable: {reason}")
    name = f"fm{uuid.uuid4().hex[:8]}"
    marks = tmp_path / "marks"
    marks.mkdir()
    by_reserve_and_run = testbed == "local" and step == "run" and fault == "SIGKILL + gc"
    with _bed(testbed, step, tmp_path, pki) as bed:
        if step not in ("reserve", "wait") and not by_reserve_and_run:
            bed.reserve_here(name, step)
        if step == "run" and over_ssh(testbed, step):
            bed.root_access_here(name)
        args = _step_args(bed, step, name, marks, by_reserve_and_run)
        armed = _arm(bed, step, fault, name, marks)
        recovered = False
        if fault == "SIGKILL + gc":
            process = bed.popen(*args)
            assert armed.arrived.wait(60), f"the {step} request never came"
            process.send_signal(signal.SIGKILL)
            process.communicate(timeout=60)
        else:
            result = bed.omnibed(*args)
            assert armed.arrived.is_set(), f"the fault was never met:\n{result.stderr}"
            recovered = result.returncode == 0 and fault in (
                "500", "late answer", "dropped connection") and not over_ssh(testbed, step)
            if not recovered:
                # `run` on one node exits with its status: 255 when not reached, as ssh
                assert result.returncode == (255 if step == "run" else 1), result.stderr
                if step == "run":
                    assert_node_line(result.stderr)
                else:
                    told = assert_one_line(result.stderr)
                    if over_ssh(testbed, step):  # names the machine
                        machines = {"nancy"} if step == "snapshot" else (
                            bed.names_of_first_node(name))
                        assert any(machine in told for machine in machines), told
        assert_nothing_forgotten(bed, name)
        bed.faults.clear()
        collected = bed.omnibed("gc")
        assert collected.returncode == 0, collected.stderr
        assert_nothing_forgotten(bed, name)
        if (step in ("reserve", "wait") or by_reserve_and_run) and not recovered:
            assert bed.live() == [], "a failed or killed reserve left this after `omnibed gc`"
            assert bed.ledger() == []
        if name in bed.ledger():  # kept by the user, who releases it
            bed.release_here(name)
        assert bed.live() == []
        assert bed.ledger() == []
