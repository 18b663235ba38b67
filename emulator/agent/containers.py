"""Container vnodes on a pnode: OCI bundles run by crun or runc in network namespaces omnibed
made.

A ContainerSpec is plain data, as the agent receives it. Everything lives below `root`
(/var/lib/omnibed, root-only):

  images/SHA256/rootfs   an image, unpacked once per pnode (rootfs.py)
  containers/NAME/       the bundle: config.json, rootfs/ (an overlay on the image, or a
                         private copy), upper/ and work/ (the overlay's), ssh/, init.log
                         (the init's output), init.pid

The runtime is crun (C: a start costs about half the CPU of runc's, whose Go runtime starts
twice) where it is installed and the pnode's cgroup layout lets it run
(cgroups.crun_can_run), else runc. runc mounts a bundle's overlay itself, in the container's
mount namespace only; crun cannot mount an overlay on / from config.json (crun issue 1594),
so for crun the agent mounts it on the bundle's rootfs/ before the first start. Each keeps
its state apart, below STATE_DIR (/run/omnibed/crun, /run/omnibed/runc), apart from any
other user of them. `start` starts a batch, `workers` runtime processes at a time, and
removes the whole batch when one container fails. `remove` leaves no container, process,
mount, directory or cgroup, also after the runtime, the agent or the container was killed,
whichever runtime started it. Runs as root; Python 3.9 compatible; standard library only.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from typing import Any

from . import cgroups, nsutil, oci, ops, rootfs

ROOT = "/var/lib/omnibed"
STATE_DIR = "/run/omnibed"  # each runtime's state in STATE_DIR/<runtime>
RUNTIMES = ("crun", "runc")  # preferred first
MIN_MEMORY = 16 << 20  # below this, the runtime's own init is OOM-killed before the vnode starts
# Debian architecture of an image -> `uname -m` of a pnode that runs it
MACHINES = {"amd64": "x86_64", "arm64": "aarch64", "ppc64el": "ppc64le", "i386": "i686"}
# what `emulate up --install` runs where the runtime is missing (+ its name), as
# distem-bootstrap installed LXC
APT_INSTALL = ("apt-get", "install", "-y", "-q", "--no-install-recommends")
APT_UPDATE = ("apt-get", "update", "-q")
APT_TIMEOUT = 600
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")
_SHA256 = re.compile(r"[0-9a-f]{64}\Z")


def tarball_path(sha256: str, root: str = ROOT) -> str:
    """Where image `sha256`'s tarball is kept on a pnode (a root-only directory)."""
    return os.path.join(root, "images", f"{sha256}.tar")


class ContainerError(RuntimeError):
    """A container could not be started; `name` is the container, the message the runtime's."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"container {name}: {message}")
        self.name = name


@dataclass(frozen=True)
class ContainerSpec:
    """One container vnode. `name` is its id on the pnode, `hostname` the vnode's name,
    `netns` the path of the network namespace it joins, `image` the path of the image
    tarball on the pnode and `sha256` its digest, `arch` its Debian architecture.
    `shared`: an overlay on the pnode's one unpacked copy, else a private copy. `cpus`:
    cores to pin; `share`: CFS quota as a fraction of them (of one core when none pinned);
    `memory`: a hard limit in bytes. `ssh`: sshd is the container's init, with `host_key`
    (OpenSSH private key) and `authorized_keys` (lines for root)."""

    name: str
    hostname: str
    netns: str
    image: str
    sha256: str
    arch: str
    shared: bool = True
    cpus: tuple[int, ...] = ()
    share: float | None = None
    memory: int | None = None
    ssh: bool = False
    host_key: str = ""
    authorized_keys: str = ""

    def __post_init__(self) -> None:
        if not _NAME.match(self.name) or not _NAME.match(self.hostname):
            raise ValueError(f"bad container name {self.name!r} or hostname {self.hostname!r}")
        if not _SHA256.match(self.sha256):
            raise ValueError(f"bad image sha256 {self.sha256!r}")
        if self.share is not None and not 0 < self.share <= 1:
            raise ValueError(f"{self.name}: cpu share {self.share} is not in (0, 1]")
        if self.memory is not None and self.memory < MIN_MEMORY:
            raise ValueError(
                f"{self.name}: memory limit {self.memory} B is below the "
                f"{MIN_MEMORY >> 20} MiB a container needs to start"
            )
        if self.ssh and not (self.host_key and self.authorized_keys):
            raise ValueError(f"{self.name}: ssh needs a host key and authorised keys")

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ContainerSpec:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown container spec fields: {', '.join(sorted(unknown))}")
        return cls(**{**data, "cpus": tuple(int(c) for c in data.get("cpus", ()))})


def _swaps() -> bool:
    with open("/proc/swaps") as swaps:
        return len(swaps.read().splitlines()) > 1


def _apt(argv: Sequence[str]) -> str | None:
    """Run apt `argv` non-interactively; None when it succeeded, else its first error."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        done = subprocess.run(
            list(argv), env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=APT_TIMEOUT,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return f"{argv[0]} {argv[1]} did not end within {APT_TIMEOUT} s"
    if done.returncode == 0:
        return None
    lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("E:")] or lines[-1:]
    return errors[0] if errors else f"{argv[0]} {argv[1]} exited with status {done.returncode}"


