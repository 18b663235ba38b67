"""The OCI runtime configuration (config.json) of a container vnode, generated as data.

The container gets its own mount, pid, ipc and uts namespaces and joins the network
namespace omnibed's agent made, by path, so the emulated network stays as it is. Its
hostname is the vnode's name. Limits: `cpus` pins cores (cpuset), `share` is the CFS quota
as a fraction of those cores (of one core when none are pinned), `memory` is a hard limit
in bytes (swap included when the pnode swaps). runc maps these resources to cgroup v1 or
v2 itself. With sshd, the vnode's host key and authorised keys are bind-mounted read-only
from the bundle: nothing is written into the image through paths it controls.

A shared image is the lower layer of an overlay that runc mounts on the container's /,
inside the container's own mount namespace: the pnode's mount table does not grow with
its vnodes (runc reads the whole table at every start), and the overlay goes away with the
container's last process, whatever killed it.

Python 3.9 compatible; standard library only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

CFS_PERIOD_US = 100_000
# the CPU weight of a vnode with a share (v1 cpu.shares; runc converts it for v2): ten times
# a process's, so that the quota, not the pnode's own busy processes, is what limits it
SHARES_WITH_QUOTA = 10240
SSH_DIR = "/etc/omnibed-ssh"  # inside the container: host_key, authorized_keys
# Docker's default capability set: root in the vnode may not change the emulated network
# (no CAP_NET_ADMIN) nor the pnode (no CAP_SYS_ADMIN, CAP_SYS_MODULE, ...)
CAPABILITIES = [
    "CAP_AUDIT_WRITE", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_MKNOD", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW", "CAP_SETFCAP",
    "CAP_SETGID", "CAP_SETPCAP", "CAP_SETUID", "CAP_SYS_CHROOT",
]  # fmt: skip
SSHD = [
    "/usr/sbin/sshd", "-D", "-e",
    "-h", f"{SSH_DIR}/host_key",
    "-o", f"AuthorizedKeysFile={SSH_DIR}/authorized_keys .ssh/authorized_keys",
]  # fmt: skip
# without sshd: an init that reaps the processes `exec` leaves behind and stops on TERM
IDLE = ["/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 3600 & wait; done"]


def _mount(destination: str, kind: str, source: str, *options: str) -> dict[str, Any]:
    return {"destination": destination, "type": kind, "source": source, "options": list(options)}


def resources(cpus: Sequence[int], share: float | None, memory: int | None, swap: bool) -> dict:
    """The OCI linux.resources of these limits."""
    result: dict[str, Any] = {"devices": [{"allow": False, "access": "rwm"}]}
    cpu: dict[str, Any] = {}
    if cpus:
        cpu["cpus"] = ",".join(str(c) for c in sorted(cpus))
    if share is not None:
        cpu["period"] = CFS_PERIOD_US
        cpu["quota"] = max(1000, round(share * max(1, len(cpus)) * CFS_PERIOD_US))
        cpu["shares"] = SHARES_WITH_QUOTA
    if cpu:
        result["cpu"] = cpu
    if memory is not None:
        result["memory"] = {"limit": memory, **({"swap": memory} if swap else {})}
    return result


def config(
    *,
    hostname: str,
    netns: str,
    cgroups_path: str,
    ssh_dir: str | None,
    overlay: tuple[str, str, str] | None = None,
    cpus: Sequence[int] = (),
    share: float | None = None,
    memory: int | None = None,
    swap: bool = False,
) -> dict[str, Any]:
    """config.json of a bundle whose rootfs is `rootfs/`; `ssh_dir` (a host directory with
    host_key and authorized_keys) runs sshd as the container's init, None an idle init.
    `overlay` (lower, upper, work directories): / is an overlay of them, mounted over the
    empty `rootfs/` in the container's mount namespace."""
    mounts = [
        _mount("/proc", "proc", "proc"),
        _mount("/dev", "tmpfs", "tmpfs", "nosuid", "strictatime", "mode=755", "size=65536k"),
        _mount(
            "/dev/pts",
            "devpts",
            "devpts",
            "nosuid",
            "noexec",
            "newinstance",
            "ptmxmode=0666",
            "mode=0620",
            "gid=5",
        ),  # fmt: skip
        _mount("/dev/shm", "tmpfs", "shm", "nosuid", "noexec", "nodev", "mode=1777"),
        _mount("/dev/mqueue", "mqueue", "mqueue", "nosuid", "noexec", "nodev"),
        _mount("/sys", "sysfs", "sysfs", "nosuid", "noexec", "nodev", "ro"),
        _mount("/run", "tmpfs", "tmpfs", "nosuid", "nodev", "mode=755"),
        _mount("/tmp", "tmpfs", "tmpfs", "nosuid", "nodev", "mode=1777"),
    ]
    if overlay is not None:
        lower, upper, work = overlay
        layers = (f"lowerdir={lower}", f"upperdir={upper}", f"workdir={work}")
        mounts.insert(0, _mount("/", "overlay", "overlay", *layers))
    if ssh_dir is not None:
        mounts.append(_mount("/run/sshd", "tmpfs", "tmpfs", "nosuid", "nodev", "mode=755"))
        mounts.append(_mount(SSH_DIR, "bind", ssh_dir, "bind", "ro", "nosuid", "nodev"))
    caps = list(CAPABILITIES)
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": SSHD if ssh_dir is not None else IDLE,
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "noNewPrivileges": False,
        },
        "root": {"path": "rootfs", "readonly": False},
        "hostname": hostname,
        "mounts": mounts,
        "linux": {
            "cgroupsPath": cgroups_path,
            "resources": resources(cpus, share, memory, swap),
            "namespaces": [
                {"type": "pid"},
                {"type": "mount"},
                {"type": "ipc"},
                {"type": "uts"},
                {"type": "network", "path": netns},
            ],
            "maskedPaths": [
                "/proc/acpi",
                "/proc/kcore",
                "/proc/keys",
                "/proc/latency_stats",
                "/proc/timer_list",
                "/proc/sched_debug",
                "/proc/scsi",
                "/sys/firmware",
            ],  # fmt: skip
            "readonlyPaths": [
                "/proc/bus",
                "/proc/fs",
                "/proc/irq",
                "/proc/sys",
                "/proc/sysrq-trigger",
            ],  # fmt: skip
        },
    }
