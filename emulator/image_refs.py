"""The images a platform's container vnodes name, found on this machine before anything starts.

A vnode's `image` is a name from the platform's `images:` (a rootfs tarball file) or else an
image of `omnibed image ls`. `resolve(platform)` returns an ImageRef per image used, or a
PlatformError (exit status 2) naming the vnode: an unknown image, a file that is missing
or is not a root filesystem tarball, `ssh: true` on an image without sshd.
"""

from __future__ import annotations

import struct
import tarfile
from dataclasses import dataclass
from pathlib import Path

from omnibed.core.errors import PlatformError, UsageError
from omnibed.emulator import images
from omnibed.emulator.agent import rootfs
from omnibed.emulator.model import ImageSource, Platform, show

SSHD = "usr/sbin/sshd"
# ELF e_machine -> Debian architecture
_ELF_MACHINES = {0x3E: "amd64", 0xB7: "arm64", 0x15: "ppc64el", 0x03: "i386"}


@dataclass(frozen=True)
class ImageRef:
    """An image ready to be uploaded: its tarball here, sha256, Debian arch, whether it has
    sshd."""

    name: str
    path: Path
    sha256: str
    arch: str
    has_sshd: bool


def resolve(platform: Platform) -> dict[str, ImageRef]:
    """{image name: ImageRef} of every image the platform's vnodes use."""
    sources = {source.name: source for source in platform.images}
    found: dict[str, ImageRef] = {}
    for n, node in enumerate(platform.nodes):
        if node.image is None:
            continue
        where = f"nodes[{n}].image"
        if node.image not in found:
            try:
                if node.image in sources:
                    found[node.image] = _from_file(sources[node.image])
                else:
                    found[node.image] = _from_cache(node.image)
            except PlatformError as exc:
                raise exc.within(where) from None
        if node.ssh and not found[node.image].has_sshd:
            raise PlatformError(
                f"vnode {node.name!r} has ssh: true but image {node.image!r} has no "
                f"/{SSHD}: build it with openssh-server (`omnibed image build NAME "
                "--packages openssh-server,...`) or set ssh: false",
                where=f"nodes[{n}].ssh",
            )
    return found


def _from_cache(name: str) -> ImageRef:
    try:
        image = images.get(name)
    except UsageError:
        known = ", ".join(i.name for i in images.images()) or "none built yet"
        raise PlatformError(
            f"unknown image {show(name)}: not under the platform's images: nor in "
            f"`omnibed image ls` (known: {known}); `omnibed image build {name}` makes it"
        ) from None
    if not image.path.is_file():
        raise PlatformError(
            f"image {name!r} is listed but its tarball {image.path} is gone: "
            f"`omnibed image build {name}` again"
        )
    return ImageRef(name, image.path, image.sha256, image.arch, "openssh-server" in image.packages)


def _from_file(source: ImageSource) -> ImageRef:
    path = source.path.expanduser()
    if not path.is_file():
        raise PlatformError(f"image {source.name!r}: no file {path}")
    try:
        with tarfile.open(path) as archive:
            members = rootfs.checked_members(archive)
            names = {m.name.lstrip("./") for m in members}
            arch = _arch(archive, members)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise PlatformError(
            f"image {source.name!r}: {path} is not a rootfs tarball (.tar, .tar.gz, .tar.xz): {exc}"
        ) from None
    except rootfs.BadImage as exc:
        raise PlatformError(f"image {source.name!r}: {path} is refused: {exc}") from None
    if arch is None:
        raise PlatformError(
            f"image {source.name!r}: {path} holds no program under usr/bin or bin, so its "
            "architecture is unknown: is it a root filesystem?"
        )
    return ImageRef(source.name, path, rootfs.sha256_of(str(path)), arch, SSHD in names)


def _arch(archive: tarfile.TarFile, members: list[tarfile.TarInfo]) -> str | None:
    """The Debian architecture of the first ELF program under usr/bin or bin."""
    for member in members:
        if not member.isreg() or not member.name.lstrip("./").startswith(("usr/bin/", "bin/")):
            continue
        file = archive.extractfile(member)
        head = file.read(20) if file else b""
        if head[:4] == b"\x7fELF" and len(head) == 20:
            order = "<" if head[5] == 1 else ">"
            machine = struct.unpack(order + "H", head[18:20])[0]
            return _ELF_MACHINES.get(machine, f"elf-machine-{machine}")
    return None
