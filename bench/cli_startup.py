"""How long `omnibed` takes to answer the commands a user types most, and what it imports.

Side by side in the same run, best and median wall time of N runs of each:

  python -c pass          the interpreter alone, the floor
  python -c 'import typer' the interpreter and the CLI framework omnibed is written in
  omnibed --help, --version, ls, providers (with an empty OMNIBED_HOME)

and, for each omnibed command, whether it loaded paramiko, openstacksdk, the Grid'5000
client or the emulator (they should load only for the commands that use them).

Run: `.venv/bin/python bench/cli_startup.py [N]` (default 15). Prints figures. Not a test.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OMNIBED = str(Path(sys.executable).with_name("omnibed"))
HEAVY = ("paramiko", "openstack", "grid5000", "omnibed.emulator.coordinator")
LOADED = (  # run one omnibed command in-process and print which HEAVY modules it loaded
    "import sys; from omnibed.cli import main; sys.argv = ['omnibed', *sys.argv[1:]]\n"
    "try: main()\nexcept SystemExit: pass\n"
    f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules) or '-', file=sys.stderr)"
)


def timed(argv: list[str], env: dict[str, str], runs: int) -> tuple[float, float]:
    """(best, median) wall seconds of `runs` runs of `argv`."""
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       check=False)
        seconds.append(time.perf_counter() - start)
    return min(seconds), statistics.median(seconds)


def loaded(args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, "-c", LOADED, *args], env=env,
                          capture_output=True, text=True, check=False)
    return done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "?"


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "OMNIBED_HOME": home}
        rows = [
            ("python -c pass", [sys.executable, "-c", "pass"], None),
            ("python -c 'import typer'", [sys.executable, "-c", "import typer"], None),
            *((f"omnibed {' '.join(args)}", [OMNIBED, *args], args)
              for args in (["--help"], ["--version"], ["ls"], ["providers"])),
        ]
        print(f"{'command':28} {'best s':>7} {'median s':>9}  heavy modules loaded")
        for label, argv, args in rows:
            best, median = timed(argv, env, runs)
            heavy = loaded(args, env) if args is not None else ""
            print(f"{label:28} {best:7.3f} {median:9.3f}  {heavy}")


if __name__ == "__main__":
    main()
