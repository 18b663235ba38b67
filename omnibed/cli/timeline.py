"""The timeline side of `omnibed emulate`: `events NAME FILE`, `events NAME --cancel` and what
`status NAME --events` prints (planned time beside actual time, for every action)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from rich.table import Table

from omnibed.cli.common import _print_json, _progress, out
from omnibed.core.errors import UsageError

if TYPE_CHECKING:
    from omnibed.emulator.coordinator import Emulator
    from omnibed.emulator.timeline import Record, Schedule


def schedule_file(emulator: Emulator, timeline_file: Path) -> None:
    """Check the timeline in `timeline_file` against the running platform and start it."""
    from omnibed.emulator.timeline import load_events

    if not timeline_file.is_file():
        raise UsageError(f"timeline file {timeline_file} does not exist")
    events = load_events(timeline_file)
    if not events:
        raise UsageError(f"{timeline_file} holds no events")
    with _progress("handing the timeline to the pnodes"):
        scheduled_line(emulator.schedule(events), emulator.reservation)


def scheduled_line(scheduled: Schedule, name: str) -> None:
    count = sum(scheduled.actions.values())
    out.print(
        f"timeline {scheduled.id}: {count} actions on {len(scheduled.actions)} pnodes from "
        f"{_clock(scheduled.start)} UTC; `omnibed emulate status {name} --events` shows them",
        highlight=False,
    )


def cancel(emulator: Emulator) -> None:
    with _progress("stopping the timelines"):
        stopped = emulator.cancel_events()
    out.print(f"cancelled {stopped} running timelines" if stopped else "no timeline was running")


def show_records(emulator: Emulator, as_json: bool) -> None:
    """One row per action: planned and actual time (UTC), lateness, outcome."""
    records = emulator.events()
    if as_json:
        _print_json([_json(record) for record in records])
        return
    if not records:
        out.print("no timeline ran on this platform")
        return
    table = Table("planned", "actual", "late (ms)", "pnode", "event", "from", "outcome")
    for record in records:
        late = record.lateness_ms
        table.add_row(
            _clock(record.planned),
            "-" if record.actual is None else _clock(record.actual),
            "-" if late is None else f"{late:.1f}",
            record.pnode,
            record.what,
            record.where,
            record.outcome,
        )
    out.print(table)


def _clock(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%H:%M:%S.%f")[:-3]


def _json(record: Record) -> dict[str, object]:
    return {
        "timeline": record.timeline,
        "pnode": record.pnode,
        "event": record.what,
        "from": record.where,
        "planned": record.planned,
        "actual": record.actual,
        "lateness_ms": record.lateness_ms,
        "took_ms": None if record.took is None else record.took * 1000,
        "outcome": record.outcome,
    }
