"""`omnibed emulate`: build, inspect, use and remove a virtual platform on a reservation."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from omnibed.cli import timeline
from omnibed.cli.common import (
    AsJson,
    Command,
    Name,
    Shell,
    _api,
    _argv,
    _help_without_command,
    _print_json,
    _progress,
    _uninterruptible,
    err,
    out,
)
from omnibed.cli.remote_output import EXIT_STATUSES_HELP, Outcome, Streams, finish
from omnibed.core.errors import UsageError

if TYPE_CHECKING:
    from omnibed.api import Omnibed
    from omnibed.emulator.agent.state import Shaping
    from omnibed.emulator.coordinator import Emulator
    from omnibed.emulator.model import Platform as PlatformSpec

emulate_app = typer.Typer(
    help="Build a virtual platform (vnodes and vnetworks, Distem-style) on a reservation.",
    invoke_without_command=True,
    callback=_help_without_command,
)
Platform = Annotated[Path, typer.Argument(help="Platform description (YAML), see examples/.")]


def _emulate_and_run(
    api: Omnibed, name: str, platform: PlatformSpec, label: str, argv: list[str]
) -> int:
    """Build the platform, run `argv` in every vnode, tear it down; the exit status to end
    with."""
    _emulate_up(api, name, platform, label, force=False)
    try:
        return _exec_and_report(api, name, None, argv)
    finally:
        with _uninterruptible(), _progress("tearing the platform down"):
            _emulator(api, name).down()


def _emulator(api: Omnibed, name: str) -> Emulator:
    return api.emulator(name)


def _platform(platform_file: Path, pnodes: int | None = None) -> PlatformSpec:
    """The platform in `platform_file`, checked to fit `pnodes` pnodes when given and its
    images checked; a PlatformError (exit status 2) names the file, line, column and field
    at fault."""
    from omnibed.core.errors import PlatformError
    from omnibed.emulator.image_refs import resolve
    from omnibed.emulator.model import load_platform
    from omnibed.emulator.planner import check_fits

    if not platform_file.is_file():
        raise UsageError(f"platform file {platform_file} does not exist (see examples/*.yaml)")
    platform = load_platform(platform_file)
    if pnodes is not None:
        check_fits(platform, pnodes)
    try:
        resolve(platform)  # unknown images, bad tarballs, ssh without sshd: before reserving
    except PlatformError as error:
        raise error.located(str(platform_file)) from None
    return platform


def _emulate_up(
    api: Omnibed,
    name: str,
    platform: PlatformSpec,
    label: str,
    *,
    force: bool,
    install: bool = False,
) -> None:
    from omnibed.core.errors import PlatformError

    emulator = _emulator(api, name)
    try:
        with _progress(f"building {label} on {name}") as progress:
            built = emulator.up(
                platform, force=force, install=install, progress=progress, count=progress.count
            )
    except PlatformError as error:  # the plan does not fit the pnodes: name the file
        raise error if error.origin else error.located(label) from None
    out().print(built.summary(), highlight=False)
    if emulator.scheduled is not None:
        timeline.scheduled_line(emulator.scheduled, name)
    if emulator.reachable_after is not None:
        out().print(f"vnodes reachable in {emulator.reachable_after:.1f} s", highlight=False)
    if len(built.pnodes) > 1:
        with _progress("checking connectivity between pnodes"):
            checks = emulator.connectivity()
        for check in checks:
            verdict = "[green]reachable[/]" if check.ok else "[red]unreachable[/]"
            out().print(f"{check.network}: {check.source} -> {check.target} {verdict}")


def _exec_and_report(
    api: Omnibed, name: str, vnode: str | None, argv: list[str], *, as_json: bool = False
) -> int:
    """Run `argv` in `vnode` (every vnode when None) and hand its output over (see
    :mod:`omnibed.cli.remote_output`); return the exit status to end with."""
    results = _emulator(api, name).exec([vnode] if vnode else None, argv)
    outcomes = {v: Outcome(r.exit_status, r.stdout, r.stderr) for v, r in results.items()}
    if not as_json:
        streams = Streams(len(outcomes))
        for target, outcome in outcomes.items():
            streams.write(target, "stdout", outcome.stdout)
            streams.write(target, "stderr", outcome.stderr)
            streams.end(target)
    return finish("vnode", outcomes, as_json=as_json)


@emulate_app.command("up")
def emulate_up(
    name: Name,
    platform: Platform,
    force: Annotated[
        bool, typer.Option(help="Build `mode: bridge` even where foreign MACs are dropped.")
    ] = False,
    install: Annotated[
        bool,
        typer.Option(
            help="Install the container runtime (crun, or runc where the pnode's cgroup "
            "layout refuses crun) with apt on the pnodes that lack it."
        ),
    ] = False,
) -> None:
    """Build a platform; prints the mode chosen for every vnetwork and why."""
    _emulate_up(_api(), name, _platform(platform), str(platform), force=force, install=install)


@emulate_app.command("status")
def emulate_status(
    name: Name,
    as_json: AsJson = False,
    events: Annotated[bool, typer.Option(
        "--events", help="Show what the timelines ran: each action's planned and actual time."
    )] = False,
) -> None:
    """Show vnodes, their pnode and addresses, and each vnetwork's mode with its reason."""
    if events:
        timeline.show_records(_emulator(_api(), name), as_json)
        return
    status = _emulator(_api(), name).status()
    if as_json:
        _print_json(status.to_json())
        return
    for network in status.networks:
        out().print(
            f"[bold]{network.name}[/] {network.cidr}: {network.mode}"
            f" (MTU {network.mtu}) - {network.reason}",
            highlight=False,
        )
    boxes = any(vnode.container for vnode in status.vnodes)
    columns = ("image", "state", "limits", "OOM kills") if boxes else ()
    from rich.table import Table

    table = Table("vnode", "pnode", "addresses", "run", *columns)
    links = Table("interface", "link", "output (vnode -> network)", "input (network -> vnode)")
    for vnode in status.vnodes:
        addresses = ", ".join(f"{iface.name}={iface.address}" for iface in vnode.ifaces)
        cells = _container_cells(status.container(vnode)) if boxes else []
        run = status.run(vnode)
        table.add_row(vnode.name, vnode.pnode, addresses, _RUN_STYLE.get(run, run), *cells)
        for iface in vnode.ifaces:
            viface = status.iface(vnode, iface.name)
            if viface is not None:
                link = "up" if viface.up else "[red]down[/]"
                if run == "stopped" or (run == "frozen" and vnode.container is None):
                    link = f"[red]down[/] ({run})"  # held down whatever was set
                shaped = (_shaping_text(viface.output), _shaping_text(viface.input))
                links.add_row(f"{vnode.name}.{iface.name}", link, *shaped)
    out().print(table)
    if links.row_count:
        out().print(links)
    routes = Table("vnode", "routes")
    for vnode in status.vnodes:
        through = ", ".join(f"{r.to} via {r.via}" for r in status.routes.get(vnode.name, ()))
        if through or vnode.name in status.forwarding:
            forwards = " (forwards)" if vnode.name in status.forwarding else ""
            routes.add_row(f"{vnode.name}{forwards}", through or "-")
    if routes.row_count:
        out().print(routes)
    for pnode, state in status.pnodes.items():
        problem = state.problem()
        if problem is not None:
            err().print(f"[yellow]warning:[/] {pnode}: {problem}")


