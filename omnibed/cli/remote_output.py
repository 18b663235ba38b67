"""How `omnibed run` and `omnibed emulate exec` hand over what commands on targets (nodes or
vnodes) printed, and which exit status omnibed ends with.

One target: its stdout and stderr bytes reach ours unchanged (never wrapped, never
re-encoded) and omnibed exits with its exit status, as `ssh` and `docker exec` do. Several
targets: each line goes to the stream it came on prefixed by `[target] `, a table of exit
statuses ends stderr, and omnibed exits with the first non-zero status in target order.
`--json` prints one object instead: per target its exit status and its output.
"""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

from omnibed.cli.common import err

EXIT_STATUSES_HELP = (
    "Exit status: with one target, the command's own (255 when it could not be reached, as "
    "with ssh); with several, the first non-zero one in target order, 0 if all succeeded."
)


@dataclass(frozen=True)
class Outcome:
    """What a command did on one target: its exit status and its output bytes."""

    exit_status: int
    stdout: bytes
    stderr: bytes


class Streams:
    """Writes the output of `targets` targets as it comes: unchanged for one target, as
    lines prefixed by the target for several."""

    def __init__(self, targets: int) -> None:
        self.prefixed = targets > 1
        self.pending: dict[tuple[str, str], bytes] = {}  # a line not ended yet

    def write(self, target: str, stream: str, data: bytes) -> None:
        """Write `data`, a piece of `target`'s `stream` ("stdout" or "stderr")."""
        if self.prefixed:
            key = (target, stream)
            *lines, rest = (self.pending.pop(key, b"") + data).split(b"\n")
            if rest:
                self.pending[key] = rest
            data = b"".join(_prefixed(target, line) for line in lines)
        _write(stream, data)

    def end(self, target: str | None = None) -> None:
        """Write the last line of `target` (of every target when None) that did not end
        with a newline, ended."""
        for key in [key for key in self.pending if target in (None, key[0])]:
            _write(key[1], _prefixed(key[0], self.pending.pop(key)))


def finish(kind: str, outcomes: Mapping[str, Outcome], *, as_json: bool) -> int:
    """Print `outcomes` as JSON, or the table of exit statuses (on stderr) when there are
    several targets; return the exit status omnibed ends with."""
    if as_json:
        print(json.dumps({target: _json(o) for target, o in outcomes.items()}, indent=2))
    elif len(outcomes) > 1:
        _print_exit_table(kind, {target: o.exit_status for target, o in outcomes.items()})
    return exit_status(o.exit_status for o in outcomes.values())


def exit_status(statuses: Iterable[int]) -> int:
    """The first non-zero status, 0 if none; a command killed by signal N (negative N, as
    subprocess gives it) counts as 128 + N, as shells give it."""
    for status in statuses:
        if status != 0:
            return 128 - status if status < 0 else status
    return 0


def _json(outcome: Outcome) -> dict[str, Any]:
    """Exit status and output; output that is not UTF-8 is given in base64
    (`stdout_base64` instead of `stdout`), so that it is never altered."""
    reply: dict[str, Any] = {"exit_status": outcome.exit_status}
    for stream, data in (("stdout", outcome.stdout), ("stderr", outcome.stderr)):
        try:
            reply[stream] = data.decode()
        except UnicodeDecodeError:
            reply[f"{stream}_base64"] = base64.b64encode(data).decode()
    return reply


def _prefixed(target: str, line: bytes) -> bytes:
    return b"[" + target.encode() + b"] " + line + b"\n"


def _write(stream: str, data: bytes) -> None:
    text = sys.stderr if stream == "stderr" else sys.stdout
    text.flush()  # what was printed as text before comes first
    sink: BinaryIO = text.buffer
    sink.write(data)
    sink.flush()


def _print_exit_table(kind: str, statuses: dict[str, int]) -> None:
    from rich.table import Table

    failed = sum(1 for status in statuses.values() if status != 0)
    table = Table(kind, "exit status", title=f"{len(statuses) - failed}/{len(statuses)} succeeded")
    for who, status in statuses.items():
        table.add_row(who, f"[{'green' if status == 0 else 'red'}]{status}[/]")
    err().print(table)

