"""How long `omnibed` takes to answer the commands a user types most, and what it imports.

Side by side in the same run, best and median wall and CPU time of N runs of each:

  python -c pass          the interpreter alone
  python -c 'import typer' the interpreter and the CLI framework omnibed is written in
  typer app --help, ls:     what any Typer CLI pays to answer (the installed Typer loads
                          pydantic to read its own --help and completion flags), the floor
  omnibed --help, --version, ls, providers (with an empty OMNIBED_HOME)

with the machine's load average (other work slows every row alike: compare the rows of one
run), and, for each omnibed command, whether it loaded paramiko, openstacksdk, the Grid'5000
client, the emulator, pluggy or omnibed's API (each should load only for the commands that
use it).

Run: `.venv/bin/python bench/cli_startup.py [N]` (default 15). Prints figures. Not a test.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OMNIBED = str(Path(sys.executable).with_name("omnibed"))
HEAVY = ("paramiko", "openstack", "grid5000", "omnibed.emulator.coordinator", "pluggy",
         "omnibed.api")
LOADED = (  # run one omnibed command in-process and print which HEAVY modules it loaded
    "import sys; from omnibed.cli import main; sys.argv = ['omnibed', *sys.argv[1:]]\n"
    "try: main()\nexcept SystemExit: pass\n"
    f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules) or '-', file=sys.stderr)"
)


TYPER_APP = '''import typer
app = typer.Typer()
@app.command()
def ls(json: bool = False) -> None:
    print("[]" if json else "")
@app.command()
def other() -> None:
    pass
app()
'''


def timed(
    argvs: list[list[str]], env: dict[str, str], runs: int
) -> list[list[tuple[float, float]]]:
    """(wall, CPU) seconds of `runs` runs of each of `argvs`, taken in turns (one of each,
    then again) so that a change in the machine's load falls on every row alike. CPU time
    (user + system) counts only what the command did, however busy the machine is."""
    seconds: list[list[tuple[float, float]]] = [[] for _ in argvs]
    for _ in range(runs):
        for argv, taken in zip(argvs, seconds, strict=True):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           check=False)
            wall = time.perf_counter() - start
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
            taken.append((wall, cpu))
    return seconds


def loaded(args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, "-c", LOADED, *args], env=env,
                          capture_output=True, text=True, check=False)
    return done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "?"


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "OMNIBED_HOME": home}
        typer_app = Path(home) / "typer_app.py"
        typer_app.write_text(TYPER_APP)
        rows = [
            ("python -c pass", [sys.executable, "-c", "pass"], None),
            ("python -c 'import typer'", [sys.executable, "-c", "import typer"], None),
            ("typer app --help", [sys.executable, str(typer_app), "--help"], None),
            ("typer app ls", [sys.executable, str(typer_app), "ls"], None),
            *((f"omnibed {' '.join(args)}", [OMNIBED, *args], args)
              for args in (["--help"], ["--version"], ["ls"], ["providers"])),
        ]
        load = os.getloadavg()[0]
        seconds = timed([argv for _, argv, _ in rows], env, runs)
        print(f"load average {load:.1f} before, {os.getloadavg()[0]:.1f} after")
        print(f"{'command':28} {'wall best':>9} {'median':>7} {'CPU best':>9} {'median':>7}"
              "  heavy modules loaded")
        for (label, _, args), taken in zip(rows, seconds, strict=True):
            heavy = loaded(args, env) if args is not None else ""
            wall, cpu = [t[0] for t in taken], [t[1] for t in taken]
            print(f"{label:28} {min(wall):9.3f} {statistics.median(wall):7.3f}"
                  f" {min(cpu):9.3f} {statistics.median(cpu):7.3f}  {heavy}")


if __name__ == "__main__":
    main()