_RUN_STYLE = {"stopped": "[red]stopped[/]", "frozen": "[blue]frozen[/]"}
PICTURE_FORMATS = ("mermaid", "svg", "dot")


@emulate_app.command("show")
def emulate_show(
    name: Annotated[
        str | None, typer.Argument(help="Reservation name, as `omnibed ls` shows it.")
    ] = None,
    platform_file: Annotated[
        Path | None,
        typer.Option(
            "--platform",
            help="Draw this platform file instead, before it is built: vnodes, vnetworks and "
            "link rates only, since pnodes and each vnetwork's mode come from the reserved "
            "pnodes' NICs.",
        ),
    ] = None,
    picture_format: Annotated[
        str, typer.Option("--format", "-f", help="mermaid (Markdown, notebooks), svg or dot.")
    ] = "mermaid",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to this file, not stdout.")
    ] = None,
) -> None:
    """Draw a built platform: pnodes, their vnodes, each vnetwork with its mode and the NIC
    it uses, and each viface's address and link rates (`--format svg` needs Graphviz)."""
    from omnibed.emulator import picture
    from omnibed.emulator.model import load_platform

    if picture_format not in PICTURE_FORMATS:
        raise UsageError(f"--format {picture_format!r} is not one of svg, mermaid or dot")
    if (name is None) == (platform_file is None):
        raise UsageError(
            "give a reservation name or --platform FILE (not both): "
            "`omnibed emulate show NAME` or `omnibed emulate show --platform FILE`"
        )
    if picture_format == "svg" and output is None and sys.stdout.isatty():
        raise UsageError("SVG is not for a terminal: add -o FILE.svg or pipe it")
    if platform_file is not None:
        if not platform_file.is_file():
            raise UsageError(f"platform file {platform_file} does not exist (see examples/*.yaml)")
        drawn = picture.of_platform(load_platform(platform_file), platform_file.name)
    else:
        built = _emulator(_api(), str(name)).load()
        if built is None:
            raise UsageError(
                f"{name} runs no platform: `omnibed emulate up {name} PLATFORM.yaml` first, "
                "or draw the file with `omnibed emulate show --platform PLATFORM.yaml`"
            )
        drawn = picture.of_plan(built)
    data = (
        picture.svg(drawn)
        if picture_format == "svg"
        else (picture.dot(drawn) if picture_format == "dot" else picture.mermaid(drawn)).encode()
    )
    if output is None:
        sys.stdout.buffer.write(data)
        return
    try:
        output.write_bytes(data)
    except OSError as error:
        raise UsageError(f"cannot write {output}: {error.strerror}") from None


