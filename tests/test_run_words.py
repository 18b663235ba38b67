"""The words after `--` reach the remote program as the same argv through `omnibed run` and
`omnibed emulate exec` (quoted by omnibed for the node's shell), and `--shell 'STRING'` is the
one way to hand a string to a shell, on the local testbed through the `omnibed` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

OMNIBED = str(Path(sys.executable).with_name("omnibed"))
SHOW_ARGV = "import json, sys; print(json.dumps(sys.argv[1:]))"
WORDS = ["an argument with spaces", "$(echo injected)", "it's \"quoted\"", "*",
         "", "a\\b;c|d"]
ONE_VNODE = """
networks:
  - {name: lan, cidr: 10.79.0.0/24}
nodes:
  - name: vnode-{i}
    per_pnode: 1
    ifaces:
      - {name: if0, network: lan}
"""


def omnibed(home: Path, *args: str, columns: int = 400) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMNIBED_HOME": str(home), "COLUMNS": str(columns)}
    return subprocess.run([OMNIBED, *args], env=env, capture_output=True, text=True, timeout=300)


def lines_of(result: subprocess.CompletedProcess[str]) -> list[str]:
    """What the one target printed on stdout (as it printed it: one target, no prefix)."""
    return result.stdout.splitlines()


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """(home, name) of one local pnode running one vnode, released at the end."""
    home = tmp_path_factory.mktemp("home")
    name = f"words-{uuid.uuid4().hex[:6]}"
    reserved = omnibed(home, "reserve", "--testbed", "local", "--nodes", "1", "--name", name)
    assert reserved.returncode == 0, reserved.stderr
    try:
        platform_file = home / "one.yaml"
        platform_file.write_text(ONE_VNODE)
        up = omnibed(home, "emulate", "up", name, str(platform_file))
        assert up.returncode == 0, up.stderr
        yield home, name
    finally:
        omnibed(home, "release", name)


@pytest.mark.root
def test_run_and_emulate_exec_give_the_same_argv(platform: tuple[Path, str]) -> None:
    home, name = platform
    ran = omnibed(home, "run", name, "--", "python3", "-c", SHOW_ARGV, *WORDS)
    executed = omnibed(home, "emulate", "exec", name, "vnode-0", "--",
                       "python3", "-c", SHOW_ARGV, *WORDS)
    assert ran.returncode == 0, ran.stderr
    assert executed.returncode == 0, executed.stderr
    assert [json.loads(line) for line in lines_of(ran)] == [WORDS]
    assert [json.loads(line) for line in lines_of(executed)] == [WORDS]


@pytest.mark.root
def test_python_c_with_quotes_runs_through_both(platform: tuple[Path, str]) -> None:
    home, name = platform
    ran = omnibed(home, "run", name, "--", "python3", "-c", "print('y')")
    executed = omnibed(home, "emulate", "exec", name, "vnode-0", "--", "python3", "-c",
                       "print('y')")
    assert (ran.returncode, lines_of(ran)) == (0, ["y"]), ran.stderr
    assert (executed.returncode, lines_of(executed)) == (0, ["y"]), executed.stderr


@pytest.mark.root
def test_remote_lines_are_printed_as_they_are(platform: tuple[Path, str]) -> None:
    """Lines that look like terminal markup or are wider than the terminal come back whole."""
    home, name = platform
    lines = ["[/] [red]not markup[/red] [bold]", "x" * 150]
    program = f"print({lines[0]!r}); print({lines[1]!r})"
    ran = omnibed(home, "run", name, "--", "python3", "-c", program, columns=80)
    executed = omnibed(home, "emulate", "exec", name, "vnode-0", "--", "python3", "-c",
                       program, columns=80)
    assert (ran.returncode, lines_of(ran)) == (0, lines), ran.stderr
    assert (executed.returncode, lines_of(executed)) == (0, lines), executed.stderr


@pytest.mark.root
def test_shell_string_gets_pipes_and_variables_through_both(platform: tuple[Path, str]) -> None:
    home, name = platform
    script = 'x=piped; echo "$x" | tr a-z A-Z; exit 3'
    ran = omnibed(home, "run", name, "--shell", script)
    executed = omnibed(home, "emulate", "exec", name, "vnode-0", "--shell", script)
    assert (ran.returncode, lines_of(ran)) == (3, ["PIPED"]), ran.stderr
    assert (executed.returncode, lines_of(executed)) == (3, ["PIPED"])  # the command's own


@pytest.mark.parametrize(
    "args",
    [
        ["run", "ghost"],
        ["run", "ghost", "--"],
        ["run", "ghost", "--shell", "true", "--", "true"],
        ["emulate", "exec", "ghost", "all", "--shell", "true", "--", "true"],
        ["reserve-and-run", "--testbed", "local", "--shell", "true", "--", "true"],
        ["reserve-and-run", "--testbed", "local"],
    ],
)
def test_words_or_shell_string_but_not_both_nor_none(tmp_path: Path, args: list[str]) -> None:
    result = omnibed(tmp_path, *args)
    assert result.returncode == 2
    assert "--shell" in result.stderr and "--" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert json.loads(omnibed(tmp_path, "ls", "--json").stdout) == []
