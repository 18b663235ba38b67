"""Named network namespaces, made the way iproute2 makes them, in-process.

A namespace is created by the calling thread: unshare(CLONE_NEWNET), bind-mount
/proc/thread-self/ns/net onto /run/netns/NAME, then setns back (about 0.2 ms, against
2.3 ms for `ip netns add` and 4-5 ms for pyroute2.netns.create, which forks).
Python 3.9 compatible; standard library only.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager

NETNS_RUN_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
MS_BIND = 4096
MS_REC = 16384
MS_SHARED = 1 << 20
MNT_DETACH = 2

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_void_p,
]


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def setns(fd: int) -> None:
    """Move the calling thread into the network namespace of `fd`."""
    _check(_libc.setns(fd, CLONE_NEWNET), "setns")


def unshare_net() -> None:
    _check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")


def mount(source: str, target: str, fstype: str, flags: int) -> None:
    _check(
        _libc.mount(source.encode(), target.encode(), fstype.encode(), flags, None),
        f"mount {target}",
    )


def path(name: str) -> str:
    return os.path.join(NETNS_RUN_DIR, name)


def existing() -> set[str]:
    """Names under /run/netns (empty when the directory does not exist)."""
    try:
        return set(os.listdir(NETNS_RUN_DIR))
    except FileNotFoundError:
        return set()


def prepare_run_dir() -> None:
    """Make /run/netns a shared mount point, as `ip netns add` does, so mounts propagate."""
    os.makedirs(NETNS_RUN_DIR, exist_ok=True)
    try:
        mount("none", NETNS_RUN_DIR, "none", MS_SHARED | MS_REC)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        mount(NETNS_RUN_DIR, NETNS_RUN_DIR, "none", MS_BIND | MS_REC)
        mount("none", NETNS_RUN_DIR, "none", MS_SHARED | MS_REC)


def current_fd() -> int:
    """An fd on the calling thread's network namespace (the caller closes it)."""
    return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)


@contextmanager
def inside(name: str, home_fd: int) -> Iterator[bool]:
    """Run the block in namespace `name`, creating it when missing; back to `home_fd` after.

    Yields True when the namespace was created here. A socket opened in the block stays
    bound to `name` after the block.
    """
    created = False
    target = path(name)
    if os.path.exists(target):
        fd = os.open(target, os.O_RDONLY | os.O_CLOEXEC)
        try:
            setns(fd)
        finally:
            os.close(fd)
    else:
        fd = os.open(target, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0)
        os.close(fd)
        try:
            unshare_net()
            mount("/proc/thread-self/ns/net", target, "none", MS_BIND)
        except BaseException:
            setns(home_fd)
            os.unlink(target)
            raise
        created = True
    try:
        yield created
    finally:
        setns(home_fd)


def remove(name: str) -> bool:
    """Unmount and unlink /run/netns/NAME; False when it was not there (idempotent)."""
    target = path(name)
    if _libc.umount2(target.encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):
            raise OSError(err, f"umount {target}: {os.strerror(err)}")
    try:
        os.unlink(target)
    except FileNotFoundError:
        return False
    return True
