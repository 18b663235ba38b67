"""Install the agent bundle on a pnode where only root can change it, check it, run it.

Sent as source and run by the pnode's python3 (MIN_PYTHON or newer, standard library only) as
`python3 -I -c <this file> DIRECTORY NAME SHA256 SIZE`, by the user the agent runs as (root):

- DIRECTORY is created 0700 if missing; it must be a directory, not a symlink, owned by that
  user and writable by no one else, or the launcher refuses. Everything after that goes
  through the directory's file descriptor, so no path is followed twice.
- When DIRECTORY/NAME is missing or its sha256 is not SHA256, the launcher writes `send`,
  reads SIZE bytes from stdin, checks their sha256, writes them to a new file (O_EXCL,
  O_NOFOLLOW, 0600) and renames it to NAME.
- It writes `run` and execs `python3 -I /proc/self/fd/N`, N being the file it just hashed:
  what runs is what was checked, and the agent takes over stdin and stdout.

A refusal is one line `refused: <why and what to do>` on stdout and exit status 1.
"""

from __future__ import annotations

import hashlib
import os
import stat
import sys
from typing import NoReturn


def refuse(why: str) -> NoReturn:
    sys.stdout.write(f"refused: {why}\n")
    sys.stdout.flush()
    sys.exit(1)


def open_directory(path: str) -> int:
    """A descriptor of `path`, created if missing, once checked to be only ours to write."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    fix = "remove it, omnibed recreates it owned by root with mode 0700"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        kind = "a symlink" if os.path.islink(path) else "not a directory"
        refuse(f"the agent directory {path} is {kind}: {fix}")
    info = os.fstat(fd)
    if info.st_uid != os.geteuid():
        refuse(f"the agent directory {path} is owned by uid {info.st_uid}, not "
               f"{os.geteuid()}: {fix}")
    if info.st_mode & 0o022:
        refuse(f"the agent directory {path} is writable by others (mode "
               f"{stat.S_IMODE(info.st_mode):o}): {fix}")
    return fd


def open_if_intact(directory: int, name: str, sha256: str) -> int | None:
    """A descriptor of the regular file `name` if its content has `sha256`, else None."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=directory)
    except OSError:
        return None
    digest = hashlib.sha256()
    with os.fdopen(os.dup(fd), "rb") as stored:
        for chunk in iter(lambda: stored.read(1 << 20), b""):
            digest.update(chunk)
    if stat.S_ISREG(os.fstat(fd).st_mode) and digest.hexdigest() == sha256:
        return fd
    os.close(fd)
    return None


def receive(size: int, sha256: str) -> bytes:
    """Exactly `size` bytes from stdin (no more: the rest is the agent's), checked."""
    chunks = []
    left = size
    while left:
        chunk = os.read(0, min(left, 1 << 20))
        if not chunk:
            refuse(f"the bundle upload ended {left} bytes early: retry")
        chunks.append(chunk)
        left -= len(chunk)
    data = b"".join(chunks)
    if hashlib.sha256(data).hexdigest() != sha256:
        refuse("the uploaded bundle does not have the expected sha256: retry")
    return data


def store(directory: int, name: str, data: bytes) -> None:
    """Write `data` to a new temporary file and rename it to `name`, atomically."""
    temporary = f"{name}.{os.urandom(8).hex()}.part"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    fd = os.open(temporary, flags, 0o600, dir_fd=directory)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.rename(temporary, name, src_dir_fd=directory, dst_dir_fd=directory)


def main(path: str, name: str, sha256: str, size: str) -> None:
    directory = open_directory(path)
    bundle = open_if_intact(directory, name, sha256)
    if bundle is None:
        sys.stdout.write("send\n")
        sys.stdout.flush()
        store(directory, name, receive(int(size), sha256))
        bundle = open_if_intact(directory, name, sha256)
        if bundle is None:
            refuse(f"{path}/{name} changed right after it was written: retry")
    os.set_inheritable(bundle, True)
    sys.stdout.write("run\n")
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, "-I", f"/proc/self/fd/{bundle}"])


if __name__ == "__main__":
    main(*sys.argv[1:])
