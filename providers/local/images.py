"""Local testbed images: a pnode's writable layer saved as `state_dir/images/<name>.tar.gz`.

An image holds the files a pnode wrote or changed (with their modes and owners); files it
deleted from the host's filesystem are not recorded (overlayfs marks them with device files,
which images leave out).
"""

from __future__ import annotations

import os
import re
import tarfile
from pathlib import Path

from omnibed.core.errors import UsageError

SUFFIX = ".tar.gz"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def images_dir(state_dir: Path) -> Path:
    return state_dir / "images"


def list_images(state_dir: Path) -> list[str]:
    directory = images_dir(state_dir)
    if not directory.is_dir():
        return []
    return sorted(path.name[: -len(SUFFIX)] for path in directory.glob(f"*{SUFFIX}"))


def check_name(name: str) -> None:
    if not NAME.match(name):
        raise UsageError(
            f"image name {name!r} is not valid: use letters, digits, '.', '_' and '-' "
            "(at most 64, starting with a letter or digit)"
        )


def require(state_dir: Path, name: str) -> Path:
    """The archive of image `name`; a UsageError lists the images there are."""
    check_name(name)
    path = images_dir(state_dir) / f"{name}{SUFFIX}"
    if not path.is_file():
        known = ", ".join(list_images(state_dir)) or "none yet (make one with omnibed snapshot)"
        raise UsageError(f"unknown local image {name!r}; images: {known}")
    return path


def unpack(archive: Path, destination: Path) -> None:
    """Fill `destination` with the files of `archive`, modes and owners kept (no path may
    escape it; absolute symlinks are kept, they point inside the pnode's filesystem)."""
    destination.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(destination, filter=_inside_keeping_modes)


def _inside_keeping_modes(member: tarfile.TarInfo, destination: str) -> tarfile.TarInfo:
    """tarfile's `tar` filter (nothing outside `destination`) without its mode changes:
    a pnode's /tmp stays 1777 and its setuid programs setuid."""
    return tarfile.tar_filter(member, destination).replace(mode=member.mode, deep=False)


def _files_only(member: tarfile.TarInfo) -> tarfile.TarInfo | None:
    """Leave out device files, FIFOs and sockets (overlayfs deletion marks among them)."""
    return member if member.isfile() or member.isdir() or member.issym() or member.islnk() else None


def pack(source: Path, state_dir: Path, name: str, work_dir: Path) -> str:
    """Save the contents of `source` as image `name` (replacing it atomically); return `name`.

    The archive is written in `work_dir` (the reservation's directory, on the same file
    system as `state_dir`) until complete: a process killed meanwhile leaves it there, where
    releasing the reservation removes it, never a partial image among the images.
    """
    check_name(name)
    directory = images_dir(state_dir)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{name}{SUFFIX}"
    temporary = work_dir / f".{name}.{os.getpid()}.tmp"
    try:
        with tarfile.open(temporary, "w:gz") as tar:
            tar.add(source, arcname=".", filter=_files_only)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    return name
