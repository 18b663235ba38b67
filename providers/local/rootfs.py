"""Each local pnode's own root filesystem: an overlay of the host's `/` in a mount namespace.

The pnode's writes land in its writable layer, `<node dir>/fs/upper`, on a tmpfs of its own
(overlayfs refuses an upper layer on the filesystem of its lower one, here the host's `/`);
the host's files stay untouched. In the pnode's mount namespace /proc, /sys (showing the
pnode's network namespace, with the host's cgroup hierarchies as on a testbed node, as a
slave), /dev (the host's, as a slave) and a fresh /run are mounted, and the pnode's
directory is bound at its own path (sshd reads its config and key there and writes its pid
file and log where the host sees them). /var/lib/omnibed, where the emulator's agent keeps
its bundle, images and container layers, is a directory of the pnode's tmpfs, not of the
overlay: overlayfs refuses an overlay (a container vnode's) whose upper layer is on one.
The host's /run/netns is bound into the pnode with shared propagation, so a namespace a
pnode session mounts there (an emulator vnode) is the host's too, and the other way round.

root's home, /root, is the pnode's own (an opaque directory of its writable layer, filled
from /etc/skel), as on a freshly deployed testbed node: the host's root dotfiles (a shell
start-up that runs the host's tools, a lock file the host keeps changing) stay out of the
pnode's sessions.

Where the host's cgroup layout is hybrid with controllers in its v2 hierarchy
(/sys/fs/cgroup/unified), a layout no testbed image has and one crun 1.8 refuses, the pnode
sees a pure cgroup v1 layout instead: an empty tmpfs replaces that hierarchy in its mount
namespace, so the emulator runs container vnodes with crun there, as on a testbed node.
The pnode's processes stay in the reservation's v2 cgroup, which the host places them in
before they enter the pnode, so release still finds them all.

This contains mistakes (a `rm` or `touch` as root on a pnode), not a hostile root: the pnode
keeps every capability and sees the host's processes in /proc. The lower layer is the
filesystem mounted on `/` only, not other filesystems mounted below it, and overlayfs does
not expect it to change: a file the host creates or deletes while a pnode runs may stay
unseen, or seen, by the pnode.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from omnibed.providers.local.shell import run
from omnibed.providers.local.underlay import NETNS_DIR

FS = "fs"
UPPER = "upper"

# $1: the pnode's fs directory, $2: the pnode's directory, $3: the host's netns directory;
# the rest is the command to exec.
_ENTER = """set -e
fs=$1 node=$2 netns_dir=$3 root=$1/merged
shift 3
mount --make-private /
mount -t overlay overlay -o "lowerdir=/,upperdir=$fs/upper,workdir=$fs/work" "$root"
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
mount --rbind /sys/fs/cgroup "$root/sys/fs/cgroup"
mount --make-rslave "$root/sys/fs/cgroup"
# v2 controllers in a hybrid layout (crun refuses it): a pure v1 layout, as a testbed node's
if [ -n "$(cat "$root/sys/fs/cgroup/unified/cgroup.controllers" 2>/dev/null)" ]; then
    umount "$root/sys/fs/cgroup/unified"
    mount -t tmpfs -o mode=0755 tmpfs "$root/sys/fs/cgroup/unified"
fi
mount --rbind /dev "$root/dev"
mount --make-rslave "$root/dev"
mount -t tmpfs -o mode=0755 tmpfs "$root/run"
mkdir -m 0755 "$root/run/sshd" "$root/run/netns" "$root/run/old-root"
mount --rbind "$netns_dir" "$root/run/netns"
mkdir -p "$root$node"
mount --bind "$node" "$root$node"
mkdir -p -m 0700 "$fs/omnibed" "$root/var/lib/omnibed"
mount --bind "$fs/omnibed" "$root/var/lib/omnibed"
cd "$root"
pivot_root . run/old-root
mount --make-rprivate /run/old-root
umount --lazy /run/old-root
rmdir /run/old-root
exec "$@"
"""


def overlay_available() -> bool:
    """True if the kernel offers overlayfs now (a module loads at the first mount, too)."""
    with open("/proc/filesystems") as known:
        listed = any(line.split()[-1] == "overlay" for line in known if line.strip())
    return listed or Path("/sys/module/overlay").exists() or bool(
        list(Path("/lib/modules", os.uname().release).glob("kernel/fs/overlayfs/overlay.ko*"))
    )


def upper(node_dir: Path) -> Path:
    """The pnode's writable layer, as the host sees it."""
    return node_dir / FS / UPPER


def prepare(node_dir: Path) -> Path:
    """Mount the pnode's tmpfs (private, so nothing mounted on it reaches the host's other
    mount namespaces) with empty upper, work and merged directories; return the upper."""
    fs = node_dir / FS
    fs.mkdir(mode=0o700)
    run("mount", "-t", "tmpfs", "-o", "mode=0700", "omnibed-pnode", str(fs))
    run("mount", "--make-private", str(fs))
    for name in ("work", "merged"):
        (fs / name).mkdir(mode=0o700)
    (fs / UPPER).mkdir(mode=0o755)
    _own_root_home(fs / UPPER)
    return fs / UPPER


def _own_root_home(upper_dir: Path) -> None:
    """/root in the pnode: a fresh home from /etc/skel, hiding the host's (opaque)."""
    home = upper_dir / "root"
    home.mkdir(mode=0o700)
    os.setxattr(home, "trusted.overlay.opaque", b"y")
    skel = Path("/etc/skel")
    if skel.is_dir():
        shutil.copytree(skel, home, symlinks=True, dirs_exist_ok=True)


def enter(node_dir: Path) -> list[str]:
    """A command prefix that unshares a mount namespace, makes the pnode's root filesystem
    its root and execs the rest of the command there (run it as root, after `prepare`)."""
    return ["unshare", "--mount", "--propagation", "unchanged",
            "sh", "-c", _ENTER, "sh", str(node_dir / FS), str(node_dir), str(NETNS_DIR)]


def unmount_under(directory: Path) -> None:
    """Unmount (lazily, deepest first) whatever the host has mounted in `directory`."""
    prefix = os.path.join(os.path.realpath(directory), "")
    with open("/proc/self/mountinfo") as mounts:
        points = {_unescape(line.split()[4]) for line in mounts}
    for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        run("umount", "--lazy", point)


def _unescape(field: str) -> str:
    """A mountinfo path with its octal escapes (`\\040` for a space) decoded."""
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), field)
