"""Timelines: live changes planned in time, run by each pnode's agent from its own clock.

A timeline is a list of events, written under `events:` in a platform file, in a file of its
own for `omnibed emulate events NAME FILE`, or given to `Emulator.schedule`:

    events:
      - {at: 10s, set: vnode-3.if0.output, rate: 10mbit}   # shaping, as `emulate set`
      - {at: 20s, link: vnode-[0-9].if0, state: down}       # as `emulate link`
      - {at: 30s, vnode: vnode-4, state: down}              # every iface of the vnode
      - {trace: churn.csv}                                  # lines: time,vnode,up|down

`at` is seconds from the timeline's start (`10s`, `1500ms`, `2min`; a bare number is
seconds) or an absolute time with its zone (`2026-12-01T21:30:00Z`). Each pnode's agent
first prepares a runner for its share; once all have, they are told one absolute start,
START_LEAD seconds later (after the platform is built, for the events of a platform file):
the pnodes' clocks must agree (NTP on a testbed; one clock on the local testbed). Names are
shell patterns (`vnode-[0-9]`, `vnode-*`). A trace file (relative to the file naming it)
holds one change per line, `time,vnode,up|down`; blank lines and `#` comments are skipped.

Everything is checked before anything is scheduled: a bad event is a PlatformError naming
its place (`platform.yaml:12:5`, `churn.csv:7`) (exit status 2), and so is one that would
bring up an interface of a stopped vnode. What ran is the platform's from then on: `fold`
gives the plan with it, which the coordinator saves.
"""

from __future__ import annotations

import csv
import fnmatch
import io
import math
import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from omnibed.core.errors import EmulatorError, PlatformError, PreflightError

from .agent import ops
from .agent.state import FROZEN, STOPPED, Shaping, Viface
from .model import parse_loss, parse_rate, parse_time, show
from .planner import Plan
from .transport import AgentConnection, for_each

START_LEAD = 0.5  # seconds from the pnodes' having prepared a timeline to its start
MAX_TRACE_BYTES = 8 << 20
STATES = {"up": True, "down": False}
# property of the platform file -> (field of Shaping, parser of its value)
SHAPING_FIELDS: dict[str, tuple[str, Callable[[object], float]]] = {
    "rate": ("rate_bps", parse_rate),
    "delay": ("delay_ms", lambda value: parse_time(value, "delay")),
    "jitter": ("jitter_ms", lambda value: parse_time(value, "jitter")),
    "loss": ("loss_pct", parse_loss),
}
_KINDS = ("set", "link", "vnode")
_KEYS = ("at", "state", "trace", *_KINDS, *SHAPING_FIELDS)
_SECONDS = {"": 1.0, "s": 1.0, "sec": 1.0, "ms": 1e-3, "min": 60.0, "h": 3600.0}


@dataclass(frozen=True)
class Event:
    """One change at one time. `kind` is `set` (target VNODE.IFACE.output|input,
    `properties` in the platform file's units, None lifting one), `link` (target
    VNODE.IFACE, `up`) or `vnode` (target VNODE: all its ifaces, `up`). Targets may be
    shell patterns. `at` is seconds from the timeline's start, or an aware datetime.
    `place` says where it was written, for messages."""

    at: float | datetime
    kind: str
    target: str
    up: bool = True
    properties: Mapping[str, object] = field(default_factory=dict)
    place: str = ""

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise self.error(f"kind {show(self.kind)} is not one of {', '.join(_KINDS)}")
        object.__setattr__(self, "at", parse_at(self.at, self.place))
        if not isinstance(self.target, str) or not self.target:
            raise self.error(f"{self.kind} {show(self.target)} is not a name or pattern")
        if self.kind == "set":
            if not self.properties:
                raise self.error(f"give a property to set: {', '.join(SHAPING_FIELDS)}")
            for key, value in self.properties.items():
                if key not in SHAPING_FIELDS:
                    raise self.error(f"unknown property {show(key)}: the shaping properties"
                                     f" are {', '.join(SHAPING_FIELDS)}")  # fmt: skip
                if value is not None and value != "none":
                    try:
                        SHAPING_FIELDS[key][1](value)
                    except PlatformError as exc:
                        raise self.error(exc.message) from None

    def error(self, message: str) -> PlatformError:
        return PlatformError(message, origin=self.place)

    def what(self) -> str:
        """How status shows it: `vnode-3.if0.output rate=10mbit`, `vnode-[0-9].if0 down`."""
        if self.kind == "set":
            changes = " ".join(f"{k}={'none' if v is None else v}"
                               for k, v in self.properties.items())  # fmt: skip
            return f"{self.target} {changes}"
        return f"{self.target} {'up' if self.up else 'down'}"


