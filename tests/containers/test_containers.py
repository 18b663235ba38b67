"""Container vnodes on this machine as a pnode, with the image `omnibed image build` made:
each runs in a network namespace made for it, sees the image as /, has its name as hostname,
answers SSH as root with its own host key, is held to its memory limit and CPU share, and
leaves nothing behind when removed, also after kill -9."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import paramiko
import pytest

from omnibed.core import ssh
from omnibed.emulator.agent import cgroups, nsutil
from omnibed.emulator.agent.containers import ContainerError, ContainerSpec, Runtime

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture
def vnode(
    runtime: Runtime, image: dict, netns: Callable[[], str], tmp_path: Path
) -> Iterator[Callable[..., ContainerSpec]]:
    """vnode(**limits): a started container vnode in its own network namespace; removed
    at the end. Its host key and root's key are in tmp_path/host and tmp_path/client."""
    started: list[str] = []

    def start(**fields: object) -> ContainerSpec:
        name = f"t{uuid.uuid4().hex[:8]}"
        spec = ContainerSpec(
            name=name,
            hostname=f"vnode-{name}",
            netns=nsutil.path(netns()),
            image=image["path"],
            sha256=image["sha256"],
            arch=image["arch"],
            **fields,  # type: ignore[arg-type]
        )
        assert runtime.preflight([spec]) == []
        runtime.start([spec])
        started.append(name)
        return spec

    yield start
    runtime.remove(started)


def _with_ssh(tmp_path: Path) -> dict[str, object]:
    host = ssh.ensure_keypair(tmp_path / "host")
    client = ssh.ensure_keypair(tmp_path / "client")
    return {
        "ssh": True,
        "host_key": host.private_path.read_text(),
        "authorized_keys": client.public_openssh,
    }


def _run(runtime: Runtime, spec: ContainerSpec, *argv: str) -> dict:
    """exit_status, and stdout as text."""
    reply = runtime.exec(spec.name, list(argv), timeout=60)
    return {"exit_status": reply["exit_status"],
            "stdout": base64.b64decode(reply["stdout_base64"]).decode()}


def test_vnode_sees_the_image_as_root_and_its_name_as_hostname(
    vnode: Callable[..., ContainerSpec], runtime: Runtime, tmp_path: Path
) -> None:
    marker = tmp_path / "on-the-host-only"
    marker.write_text("pnode")
    spec = vnode()
    assert _run(runtime, spec, "hostname")["stdout"].strip() == spec.hostname
    assert _run(runtime, spec, "test", "-e", str(marker))["exit_status"] == 1
    assert _run(runtime, spec, "test", "-e", "/usr/bin/python3")["exit_status"] == 0
    assert _run(runtime, spec, "cat", "/proc/1/cmdline")["stdout"].startswith("/bin/sh")
    pids = _run(runtime, spec, "sh", "-c", "ls /proc | grep -c '^[0-9]'")["stdout"]
    assert int(pids) < 10, "the vnode sees the pnode's processes"
    assert runtime.status([spec.name])[spec.name]["state"] == "running"


def test_the_overlay_is_mounted_in_the_vnode_only(
    vnode: Callable[..., ContainerSpec], runtime: Runtime
) -> None:
    """runc reads the pnode's whole mount table at every start: the vnodes' overlays are
    not in it, each is the / of its vnode's own mount namespace."""
    before = _mounts_below(runtime.root)
    spec = vnode()
    written = _run(runtime, spec, "sh", "-c", "echo kept > /written-by-the-vnode")
    assert written["exit_status"] == 0
    assert _mounts_below(runtime.root) == before
    root = _run(runtime, spec, "sh", "-c", "grep ' / / ' /proc/self/mountinfo")["stdout"]
    assert " - overlay " in root and f"upperdir={runtime.bundle(spec.name)}/upper" in root
    upper = Path(runtime.bundle(spec.name), "upper", "written-by-the-vnode")
    assert upper.read_text() == "kept\n"


