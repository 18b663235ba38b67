"""Root filesystem images of container vnodes: Debian tarballs built by mmdebstrap, cached.

The cache is `<omnibed home>/images/`: one `<sha256>.tar.gz` per image (the file's own
sha256) and `index.json` mapping each image NAME to its sha256, architecture, suite and
packages. Files are 0600, the directory 0700. A build writes a temporary file in the cache
and renames it once complete, so a failed or interrupted build leaves nothing behind.
Images carry no SSH host keys: each container vnode gets its own.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from omnibed.core.errors import OmnibedError, UsageError
from omnibed.emulator.agent.rootfs import sha256_of

# Debian architecture -> what `uname -m` says on a machine that runs it
ARCHES = {"amd64": "x86_64", "arm64": "aarch64", "ppc64el": "ppc64le"}
DEFAULT_SUITE = "bookworm"
DEFAULT_PACKAGES = ("openssh-server", "iproute2", "iputils-ping", "python3")
SUFFIX = ".tar.gz"  # Python 3.9's tarfile on the pnodes reads it without extra tools
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}\Z")
_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]+\Z")  # Debian policy 5.6.1
_SUITE = re.compile(r"[a-z][a-z0-9-]{1,31}\Z")
_MISSING_PACKAGE = re.compile(r"Unable to locate package (\S+)")


@dataclass(frozen=True)
class Image:
    """A cached image; `path` is its tarball, named by `sha256`."""

    name: str
    sha256: str
    arch: str
    suite: str
    packages: tuple[str, ...]
    size: int
    path: Path


def cache_dir() -> Path:
    from omnibed.core.ledger import omnibed_home  # the ledger's code loads with a command

    directory = omnibed_home() / "images"
    directory.mkdir(mode=0o700, exist_ok=True)
    return directory


def host_arch() -> str:
    """This machine's Debian architecture name."""
    machine = os.uname().machine
    for arch, uname in ARCHES.items():
        if uname == machine:
            return arch
    return machine


def images() -> list[Image]:
    """Every cached image, by name."""
    return [_image(name, entry) for name, entry in sorted(_read_index().items())]


def get(name: str) -> Image:
    """The cached image `name`; UsageError when there is none."""
    entry = _read_index().get(name)
    if entry is None:
        raise UsageError(f"no image called {name!r}: `omnibed image build {name}` makes one")
    return _image(name, entry)


def build(
    name: str,
    packages: Sequence[str] = DEFAULT_PACKAGES,
    suite: str = DEFAULT_SUITE,
    arch: str | None = None,
    progress: Callable[[str], None] = lambda line: None,
) -> Image:
    """Build image `name` (replacing one of that name) and cache it; `progress` gets each
    step mmdebstrap reports. Bad input raises UsageError before anything runs."""
    arch = arch or host_arch()
    packages = tuple(sorted(set(packages)))
    _check_input(name, packages, suite, arch)
    directory = cache_dir()
    _remove_stale_partials(directory)
    partial = directory / f".partial-{os.getpid()}-{name}{SUFFIX}"
    try:
        _mmdebstrap(partial, packages, suite, arch, progress)
        progress("hashing")
        os.chmod(partial, 0o600)
        sha256 = sha256_of(str(partial))
        size = partial.stat().st_size
        partial.rename(directory / f"{sha256}{SUFFIX}")
    finally:
        partial.unlink(missing_ok=True)
    entry = {"sha256": sha256, "arch": arch, "suite": suite, "packages": list(packages)}
    with _locked_index() as index:
        index[name] = {**entry, "size": size}
    return get(name)


def remove(name: str) -> Image:
    """Forget image `name`; its tarball goes too unless another name shares it."""
    with _locked_index() as index:
        image = get(name)
        del index[name]
        if all(entry["sha256"] != image.sha256 for entry in index.values()):
            image.path.unlink(missing_ok=True)
    return image


def as_dict(image: Image) -> dict[str, object]:
    return {**asdict(image), "packages": list(image.packages), "path": str(image.path)}


def _check_input(name: str, packages: Sequence[str], suite: str, arch: str) -> None:
    if not _NAME.match(name):
        raise UsageError(
            f"bad image name {name!r}: lowercase letters, digits, '.', '-', '_' (at most 63)"
        )
    if arch not in ARCHES:
        raise UsageError(f"unknown architecture {arch!r}: one of {', '.join(ARCHES)}")
    bad = [p for p in packages if not _PACKAGE.match(p)]
    if bad:
        raise UsageError(f"bad Debian package name {bad[0]!r}: see `apt-cache search`")
    if not _SUITE.match(suite):
        raise UsageError(f"bad Debian suite {suite!r}: e.g. bookworm, trixie, stable")
    if shutil.which("mmdebstrap") is None:
        raise OmnibedError("mmdebstrap is not installed: apt-get install mmdebstrap")
    if arch != host_arch() and not Path(f"/proc/sys/fs/binfmt_misc/qemu-{ARCHES[arch]}").exists():
        raise OmnibedError(
            f"building an {arch} image on this {host_arch()} machine needs qemu: "
            "apt-get install qemu-user-static binfmt-support"
        )


def _mmdebstrap(
    target: Path, packages: Sequence[str], suite: str, arch: str, say: Callable[[str], None]
) -> None:
    argv = [
        "mmdebstrap",
        "--variant=minbase",
        f"--architectures={arch}",
        f"--include={','.join(packages)}",
        "--skip=output/dev",  # containers get their own /dev: no device files in images
        '--customize-hook=rm -f "$1"/etc/ssh/ssh_host_*',
        suite,
        str(target),
    ]
    lines: list[str] = []
    with subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        umask=0o077,
    ) as child:
        assert child.stderr is not None
        for line in child.stderr:
            lines.append(line.strip())
            if line.startswith("I: "):
                say(line[3:].strip())
    if child.returncode != 0:
        text = "\n".join(lines)
        missing = _MISSING_PACKAGE.search(text)
        if missing:
            raise UsageError(f"Debian {suite} has no package {missing.group(1)!r} for {arch}")
        errors = [line for line in lines if line.startswith("E: ")] or lines[-1:] or ["no output"]
        raise OmnibedError(f"mmdebstrap failed ({errors[0]}); run it by hand to see why")


def _remove_stale_partials(directory: Path) -> None:
    """Remove what builds killed before their end left (their process is gone)."""
    for partial in directory.glob(".partial-*"):
        pid = partial.name.split("-")[1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            partial.unlink(missing_ok=True)


def _image(name: str, entry: dict) -> Image:
    return Image(
        name,
        entry["sha256"],
        entry["arch"],
        entry["suite"],
        tuple(entry["packages"]),
        entry["size"],
        cache_dir() / f"{entry['sha256']}{SUFFIX}",
    )


def _read_index() -> dict[str, dict]:
    try:
        return json.loads((cache_dir() / "index.json").read_text())
    except FileNotFoundError:
        return {}


@contextmanager
def _locked_index() -> Iterator[dict[str, dict]]:
    """The index, held under a lock; written back (atomically) when the block ends."""
    directory = cache_dir()
    fd = os.open(directory / "index.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        index = _read_index()
        yield index
        tmp = directory / f".index-{os.getpid()}.json"
        tmp.write_text(json.dumps(index, indent=1, sort_keys=True))
        os.chmod(tmp, 0o600)
        tmp.rename(directory / "index.json")
    finally:
        os.close(fd)
