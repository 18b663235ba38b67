"""Every command and subcommand of `omnibed`, given bad input, exits 2 with one line on stderr
that names the mistake and nothing on stdout; a testbed that fails exits 1; never a traceback.

The commands are read from the Typer app, so a new command without bad inputs here fails
`test_every_command_has_bad_inputs`.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.main import get_command

from omnibed.cli import app
from tests.cli.support import Built, omnibed

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
GHOST = "ghost"
NO_GHOST = ["no reservation called 'ghost'", "omnibed ls"]
BAD_PLATFORM = """\
networks:
  - {name: lan, cidr: 10.81.0.0/24}
nodes:
  - name: a
    ifaces: [{name: if0, network: nope}]
"""
EXAMPLE = str(EXAMPLES / "shaped.yaml")
# In the words: {R} is a reservation running a platform (root, local testbed), {BAD} a
# platform file with a mistake on line 5, {MISSING} a file that does not exist.
BAD_INPUTS: dict[str, list[tuple[list[str], list[str]]]] = {
    "providers": [(["providers", "--bogus"], ["--bogus", "omnibed providers --help"])],
    "doctor": [(["doctor", "-t", "nowhere"], ["unknown testbed 'nowhere'", "local"])],
    "reserve": [
        (["reserve", "-t", "nowhere"], ["unknown testbed 'nowhere'"]),
        (["reserve", "-t", "local", "-n", "many"], ["--nodes", "'many'"]),
    ],
    "ls": [(["ls", "--bogus"], ["--bogus"])],
    "nodes": [
        (["nodes", GHOST], NO_GHOST),
        (["nodes"], ["Missing argument", "omnibed nodes --help"]),
    ],
    "nics": [(["nics", GHOST], NO_GHOST)],
    "run": [
        (["run", GHOST, "--", "true"], NO_GHOST),
        (["run", GHOST], ["no command given"]),
    ],
    "ssh": [(["ssh", GHOST, "n1"], NO_GHOST), (["ssh", "{R}", "nosuch"], ["no node 'nosuch'"])],
    "snapshot": [
        (["snapshot", GHOST, "n1", "img"], NO_GHOST),
        (["snapshot", "{R}", "nosuch", "img"], ["no node 'nosuch'"]),
    ],
    "extend": [(["extend", GHOST], NO_GHOST), (["extend", "{R}", "--by", "soon"], ["soon"])],
    "release": [(["release", GHOST], NO_GHOST)],
    "gc": [(["gc", "--bogus"], ["--bogus"])],
    "reserve-and-run": [
        (["reserve-and-run", "-t", "nowhere", "--", "true"], ["unknown testbed 'nowhere'"]),
        (["reserve-and-run", "-t", "local", "--platform", "{BAD}", "--", "true"],
         ["{BAD}:5:", "unknown vnetwork 'nope'"]),
    ],  # fmt: skip
    "emulate up": [
        (["emulate", "up", GHOST, "{BAD}"], ["{BAD}:5:", "unknown vnetwork 'nope'"]),
        (["emulate", "up", GHOST, "{MISSING}"], ["{MISSING}", "does not exist"]),
        (["emulate", "up", GHOST, EXAMPLE], NO_GHOST),
        (["emulate", "up", "{R}", EXAMPLE], ["already runs a platform"]),
    ],
    "emulate status": [(["emulate", "status", GHOST], NO_GHOST)],
    "emulate show": [
        (["emulate", "show", GHOST], NO_GHOST),
        (["emulate", "show", "--platform", "{BAD}"], ["{BAD}:5:", "unknown vnetwork 'nope'"]),
        (["emulate", "show", "--platform", EXAMPLE, "-f", "png"], ["png"]),
    ],
    "emulate exec": [
        (["emulate", "exec", GHOST, "node-0", "--", "true"], NO_GHOST),
        (["emulate", "exec", "{R}", "nosuch", "--", "true"], ["nosuch", "node-0"]),
    ],
    "emulate down": [(["emulate", "down", GHOST], NO_GHOST)],
    "emulate ssh": [
        (["emulate", "ssh", GHOST, "node-0"], NO_GHOST),
        (["emulate", "ssh", "{R}", "nosuch"], ["nosuch"]),
    ],
    "emulate cp": [
        (["emulate", "cp", GHOST, EXAMPLE, "node-0:/tmp/x"], NO_GHOST),
        (["emulate", "cp", "{R}", EXAMPLE, "nosuch:/tmp/x"], ["nosuch"]),
    ],
    "emulate set": [
        (["emulate", "set", GHOST, "node-0.if0.output", "rate=1mbit"], NO_GHOST),
        (["emulate", "set", "{R}", "nosuch.if0.output", "rate=1mbit"], ["nosuch"]),
        (["emulate", "set", "{R}", "node-0.if1.output", "rate=fast"], ["fast"]),
    ],
    "emulate link": [
        (["emulate", "link", GHOST, "node-0.if0", "down"], NO_GHOST),
        (["emulate", "link", "{R}", "nosuch.if0", "down"], ["nosuch"]),
        (["emulate", "link", "{R}", "node-0.if0", "sideways"], ["sideways"]),
    ],
    "emulate events": [
        (["emulate", "events", GHOST, EXAMPLE], NO_GHOST),
        (["emulate", "events", "{R}"], ["a timeline file or --cancel"]),
        (["emulate", "events", "{R}", "{MISSING}"], ["{MISSING}"]),
    ],
    "emulate stop": [
        (["emulate", "stop", GHOST, "node-0"], NO_GHOST),
        (["emulate", "stop", "{R}", "nosuch"], ["nosuch"]),
    ],
    "emulate start": [
        (["emulate", "start", GHOST, "node-0"], NO_GHOST),
        (["emulate", "start", "{R}", "nosuch"], ["nosuch"]),
    ],
    "emulate freeze": [
        (["emulate", "freeze", GHOST, "node-0"], NO_GHOST),
        (["emulate", "freeze", "{R}", "nosuch"], ["nosuch"]),
    ],
    "emulate thaw": [
        (["emulate", "thaw", GHOST, "node-0"], NO_GHOST),
        (["emulate", "thaw", "{R}", "nosuch"], ["nosuch"]),
    ],
    "image build": [(["image", "build", "x", "--arch", "sparc"], ["sparc", "amd64"])],
    "image ls": [(["image", "ls", "--bogus"], ["--bogus"])],
    "image rm": [(["image", "rm", GHOST], ["no image called 'ghost'"])],
}


def command_paths() -> Iterator[str]:
    """`reserve`, `emulate up`...: every command a user can run, read from the app."""

    def walk(group: object, prefix: tuple[str, ...]) -> Iterator[str]:
        for name, command in group.commands.items():  # type: ignore[attr-defined]
            if hasattr(command, "commands"):
                yield from walk(command, (*prefix, name))
            else:
                yield " ".join((*prefix, name))

    return walk(get_command(app), ())


def test_every_command_has_bad_inputs() -> None:
    assert sorted(command_paths()) == sorted(BAD_INPUTS)


def assert_one_line(done: object, status: int, words: list[str]) -> None:
    stdout, stderr = done.stdout, done.stderr  # type: ignore[attr-defined]
    assert (done.returncode, stdout) == (status, ""), stderr  # type: ignore[attr-defined]
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


CASES = [
    pytest.param(args, words, id=" ".join(args), marks=[pytest.mark.root] if "{R}" in args else [])
    for path in sorted(BAD_INPUTS)
    for args, words in BAD_INPUTS[path]
]


@pytest.mark.parametrize(("args", "words"), CASES)
def test_bad_input_exits_2_in_one_line(
    request: pytest.FixtureRequest, tmp_path: Path, args: list[str], words: list[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_PLATFORM)
    home = tmp_path / "home"
    place = {"{BAD}": str(bad), "{MISSING}": str(tmp_path / "missing.yaml")}
    if "{R}" in args:
        built: Built = request.getfixturevalue("built")
        home, place["{R}"] = built.home, built.name

    def fill(text: str) -> str:
        for mark, value in place.items():
            text = text.replace(mark, value)
        return text

    done = omnibed(home, *map(fill, args))
    assert_one_line(done, 2, [fill(word) for word in words])


@pytest.fixture
def unreachable_grid5000(tmp_path: Path) -> dict[str, str]:
    """Credentials for a Grid'5000 API on a local port where nothing listens."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = tmp_path / "grid5000.yaml"
    config.write_text(f"uri: http://127.0.0.1:{port}/\nusername: u\npassword: p\n")
    config.chmod(0o600)
    return {"OMNIBED_GRID5000_CONFIG": str(config)}


@pytest.mark.parametrize(
    "args",
    [
        ["reserve", "-t", "grid5000", "-o", "site=rennes"],
        ["reserve-and-run", "-t", "grid5000", "-o", "site=rennes", "--", "true"],
    ],
    ids=" ".join,
)
def test_a_testbed_that_does_not_answer_exits_1_in_one_line(
    tmp_path: Path, unreachable_grid5000: dict[str, str], args: list[str]
) -> None:
    done = omnibed(tmp_path / "home", *args, **unreachable_grid5000)
    assert_one_line(done, 1, ["Grid'5000 API", "did not answer"])
    name = done.stderr.split("releasing ")[1].split()[0]
    again = omnibed(tmp_path / "home", "nodes", name, **unreachable_grid5000)
    assert_one_line(again, 1, ["did not answer"])


@pytest.mark.root
def test_a_remote_command_that_fails_gives_its_status(built: Built) -> None:
    done = omnibed(built.home, "emulate", "exec", built.name, "node-0", "--shell", "exit 3")
    assert (done.returncode, done.stdout, done.stderr) == (3, "", "")
    done = omnibed(built.home, "run", built.name, "--shell", "exit 1")
    assert done.returncode == 1 and "Traceback" not in done.stderr