def _ssh_login(spec: ContainerSpec, known_hosts: Path, key: Path) -> paramiko.SSHClient:
    """Log in as root to the vnode's sshd, from inside its network namespace."""
    home = nsutil.current_fd()
    try:
        with nsutil.inside(os.path.basename(spec.netns), home):
            sock = socket.create_connection(("127.0.0.1", 22), timeout=10)
    finally:
        os.close(home)
    client = paramiko.SSHClient()
    client.load_host_keys(str(known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        "127.0.0.1", 22, username="root", key_filename=str(key), sock=sock,
        look_for_keys=False, allow_agent=False, timeout=10,
    )  # fmt: skip
    return client


def _wait_for_sshd(runtime: Runtime, spec: ContainerSpec) -> None:
    deadline = time.monotonic() + 10
    while _run(runtime, spec, "sh", "-c", "cat /proc/net/tcp | grep -q ' 00000000:0016 '")[
        "exit_status"
    ]:
        assert time.monotonic() < deadline, "sshd does not listen"
        time.sleep(0.05)


def test_sshd_answers_root_with_the_key_and_a_checked_host_key(
    vnode: Callable[..., ContainerSpec], runtime: Runtime, tmp_path: Path
) -> None:
    spec = vnode(**_with_ssh(tmp_path))
    _wait_for_sshd(runtime, spec)
    host_public = (tmp_path / "host/id_ed25519.pub").read_text().split()[:2]
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"127.0.0.1 {' '.join(host_public)}\n")
    client = _ssh_login(spec, known_hosts, tmp_path / "client/id_ed25519")
    with client:
        _, out, _ = client.exec_command("id -u; hostname")
        assert out.read().decode().split() == ["0", spec.hostname]
    other = ssh.ensure_keypair(tmp_path / "other")  # a host key the vnode does not have
    known_hosts.write_text(f"127.0.0.1 {' '.join(other.public_openssh.split()[:2])}\n")
    with pytest.raises(paramiko.BadHostKeyException):
        _ssh_login(spec, known_hosts, tmp_path / "client/id_ed25519")


def test_memory_limit_oom_kills_and_status_reports_it(
    vnode: Callable[..., ContainerSpec], runtime: Runtime
) -> None:
    spec = vnode(memory=64 << 20)
    assert runtime.status([spec.name])[spec.name]["oom_kills"] == 0
    hog = "x = bytearray(200 << 20)\nfor i in range(0, len(x), 4096): x[i] = 1"
    assert _run(runtime, spec, "python3", "-c", hog)["exit_status"] == 128 + signal.SIGKILL
    status = runtime.status([spec.name])[spec.name]
    assert status["oom_kills"] >= 1
    assert status["state"] == "running", "the vnode's init was killed with the hog"
    assert _run(runtime, spec, "true")["exit_status"] == 0


def test_cpu_share_gives_half_a_core(vnode: Callable[..., ContainerSpec], runtime: Runtime) -> None:
    spec = vnode(share=0.5)
    busy = ["timeout", "12", "sh", "-c", "while :; do :; done"]
    loops = [threading.Thread(target=_run, args=(runtime, spec, *busy)) for _ in range(2)]
    for loop in loops:  # two loops: the quota, not a busy neighbour, must be what limits
        loop.start()
    time.sleep(2)
    before, start = runtime.status([spec.name])[spec.name]["cpu_usage_ns"], time.monotonic()
    time.sleep(6)
    after, end = runtime.status([spec.name])[spec.name]["cpu_usage_ns"], time.monotonic()
    for loop in loops:
        loop.join()
    cores = (after - before) / 1e9 / (end - start)
    assert 0.45 <= cores <= 0.55, f"{cores:.3f} of a core"


def _traces(runtime: Runtime, name: str) -> dict[str, list[str]]:
    """What container `name` could leave on the pnode."""
    bundle = runtime.bundle(name)
    mounts = [line.split()[4] for line in _every_mount_table() if bundle in line]
    cgroup_dirs = [d for d in cgroups.dirs(name).values() if os.path.exists(d)]
    state = [p for p in (bundle, os.path.join(runtime.state_root, name)) if os.path.exists(p)]
    runc = [known for known in runtime.names() if known == name]
    return {"mounts": mounts, "cgroups": cgroup_dirs, "dirs": state, "runc": runc}