@emulate_app.command("exec", epilog=EXIT_STATUSES_HELP)
def emulate_exec(
    name: Name,
    vnode: Annotated[str, typer.Argument(help="Vnode name, or `all`.")],
    command: Command = None,
    shell: Shell = None,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print each vnode's exit status, stdout and stderr as one JSON object "
            "(`stdout_base64` instead of `stdout` for output that is not UTF-8).",
        ),
    ] = False,
) -> None:
    """Run a command in a vnode (or `all`): `omnibed emulate exec NAME VNODE -- PROGRAM ARGS`.

    The same rules as `omnibed run`: the words after `--` reach PROGRAM as they are;
    `--shell 'STRING'` runs STRING with `sh -c`. In one vnode, stdout and stderr are the
    command's own, byte for byte; in several, each line is prefixed by `[vnode] ` and a
    table of exit statuses ends stderr.
    """
    argv = _argv(command, shell)
    target = None if vnode == "all" else vnode
    raise typer.Exit(_exec_and_report(_api(), name, target, argv, as_json=as_json))


@emulate_app.command("down")
def emulate_down(name: Name) -> None:
    """Remove the platform from every pnode (the reservation stays)."""
    with _uninterruptible(), _progress(f"tearing down the platform of {name}"):
        removed = _emulator(_api(), name).down()
    out().print(f"removed {len(removed)} vnodes" if removed else "no platform to remove")


def _container_cells(box: dict[str, Any] | None) -> list[str]:
    """image, state, limits and OOM kills of a vnode's status row."""
    if box is None:
        return ["-", "netns only", "-", "-"]
    limits = []
    if box["cpus"]:
        limits.append("cores " + ",".join(str(c) for c in box["cpus"]))
    if box["share"] is not None:
        limits.append(f"share {box['share']:g}")
    if box["memory"] is not None:
        limits.append(f"memory {box['memory'] / 2**20:g}MiB")
    kills = box.get("oom_kills")
    oom = "-" if kills is None else f"[red]{kills}[/]" if kills else "0"
    return [box["image"], box["state"], ", ".join(limits) or "none", oom]


@emulate_app.command("ssh")
def emulate_ssh(
    name: Name,
    vnode: Annotated[str, typer.Argument(help="Vnode name (an `ssh: true` container vnode).")],
    command: Command = None,
) -> None:
    """Log in as root to a vnode through its pnode (OpenSSH, the vnode's host key checked):
    a shell, or the words after `--` as one command (quoted for the vnode's shell)."""
    argv = _emulator(_api(), name).ssh_command(vnode, shlex.join(command) if command else None)
    os.execvp(argv[0], argv)


@emulate_app.command("cp")
def emulate_cp(
    name: Name,
    source: Annotated[str, typer.Argument(help="A local file, or VNODE:PATH.")],
    target: Annotated[str, typer.Argument(help="VNODE:PATH, or a local file.")],
) -> None:
    """Copy a file to or from an `ssh: true` vnode: `omnibed emulate cp NAME LOCAL VNODE:PATH`
    or `omnibed emulate cp NAME VNODE:PATH LOCAL` (SFTP through its pnode)."""
    vnode = _emulator(_api(), name).copy(source, target)
    out().print(f"copied {source} -> {target} ({vnode})", highlight=False)