def parse_at(value: object, place: str = "") -> float | datetime:
    """An event's time: seconds from the timeline's start (`10s`, `1500ms`, `2min`, `1h` or
    a number of seconds), or an aware datetime (ISO 8601 text or YAML's timestamp)."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise PlatformError(f"at {value.isoformat()} has no time zone: add one (Z for UTC)",
                                origin=place)  # fmt: skip
        return value
    if isinstance(value, str) and "T" in value:
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            raise PlatformError(f"at {show(value)} is not an ISO 8601 time",
                                origin=place) from None  # fmt: skip
        return parse_at(when, place)
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise PlatformError(f"at {show(value)} is not a time such as 10s", origin=place)
    text = str(value).strip()
    number_part = text.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = text[len(number_part) :]
    try:
        number = float(number_part)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or unit not in _SECONDS:
        raise PlatformError(
            f"at {show(value)} is not a time such as 10s, 1500ms, 2min or 2026-12-01T21:30:00Z",
            origin=place,
        )
    if number < 0:
        raise PlatformError(f"at {show(value)} is before the timeline's start", origin=place)
    return number * _SECONDS[unit]


# -- reading timelines ----------------------------------------------------------------------


def events_from_list(
    items: object,
    where: str = "events",
    *,
    base: Path | None = None,
    locate: Callable[[str], str] = lambda where: where,
) -> list[Event]:
    """The events of a parsed `events:` list. `locate(path)` turns a place in the document
    (`events[2]`) into the one messages show (`platform.yaml:9:5`); traces are read from
    `base` (the current directory when None)."""
    if items is None:
        return []
    if not isinstance(items, list):
        raise PlatformError(f"expected a list of events, got {show(items)}", origin=locate(where))
    events: list[Event] = []
    for n, item in enumerate(items):
        place = locate(f"{where}[{n}]")
        if not isinstance(item, Mapping):
            raise PlatformError(f"an event is a mapping such as {{at: 10s, link: vnode-0.if0,"
                                f" state: down}}, got {show(item)}", origin=place)  # fmt: skip
        unknown = [key for key in item if key not in _KEYS]
        if unknown:
            raise PlatformError(
                f"unknown key {show(unknown[0])} (allowed: {', '.join(_KEYS)})", origin=place
            )
        kinds = [key for key in ("trace", *_KINDS) if key in item]
        if len(kinds) != 1:
            raise PlatformError(
                "an event has exactly one of trace, set, link or vnode", origin=place
            )
        if kinds == ["trace"]:
            offset = parse_at(item.get("at", 0), place)
            if isinstance(offset, datetime):
                raise PlatformError("a trace's at is an offset such as 10s", origin=place)
            events += read_trace(item["trace"], base, place, offset)
            continue
        if "at" not in item:
            raise PlatformError("missing key 'at' (when: 10s, or 2026-12-01T21:30:00Z)",
                                origin=place)  # fmt: skip
        kind = kinds[0]
        properties = {k: v for k, v in item.items() if k in SHAPING_FIELDS}
        if kind == "set":
            if "state" in item:
                raise PlatformError("state goes with link or vnode, not set", origin=place)
            at = parse_at(item["at"], place)
            events.append(Event(at, kind, item[kind], properties=properties, place=place))
            continue
        if properties:
            raise PlatformError(f"{next(iter(properties))} goes with set, not {kind}",
                                origin=place)  # fmt: skip
        state = item.get("state")
        if state not in STATES:
            raise PlatformError(f"state {show(state)} is neither up nor down", origin=place)
        at = parse_at(item["at"], place)
        events.append(Event(at, kind, item[kind], up=STATES[state], place=place))
    return events


def read_trace(name: object, base: Path | None, place: str, offset: float = 0.0) -> list[Event]:
    """The vnode events of availability trace `name`: lines `time,vnode,up|down`."""
    if not isinstance(name, str) or not name:
        raise PlatformError(f"trace {show(name)} is not a file name", origin=place)
    path = (base or Path.cwd()) / name
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_TRACE_BYTES + 1)
    except OSError as exc:
        raise PlatformError(f"cannot read trace {path}: {exc.strerror}", origin=place) from None
    if len(raw) > MAX_TRACE_BYTES:
        raise PlatformError(f"trace {path} is larger than 8 MiB", origin=place)
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise PlatformError(f"trace {path} is not UTF-8 text", origin=place) from None
    events = []
    for number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        where = f"{path}:{number}"
        cells = [cell.strip() for cell in row]
        if not cells or not any(cells) or cells[0].startswith("#"):
            continue
        if number == 1 and cells[0].lower() == "time":
            continue  # a header
        if len(cells) != 3 or cells[2] not in STATES:
            raise PlatformError(
                f"expected time,vnode,up|down, got {show(','.join(row))}", origin=where
            )
        if "T" in cells[0]:
            raise PlatformError("a trace's times are offsets such as 12.5 (seconds)",
                                origin=where)  # fmt: skip
        at = parse_at(cells[0], where)
        assert isinstance(at, float)  # no "T": not a datetime
        events.append(Event(at + offset, "vnode", cells[1], up=STATES[cells[2]], place=where))
    return events


def load_events(source: str | Path) -> list[Event]:
    """The events of a timeline file: YAML holding `events:` (as a platform file does, which
    may be given: its other keys are ignored) or only the list."""
    from .model import _locate, _mark, _parse, read_capped

    path = Path(source)
    data, root = _parse(read_capped(path, "timeline"), str(path))
    where = "events" if isinstance(data, Mapping) else ""
    items = data.get("events") if isinstance(data, Mapping) else data
    if where and items is None:
        raise PlatformError("no events: write `events:` and a list under it", origin=str(path))
    return events_from_list(
        items, where, base=path.parent,
        locate=lambda at: _mark(str(path), _locate(root, at.removeprefix(".")))
    )  # fmt: skip


# -- resolving them against a built platform -------------------------------------------------


@dataclass(frozen=True)
class Action:
    """What one pnode's agent does at one instant for one event: `offset` seconds after the
    timeline's start, or at epoch `at` when the event named an absolute time."""

    offset: float | None
    at: float | None
    what: str
    where: str
    changes: tuple[dict[str, Any], ...]

    def to_json(self) -> dict[str, Any]:
        return {"offset": self.offset, "at": self.at, "what": self.what, "where": self.where,
                "changes": list(self.changes)}  # fmt: skip


