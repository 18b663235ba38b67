"""`omnibed emulate`: build, inspect, use and remove a virtual platform on a reservation."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from omnibed.api import Omnibed
from omnibed.cli.common import (
    AsJson,
    Command,
    Name,
    Shell,
    _api,
    _argv,
    _print_exit_table,
    _print_json,
    _print_line,
    _progress,
    _uninterruptible,
    err,
    out,
)
from omnibed.core.errors import UsageError

if TYPE_CHECKING:
    from omnibed.emulator.coordinator import Emulator
    from omnibed.emulator.model import Platform as PlatformSpec

emulate_app = typer.Typer(
    help="Build a virtual platform (vnodes and vnetworks, Distem-style) on a reservation.",
    no_args_is_help=True,
)
Platform = Annotated[Path, typer.Argument(help="Platform description (YAML), see examples/.")]


def _emulate_and_run(
    api: Omnibed, name: str, platform: PlatformSpec, label: str, argv: list[str]
) -> int:
    """Build the platform, run `argv` in every vnode, tear it down; how many vnodes failed."""
    _emulate_up(api, name, platform, label, force=False)
    try:
        return _exec_and_report(api, name, None, argv)
    finally:
        with _uninterruptible(), _progress("tearing the platform down"):
            _emulator(api, name).down()


def _emulator(api: Omnibed, name: str) -> Emulator:
    from omnibed.emulator.coordinator import Emulator

    return Emulator(api.access(name))


def _platform(platform_file: Path, pnodes: int | None = None) -> PlatformSpec:
    """The platform in `platform_file`, checked to fit `pnodes` pnodes when given; a
    PlatformError (exit status 2) names the file, line, column and field at fault."""
    from omnibed.emulator.model import load_platform
    from omnibed.emulator.planner import check_fits

    if not platform_file.is_file():
        raise UsageError(f"platform file {platform_file} does not exist (see examples/*.yaml)")
    platform = load_platform(platform_file)
    if pnodes is not None:
        check_fits(platform, pnodes)
    return platform


def _emulate_up(
    api: Omnibed, name: str, platform: PlatformSpec, label: str, *, force: bool
) -> None:
    from omnibed.core.errors import PlatformError

    emulator = _emulator(api, name)
    try:
        with _progress(f"building {label} on {name}") as progress:
            built = emulator.up(platform, force=force, progress=progress)
    except PlatformError as error:  # the plan does not fit the pnodes: name the file
        raise error if error.origin else error.located(label) from None
    out.print(built.summary(), highlight=False)
    if len(built.pnodes) > 1:
        with _progress("checking connectivity between pnodes"):
            checks = emulator.connectivity()
        for check in checks:
            verdict = "[green]reachable[/]" if check.ok else "[red]unreachable[/]"
            out.print(f"{check.network}: {check.source} -> {check.target} {verdict}")


def _exec_and_report(api: Omnibed, name: str, vnode: str | None, argv: list[str]) -> int:
    results = _emulator(api, name).exec([vnode] if vnode else None, argv)
    for result in results.values():
        for stream in ("stdout", "stderr"):
            for line in getattr(result, stream).splitlines():
                _print_line(result.vnode, stream, line)
    return _print_exit_table("vnode", {v: r.exit_status for v, r in results.items()})


@emulate_app.command("up")
def emulate_up(
    name: Name,
    platform: Platform,
    force: Annotated[
        bool, typer.Option(help="Build `mode: bridge` even where foreign MACs are dropped.")
    ] = False,
) -> None:
    """Build a platform; prints the mode chosen for every vnetwork and why."""
    _emulate_up(_api(), name, _platform(platform), str(platform), force=force)


@emulate_app.command("status")
def emulate_status(name: Name, as_json: AsJson = False) -> None:
    """Show vnodes, their pnode and addresses, and each vnetwork's mode with its reason."""
    status = _emulator(_api(), name).status()
    if as_json:
        _print_json(status.to_json())
        return
    for network in status.networks:
        out.print(
            f"[bold]{network.name}[/] {network.cidr}: {network.mode}"
            f" (MTU {network.mtu}) - {network.reason}",
            highlight=False,
        )
    table = Table("vnode", "pnode", "addresses")
    for vnode in status.vnodes:
        addresses = ", ".join(f"{iface.name}={iface.address}" for iface in vnode.ifaces)
        table.add_row(vnode.name, vnode.pnode, addresses)
    out.print(table)
    for pnode, state in status.pnodes.items():
        problem = state.problem()
        if problem is not None:
            err.print(f"[yellow]warning:[/] {pnode}: {problem}")


@emulate_app.command("exec")
def emulate_exec(
    name: Name,
    vnode: Annotated[str, typer.Argument(help="Vnode name, or `all`.")],
    command: Command = None,
    shell: Shell = None,
) -> None:
    """Run a command in a vnode (or `all`): `omnibed emulate exec NAME VNODE -- PROGRAM ARGS`.

    The same rule as `omnibed run`: the words after `--` reach PROGRAM as they are;
    `--shell 'STRING'` runs STRING with `sh -c`.
    """
    argv = _argv(command, shell)
    failed = _exec_and_report(_api(), name, None if vnode == "all" else vnode, argv)
    raise typer.Exit(1 if failed else 0)


@emulate_app.command("down")
def emulate_down(name: Name) -> None:
    """Remove the platform from every pnode (the reservation stays)."""
    with _uninterruptible(), _progress(f"tearing down the platform of {name}"):
        removed = _emulator(_api(), name).down()
    out.print(f"removed {len(removed)} vnodes" if removed else "no platform to remove")