def _apt_install(program: str) -> str | None:
    """apt-get install `program`, once more after apt-get update if that failed; None when
    `program` is on the PATH afterwards, else why not."""
    failure = _apt((*APT_INSTALL, program))
    if failure is not None:
        failure = _apt(APT_UPDATE) or _apt((*APT_INSTALL, program))
    if failure is None and shutil.which(program) is None:
        failure = f"it installed no {program} on the PATH ({os.environ.get('PATH')})"
    return failure


def _runc_error(text: str) -> str:
    """The runtime's own error message out of its output: runc's logfmt `msg="..."` lines,
    else the last line (crun's)."""
    messages = re.findall(r'level=error msg="((?:[^"\\]|\\.)*)"', text)
    if messages:
        return messages[-1].replace('\\"', '"')
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "the container runtime failed without a message"


def choose() -> str:
    """The runtime to use here: crun when the cgroup layout lets it run and it is installed
    (or runc is not: crun is then what `install` installs), else runc."""
    if not cgroups.crun_can_run():
        return "runc"
    if shutil.which("crun") is not None or shutil.which("runc") is None:
        return "crun"
    return "runc"


class Runtime:
    """The container vnodes of this pnode, run by `program` (crun or runc; None: choose())
    with its state in `state_dir`/<program>."""

    def __init__(self, root: str = ROOT, state_dir: str = STATE_DIR, program: str | None = None):
        self.images_dir = os.path.join(root, "images")
        self.containers_dir = os.path.join(root, "containers")
        self.root = root
        self.state_dir = state_dir
        self.chosen = program is None
        self.program = program or choose()

    @property
    def state_root(self) -> str:
        return self.state_root_of(self.program)

    def state_root_of(self, program: str) -> str:
        return os.path.join(self.state_dir, os.path.basename(program))

    def _others(self) -> list[str]:
        """The other runtimes installed here, whose leftovers remove() deletes too."""
        mine = os.path.basename(self.program)
        return [p for p in RUNTIMES if p != mine and shutil.which(p) is not None]

    def _state(self, program: str, name: str) -> str:
        return os.path.join(self.state_root_of(program), name)

    @property
    def mounts_overlay(self) -> bool:
        """Whether the agent mounts a bundle's overlay (crun), not the runtime (runc)."""
        return os.path.basename(self.program) != "runc"

    def _runc(
        self, *args: str, program: str | None = None, timeout: float | None = 60, **kwargs: Any
    ):
        """The runtime (crun or runc; `program`, else this one's) run with `args`, on its
        own state."""
        program = program or self.program
        return subprocess.run(
            [program, "--root", self.state_root_of(program), *args], timeout=timeout, **kwargs
        )

    def bundle(self, name: str) -> str:
        return os.path.join(self.containers_dir, name)

    def has_image(self, sha256: str) -> bool:
        """Whether image `sha256` is here, as a tarball or unpacked."""
        return os.path.isfile(tarball_path(sha256, self.root)) or os.path.isdir(
            os.path.join(self.images_dir, sha256, "rootfs")
        )

    # -- preflight ------------------------------------------------------------------------

    def preflight(self, specs: Sequence[ContainerSpec], placed: bool = True) -> list[str]:
        """Everything that stops `specs` from starting here, as sentences; nothing changed.
        `placed=False` skips what only exists once omnibed placed it: the network namespaces
        and the images."""
        problems: list[str] = []
        if os.geteuid() != 0:
            return [f"container vnodes need root, the agent runs as uid {os.geteuid()}"]
        if shutil.which(self.program) is None:
            problems.append(
                f"the container runtime {self.program} is not installed: pass --install to "
                f"`omnibed emulate up` (it runs apt-get install {self.program} there)"
            )
        machine = os.uname().machine
        for arch in sorted({s.arch for s in specs}):
            if MACHINES.get(arch, arch) != machine:
                users = [s.hostname for s in specs if s.arch == arch]
                problems.append(
                    f"image of {users[0]} is {arch} ({MACHINES.get(arch, arch)}), "
                    f"this pnode is {machine}: use an image built with --arch for it"
                )
        cores = os.cpu_count() or 1
        for spec in specs:
            beyond = [c for c in spec.cpus if not 0 <= c < cores]
            if beyond or len(set(spec.cpus)) != len(spec.cpus):
                problems.append(
                    f"{spec.hostname} wants cores {list(spec.cpus)}, this pnode has "
                    f"{cores} (0-{cores - 1}), each usable once per vnode"
                )
        problems += self._missing_controllers(specs)
        if any(s.shared for s in specs) and not _has_filesystem("overlay"):
            problems.append("the overlay filesystem is missing: modprobe overlay, or shared: false")
        for spec in specs if placed else ():
            if not os.path.exists(spec.netns):
                problems.append(f"network namespace {spec.netns} of {spec.hostname} does not exist")
            if not os.path.isfile(spec.image):
                if not os.path.isdir(os.path.join(self.images_dir, spec.sha256)):
                    problems.append(f"image {spec.image} of {spec.hostname} is not on this pnode")
        return problems

    def install(self) -> list[str]:
        """Install the runtime with apt where it is missing (`emulate up --install`): crun
        where the cgroup layout lets it run, else runc; nothing done when it is there. Why
        it could not be installed, as sentences; [] when it is there afterwards. A fresh
        testbed image's package lists may be missing or stale: when the install fails they
        are updated and it is tried once more."""
        program = self.program
        if shutil.which(program) is not None:
            return []
        if shutil.which("apt-get") is None:
            return [f"the container runtime {program} is not installed and this pnode has "
                    f"no apt-get: install {program} with its package manager"]  # fmt: skip
        failure = _apt_install(program)
        if failure is not None and self.chosen and program != "runc":
            if _apt_install("runc") is None:  # an older release without crun
                self.program = "runc"
                return []
        if failure is not None:
            return [f"installing the container runtime with `{' '.join(APT_INSTALL)} "
                    f"{program}` failed: {failure}; install {program} there by hand or give "
                    "the pnode a Debian mirror"]  # fmt: skip
        return []

    def _missing_controllers(self, specs: Sequence[ContainerSpec]) -> list[str]:
        needs = {
            "cpuset": ("pinned cores", any(s.cpus for s in specs)),
            "cpu": ("a CPU share", any(s.share is not None for s in specs)),
            "memory": ("a memory limit", any(s.memory is not None for s in specs)),
        }
        present = cgroups.controllers()
        problems = [
            f"the {controller} cgroup controller is missing: {what} cannot be enforced here"
            for controller, (what, needed) in needs.items()
            if needed and controller not in present
        ]
        if needs["memory"][1] and _swaps() and not self._swap_accounted():
            problems.append(
                "this pnode swaps without swap accounting: a memory limit cannot be enforced; "
                "boot with swapaccount=1 or run swapoff -a"
            )
        return problems

    def _swap_accounted(self) -> bool:
        if cgroups.is_v2():
            return True  # memory.swap.max exists whenever the kernel can swap
        memory = cgroups.hierarchies().get("memory", "")
        return os.path.exists(os.path.join(memory, "memory.memsw.limit_in_bytes"))

    # -- start ----------------------------------------------------------------------------

    def start(self, specs: Sequence[ContainerSpec], workers: int = 8) -> dict[str, dict]:
        """Start every container of `specs`: {name: {"pid": init pid}}. When one fails,
        every container of the batch is removed and ContainerError names the first."""
        made: list[str] = []
        try:
            rootfs_of = {}
            for spec in specs:
                if spec.sha256 not in rootfs_of:
                    rootfs_of[spec.sha256] = rootfs.unpack(spec.image, spec.sha256, self.images_dir)
                if spec.ssh and not os.path.lexists(
                    os.path.join(rootfs_of[spec.sha256], "usr/sbin/sshd")
                ):
                    raise ContainerError(spec.name, f"image {spec.image} has no /usr/sbin/sshd")
            swap = _swaps()
            for spec in specs:
                os.makedirs(self.containers_dir, mode=0o700, exist_ok=True)
                os.mkdir(self.bundle(spec.name), 0o700)  # refuses a name in use
                made.append(spec.name)
                self._make_bundle(spec, rootfs_of[spec.sha256], swap)
            with ThreadPoolExecutor(max(1, workers)) as pool:
                pids = list(pool.map(self._run, specs))  # in the order of specs
        except BaseException:
            self.remove(made)
            raise
        return {spec.name: {"pid": pids[i]} for i, spec in enumerate(specs)}

    def _make_bundle(self, spec: ContainerSpec, lower: str, swap: bool) -> None:
        bundle = self.bundle(spec.name)
        overlay = None
        if spec.shared:  # runc mounts it, in the container's mount namespace only
            for part in ("upper", "work", "rootfs"):
                os.mkdir(os.path.join(bundle, part), 0o700)
            overlay = (lower, f"{bundle}/upper", f"{bundle}/work")
            if self.mounts_overlay:  # crun: _run mounts it on rootfs/, in the pnode
                overlay = None
        else:
            merged = os.path.join(bundle, "rootfs")
            subprocess.run(["cp", "-a", "--reflink=auto", lower, merged], check=True)
        ssh_dir = None
        if spec.ssh:
            ssh_dir = os.path.join(bundle, "ssh")
            os.mkdir(ssh_dir, 0o700)
            _write_private(os.path.join(ssh_dir, "host_key"), spec.host_key)
            _write_private(os.path.join(ssh_dir, "authorized_keys"), spec.authorized_keys)
        config = oci.config(
            hostname=spec.hostname,
            netns=spec.netns,
            cgroups_path=cgroups.cgroup_path(spec.name),
            ssh_dir=ssh_dir,
            overlay=overlay,
            cpus=spec.cpus,
            share=spec.share,
            memory=spec.memory,
            swap=swap,
        )
        _write_private(os.path.join(bundle, "config.json"), json.dumps(config, indent=1))

    def _run(self, spec: ContainerSpec) -> int:
        """Start `spec`'s bundle; the pid of its init. Its output goes to init.log."""
        bundle = self.bundle(spec.name)
        if spec.shared and self.mounts_overlay:
            self._mount_overlay(spec)
        log = os.open(os.path.join(bundle, "init.log"), os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            done = self._runc(
                "run", "--detach", "--bundle", bundle, "--pid-file", f"{bundle}/init.pid",
                spec.name, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            )  # fmt: skip
        finally:
            os.close(log)
        if done.returncode != 0:
            with open(os.path.join(bundle, "init.log"), errors="replace") as file:
                raise ContainerError(spec.name, _runc_error(file.read()))
        with open(os.path.join(bundle, "init.pid")) as pid:
            return int(pid.read())

    def _mount_overlay(self, spec: ContainerSpec) -> None:
        """Mount `spec`'s overlay on its bundle's rootfs/ for crun, unless it is there
        already (a container started again); remove() unmounts it."""
        bundle = self.bundle(spec.name)
        if os.path.ismount(os.path.join(bundle, "rootfs")):
            return
        lower = os.path.join(self.images_dir, spec.sha256, "rootfs")
        layers = f"lowerdir={lower},upperdir={bundle}/upper,workdir={bundle}/work"
        nsutil.mount("overlay", os.path.join(bundle, "rootfs"), "overlay", 0, layers)

    # -- inspect --------------------------------------------------------------------------

    def state(self, name: str) -> dict[str, Any]:
        """runc's state of `name` (status: created, running, stopped); {} when it has none."""
        done = self._runc("state", name, capture_output=True, text=True)
        return json.loads(done.stdout) if done.returncode == 0 else {}

    def names(self) -> list[str]:
        """Every container omnibed has here: those either runtime knows and those with a
        bundle."""
        done = self._runc("list", "--format", "json", capture_output=True, text=True)
        known = {c["id"] for c in json.loads(done.stdout or "null") or []}
        for directory in [self.containers_dir, *map(self.state_root_of, self._others())]:
            if os.path.isdir(directory):
                known |= set(os.listdir(directory))
        return sorted(known)

    def status(self, names: Sequence[str]) -> dict[str, dict[str, Any]]:
        """{name: state ("absent" when unknown), pid, oom_kills, cpu_usage_ns and, on
        cgroup v1, memory_failcnt}; the counters last as long as the container's cgroup."""
        result = {}
        for name in names:
            state = self.state(name)
            result[name] = {
                "state": state.get("status", "absent"),
                "pid": state.get("pid", 0),
                **cgroups.counters(name),
            }
        return result

    def exec(self, name: str, argv: Sequence[str], timeout: float | None = None) -> dict:
        """Run `argv` inside container `name` as root: exit_status, stdout_base64,
        stderr_base64 (the output bytes unchanged)."""
        done = self._runc(
            "exec", name, *argv, timeout=timeout, capture_output=True, stdin=subprocess.DEVNULL
        )
        return ops.exec_reply(done)

    # -- remove ---------------------------------------------------------------------------

    def remove(self, names: Sequence[str], workers: int = 8) -> list[str]:
        """Remove containers `names` entirely; those that existed. Idempotent. Every
        container's processes are killed first, through its cgroups (`runc delete --force`
        would poll each running init for 100 ms), then the runtime deletes them, `workers` at
        a time (and the other runtime those it has state of: a pnode where crun came after
        runc), then what is left of their cgroups and their bundles goes."""
        deletes = [(self.program, n) for n in names]
        for other in self._others():
            deletes += [(other, n) for n in names if os.path.isdir(self._state(other, n))]
        existed = {n for program, n in deletes if os.path.isdir(self._state(program, n))}
        existed |= cgroups.kill(names)
        with ThreadPoolExecutor(max(1, workers)) as pool:
            list(pool.map(lambda job: self._runc("delete", "--force", job[1], program=job[0],
                                                 capture_output=True), deletes))
        existed |= cgroups.remove(names)
        bundles = [n for n in names if os.path.isdir(self.bundle(n))]
        for name in bundles:  # the overlay of a bundle an earlier omnibed mounted itself
            nsutil.umount(os.path.join(self.bundle(name), "rootfs"))
        _refuse_mounts_below([self.bundle(n) for n in bundles])
        for name in bundles:
            shutil.rmtree(self.bundle(name))
        existed |= set(bundles)
        return [name for name in names if name in existed]


def _write_private(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(text if text.endswith("\n") else text + "\n")


def _has_filesystem(kind: str) -> bool:
    """True when the kernel knows filesystem `kind` or can load its module."""
    with open("/proc/filesystems") as known:
        if any(line.split()[-1] == kind for line in known if line.strip()):
            return True
    try:
        return subprocess.run(["modprobe", kind], capture_output=True).returncode == 0
    except OSError:
        return False


def _refuse_mounts_below(directories: Sequence[str]) -> None:
    """OSError when something is mounted below one of `directories` (rmtree would go into
    it); the mount table is read once."""
    prefixes = tuple(directory.rstrip("/") + "/" for directory in directories)
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            point = line.split()[4]
            if point.startswith(prefixes):
                raise OSError(f"{point} is still mounted: not removing its container's bundle")