def resolve(
    events: Sequence[Event], the_plan: Plan, start: float, *, now: float | None = None
) -> dict[str, list[Action]]:
    """{pnode: its actions} for `events` on `the_plan` if it starts at `start` (epoch
    seconds); a PlatformError at the first event naming nothing, due before `now`, or
    bringing up an interface of a stopped vnode (or of a frozen namespace-only one).
    Shaping builds on the plan's and on earlier events'."""
    now = time.time() if now is None else now
    vifaces = {f"{v.vnode}.{v.ifname}": v for s in the_plan.states for v in s.vifaces}
    pnode_of = {v.name: v.pnode for v in the_plan.vnodes}
    shaped: dict[tuple[str, str], Shaping] = {}
    # vnodes whose interfaces are down until `emulate start` or `thaw`
    boxed = {v.name for v in the_plan.vnodes if v.container is not None}
    down = {vnode: run for s in the_plan.states for vnode, run in s.run.items()
            if run == STOPPED or (run == FROZEN and vnode not in boxed)}  # fmt: skip
    timed = sorted(enumerate(events), key=lambda pair: (_epoch(pair[1].at, start), pair[0]))
    actions: dict[str, list[Action]] = {}
    for _, event in timed:
        at = _epoch(event.at, start)
        if at < now:
            when = datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")
            raise event.error(f"at {when} is in the past: give a later time")
        offset, absolute = (None, at) if isinstance(event.at, datetime) else (event.at, None)
        for viface, change in _changes(event, vifaces, pnode_of, shaped):
            pnode = pnode_of[viface.vnode]
            if change.get("link", {}).get("up") and viface.vnode in down:
                raise event.error(
                    f"vnode {viface.vnode} is {down[viface.vnode]}: a timeline does not bring "
                    f"its interfaces up; `omnibed emulate start` or `thaw` it first, or leave "
                    f"it out of this event"
                )
            label = f"{viface.vnode}.{viface.ifname}"
            action = Action(offset, absolute, event.what(), event.place or label, (change,))
            mine = actions.setdefault(pnode, [])
            last = mine[-1] if mine else None
            if last and (last.offset, last.at, last.what) == (offset, absolute, action.what):
                mine[-1] = replace(last, changes=last.changes + (change,))
            else:
                mine.append(action)
    return actions