def _every_mount_table() -> list[str]:
    """The mountinfo lines of every mount namespace on this machine (the pnode's and each
    container's: runc mounts a container's overlay in the container's own)."""
    seen, lines = set(), []
    for entry in Path("/proc").iterdir():
        try:
            namespace = os.readlink(entry / "ns" / "mnt") if entry.name.isdigit() else None
            if namespace is not None and namespace not in seen:
                lines += (entry / "mountinfo").read_text().splitlines()
                seen.add(namespace)
        except OSError:  # the process ended meanwhile
            continue
    return lines


def _mounts_below(directory: str) -> list[str]:
    with open("/proc/self/mountinfo") as mountinfo:
        return [line.split()[4] for line in mountinfo if directory in line.split()[4]]


def _alive(pids: list[int]) -> list[int]:
    """Those of `pids` still running (a zombie is gone: the pnode's init reaps it)."""
    alive = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            continue
        if state != "Z":
            alive.append(pid)
    return alive


def _processes(name: str) -> list[int]:
    with open(cgroups.dirs(name)["" if cgroups.is_v2() else "memory"] + "/cgroup.procs") as f:
        return [int(pid) for pid in f.read().split()]


@pytest.mark.parametrize("kill", ["none", "init", "runc-state-lost"])
def test_remove_leaves_nothing(
    runtime: Runtime, image: dict, netns: Callable[[], str], tmp_path: Path, kill: str
) -> None:
    mounts_before = _mounts_below(runtime.root)
    name = f"t{uuid.uuid4().hex[:8]}"
    spec = ContainerSpec(
        name=name, hostname=name, netns=nsutil.path(netns()), image=image["path"],
        sha256=image["sha256"], arch=image["arch"], memory=128 << 20, share=0.5,
        **_with_ssh(tmp_path),  # type: ignore[arg-type]
    )  # fmt: skip
    runtime.start([spec])
    _run(runtime, spec, "sh", "-c", "for i in 1 2; do sleep 600 >/dev/null 2>&1 & done")
    processes = _processes(name)
    assert len(processes) >= 3 and all(_traces(runtime, name).values())
    if kill == "init":
        os.kill(runtime.state(name)["pid"], signal.SIGKILL)
    elif kill == "runc-state-lost":  # runc or the agent killed: runc knows nothing of it
        subprocess.run(["rm", "-rf", os.path.join(runtime.state_root, name)], check=True)
    assert runtime.remove([name]) == [name]
    assert _traces(runtime, name) == {"mounts": [], "cgroups": [], "dirs": [], "runc": []}
    assert _alive(processes) == []
    assert _mounts_below(runtime.root) == mounts_before
    assert os.path.exists(spec.netns), "the network namespace is the agent's to remove"
    assert runtime.remove([name]) == []


def test_a_failed_batch_starts_nothing(
    runtime: Runtime, image: dict, netns: Callable[[], str]
) -> None:
    good, bad = (f"t{uuid.uuid4().hex[:8]}" for _ in range(2))
    common = {"image": image["path"], "sha256": image["sha256"], "arch": image["arch"]}
    specs = [
        ContainerSpec(name=good, hostname=good, netns=nsutil.path(netns()), **common),
        ContainerSpec(name=bad, hostname=bad, netns="/run/netns/omnibed-t-none", **common),
    ]
    with pytest.raises(ContainerError, match=f"container {bad}: "):
        runtime.start(specs)
    for name in (good, bad):
        assert _traces(runtime, name) == {"mounts": [], "cgroups": [], "dirs": [], "runc": []}


def test_preflight_names_what_stops_the_vnodes(runtime: Runtime, image: dict) -> None:
    cores = os.cpu_count() or 1
    spec = ContainerSpec(
        name="t-pre", hostname="vnode-9", netns="/run/netns/omnibed-t-none",
        image=image["path"], sha256=image["sha256"], arch="arm64", cpus=(0, cores),
    )  # fmt: skip
    problems = Runtime(runtime.root, program="omnibed-no-runc").preflight([spec])
    text = "\n".join(problems)
    assert "omnibed-no-runc is not installed: pass --install to `omnibed emulate up`" in text
    assert f"vnode-9 is arm64 (aarch64), this pnode is {os.uname().machine}" in text
    assert f"vnode-9 wants cores [0, {cores}], this pnode has {cores}" in text
    assert "network namespace /run/netns/omnibed-t-none of vnode-9 does not exist" in text
    assert len(problems) == 4
