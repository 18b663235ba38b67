"""N container vnodes with sshd on this machine as the pnode: up until every one answers SSH,
and down. Side by side in the same run:

  batch       `Runtime.start` with 8 runc processes at a time, as omnibed starts them
  sequential  the same containers, one runc process after the other, as Distem starts LXC

Each vnode: its own network namespace (loopback up), an overlay on the one unpacked image,
128 MiB memory limit, a 50 % CPU share, sshd as init with a host key of its own. "up" ends
when every vnode has answered a real SSH login as root (paramiko, host key checked, from
inside its namespace). Memory per vnode: the pnode's used memory (MemTotal - MemAvailable)
with all vnodes up, minus before, divided by N.

Run as root: `.venv/bin/python bench/vnodes_scale.py [--image NAME] [N ...]` (default 10 100).
The image comes from `omnibed image ls` (built with the default packages when missing).
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
from pathlib import Path

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pyroute2 import IPRoute

from omnibed.core.errors import UsageError
from omnibed.emulator import images
from omnibed.emulator.agent import nsutil, rootfs
from omnibed.emulator.agent.containers import ContainerSpec, Runtime


def _new_key() -> tuple[str, paramiko.Ed25519Key]:
    """A new ed25519 key: its OpenSSH private text and the paramiko key (checks, signs)."""
    private = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()  # fmt: skip
    return private, paramiko.Ed25519Key.from_private_key(io.StringIO(private))


def _used_memory() -> int:
    fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    return (int(fields["MemTotal"].split()[0]) - int(fields["MemAvailable"].split()[0])) * 1024


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
        )  # fmt: skip
        _, out, _ = client.exec_command("true")
        if out.channel.recv_exit_status() != 0:
            raise RuntimeError(f"ssh to {netns}: `true` failed")


def _run(runtime: Runtime, image: images.Image, n: int, workers: int) -> dict[str, float]:
    tag = uuid.uuid4().hex[:6]
    names = [f"b{tag}v{i}" for i in range(n)]
    _namespaces(names)
    _, client_key = _new_key()
    authorized = f"{client_key.get_name()} {client_key.get_base64()}"
    keys = {name: _new_key() for name in names}
    specs = [
        ContainerSpec(
            name=name,
            hostname=name,
            netns=nsutil.path(name),
            image=str(image.path),
            sha256=image.sha256,
            arch=image.arch,
            memory=128 << 20,
            share=0.5,
            ssh=True,
            host_key=keys[name][0],
            authorized_keys=authorized,
        )  # fmt: skip
        for name in names
    ]
    try:
        before = _used_memory()
        start = time.perf_counter()
        runtime.start(specs, workers=workers)
        started = time.perf_counter() - start
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda s: _ssh_ok(s.name, keys[s.name][1], client_key), specs))
        up = time.perf_counter() - start
        memory = (_used_memory() - before) / n
        start = time.perf_counter()
        runtime.remove(names)
        down = time.perf_counter() - start
    finally:
        runtime.remove(names)
        for name in names:
            nsutil.remove(name)
    return {"started": started, "up": up, "down": down, "memory": memory}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image", default="vnode-bench")
    parser.add_argument("counts", nargs="*", type=int, default=[10, 100])
    args = parser.parse_args()
    try:
        image = images.get(args.image)
    except UsageError:
        print(f"building image {args.image} ...", flush=True)
        image = images.build(args.image)
    with tempfile.TemporaryDirectory(prefix="omnibed-bench-pnode-") as pnode:
        runtime = Runtime(root=f"{pnode}/omnibed", runc_root=f"{pnode}/runc")
        start = time.perf_counter()
        rootfs.unpack(str(image.path), image.sha256, runtime.images_dir)
        print(f"image {image.name}: unpacked once in {time.perf_counter() - start:.1f} s")
        for n in args.counts:
            for mode, workers in (("batch", 8), ("sequential", 1)):
                r = _run(runtime, image, n, workers)
                print(
                    f"{n:5d} vnodes {mode:10s}: runc started {r['started']:6.2f} s "
                    f"({r['started'] / n * 1000:5.1f} ms/vnode), all answer SSH {r['up']:6.2f} s "
                    f"({r['up'] / n * 1000:5.1f} ms/vnode), down {r['down']:5.2f} s, "
                    f"{r['memory'] / 2**20:5.1f} MiB/vnode",
                    flush=True,
                )


if __name__ == "__main__":
    main()
