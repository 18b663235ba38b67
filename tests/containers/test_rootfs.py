"""Image tarballs on a pnode: a tarball that is not a root filesystem, or that could write
outside its directory, is refused before anything is unpacked; a good one is unpacked once,
root-only, with what a root filesystem needs (setuid bits, absolute symlinks) intact."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from omnibed.emulator.agent.rootfs import BadImage, unpack

pytestmark = pytest.mark.root  # unpacking restores owners


def _member(name: str, kind: bytes = tarfile.DIRTYPE, **attrs: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = 0o755
    for key, value in attrs.items():
        setattr(info, key, value)
    return info


ROOTFS = [
    _member("./"),
    _member("./usr"),
    _member("./usr/bin"),
    _member("./bin", tarfile.SYMTYPE, linkname="usr/bin"),
]


def _tarball(
    tmp_path: Path, members: list[tarfile.TarInfo], files: dict[str, bytes]
) -> tuple[str, str]:
    """A .tar.gz of `members` (regular ones get their content from `files`): path, sha256."""
    path = tmp_path / "image.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        for member in members:
            data = files.get(member.name)
            if data is not None:
                member.size = len(data)
            archive.addfile(member, io.BytesIO(data) if data is not None else None)
    return str(path), hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("members", "refusal"),
    [
        ([_member("./etc")], "no /bin"),
        (ROOTFS + [_member("/etc/cron.d/x", tarfile.REGTYPE)], "is an absolute path"),
        (ROOTFS + [_member("./usr/../../x", tarfile.REGTYPE)], "contains '..'"),
        (
            ROOTFS
            + [
                _member("./etc", tarfile.SYMTYPE, linkname="/etc"),
                _member("./etc/cron.d", tarfile.REGTYPE),
            ],
            "lies below a symbolic link",
        ),  # fmt: skip
        (
            ROOTFS + [_member("./shadow", tarfile.LNKTYPE, linkname="../etc/shadow")],
            "contains '..'",
        ),
        (ROOTFS + [_member("./shadow", tarfile.LNKTYPE, linkname="/etc/shadow")], "absolute path"),
        (
            ROOTFS
            + [
                _member("./lnk", tarfile.SYMTYPE, linkname="/etc"),
                _member("./shadow", tarfile.LNKTYPE, linkname="lnk/shadow"),
            ],
            "points outside the tree",
        ),  # fmt: skip
        (ROOTFS + [_member("./usr/disk", tarfile.BLKTYPE, devmajor=8)], "is a device file"),
    ],
)
def test_refused_tarball_unpacks_nothing(
    tmp_path: Path, members: list[tarfile.TarInfo], refusal: str
) -> None:
    tarball, sha256 = _tarball(tmp_path, members, {})
    images = tmp_path / "images"
    with pytest.raises(BadImage, match=refusal):
        unpack(tarball, sha256, str(images))
    assert list(images.iterdir()) == []


def test_tarball_whose_sha256_differs_is_refused(tmp_path: Path) -> None:
    tarball, sha256 = _tarball(tmp_path, ROOTFS, {})
    with pytest.raises(BadImage, match="has sha256"):
        unpack(tarball, "0" * 64, str(tmp_path / "images"))
    assert not (tmp_path / "images").exists()


def test_rootfs_is_unpacked_once_into_a_root_only_directory(tmp_path: Path) -> None:
    su = _member("./usr/bin/su", tarfile.REGTYPE, mode=0o4755, uid=0)
    members = ROOTFS + [
        su,
        _member("./etc"),
        _member("./etc/localtime", tarfile.SYMTYPE, linkname="/usr/share/zoneinfo/UTC"),
        _member("./var", uid=4242, gid=4242),
        _member("./dev"),
        _member("./dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3),
    ]
    tarball, sha256 = _tarball(tmp_path, members, {"./usr/bin/su": b"#!/bin/sh\n"})
    images = tmp_path / "images"
    root = Path(unpack(tarball, sha256, str(images)))
    assert root == images / sha256 / "rootfs"
    assert stat.S_IMODE(images.stat().st_mode) == 0o700
    assert stat.S_IMODE((root / "usr/bin/su").stat().st_mode) == 0o4755
    assert os.readlink(root / "etc/localtime") == "/usr/share/zoneinfo/UTC"
    assert (root / "var").stat().st_uid == 4242  # numeric owners, not the host's names
    assert os.listdir(root / "dev") == []  # each container gets its own /dev
    os.unlink(tarball)  # a second vnode of that image does not need the tarball again
    assert unpack(tarball, sha256, str(images)) == str(root)