@emulate_app.command("set")
def emulate_set(
    name: Name,
    target: Annotated[str, typer.Argument(help="VNODE.IFACE.output or VNODE.IFACE.input.")],
    properties: Annotated[
        list[str],
        typer.Argument(help="KEY=VALUE: rate=10mbit, delay=5ms, jitter=1ms, loss=1%, or none."),
    ],
) -> None:
    """Change a vnode interface's shaping in one direction on the running platform, in
    place (other vnodes untouched): `omnibed emulate set NAME vnode-3.if0.output rate=10mbit`."""
    changes: dict[str, object] = {}
    for pair in properties:
        key, equals, value = pair.partition("=")
        if not equals or not key:
            raise UsageError(f"property {pair!r} is not KEY=VALUE (e.g. rate=10mbit)")
        changes[key] = None if value == "none" else value
    shaping = _emulator(_api(), name).set(target, changes)
    out().print(f"{target}: {_shaping_text(shaping)}", highlight=False)


_RATE_UNIT = {"tbit": 10**12, "gbit": 10**9, "mbit": 10**6, "kbit": 10**3, "bit": 1}


def _shaping_text(shaping: Shaping) -> str:
    """`rate=10mbit delay=5ms` for a Shaping, as `emulate set` takes it; `unshaped` if empty."""
    parts = []
    if shaping.rate_bps is not None:
        unit = next(u for u in ("tbit", "gbit", "mbit", "kbit", "bit")
                    if shaping.rate_bps % _RATE_UNIT[u] == 0)  # fmt: skip
        parts.append(f"rate={shaping.rate_bps // _RATE_UNIT[unit]}{unit}")
    for key, value, unit in (
        ("delay", shaping.delay_ms, "ms"),
        ("jitter", shaping.jitter_ms, "ms"),
        ("loss", shaping.loss_pct, "%"),
    ):
        if value is not None:
            parts.append(f"{key}={value:g}{unit}")
    return " ".join(parts) or "unshaped"


@emulate_app.command("link")
def emulate_link(
    name: Name,
    target: Annotated[str, typer.Argument(help="VNODE.IFACE.")],
    state: Annotated[str, typer.Argument(help="down or up.")],
) -> None:
    """Take a vnode interface down or bring it up on the running platform, in place:
    `omnibed emulate link NAME vnode-3.if0 down`."""
    if state not in ("up", "down"):
        raise UsageError(f"link state {state!r} is neither up nor down")
    _emulator(_api(), name).link(target, up=state == "up")
    out().print(f"{target}: {state}", highlight=False)


Vnodes = Annotated[list[str], typer.Argument(help="Vnode names.")]


def _change_run(name: str, action: str, vnodes: list[str]) -> None:
    emulator = _emulator(_api(), name)
    runs = getattr(emulator, action)(vnodes)
    for vnode, run in runs.items():
        out().print(f"{vnode}: {run}", highlight=False)


@emulate_app.command("stop")
def emulate_stop(name: Name, vnodes: Vnodes) -> None:
    """Stop vnodes in place (others untouched): their interfaces go down and a container
    vnode's processes are killed: `omnibed emulate stop NAME vnode-3`."""
    _change_run(name, "stop", vnodes)


@emulate_app.command("start")
def emulate_start(name: Name, vnodes: Vnodes) -> None:
    """Start stopped vnodes again: interfaces back as they were, a container vnode's init
    run anew with its files kept."""
    _change_run(name, "start", vnodes)


@emulate_app.command("freeze")
def emulate_freeze(name: Name, vnodes: Vnodes) -> None:
    """Freeze vnodes: a container vnode's processes are frozen (its network stays); a
    namespace-only vnode has its interfaces taken down."""
    _change_run(name, "freeze", vnodes)


@emulate_app.command("thaw")
def emulate_thaw(name: Name, vnodes: Vnodes) -> None:
    """Thaw frozen vnodes: as they were before `omnibed emulate freeze`."""
    _change_run(name, "thaw", vnodes)


@emulate_app.command("events")
def emulate_events(
    name: Name,
    timeline_file: Annotated[Path | None, typer.Argument(
        help="YAML with `events:` (a platform file's events, or a file of its own)."
    )] = None,
    cancel: Annotated[bool, typer.Option(
        "--cancel", help="Stop the rest of every running timeline of the platform."
    )] = False,
) -> None:
    """Start a timeline of live changes on the running platform, run by each pnode's agent
    from its own clock (`at: 10s` counts from about one second after this command reaches
    the pnodes); `emulate status NAME --events` shows what ran when."""
    if cancel == (timeline_file is not None):
        raise UsageError(
            "give a timeline file or --cancel: `omnibed emulate events NAME FILE` or "
            "`omnibed emulate events NAME --cancel`"
        )
    emulator = _emulator(_api(), name)
    if cancel:
        timeline.cancel(emulator)
    else:
        assert timeline_file is not None
        timeline.schedule_file(emulator, timeline_file)
