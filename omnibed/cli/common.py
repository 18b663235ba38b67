"""What every `omnibed` command shares: the consoles, the common arguments, error exit and
progress."""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from omnibed.core.errors import UsageError

if TYPE_CHECKING:  # loaded by the commands that use them, not by `--help`
    from rich.progress import TaskID

    from omnibed.api import Omnibed

out = Console()
err = Console(stderr=True)

Name = Annotated[str, typer.Argument(help="Reservation name, as `omnibed ls` shows it.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
Command = Annotated[
    list[str] | None,
    typer.Argument(
        help="The program and its arguments, after `--`: each word reaches the program as it "
        "is (omnibed quotes it for the node's shell), e.g. -- python3 -c \"print('y')\".",
        show_default=False,
    ),
]
Shell = Annotated[
    str | None,
    typer.Option(
        "--shell",
        help="Run this string with `sh -c` instead of words after `--`, for pipes, globs, "
        "variables and `;`: --shell 'id -u; hostname -I'.",
    ),
]


def _fail(message: str, code: int) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise SystemExit(code)


def _help_without_command(context: typer.Context) -> None:
    """A group's callback: `omnibed` or `omnibed emulate` alone prints its help."""
    if context.invoked_subcommand is None:
        typer.echo(context.get_help(), nl=False)  # Typer's rich help prints itself, returns ""
        raise typer.Exit()


def _api() -> Omnibed:
    from omnibed.api import Omnibed

    return Omnibed()


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


class Display:
    """A live progress display on stderr while omnibed waits: a spinner, what it waits for
    with the latest words of the testbed or emulator, the time spent, and one row per
    pnode with a count (`vnodes built 3/8`). Shown only when both stdout and stderr are
    terminals (`name=$(omnibed reserve ...)` stays quiet), and erased when done: nothing
    of it reaches a pipe or a file."""

    def __init__(self, what: str) -> None:
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.what = escape(what)  # a file name may hold [brackets]: no rich markup
        self.live = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
            console=err, transient=True, disable=not (err.is_terminal and sys.stdout.isatty()),
        )  # fmt: skip
        self.task = self.live.add_task(self.what, total=None)
        self.rows: dict[str, TaskID] = {}

    def __call__(self, line: str) -> None:
        """Show `line` (the current step, in the testbed's or emulator's words)."""
        self.live.update(self.task, description=f"{self.what}: {escape(line)}")

    def count(self, pnode: str, step: str, done: int, total: int) -> None:
        """Show `done`/`total` of `step` on `pnode`'s row (made at its first count)."""
        text = f"  {escape(pnode)}: {escape(step)} {done}/{total}"
        if pnode not in self.rows:
            self.rows[pnode] = self.live.add_task(text, total=None)
        self.live.update(self.rows[pnode], description=text)


@contextmanager
def _progress(what: str) -> Iterator[Display]:
    display = Display(what)
    with display.live:
        yield display


@contextmanager
def _uninterruptible() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM while releasing, so a second signal cannot leak nodes."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _argv(words: list[str] | None, shell: str | None) -> list[str]:
    """What to run: the words after `--` as they are, or `sh -c STRING` for --shell."""
    if words and shell is not None:
        raise UsageError("give the command either as words after `--` or as --shell 'STRING',"
                         " not both")
    if shell is not None:
        return ["sh", "-c", shell]
    if not words:
        raise UsageError("no command given: put it after `--` (e.g. `-- id -u`), or give "
                         "--shell 'STRING' for pipes and globs")
    return words