def _epoch(at: float | datetime, start: float) -> float:
    return at.timestamp() if isinstance(at, datetime) else start + at


def _changes(
    event: Event,
    vifaces: Mapping[str, Viface],
    pnode_of: Mapping[str, str],
    shaped: dict[tuple[str, str], Shaping],
) -> list[tuple[Viface, dict[str, Any]]]:
    if event.kind == "vnode":
        vnodes = fnmatch.filter(pnode_of, event.target)
        if not vnodes:
            raise event.error(f"{show(event.target)} names no vnode: the vnodes are "
                              + _few(pnode_of))  # fmt: skip
        chosen = set(vnodes)
        return [(v, _link(v, event.up)) for v in vifaces.values() if v.vnode in chosen]
    pattern, direction = event.target, ""
    if event.kind == "set":
        pattern, _, direction = event.target.rpartition(".")
        if direction not in ("output", "input"):
            raise event.error(f"{show(event.target)} does not end in .output or .input")
    matched = [vifaces[name] for name in fnmatch.filter(vifaces, pattern)]
    if not matched:
        raise event.error(_nothing_named(pattern, vifaces, pnode_of))
    if event.kind == "link":
        return [(v, _link(v, event.up)) for v in matched]
    out = []
    for viface in matched:
        key = (f"{viface.vnode}.{viface.ifname}", direction)
        current = shaped.get(key, getattr(viface, direction))
        changes = {SHAPING_FIELDS[k][0]: None if v in (None, "none") else SHAPING_FIELDS[k][1](v)
                   for k, v in event.properties.items()}  # fmt: skip
        shaped[key] = replace(current, **changes)
        if direction == "output":
            changed = replace(viface, output=shaped[key])
        else:
            changed = replace(viface, input=shaped[key])
        out.append((viface, {"shape": {"viface": asdict(changed), "direction": direction}}))
    return out


def _link(viface: Viface, up: bool) -> dict[str, Any]:
    return {"link": {"netns": viface.netns, "ifname": viface.ifname, "up": up,
                     "peer": viface.host_ifname}}  # fmt: skip


def _few(names: Sequence[str] | Mapping[str, Any]) -> str:
    listed = sorted(names)
    return ", ".join(listed[:5]) + (f" and {len(listed) - 5} more" if len(listed) > 5 else "")


def _nothing_named(pattern: str, vifaces: Mapping[str, Viface], pnode_of: Mapping[str, str]) -> str:
    vnode_pattern, _, iface = pattern.rpartition(".")
    vnodes = fnmatch.filter(pnode_of, vnode_pattern)
    if vnodes:
        ifaces = sorted({v.ifname for v in vifaces.values() if v.vnode in set(vnodes)})
        return f"{show(vnode_pattern)} has no iface {show(iface)}: its ifaces are {_few(ifaces)}"
    return f"{show(pattern)} names no vnode's iface (VNODE.IFACE): the vnodes are {_few(pnode_of)}"


