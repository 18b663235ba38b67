"""`omnibed emulate up`/`down` on 1 to 32 local pnodes, and how fast interactive commands answer.

Run as root: `.venv/bin/python bench/emulator_pnodes.py [--pnodes 1 2 4 8 16 32]
[--vnodes 10] [--runs 20] [--omnibed PATH]`. Each size gets its own local reservation in a
fresh OMNIBED_HOME. Printed, side by side:

  reserve     making the N local pnodes (namespaces, sshd), for scale only
  up, down    `omnibed emulate up` (with its connectivity check) and `emulate down` through
              the CLI, end to end, as a user types them; `x1` is up over up on 1 pnode
  apply       the slowest pnode's apply within an `Emulator.up` run in this process (from
              the agents' apply request to its last reply), and `up - apply`, what the rest
              of that in-process `up` and its connectivity check cost on top of it

then, on a 2-pnode reservation running the platform, the median and best of `--runs` runs
of `omnibed emulate exec R v0 -- true`, `omnibed emulate status R` and `omnibed run R --
true`, with the control process (the default) and without it (OMNIBED_CONTROL_IDLE=0: each
command logs in and starts its agents), beside `omnibed --help`, the CLI's own start.
`--omnibed` times another installation's CLI (e.g. the code before a change); the
in-process figures always use this one. Prints the load average with the figures: other
work on the machine slows every column alike, so compare ratios. Not a test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from omnibed.api import Omnibed
from omnibed.emulator.model import load_platform

PLATFORM = """
networks:
  - {{name: lan, cidr: 10.80.0.0/16}}
nodes:
  - name: v{{i}}
    per_pnode: {vnodes}
    ifaces:
      - {{name: if0, network: lan}}
"""


def cli(omnibed: str, home: Path, *args: str, **env: str) -> float:
    """Seconds `omnibed ARGS` took; RuntimeError with its stderr if it failed."""
    start = time.perf_counter()
    done = subprocess.run(
        [omnibed, *args], env={**os.environ, "OMNIBED_HOME": str(home), **env},
        capture_output=True, text=True,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"omnibed {' '.join(args)}: {done.stderr.strip()[-800:]}")
    return seconds


def reserve(home: Path, pnodes: int) -> tuple[Omnibed, str, float]:
    api = Omnibed(home=home)
    start = time.perf_counter()
    request = api.make_request("local", nodes=pnodes, walltime=timedelta(hours=1))
    api.reserve("local", request)
    api.wait(request.name)
    return api, request.name, time.perf_counter() - start


def in_process_up(api: Omnibed, name: str, platform: Path) -> tuple[float, float]:
    """(slowest apply, whole up + connectivity check) of one `up` in this process."""
    emulator = api.emulator(name)
    marks: dict[str, float] = {}

    def progress(message: str) -> None:
        if message.startswith("building"):
            marks["apply"] = time.perf_counter()

    start = time.perf_counter()
    emulator.up(load_platform(platform), progress=progress)
    applied = time.perf_counter()
    emulator.connectivity()
    end = time.perf_counter()
    emulator.down()
    return applied - marks["apply"], end - start


def scaling(sizes: list[int], vnodes: int, omnibed: str, work: Path) -> None:
    platform = work / "platform.yaml"
    platform.write_text(PLATFORM.format(vnodes=vnodes))
    print(f"emulate up/down, {vnodes} vnodes per pnode, one vnetwork (load {_load()})")
    print(f"{'pnodes':>6} {'reserve':>8} {'up':>7} {'x1':>6} {'down':>7} {'apply':>7} "
          f"{'up-apply':>9}")
    first = None
    for size in sizes:
        home = work / f"home-{size}"
        api, name, reserved = reserve(home, size)
        try:
            up = cli(omnibed, home, "emulate", "up", name, str(platform))
            down = cli(omnibed, home, "emulate", "down", name)
            apply, whole = in_process_up(api, name, platform)
        finally:
            api.release(name)
        first = first or up
        print(f"{size:>6} {reserved:>7.2f}s {up:>6.2f}s {up / first:>5.2f}x {down:>6.2f}s "
              f"{apply:>6.2f}s {whole - apply:>8.2f}s   (load {_load()})", flush=True)


def latency(runs: int, vnodes: int, omnibed: str, work: Path) -> None:
    platform = work / "platform.yaml"
    platform.write_text(PLATFORM.format(vnodes=vnodes))
    home = work / "home-latency"
    api, name, _ = reserve(home, 2)
    try:
        cli(omnibed, home, "emulate", "up", name, str(platform))
        commands = {
            "omnibed --help": ["--help"],
            "emulate exec R v0 -- true": ["emulate", "exec", name, "v0", "--", "true"],
            "emulate status R": ["emulate", "status", name],
            "run R -- true": ["run", name, "--", "true"],
        }
        print(f"\nlatency on 2 pnodes, median (best) of {runs} runs (load {_load()})")
        print(f"{'command':<28} {'control process':>18} {'without':>18}")
        for label, args in commands.items():
            kept = [cli(omnibed, home, *args) for _ in range(runs)]
            alone = [cli(omnibed, home, *args, OMNIBED_CONTROL_IDLE="0") for _ in range(runs)]
            print(f"{label:<28} {_figure(kept):>18} {_figure(alone):>18}   (load {_load()})",
                  flush=True)
        cli(omnibed, home, "emulate", "down", name)
    finally:
        api.release(name)


def _figure(seconds: list[float]) -> str:
    return f"{statistics.median(seconds):.3f}s ({min(seconds):.3f}s)"


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pnodes", type=int, nargs="*", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--vnodes", type=int, default=10, help="vnodes per pnode")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--omnibed", default=str(Path(sys.executable).with_name("omnibed")))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="omnibed-bench-") as work:
        if args.pnodes:
            scaling(args.pnodes, args.vnodes, args.omnibed, Path(work))
        if args.runs:
            latency(args.runs, args.vnodes, args.omnibed, Path(work))


if __name__ == "__main__":
    main()
