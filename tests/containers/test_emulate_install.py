"""`omnibed emulate up` on pnodes that cannot run the container vnodes as they are, through
the `omnibed` command on the local testbed: a pnode without a container runtime (crun and
runc removed with dpkg inside that pnode only: local pnodes are overlays of this machine's
/) is named by the preflight, which says to pass `--install`; with `--install`, apt
installs crun there, which its cgroup layout lets run (the pnode reaches no Debian mirror:
apt takes the package from this machine's apt cache, as a pnode with a mirror would
download it) and the platform comes up; when apt cannot install it, that pnode and apt's
error are named, nothing started. An image for another architecture is refused by the
preflight with both architectures named."""

from __future__ import annotations

import glob
import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from omnibed.api import Omnibed
from omnibed.core import ssh
from omnibed.emulator.coordinator import PLAN_FILE
from omnibed.emulator.planner import instance_tag
from tests.containers.conftest import leftovers, omnibed, reserve

pytestmark = [pytest.mark.root, pytest.mark.slow]

PLATFORM = """
networks: [{name: lan, cidr: 10.9.0.0/24}]
nodes: [{name: "v-{i}", per_pnode: 1, image: vnode, ifaces: [{name: if0, network: lan}]}]
"""
# what a local pnode without a runtime gets: its cgroup layout lets crun run (rootfs.py)
RUNTIME = "crun"
CACHED = "/var/cache/apt/archives/{}_*.deb"


@pytest.fixture(scope="module")
def pnodes(image_home: Path) -> Iterator[tuple[str, str]]:
    """A two-pnode local reservation: its name and id."""
    name, reservation_id = reserve(image_home, 2)
    try:
        yield name, reservation_id
    finally:
        omnibed(image_home, "release", name)


def _on_pnode(home: Path, name: str, pnode: str, command: str) -> ssh.CommandResult:
    """Run `command` as root on one pnode of reservation `name`."""
    api = Omnibed(home)
    return ssh.run(api.root_endpoint(name, pnode), command, api.known_hosts(name), timeout=300)


def _nothing_started(home: Path, name: str, reservation_id: str) -> None:
    assert not (home / "reservations" / name / PLAN_FILE).exists()
    assert leftovers(f"{reservation_id}-")["containers"] == []
    assert not [n for n in os.listdir("/run/netns") if n.startswith(f"ob-{instance_tag(name)}-")]


def test_a_pnode_without_its_runtime_is_named_and_install_installs_it(
    image_home: Path, pnodes: tuple[str, str], tmp_path: Path
) -> None:
    cached = CACHED.format(RUNTIME)
    if not glob.glob(cached):
        pytest.skip(f"no {cached}: a local pnode reaches no Debian mirror to install from")
    name, reservation_id = pnodes
    # both runtimes removed: a pnode with either runs its containers with it
    removed = _on_pnode(
        image_home, name, "pnode-2", "dpkg -r crun runc; ! command -v crun && ! command -v runc"
    )
    assert removed.exit_status == 0, removed.stdout + removed.stderr
    assert _on_pnode(image_home, name, "pnode-1", f"command -v {RUNTIME}").exit_status == 0
    path = tmp_path / "platform.yaml"
    path.write_text(PLATFORM)

    refused = omnibed(image_home, "emulate", "up", name, str(path))
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert f"pnode-2: the container runtime {RUNTIME} is not installed" in refused.stderr
    assert "pass --install" in refused.stderr and "pnode-1" not in refused.stderr
    _nothing_started(image_home, name, reservation_id)

    up = omnibed(image_home, "emulate", "up", name, str(path), "--install")
    assert up.returncode == 0, up.stdout + up.stderr
    status = f"dpkg-query -W -f '${{Status}}' {RUNTIME}"
    installed = _on_pnode(image_home, name, "pnode-2", status)
    assert installed.stdout == "install ok installed", installed.stdout + installed.stderr
    seen = omnibed(image_home, "emulate", "exec", name, "all", "--", "hostname")
    assert seen.returncode == 0 and "v-1" in seen.stdout, seen.stdout + seen.stderr
    down = omnibed(image_home, "emulate", "down", name)
    assert down.returncode == 0, down.stderr


def test_an_install_that_fails_is_named_with_apt_s_error(
    image_home: Path, pnodes: tuple[str, str], tmp_path: Path
) -> None:
    name, reservation_id = pnodes
    # no runtime (crun nor runc, which --install falls back to), and no cached package: apt
    # would have to reach a mirror, which it cannot
    hidden = _on_pnode(
        image_home, name, "pnode-2",
        "for p in crun runc; do dpkg -r $p; rm -f /var/cache/apt/archives/${p}_*.deb; done;"
        " ! command -v crun && ! command -v runc",
    )  # fmt: skip
    assert hidden.exit_status == 0, hidden.stdout + hidden.stderr
    path = tmp_path / "platform.yaml"
    path.write_text(PLATFORM)
    failed = omnibed(image_home, "emulate", "up", name, str(path), "--install")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1, failed.stderr
    says = "pnode-2: installing the container runtime with `apt-get install -y -q"
    assert f"--no-install-recommends {RUNTIME}` failed" in failed.stderr, failed.stderr
    assert says in failed.stderr and "failed: E: " in failed.stderr, failed.stderr
    assert "pnode-1" not in failed.stderr
    _nothing_started(image_home, name, reservation_id)


def _arm64_image(path: Path) -> Path:
    """A root filesystem whose programs are arm64 ELF files (with sshd)."""
    elf = b"\x7fELF\x02\x01\x01" + bytes(11) + (0xB7).to_bytes(2, "little") + bytes(44)
    with tarfile.open(path, "w") as archive:
        for directory in ("bin", "usr", "usr/bin", "usr/sbin"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            archive.addfile(info)
        for member in ("usr/bin/sh", "usr/sbin/sshd"):
            info = tarfile.TarInfo(member)
            info.size, info.mode = len(elf), 0o755
            archive.addfile(info, io.BytesIO(elf))
    return path


def test_an_image_for_another_architecture_is_refused_naming_both(
    image_home: Path, pnodes: tuple[str, str], tmp_path: Path
) -> None:
    name, reservation_id = pnodes
    image = _arm64_image(tmp_path / "arm64.tar")
    path = tmp_path / "platform.yaml"
    path.write_text(f"images: {{arm: {{source: {image}}}}}\n" + PLATFORM.replace("vnode", "arm"))
    refused = omnibed(image_home, "emulate", "up", name, str(path))
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    machine = os.uname().machine
    for pnode, vnode in (("pnode-1", "v-0"), ("pnode-2", "v-1")):
        says = f"image of {vnode} is arm64 (aarch64), this pnode is {machine}"
        assert f"{pnode}: " in refused.stderr and says in refused.stderr, refused.stderr
    _nothing_started(image_home, name, reservation_id)
