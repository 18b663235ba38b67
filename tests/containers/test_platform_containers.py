"""Container vnodes in a platform: the YAML keys, the images they name and what the planner
makes of them (container names, cores taken in turn, host keys), without root."""

from __future__ import annotations

import io
import struct
import tarfile
from pathlib import Path

import pytest

from omnibed.core.errors import PlatformError
from omnibed.emulator.image_refs import ImageRef, resolve
from omnibed.emulator.model import load_platform, parse_size
from omnibed.emulator.planner import Containers, container_prefix, plan
from tests.emulator.test_planner import facts

SHA = "ab" * 32


def _elf(machine: int) -> bytes:
    return b"\x7fELF\x02\x01" + b"\0" * 12 + struct.pack("<H", machine) + b"\0" * 40


def _tarball(path: Path, members: dict[str, bytes | None]) -> Path:
    """A tarball of `members` (bytes: a file; None: a directory)."""
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                archive.addfile(info)
            else:
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return path


def _platform(tmp_path: Path, node: str, members: dict | None = None) -> str:
    members = members or {"bin": None, "usr": None, "usr/bin/sh": _elf(0x3E)}
    image = _tarball(tmp_path / "img.tar.gz", members)
    return f"""
images:
  img: {{source: file://{image}}}
networks: [{{name: n, cidr: 10.0.0.0/24}}]
nodes:
  - {{name: 'v{{i}}', per_pnode: 3, image: img, ifaces: [{{name: if0, network: n}}], {node}}}
"""


@pytest.mark.parametrize(
    ("text", "size"),
    [("512MiB", 512 << 20), ("1GiB", 1 << 30), ("64MB", 64 * 10**6), ("128M", 128 << 20),
     (4096, 4096)],
)  # fmt: skip
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("node", "says"),
    [
        ("memory: 12parsecs", "unknown unit"),
        ("memory: 1MiB", "below the 16MiB"),
        ("cpu: {cores: 0}", "at least 1"),
        ("cpu: {share: 1.5}", "at most 1"),
        ("cpu: {shares: 1}", "unknown key"),
    ],
)
def test_bad_limits_are_refused_with_their_place(tmp_path: Path, node: str, says: str) -> None:
    with pytest.raises(PlatformError, match=says) as caught:
        load_platform(_platform(tmp_path, node))
    assert "nodes[0]" in str(caught.value)


def test_container_keys_need_an_image() -> None:
    with pytest.raises(PlatformError, match="needs a container vnode"):
        load_platform("nodes: [{name: a, memory: 64MiB}]")


def test_a_file_image_is_checked_and_described(tmp_path: Path) -> None:
    refs = resolve(load_platform(_platform(tmp_path, "ssh: false")))
    assert refs["img"].arch == "amd64" and not refs["img"].has_sshd
    with_sshd = {"bin": None, "usr": None, "usr/bin/sh": _elf(0xB7), "usr/sbin/sshd": b"x"}
    refs = resolve(load_platform(_platform(tmp_path, "ssh: true", with_sshd)))
    assert refs["img"].arch == "arm64" and refs["img"].has_sshd


@pytest.mark.parametrize(
    ("node", "members", "says"),
    [
        ("ssh: true", None, "has no /usr/sbin/sshd"),
        ("ssh: false", {"etc": None, "etc/passwd": b""}, "not a root filesystem"),
        ("ssh: false", {"bin": None, "usr": None, "../x": b""}, "contains '..'"),
    ],
)
def test_bad_images_are_refused(tmp_path: Path, node: str, members: dict | None, says: str):
    with pytest.raises(PlatformError, match=says):
        resolve(load_platform(_platform(tmp_path, node, members)))


def test_a_file_that_is_no_tarball_is_refused(tmp_path: Path) -> None:
    text = _platform(tmp_path, "ssh: false")
    (tmp_path / "img.tar.gz").write_text("not a tarball")
    with pytest.raises(PlatformError, match="not a rootfs tarball"):
        resolve(load_platform(text))


def test_an_unknown_image_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMNIBED_HOME", str(tmp_path / "home"))
    with pytest.raises(PlatformError, match="unknown image 'nope'.*omnibed image build nope"):
        resolve(load_platform("nodes: [{name: a, image: nope}]"))


def _containers(cores: int) -> Containers:
    keys = iter(range(1000))
    return Containers(
        images={"img": ImageRef("img", Path("/x"), SHA, "amd64", True)},
        cores={"p0": cores, "p1": cores},
        prefix=container_prefix("job/42"),
        authorized_keys="ssh-ed25519 AAAA user",
        new_host_key=lambda: f"KEY{next(keys)}",
    )


def test_plan_gives_names_cores_in_turn_and_one_host_key_each(tmp_path: Path) -> None:
    platform = load_platform(_platform(tmp_path, "cpu: {cores: 2, share: 0.5}, ssh: true"))
    the_plan = plan(platform, [facts(0), facts(1)], "res", containers=_containers(4))
    specs = the_plan.state("p0").containers
    assert [s.name for s in specs] == ["job_42-v0", "job_42-v1", "job_42-v2"]
    assert [s.cpus for s in specs] == [(0, 1), (2, 3), (0, 1)]
    assert len({s.host_key for s in (*specs, *the_plan.state("p1").containers)}) == 6
    assert all(s.netns.endswith(v.netns) for s, v in zip(specs, the_plan.vnodes, strict=False))
    assert the_plan.vnode("v4").container == "job_42-v4" and the_plan.vnode("v4").share == 0.5
    again = type(the_plan).from_json(the_plan.to_json())
    assert again == the_plan


def test_more_cores_than_the_pnode_has_are_refused(tmp_path: Path) -> None:
    platform = load_platform(_platform(tmp_path, "cpu: {cores: 3}"))
    with pytest.raises(PlatformError, match="wants 3 cores but pnode p0 has 2"):
        plan(platform, [facts(0), facts(1)], "res", containers=_containers(2))