# -- running them ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """A timeline handed to the pnodes: its id, start (epoch seconds), actions per pnode."""

    id: str
    start: float
    actions: Mapping[str, int]


def start(
    sessions: Mapping[str, AgentConnection],
    the_plan: Plan,
    events: Sequence[Event],
    start_at: float | None = None,
) -> Schedule:
    """Check `events` against the plan, hand each pnode its share, and once every pnode
    has prepared its runner, start them all at `start_at` (default: START_LEAD seconds
    later). When a pnode refuses, the others' are cancelled and the refusal raised: nothing
    stays scheduled."""
    actions = resolve(events, the_plan, start_at or time.time() + START_LEAD)
    timeline = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{secrets.token_hex(3)}"
    instance = the_plan.instance
    mine = {p: sessions[p] for p in actions}

    def undo(why: str) -> EmulatorError:
        """Cancel every pnode's share; the error saying why."""
        for_each(mine, lambda p, s: s.call(ops.TIMELINE_CANCEL, instance=instance, id=timeline))
        return EmulatorError(f"the timeline was not started, nothing is scheduled: {why}")

    prepared = for_each(
        mine,
        lambda p, s: s.call(ops.TIMELINE_PREPARE, instance=instance, id=timeline,
                            actions=[a.to_json() for a in actions[p]]),
    )  # fmt: skip
    problems = {p: r["problems"] for p, r in prepared.items()
                if not isinstance(r, BaseException) and r["problems"]}  # fmt: skip
    failures = _errors(prepared)
    if problems:
        undo("the kernel lacks what its shaping needs")
        raise PreflightError(problems)
    if failures:
        raise undo("; ".join(f"{p}: {why}" for p, why in failures.items()))
    start_at = time.time() + START_LEAD if start_at is None else start_at
    if start_at < time.time():
        raise undo("its start passed while the pnodes prepared it: give a later one")
    started = for_each(
        mine, lambda p, s: s.call(ops.TIMELINE_GO, instance=instance, id=timeline, start=start_at)
    )
    failures = _errors(started)
    failures |= {p: "its runner is gone" for p, r in started.items()
                 if not isinstance(r, BaseException) and not r["running"]}  # fmt: skip
    if failures:
        raise undo("; ".join(f"{p}: {why}" for p, why in failures.items()))
    return Schedule(timeline, start_at, {p: len(a) for p, a in actions.items()})


def _errors(outcome: Mapping[str, object]) -> dict[str, str]:
    return {p: str(r) for p, r in outcome.items() if isinstance(r, BaseException)}


@dataclass(frozen=True)
class Record:
    """One action of a timeline on one pnode: planned and actual times (epoch seconds;
    actual None until it ran), and its error, or `cancelled`/`pending` in `outcome`."""

    timeline: str
    pnode: str
    what: str
    where: str
    planned: float
    actual: float | None
    outcome: str  # "ok", "failed: ...", "pending", "cancelled"
    took: float | None = None  # seconds the agent spent applying it

    @property
    def lateness_ms(self) -> float | None:
        return None if self.actual is None else (self.actual - self.planned) * 1000


def reports(
    sessions: Mapping[str, AgentConnection], instance: str, *, strict: bool = True
) -> dict[str, list[dict]]:
    """{pnode: its runners' timelines of the instance}, as the agents report them (their
    actions and log lines); the first pnode that could not be asked raises, or is left
    out when not `strict`."""
    replies = for_each(sessions, lambda p, s: s.call(ops.TIMELINE_STATUS, instance=instance))
    found = {}
    for pnode, reply in replies.items():
        if isinstance(reply, BaseException):
            if not strict:
                continue
            raise reply
        found[pnode] = reply["timelines"]
    return found


def records(sessions: Mapping[str, AgentConnection], instance: str) -> list[Record]:
    """What every pnode ran of the instance's timelines, sorted by planned time."""
    return records_of(reports(sessions, instance))


