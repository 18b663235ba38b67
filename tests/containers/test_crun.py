"""Container vnodes run by crun: the runtime a pnode gets from its cgroup layout, and crun's
containers started, exec'd, stopped and started again, frozen, held to their limits and
removed leaving nothing.

This machine's hybrid layout (v1 controllers, a v2 hierarchy at /sys/fs/cgroup/unified
holding controllers) is one crun 1.8 refuses, so each crun test runs in a child process
with a mount namespace of its own where that v2 hierarchy is unmounted: the layout of a
pure cgroup v1 pnode, which crun accepts."""

from __future__ import annotations

import base64
import ctypes
import json
import os
import shutil
import signal
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from omnibed.emulator.agent import cgroups, lifecycle, nsutil
from omnibed.emulator.agent.containers import ContainerSpec, Runtime, choose
from tests.containers.test_containers import _alive, _every_mount_table, _with_ssh

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(shutil.which("crun") is None, reason="crun is not installed"),
]
CLONE_NEWNS = 0x00020000
MS_REC, MS_PRIVATE = 16384, 1 << 18


def _hybrid_with_controllers() -> bool:
    unified = cgroups.hierarchies().get("") == cgroups.UNIFIED and not cgroups.is_v2()
    return unified and bool(Path(cgroups.UNIFIED, "cgroup.controllers").read_text().split())


