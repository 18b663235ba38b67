"""Image tarballs on a pnode: checked, then unpacked once into a root-only directory.

An image is a root filesystem tarball (.tar, .tar.gz, .tar.bz2, .tar.xz) named by its
sha256. Before anything is written, its sha256 is checked and every member is: a tarball
that is not a root filesystem (no bin and usr at its top) or that could write outside its
directory (absolute or `..` names, a member below a symlink, a hard link leaving the tree)
is refused, and so are device files, except those under dev/, which are skipped: each
container gets its own /dev. Unpacking goes to a temporary directory renamed at the end, so
an image directory that exists is complete. Python 3.9 compatible; standard library only.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import shutil
import tarfile
from typing import Any

ROOTFS_TOP = ("bin", "usr")  # what every root filesystem has at its top


class BadImage(ValueError):
    """The tarball is not a root filesystem omnibed can unpack safely."""


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _normal(name: str, what: str) -> str:
    """`name` relative to the tarball's top ("" for the top); BadImage when it leaves it."""
    if name.startswith("/"):
        raise BadImage(f"{what} {name!r} is an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise BadImage(f"{what} {name!r} contains '..'")
    return "/".join(parts)


def _below_symlink(name: str, symlinks: set[str]) -> bool:
    parent = posixpath.dirname(name)
    while parent:
        if parent in symlinks:
            return True
        parent = posixpath.dirname(parent)
    return False


def checked_members(archive: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """The members to unpack, in order; BadImage naming the first one refused."""
    named = [(_normal(m.name, "member"), m) for m in archive.getmembers()]
    symlinks = {name for name, member in named if member.issym()}
    kept: list[tarfile.TarInfo] = []
    for name, member in named:
        if _below_symlink(name, symlinks):
            raise BadImage(f"member {member.name!r} lies below a symbolic link")
        if member.isdev():
            if name.startswith("dev/"):
                continue
            raise BadImage(f"member {member.name!r} is a device file")
        if member.islnk():
            target = _normal(member.linkname, "hard link target")
            if not target or _below_symlink(target, symlinks):
                raise BadImage(f"hard link {member.name!r} points outside the tree")
        kept.append(member)
    top = {name.split("/")[0] for name, _ in named}
    missing = [d for d in ROOTFS_TOP if d not in top]
    if missing:
        raise BadImage(f"not a root filesystem: no /{missing[0]} at its top")
    return kept


def unpack(tarball: str, sha256: str, images_dir: str) -> str:
    """The root filesystem of image `sha256` (`images_dir/SHA256/rootfs`), unpacking
    `tarball` unless it is there already. BadImage when the file's sha256 differs or its
    content is refused; `images_dir` is made root-only."""
    rootfs = os.path.join(images_dir, sha256, "rootfs")
    if os.path.isdir(rootfs):
        return rootfs
    actual = sha256_of(tarball)
    if actual != sha256:
        raise BadImage(f"{tarball} has sha256 {actual}, not {sha256}")
    os.makedirs(images_dir, mode=0o700, exist_ok=True)
    os.chmod(images_dir, 0o700)
    partial = os.path.join(images_dir, f".partial-{os.getpid()}-{sha256}")
    shutil.rmtree(partial, ignore_errors=True)
    os.mkdir(partial, 0o700)
    try:
        with tarfile.open(tarball) as archive:
            members = checked_members(archive)
            # the members were checked above: tarfile's own filters would drop setuid bits
            # and absolute symlinks, which a root filesystem needs
            trusted: dict[str, Any] = (
                {"filter": "fully_trusted"} if hasattr(tarfile, "data_filter") else {}
            )
            archive.extractall(
                os.path.join(partial, "rootfs"), members=members, numeric_owner=True, **trusted
            )
        os.rename(partial, os.path.join(images_dir, sha256))
    except OSError:
        if not os.path.isdir(rootfs):  # another process finished first: theirs is as good
            raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return rootfs


def remove(sha256: str, images_dir: str) -> bool:
    """Remove unpacked image `sha256`; False when it was not there."""
    target = os.path.join(images_dir, sha256)
    if not os.path.isdir(target):
        return False
    shutil.rmtree(target)
    return True
