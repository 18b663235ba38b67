"""The fault matrix: every step of a reservation x every fault x every testbed, through the
`omnibed` command against the fake testbeds on 127.0.0.1.

For each cell, the fault is aimed at the request the step makes on the testbed, the step
is run as a user runs it, and then:

- the user got one line on stderr that says what failed and what to do (`error: ...`,
  exit status 1, no traceback; a `released NAME` line may come before it), or, for a
  transient fault omnibed recovered from, the step worked;
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

from tests.fakes.protogeni import PKI, make_pki
from tests.fault_matrix import beds
from tests.fault_matrix.beds import LATE, Bed

STEPS = ("reserve", "wait", "root access", "run", "snapshot", "extend", "release")
FAULTS = ("500", "persistent 500", "late answer", "dropped connection", "credentials",
          "SIGKILL + gc")
TESTBEDS = ("grid5000", "cloudlab", "chameleon", "local")

_API_FAULTS = FAULTS[:5]
_SSH_STEP = "is SSH to the nodes, not a call to the testbed's API"
_ERROR_LINE = re.compile(r"^error: .+")
_RELEASED_LINE = re.compile(r"^released [\w.-]+$")
_WHAT_TO_DO = re.compile(r"retry|again|release|check|fix|download|wait|raise|reserve|"
                         r"`omnibed|ask for|pick", re.I)


def not_applicable(testbed: str, step: str, fault: str) -> str | None:
    """Why the cell cannot exist, or None."""
    if testbed == "local" and fault in _API_FAULTS:
        return "the local testbed's steps are local commands (namespaces, sshd): no API"
    if step in ("root access", "run") and fault in _API_FAULTS:
        return f"{step} {_SSH_STEP}"
    if testbed == "grid5000" and step == "snapshot" and fault in _API_FAULTS:
        return f"a Grid'5000 snapshot (tgz-g5k, kaenv3 on the frontend) {_SSH_STEP}"
    return None


def not_yet(testbed: str, step: str, fault: str) -> str | None:
    """Cells the matrix does not drive yet (reported as such, never as passed)."""
    if step in ("root access", "run") or testbed == "local":
        return "needs sshd-backed nodes: not driven by the matrix yet"
    if testbed == "grid5000" and step == "snapshot":
        return "needs the sshd-backed frontend: not driven by the matrix yet"
    return None


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("cloudlab-pki"))


def _bed(testbed: str, tmp_path: Path, pki: PKI):
    if testbed == "cloudlab":
        return beds.cloudlab(tmp_path, pki)
    return getattr(beds, testbed)(tmp_path)


def _arm(bed: Bed, step: str, fault: str):
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


def _step_args(bed: Bed, step: str, name: str) -> list[str]:
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
    reason = not_yet(testbed, step, fault)
    if reason:
        pytest.skip(f"not driven: {reason}")
    name = f"fm{uuid.uuid4().hex[:8]}"
    with _bed(testbed, tmp_path, pki) as bed:
        if step not in ("reserve", "wait"):
            bed.reserve_here(name, step)
        args = _step_args(bed, step, name)
        armed = _arm(bed, step, fault)
        recovered = False
        if fault == "SIGKILL + gc":
            process = bed.popen(*args)
            assert armed.arrived.wait(60), f"the {step} request never came"
            process.send_signal(signal.SIGKILL)
            process.communicate(timeout=60)
        else:
            result = bed.omnibed(*args)
            assert armed.arrived.is_set(), f"the fault was never met:\n{result.stderr}"
            recovered = result.returncode == 0 and fault in ("500", "late answer",
                                                             "dropped connection")
            if not recovered:
                assert result.returncode == 1, result.stderr
                assert_one_line(result.stderr)
        assert_nothing_forgotten(bed, name)
        bed.faults.clear()
        collected = bed.omnibed("gc")
        assert collected.returncode == 0, collected.stderr
        assert_nothing_forgotten(bed, name)
        if step in ("reserve", "wait") and not recovered:
            assert bed.live() == [], "a failed or killed reserve left this after `omnibed gc`"
            assert bed.ledger() == []
        if name in bed.ledger():
            released = bed.omnibed("release", name)
            assert released.returncode == 0, released.stderr
        assert bed.live() == []
        assert bed.ledger() == []