def in_crun_layout(body: Callable[[], Any]) -> Any:
    """body() run in a forked child whose mount namespace has /sys/fs/cgroup/unified
    unmounted; its result (JSON data). A failure in the child fails the test with the
    child's traceback. The containers body starts must be removed by body itself."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        outcome: dict[str, Any]
        try:
            os.close(read)
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.unshare(CLONE_NEWNS) != 0:
                raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
            nsutil.mount("none", "/", "", MS_REC | MS_PRIVATE)
            if cgroups.hierarchies().get("") == cgroups.UNIFIED and not cgroups.is_v2():
                nsutil.umount(cgroups.UNIFIED)
            outcome = {"result": body()}
        except BaseException:
            outcome = {"error": traceback.format_exc()}
        with os.fdopen(write, "w") as out:
            json.dump(outcome, out)
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as data:
        outcome = json.loads(data.read() or '{"error": "the child died without a word"}')
    os.waitpid(pid, 0)
    if "error" in outcome:
        pytest.fail(outcome["error"], pytrace=False)
    return outcome["result"]


@pytest.mark.skipif(not _hybrid_with_controllers(), reason="this machine is not hybrid")
def test_the_hybrid_layout_with_v2_controllers_gets_runc_and_without_them_crun() -> None:
    assert cgroups.crun_can_run() is False
    assert choose() == "runc"
    assert in_crun_layout(lambda: [cgroups.crun_can_run(), choose()]) == [True, "crun"]


def test_a_crun_runtime_keeps_its_state_apart_from_runc() -> None:
    assert Runtime(program="crun").state_root == "/run/omnibed/crun"
    assert Runtime(program="runc").state_root == "/run/omnibed/runc"


@pytest.fixture
def crun_spec(
    runtime: Runtime, image: dict, netns: Callable[[], str], tmp_path: Path
) -> Callable[..., ContainerSpec]:
    """crun_spec(**limits): the spec of a new container vnode in a network namespace of its
    own, with sshd; the image is the session's, unpacked in the runc runtime's root."""

    def make(**limits: Any) -> ContainerSpec:
        name = f"t{uuid.uuid4().hex[:8]}"
        return ContainerSpec(
            name=name, hostname=f"vnode-{name}", netns=nsutil.path(netns()),
            image=image["path"], sha256=image["sha256"], arch=image["arch"],
            **{**_with_ssh(tmp_path), **limits},
        )  # fmt: skip

    return make


def _crun(runtime: Runtime, tmp_path: Path) -> Runtime:
    return Runtime(root=runtime.root, state_dir=str(tmp_path / "state"), program="crun")


def _out(reply: dict) -> str:
    return base64.b64decode(reply["stdout_base64"]).decode()


def _traces(crun: Runtime, name: str) -> dict[str, list[str]]:
    """What container `name` could leave, seen from the pnode (the child's namespace)."""
    bundle = crun.bundle(name)
    places = [*cgroups.dirs(name).values(), cgroups.UNIFIED + cgroups.cgroup_path(name)]
    return {
        "mounts": [line.split()[4] for line in _every_mount_table() if bundle in line],
        "cgroups": [d for d in places if os.path.exists(d)],
        "dirs": [p for p in (bundle, os.path.join(crun.state_root, name)) if os.path.exists(p)],
        "known": [n for n in crun.names() if n == name],
    }


NOTHING = {"mounts": [], "cgroups": [], "dirs": [], "known": []}


def test_a_crun_vnode_runs_restarts_freezes_and_leaves_nothing(
    runtime: Runtime, crun_spec: Callable[..., ContainerSpec], tmp_path: Path
) -> None:
    spec = crun_spec(memory=128 << 20, share=0.5)

    def scenario() -> None:
        crun = _crun(runtime, tmp_path)
        assert crun.preflight([spec]) == []
        crun.start([spec])
        try:
            _lives_and_leaves_nothing(crun, spec)
        finally:
            crun.remove([spec.name])

    in_crun_layout(scenario)


def _lives_and_leaves_nothing(crun: Runtime, spec: ContainerSpec) -> None:
    """Container `spec`, started by `crun`: what it runs, stopped and started again, frozen
    and thawed, then removed with a process it left behind."""
    rootfs_dir = os.path.join(crun.bundle(spec.name), "rootfs")
    assert os.path.ismount(rootfs_dir), "crun's overlay is the agent's to mount"
    assert _out(crun.exec(spec.name, ["hostname"])).strip() == spec.hostname
    assert "/usr/sbin/sshd -D" in _out(crun.exec(spec.name, ["cat", "/proc/1/cmdline"]))
    assert crun.exec(spec.name, ["sh", "-c", "echo kept > /kept"])["exit_status"] == 0
    limit = Path(cgroups.dirs(spec.name)["memory"], "memory.limit_in_bytes")
    assert int(limit.read_text()) == 128 << 20
    quota = Path(cgroups.dirs(spec.name)["cpu"], "cpu.cfs_quota_us")
    assert int(quota.read_text()) == 50_000

    lifecycle.stop(crun, spec, [])
    assert crun.status([spec.name])[spec.name]["state"] == "stopped"
    lifecycle.start(crun, spec, [])  # the overlay is still mounted: run on it again
    assert crun.status([spec.name])[spec.name]["state"] == "running"
    assert _out(crun.exec(spec.name, ["cat", "/kept"])) == "kept\n"
    mounted = [line for line in _every_mount_table() if f" {rootfs_dir} " in line]
    assert len(mounted) == 1, mounted
    lifecycle.freeze(crun, spec, [])
    assert crun.status([spec.name])[spec.name]["state"] == "paused"
    lifecycle.thaw(crun, spec, [])
    status = crun.status([spec.name])[spec.name]
    assert status["state"] == "running" and status["cpu_usage_ns"] > 0
    assert status["oom_kills"] == 0

    crun.exec(spec.name, ["sh", "-c", "sleep 600 >/dev/null 2>&1 &"])
    processes = [int(p) for p in Path(cgroups.dirs(spec.name)["memory"], "cgroup.procs")
                 .read_text().split()]  # fmt: skip
    assert len(processes) >= 2 and all(_traces(crun, spec.name).values())
    assert crun.remove([spec.name]) == [spec.name]
    assert _traces(crun, spec.name) == NOTHING
    assert _alive(processes) == []
    assert crun.remove([spec.name]) == []



@pytest.mark.parametrize("kill", ["init", "state-lost"])
def test_a_killed_crun_vnode_leaves_nothing(
    runtime: Runtime, crun_spec: Callable[..., ContainerSpec], tmp_path: Path, kill: str
) -> None:
    spec = crun_spec()

    def scenario() -> None:
        crun = _crun(runtime, tmp_path)
        crun.start([spec])
        if kill == "init":
            os.kill(crun.state(spec.name)["pid"], signal.SIGKILL)
        else:  # crun or the agent killed: crun knows nothing of it
            shutil.rmtree(os.path.join(crun.state_root, spec.name))
        assert crun.remove([spec.name]) == [spec.name]
        assert _traces(crun, spec.name) == NOTHING

    in_crun_layout(scenario)


def test_a_crun_vnode_over_its_memory_limit_is_oom_killed_and_counted(
    runtime: Runtime, crun_spec: Callable[..., ContainerSpec], tmp_path: Path
) -> None:
    spec = crun_spec(memory=64 << 20)

    def scenario() -> None:
        crun = _crun(runtime, tmp_path)
        crun.start([spec])
        try:
            hog = "x = bytearray(200 << 20)\nfor i in range(0, len(x), 4096): x[i] = 1"
            reply = crun.exec(spec.name, ["python3", "-c", hog], timeout=60)
            assert reply["exit_status"] == 128 + signal.SIGKILL
            status = crun.status([spec.name])[spec.name]
            assert status["oom_kills"] >= 1 and status["state"] == "running"
        finally:
            crun.remove([spec.name])

    in_crun_layout(scenario)


def test_a_pnode_that_started_runc_vnodes_removes_them_under_crun(
    runtime: Runtime, crun_spec: Callable[..., ContainerSpec], tmp_path: Path
) -> None:
    """crun installed on a pnode with runc's containers: their removal still finds them."""
    spec = crun_spec()

    def scenario() -> None:
        state = str(tmp_path / "state")
        Runtime(root=runtime.root, state_dir=state, program="runc").start([spec])
        crun = _crun(runtime, tmp_path)
        assert spec.name in crun.names()
        assert crun.remove([spec.name]) == [spec.name]
        assert _traces(crun, spec.name) == NOTHING
        assert not os.path.exists(os.path.join(state, "runc", spec.name))

    in_crun_layout(scenario)