def _actions_of(
    reported: Mapping[str, list[dict]],
) -> Iterator[tuple[str, dict[str, Any], dict[str, Any], float, dict[str, Any] | None, bool]]:
    """(pnode, timeline, action, planned time, its log line or None, pending) of every
    action of the timelines `reports` gave; pending: not run yet and still to run."""
    for pnode, timelines in reported.items():
        for timeline in timelines:
            ran = {line["i"]: line for line in timeline["log"] if "i" in line}
            live = timeline["running"] and not any("cancelled" in ln for ln in timeline["log"])
            start = timeline["start"] or timeline["created"]
            for i, action in enumerate(timeline["actions"]):
                line = ran.get(i)
                planned = action["at"] if action["offset"] is None else start + action["offset"]
                yield pnode, timeline, action, planned, line, live and line is None


def records_of(reported: Mapping[str, list[dict]]) -> list[Record]:
    """The records of the timelines `reports` gave, sorted by planned time."""
    found = []
    for pnode, timeline, action, planned, line, pending in _actions_of(reported):
        if line is not None:
            outcome = "ok" if line["error"] is None else f"failed: {line['error']}"
        else:
            outcome = "pending" if pending else "cancelled"
        actual, took = (None, None) if line is None else (line["actual"], line["took"])
        found.append(Record(timeline["id"], pnode, action["what"], action["where"], planned,
                            actual, outcome, took))  # fmt: skip
    return sorted(found, key=lambda r: (r.planned, r.pnode, r.what))


def pending_link_ups(reported: Mapping[str, list[dict]]) -> list[tuple[float, str, str]]:
    """(planned time, netns, ifname) of every interface that the timelines `reports` gave
    have yet to bring up, soonest first."""
    return sorted(
        (planned, change["link"]["netns"], change["link"]["ifname"])
        for _, _, action, planned, _, pending in _actions_of(reported) if pending
        for change in action["changes"] if change.get("link", {}).get("up")
    )  # fmt: skip


def cancel(sessions: Mapping[str, AgentConnection], instance: str) -> int:
    """Stop every running timeline of the instance; how many pnode runners were stopped."""
    replies = for_each(sessions, lambda p, s: s.call(ops.TIMELINE_CANCEL, instance=instance))
    stopped = 0
    for reply in replies.values():
        if isinstance(reply, BaseException):
            raise reply
        stopped += len(reply["cancelled"])
    return stopped


def fold(the_plan: Plan, reported: Mapping[str, list[dict]], folded: set[str]) -> Plan:
    """`the_plan` with the changes of every action that ran ok and whose key
    (`timeline/pnode/index`) is not in `folded` applied, in the order they ran: shaping
    and link state of the vifaces they changed. Their keys are added to `folded`, so that
    each is applied once, and a later `emulate set` or `link` is not undone."""
    done = []
    for pnode, timelines in reported.items():
        for timeline in timelines:
            for line in timeline["log"]:
                key = f"{timeline['id']}/{pnode}/{line.get('i')}"
                if "i" in line and line["error"] is None and key not in folded:
                    done.append((line["actual"], key, timeline["actions"][line["i"]]["changes"]))
    changed = {(v.netns, v.ifname): v for s in the_plan.states for v in s.vifaces}
    for _, key, changes in sorted(done):
        folded.add(key)
        for change in changes:
            if "link" in change:
                where = (change["link"]["netns"], change["link"]["ifname"])
                if where in changed:
                    changed[where] = replace(changed[where], up=bool(change["link"]["up"]))
                continue
            shaped = Viface.from_json(change["shape"]["viface"])
            direction = change["shape"]["direction"]
            where = (shaped.netns, shaped.ifname)
            if where in changed:
                changed[where] = replace(changed[where], **{direction: getattr(shaped, direction)})
    states = tuple(
        replace(state, vifaces=tuple(changed[(v.netns, v.ifname)] for v in state.vifaces))
        for state in the_plan.states
    )
    return replace(the_plan, states=states)
