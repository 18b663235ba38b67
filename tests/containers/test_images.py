"""`omnibed image`: bad input is one line and nothing cached; a built image is a rootfs
tarball named by its sha256, root-only, listed with its arch, suite and packages."""

from __future__ import annotations

import hashlib
import json
import stat
import tarfile
from pathlib import Path

import pytest

from tests.containers.conftest import IMAGE_PACKAGES, omnibed


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["Bad/Name"], "bad image name 'Bad/Name'"),
        (["ok", "--arch", "sparc"], "unknown architecture 'sparc'"),
        (["ok", "--packages", "openssh-server,x;rm -rf /"], "bad Debian package name 'x;rm -rf /'"),
        (["ok", "--suite", "../etc"], "bad Debian suite '../etc'"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_caches_nothing(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = omnibed(tmp_path, "image", "build", *args)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "images").exists() or not any(
        p.name != "index.lock" for p in (tmp_path / "images").iterdir()
    )


@pytest.mark.root
@pytest.mark.slow
def test_a_package_debian_lacks_is_exit_2_and_leaves_no_partial_file(tmp_path: Path) -> None:
    result = omnibed(tmp_path, "image", "build", "ok", "--packages", "omnibed-no-such-package")
    assert result.returncode == 2, result.stderr
    assert "has no package 'omnibed-no-such-package'" in result.stderr
    assert [p.name for p in (tmp_path / "images").iterdir()] == []
    assert json.loads(omnibed(tmp_path, "image", "ls", "--json").stdout) == []


@pytest.mark.root
@pytest.mark.slow
def test_built_image_is_a_root_only_rootfs_named_by_its_sha256(image_home: Path) -> None:
    listed = json.loads(omnibed(image_home, "image", "ls", "--json").stdout)
    assert [image["name"] for image in listed] == ["vnode"]
    image = listed[0]
    assert image["arch"] == "amd64" and image["suite"] == "bookworm"
    assert image["packages"] == sorted(IMAGE_PACKAGES.split(","))
    path = Path(image["path"])
    assert path.name == image["sha256"] + ".tar.gz"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == image["sha256"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((path.parent / "index.json").stat().st_mode) == 0o600
    with tarfile.open(path) as archive:
        members = {m.name.removeprefix("./"): m for m in archive.getmembers()}
    assert {"bin", "usr", "usr/sbin/sshd", "usr/bin/python3"} <= members.keys()
    assert not [n for n, m in members.items() if m.isdev()], "device files in the image"
    assert not [n for n in members if n.startswith("etc/ssh/ssh_host_")], "shared host keys"


def test_unknown_image_rm_is_exit_2(tmp_path: Path) -> None:
    result = omnibed(tmp_path, "image", "rm", "nothing")
    assert result.returncode == 2 and "no image called 'nothing'" in result.stderr
