"""Fixtures of the container vnode tests: the `omnibed` command in a session's own home, one
image built by `omnibed image build` for the whole session, a pnode's runtime on this
machine, fresh network namespaces, local reservations, and what a reservation's container
vnodes could leave on its pnodes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from omnibed.emulator.agent import cgroups
from omnibed.emulator.agent.containers import RUNTIMES, Runtime
from omnibed.providers.local import cgroups as local_cgroups

OMNIBED = str(Path(sys.executable).with_name("omnibed"))
IMAGE_PACKAGES = "openssh-server,python3"


def omnibed(home: Path, *args: str) -> subprocess.CompletedProcess:
    """Run `omnibed ARGS` with OMNIBED_HOME=home; the result, whatever its exit status."""
    env = {**os.environ, "OMNIBED_HOME": str(home), "COLUMNS": "200"}
    return subprocess.run([OMNIBED, *args], env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="session")
def image_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An omnibed home whose cache holds the image `vnode` (bookworm, openssh-server, python3)."""
    home = tmp_path_factory.mktemp("omnibed-home")
    built = omnibed(home, "image", "build", "vnode", "--packages", IMAGE_PACKAGES)
    assert built.returncode == 0, built.stderr
    return home


def reserve(home: Path, nodes: int, *options: str) -> tuple[str, str]:
    """A local reservation of `nodes` pnodes (more `omnibed reserve` options: `options`):
    its name and id."""
    done = omnibed(home, "reserve", "--testbed", "local", "--nodes", str(nodes), *options)
    assert done.returncode == 0, done.stderr
    name = done.stdout.split()[-1]
    rows = json.loads(omnibed(home, "ls", "--json").stdout)
    return name, next(r["id"] for r in rows if r["name"] == name)


def pnode_pids(prefix: str) -> list[int]:
    """One process per live local pnode of the reservation `prefix` names (`<id>-`): each
    pnode has its own mount namespace, where its containers' mounts and runc state are."""
    return local_cgroups.one_per_mount_namespace(prefix.removesuffix("-"))


def leftovers(prefix: str) -> dict[str, list[str]]:
    """Containers, mounts, cgroups and processes of container names starting with `prefix`."""
    mounts, containers = [], []
    for pid in pnode_pids(prefix):
        for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
            if f"/containers/{prefix}" in line.split()[4]:
                mounts.append(line.split()[4])
        for program in RUNTIMES:
            root = Runtime(program=program).state_root
            listed = subprocess.run(
                ["nsenter", f"--target={pid}", "--mount", program, "--root", root, "list", "-q"],
                capture_output=True,
                text=True,
            )
            if listed.returncode == 127:  # that runtime is not on that pnode: no container
                continue
            assert listed.returncode == 0, listed.stderr
            containers += [n for n in listed.stdout.split() if n.startswith(prefix)]
    cgroup_dirs = [
        str(path)
        for mount in cgroups.hierarchies().values()
        for path in Path(mount).glob(f"{cgroups.PREFIX}{prefix}*")
    ]
    processes = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            exited = "\nState:\tZ" in (proc / "status").read_text()  # to be reaped by init
            if not exited and f"{cgroups.PREFIX}{prefix}" in (proc / "cgroup").read_text():
                processes.append(proc.name)
        except OSError:
            continue
    found = {"containers": containers, "mounts": mounts, "cgroups": cgroup_dirs}
    return {**found, "processes": processes}


@pytest.fixture(scope="session")
def image(image_home: Path) -> dict:
    return json.loads(omnibed(image_home, "image", "ls", "--json").stdout)[0]


@pytest.fixture(scope="session")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Runtime:
    """A pnode's container runtime, runc (crun: test_crun.py), in a session
    directory (the image is unpacked once)."""
    root = tmp_path_factory.mktemp("pnode")
    return Runtime(root=str(root / "omnibed"), state_dir=str(root / "state"), program="runc")


@pytest.fixture
def netns() -> Iterator[Callable[[], str]]:
    """netns(): the name of a fresh network namespace (`ip netns add`), loopback up."""
    made: list[str] = []

    def make() -> str:
        name = f"omnibed-t-{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        made.append(name)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        return name

    yield make
    for name in made:
        subprocess.run(["ip", "netns", "del", name], check=True)
