"""N container vnodes with sshd on one local pnode: up until every one answers SSH, and down.

Side by side in the same run, on the same machine:

  omnibed     the path a user takes: a local reservation of 1 pnode (omnibed.api.Omnibed),
              a platform of N vnodes (`image:` from `omnibed image build`, ssh: true,
              memory 128MiB, cpu share 0.5, one interface on a bridged vnetwork) through
              `Emulator.up` (network, containers, and it returns only once every vnode
              accepted a root login through the pnode, host key checked) and `Emulator.down`.
  sequential  the same containers (same image, limits, sshd as init), each in a network
              namespace of its own, started by one `runc run` per vnode (`crun run` where
              this machine's cgroup layout lets crun run), one after the other, the way
              Distem starts LXC containers; then the same root login to each (paramiko,
              host key checked, the same key exchange, 16 at a time, from inside its
              namespace); down is one delete per vnode. Its namespaces get loopback only,
              no veth.

Where the CPU of `up` went, printed under the omnibed row: the machine's (all processes,
from /proc/stat) and the vnodes' own (their sshd starting and one login each, with the
login's shell and the image's PAM session modules, as `emulate status` reads them from the
vnodes' cgroups). Divided by
the cores, the vnodes' own CPU is a floor for `up` on this machine, which only a cheaper
login (or a cheaper sshd in the image) can lower.

Before the figures, a warm-up `up`/`down` of 1 vnode puts the image on the pnode (uploaded
and unpacked once per pnode, then kept), as a second `emulate up` finds it; the sequential
column gets its own unpacked copy, not timed. Memory per vnode: this machine's used memory
(MemTotal - MemAvailable) with every vnode up, minus just before `up`, divided by N; other
work on the machine moves it, so the load (`uptime`) is printed with the figures.

Run as root: `.venv/bin/python bench/vnodes_scale.py [--image NAME] [N ...]` (default
10 100 500). The image comes from `omnibed image ls` in $OMNIBED_HOME (built with
openssh-server and python3 when missing); the reservation is released at the end.
Prints figures. Not a test.
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pyroute2 import IPRoute

from omnibed.api import Omnibed
from omnibed.core.errors import UsageError
from omnibed.emulator import images
from omnibed.emulator.agent import nsutil, rootfs
from omnibed.emulator.agent.containers import ContainerSpec, Runtime
from omnibed.emulator.coordinator import Emulator
from omnibed.emulator.model import load_platform
from omnibed.emulator.vnode_ssh import VnodeTransport

MEMORY = 128 << 20
SHARE = 0.5
PACKAGES = ["openssh-server", "python3"]


def _platform(image: str, n: int):
    return load_platform(
        {
            "networks": [{"name": "vnetwork", "cidr": "10.64.0.0/16", "mode": "bridge"}],
            "nodes": [
                {
                    "name": "vnode-{i}",
                    "per_pnode": n,
                    "image": image,
                    "cpu": {"share": SHARE},
                    "memory": f"{MEMORY >> 20}MiB",
                    "ssh": True,
                    "ifaces": [{"name": "if0", "network": "vnetwork"}],
                }
            ],
        }
    )


def _used_memory() -> int:
    fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    return (int(fields["MemTotal"].split()[0]) - int(fields["MemAvailable"].split()[0])) * 1024


def _machine_cpu() -> float:
    """Seconds of CPU this machine spent, all processes and the kernel, since boot."""
    ticks = [int(t) for t in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # less idle, iowait


def _load() -> str:
    return "load average " + " ".join(Path("/proc/loadavg").read_text().split()[:3])


# -- omnibed: the user's path -------------------------------------------------------------


def _omnibed(emulator: Emulator, image: str, n: int) -> dict:
    """Up and down of N vnodes; "steps" are the seconds each step `up` reports took, "cpu"
    the machine's CPU seconds during `up` and "vnodes_cpu" the vnodes' own."""
    platform = _platform(image, n)
    steps: list[tuple[str, float]] = []
    before, cpu = _used_memory(), _machine_cpu()
    start = time.perf_counter()
    try:
        emulator.up(platform, progress=lambda step: steps.append((step, time.perf_counter())))
        up = time.perf_counter() - start
        cpu = _machine_cpu() - cpu
        memory = (_used_memory() - before) / n
        counters = emulator.status().containers.values()  # after memory: it starts agents
        vnodes_cpu = sum(c.get("cpu_usage_ns", 0) for c in counters) / 1e9
    finally:
        start = time.perf_counter()
        emulator.down()
        down = time.perf_counter() - start
    ends = [t for _, t in steps[1:]] + [start]
    took = [(step.split(" (")[0], end - t) for (step, t), end in zip(steps, ends, strict=True)]
    return {"up": up, "down": down, "memory": memory, "steps": took, "cpu": cpu,
            "vnodes_cpu": vnodes_cpu}  # fmt: skip


# -- sequential: one runc process per vnode, one after the other ----------------------------


def _new_key() -> tuple[str, paramiko.Ed25519Key]:
    """A new ed25519 key: its OpenSSH private text and the paramiko key (checks, signs)."""
    private = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()  # fmt: skip
    return private, paramiko.Ed25519Key.from_private_key(io.StringIO(private))


def _namespaces(names: list[str]) -> None:
    nsutil.prepare_run_dir()
    home = nsutil.current_fd()
    try:
        for name in names:
            with nsutil.inside(name, home), IPRoute() as ipr:
                ipr.link("set", index=1, state="up")
    finally:
        os.close(home)


def _ssh_ok(netns: str, host_key: paramiko.PKey, client_key: paramiko.PKey) -> None:
    """Log in as root to the sshd of the vnode in `netns`, retrying until it listens."""
    deadline = time.monotonic() + 60
    while True:
        home = nsutil.current_fd()
        try:
            with nsutil.inside(netns, home):
                sock = socket.socket()
        finally:
            os.close(home)
        try:
            sock.settimeout(10)
            sock.connect(("127.0.0.1", 22))
            break
        except ConnectionRefusedError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
    client = paramiko.SSHClient()
    client.get_host_keys().add("127.0.0.1", host_key.get_name(), host_key)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    with client:
        client.connect(
            "127.0.0.1", username="root", pkey=client_key, sock=sock,
            look_for_keys=False, allow_agent=False, timeout=30,
            transport_factory=VnodeTransport,  # the key exchange omnibed's logins ask for
        )  # fmt: skip
        _, out, _ = client.exec_command("true")
        if out.channel.recv_exit_status() != 0:
            raise RuntimeError(f"ssh to {netns}: `true` failed")


def _sequential(runtime: Runtime, image: images.Image, n: int) -> dict[str, float]:
    tag = uuid.uuid4().hex[:6]
    names = [f"b{tag}v{i}" for i in range(n)]
    _namespaces(names)
    _, client_key = _new_key()
    authorized = f"{client_key.get_name()} {client_key.get_base64()}"
    keys = {name: _new_key() for name in names}
    specs = [
        ContainerSpec(
            name=name, hostname=name, netns=nsutil.path(name), image=str(image.path),
            sha256=image.sha256, arch=image.arch, memory=MEMORY, share=SHARE, ssh=True,
            host_key=keys[name][0], authorized_keys=authorized,
        )  # fmt: skip
        for name in names
    ]
    try:
        before = _used_memory()
        start = time.perf_counter()
        runtime.start(specs, workers=1)
        started = time.perf_counter() - start
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda s: _ssh_ok(s.name, keys[s.name][1], client_key), specs))
        up = time.perf_counter() - start
        memory = (_used_memory() - before) / n
        start = time.perf_counter()
        runtime.remove(names, workers=1)
        down = time.perf_counter() - start
    finally:
        runtime.remove(names)
        for name in names:
            nsutil.remove(name)
    return {"started": started, "up": up, "down": down, "memory": memory}


# -- the run ------------------------------------------------------------------------------


def _image(name: str) -> images.Image:
    try:
        return images.get(name)
    except UsageError:
        print(f"building image {name} ...", flush=True)
        return images.build(name, packages=PACKAGES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image", default="vnode-bench")
    parser.add_argument("counts", nargs="*", type=int, default=[10, 100, 500])
    args = parser.parse_args()
    image = _image(args.image)
    api = Omnibed()
    request = api.make_request("local", nodes=1, walltime=timedelta(hours=2))
    api.reserve("local", request)
    try:
        api.wait(request.name)
        emulator = Emulator(api.access(request.name))
        start = time.perf_counter()
        _omnibed(emulator, args.image, 1)
        print(f"warm-up: 1 vnode up and down in {time.perf_counter() - start:.1f} s "
              f"(image {args.image} uploaded to the pnode and unpacked there once)")  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="omnibed-bench-sequential-") as pnode:
            runtime = Runtime(root=f"{pnode}/omnibed", state_dir=f"{pnode}/state")
            rootfs.unpack(str(image.path), image.sha256, runtime.images_dir)
            print(f"{'N':>5} {'method':<10} {'up s':>7} {'ms/vnode':>8} {'down s':>6} "
                  f"{'MiB/vnode':>9}  load")  # fmt: skip
            for n in args.counts:
                results = {
                    "omnibed": _omnibed(emulator, args.image, n),
                    "sequential": _sequential(runtime, image, n),
                }
                for method, r in results.items():
                    extra = f", runc alone {r['started']:.2f} s" if "started" in r else ""
                    print(f"{n:>5} {method:<10} {r['up']:>7.2f} {r['up'] / n * 1000:>8.1f} "
                          f"{r['down']:>6.2f} {r['memory'] / 2**20:>9.2f}  {_load()}{extra}",
                          flush=True)  # fmt: skip
                o, s = results["omnibed"], results["sequential"]
                print("      omnibed up, step by step: "
                      + ", ".join(f"{step} {t:.2f} s" for step, t in o["steps"] if t >= 0.05))
                cores = os.cpu_count() or 1
                print(f"      omnibed up, CPU: the machine {o['cpu']:.1f} s on {cores} cores "
                      f"({o['cpu'] / cores:.1f} s of wall at full use); inside the vnodes "
                      f"(sshd starting, one login each) {o['vnodes_cpu']:.1f} s, "
                      f"{o['vnodes_cpu'] / n * 1000:.0f} ms/vnode, a floor of "
                      f"{o['vnodes_cpu'] / cores:.1f} s for up with these logins")
                print(f"{n:>5} ratio sequential/omnibed: up {s['up'] / o['up']:.2f}x, "
                      f"down {s['down'] / o['down']:.2f}x", flush=True)  # fmt: skip
    finally:
        api.release(request.name)


if __name__ == "__main__":
    main()
