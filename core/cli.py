"""The `omnibed` command line: parse, call :class:`omnibed.core.api.Omnibed`, render.

Errors the user can fix are one line on stderr and exit status 2; testbed failures exit 1.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from omnibed.core import ssh
from omnibed.core.api import Omnibed
from omnibed.core.errors import OmnibedError, ReleaseFailed, UsageError
from omnibed.core.image_cli import image_app
from omnibed.core.ledger import Entry, process_owner
from omnibed.core.provider import VERBS, implemented_verbs
from omnibed.core.timeutil import parse_walltime, to_utc, utcnow
from omnibed.core.types import Capability, ReservationRequest

if TYPE_CHECKING:
    from omnibed.emulator.model import Platform as PlatformSpec

app = typer.Typer(
    help="Reserve machines on research testbeds, run commands on them as root, and emulate "
    "virtual platforms on them. Start with `omnibed reserve-and-run --testbed local "
    "--nodes 3 -- id -u` (as root).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
out = Console()
err = Console(stderr=True)

Testbed = Annotated[
    str, typer.Option("--testbed", "-t", help="Testbed name: see `omnibed providers`.")
]
Nodes = Annotated[int, typer.Option("--nodes", "-n", help="How many nodes to reserve.")]
Walltime = Annotated[
    str, typer.Option(help="How long to keep the nodes: 30m, 1h, 1h30m, 2d, 01:30:00.")
]
Name = Annotated[str, typer.Argument(help="Reservation name, as `omnibed ls` shows it.")]
ExtraNics = Annotated[
    int, typer.Option("--extra-nics", help="Extra links per node, if the testbed offers them.")
]
Options = Annotated[
    list[str] | None,
    typer.Option(
        "--option",
        "-o",
        help="Testbed option KEY=VALUE (repeatable); `omnibed providers` lists them.",
    ),
]
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


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except UsageError as error:
        _fail(str(error), 2)
    except OmnibedError as error:
        _fail(str(error), 1)
    except KeyboardInterrupt:
        _fail("interrupted", 130)


def _fail(message: str, code: int) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise SystemExit(code)


def _api() -> Omnibed:
    return Omnibed()


def _options(pairs: list[str] | None) -> dict[str, str]:
    options = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"option {pair!r} is not KEY=VALUE (e.g. -o profile=xen)")
        options[key] = value
    return options


def _walltime(text: str) -> timedelta:
    try:
        return parse_walltime(text)
    except ValueError as error:
        raise UsageError(str(error)) from None


def _start(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        return to_utc(datetime.fromisoformat(text), assume_zone="UTC")
    except ValueError:
        raise UsageError(f"--start {text!r} is not an ISO date such as 2026-12-01T08:00Z") from None


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


@contextmanager
def _progress(what: str) -> Iterator[Callable[[str], None]]:
    with err.status(what) as status:
        yield lambda line: status.update(f"{what}: {line}")


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM interrupts like Ctrl-C, so `finally` blocks release what was reserved."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _uninterruptible() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM while releasing, so a second signal cannot leak nodes."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# -- providers and doctor ---------------------------------------------------------------


@app.command()
def providers(
    as_json: AsJson = False,
    markdown: Annotated[bool, typer.Option(help="Print the verb table in Markdown.")] = False,
) -> None:
    """List the testbeds omnibed can use, where each comes from, and what it can do."""
    registry = _api().registry
    if markdown:
        print(_verb_table(registry))
        return
    rows = []
    for name, provider_class in sorted(registry.providers.items()):
        caps = provider_class.capabilities
        rows.append(
            {
                "name": name,
                "source": registry.sources[name],
                "verbs": implemented_verbs(provider_class),
                "capabilities": sorted(c.value for c in caps.supported),
                "max_extra_nics": caps.max_extra_nics,
                "options": dict(caps.options),
            }
        )
    if as_json:
        _print_json({"providers": rows, "errors": [str(e) for e in registry.errors]})
        return
    table = Table("testbed", "from", "verbs", "capabilities", "options")
    for row in rows:
        table.add_row(
            row["name"],
            row["source"],
            ", ".join(row["verbs"]),
            ", ".join(row["capabilities"]) or "-",
            ", ".join(row["options"]) or "-",
        )
    out.print(table)
    for error in registry.errors:
        err.print(f"[yellow]warning:[/] {error}")


def _verb_table(registry) -> str:
    """Which verbs each testbed implements, derived from its code and capabilities."""
    header = ["testbed", *VERBS, "extra NICs", "advance reservation"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, provider_class in sorted(registry.providers.items()):
        verbs = implemented_verbs(provider_class)
        caps = provider_class.capabilities
        cells = ["yes" if verb in verbs else "no" for verb in VERBS]
        advance = "yes" if Capability.ADVANCE_RESERVATION in caps else "no"
        cells += [str(caps.max_extra_nics), advance]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@app.command()
def doctor(testbed: Annotated[str | None, typer.Option("--testbed", "-t")] = None) -> None:
    """Check what is installed, which credentials are found, and how to fix what is missing."""
    api = _api()
    names = [testbed] if testbed else sorted(api.registry.providers)
    bad = 0
    for name in names:
        provider_class = api.registry.get(name)
        out.print(f"[bold]{name}[/]")
        for check in provider_class.doctor(api.home / "providers" / name):
            mark = "[green]ok[/]  " if check.ok else "[red]missing[/]"
            out.print(f"  {mark} {check.what}" + (f": {check.detail}" if check.detail else ""))
            if not check.ok:
                bad += 1
                if check.fix:
                    out.print(f"          fix: {check.fix}")
    for error in api.registry.errors:
        out.print(f"[red]plugin error[/] {error}")
    raise typer.Exit(1 if bad and testbed else 0)


# -- reservations -----------------------------------------------------------------------


def _request(api, testbed, nodes, walltime, name, extra_nics, options, start=None):
    return api.make_request(
        testbed,
        nodes=nodes,
        walltime=_walltime(walltime),
        name=name,
        extra_nics=extra_nics,
        options=_options(options),
        start=_start(start),
    )


def _reserve_and_wait(api: Omnibed, testbed: str, request: ReservationRequest) -> None:
    """Reserve with the calling process as owner and wait, showing progress."""
    with _progress(f"reserving {request.nodes} node(s) on {testbed} as {request.name}") as progress:
        api.reserve(testbed, request, owner=process_owner())
        progress("waiting for the nodes")
        api.wait(request.name, progress=progress)


def _release_if_reserved(
    api: Omnibed, request: ReservationRequest, cause: BaseException | None
) -> None:
    """Release what this command recorded under `request`, never what another one did.

    If the release fails, the ledger keeps the reservation (owned by this process, so `gc`
    releases it once it has ended) and the error says so, with the command to release it.
    A failed reserve that said so already (ReleaseFailed) is not released a second time.
    """
    entry = api.ledger.get(request.name)
    if isinstance(cause, ReleaseFailed) or entry is None or entry.token != request.token:
        return
    try:
        with _uninterruptible(), _progress(f"releasing {request.name}"):
            released = api.release(request.name, token=request.token)
    except OmnibedError as error:
        entry = api.ledger.get(request.name)
        if entry is None or entry.token != request.token:
            raise  # released and forgotten; only what came after failed
        raise ReleaseFailed(
            request.name, provider=entry.testbed, cause=cause, error=error
        ) from error
    if released:
        err.print(f"released {request.name}")


@app.command()
def reserve(
    testbed: Testbed,
    nodes: Nodes = 1,
    walltime: Walltime = "1h",
    name: Annotated[str | None, typer.Option(help="Name it (default: TESTBED-xxxxxx).")] = None,
    extra_nics: ExtraNics = 0,
    option: Options = None,
    start: Annotated[
        str | None, typer.Option(help="Advance reservation start (ISO, UTC if no zone).")
    ] = None,
) -> None:
    """Reserve nodes and wait until they are ready; prints the reservation name.

    If the wait fails or is interrupted, the reservation is released: nothing is left half-made.
    """
    api = _api()
    request = _request(api, testbed, nodes, walltime, name, extra_nics, option, start)
    with _sigterm_as_interrupt():
        try:
            _reserve_and_wait(api, testbed, request)
        except BaseException as error:
            _release_if_reserved(api, request, error)
            raise
    api.ledger.set_owner(request.name, None, token=request.token)  # kept until `release`
    out.print(request.name)


def _warn_unreadable(entries: list[Entry]) -> None:
    """One warning line per ledger row that cannot be read whole."""
    for e in entries:
        if e.problem:
            err.print(
                f"[yellow]warning:[/] ledger row {escape(repr(e.name))} cannot be read"
                f" ({escape(e.problem)}): `omnibed release {escape(e.name)}` releases it"
                f" by name on {escape(e.testbed)}",
                highlight=False,
                soft_wrap=True,
            )


@app.command("ls")
def list_reservations(as_json: AsJson = False) -> None:
    """List the reservations in the ledger; rows that cannot be read are listed and warned of."""
    entries = _api().ledger.entries()
    rows = [
        {
            "name": e.name,
            "testbed": e.testbed,
            "state": e.state.value,
            "start": e.reservation.start.isoformat() if e.reservation else None,
            "end": e.reservation.end.isoformat() if e.reservation else None,
            "id": e.reservation.id if e.reservation else None,
            "problem": e.problem,
        }
        for e in entries
    ]
    _warn_unreadable(entries)
    if as_json:
        _print_json(rows)
        return
    table = Table("name", "testbed", "state", "end (UTC)", "id")
    for row in rows:
        table.add_row(
            row["name"], row["testbed"], row["state"], row["end"] or "-", row["id"] or "-"
        )
    out.print(table)


@app.command()
def nodes(name: Name, as_json: AsJson = False) -> None:
    """List the nodes of a reservation and how to reach them."""
    found = _api().nodes(name)
    if as_json:
        _print_json(
            [
                {
                    "id": n.id,
                    "hostname": n.hostname,
                    "addresses": list(n.addresses),
                    "ssh": n.ssh.label(),
                    "jumps": [j.label() for j in n.ssh.jumps],
                }
                for n in found
            ]
        )
        return
    table = Table("id", "hostname", "addresses", "ssh")
    for n in found:
        via = " via " + ", ".join(j.label() for j in n.ssh.jumps) if n.ssh.jumps else ""
        table.add_row(n.id, n.hostname, " ".join(n.addresses), n.ssh.label() + via)
    out.print(table)


@app.command()
def nics(name: Name, as_json: AsJson = False) -> None:
    """Show each node's NICs: role, MAC, MTU and whether foreign MACs and multicast pass."""
    by_node = _api().nics(name)
    if as_json:
        _print_json(
            {
                node: [
                    {
                        "name": nic.name,
                        "role": nic.role.value,
                        "mac": nic.mac,
                        "mtu": nic.mtu,
                        "addresses": list(nic.addresses),
                        "rate_mbps": nic.rate_mbps,
                        "foreign_mac": nic.foreign_mac.value,
                        "multicast": nic.multicast.value,
                        "sources": {k: v.value for k, v in nic.sources.items()},
                    }
                    for nic in node_nics
                ]
                for node, node_nics in by_node.items()
            }
        )
        return
    table = Table("node", "nic", "role", "mac", "mtu", "foreign MACs", "multicast")
    for node, node_nics in by_node.items():
        for nic in node_nics:
            table.add_row(
                node,
                nic.name,
                nic.role.value,
                nic.mac,
                str(nic.mtu),
                nic.foreign_mac.value,
                nic.multicast.value,
            )
    out.print(table)


def _run_and_report(api: Omnibed, name: str, argv: list[str]) -> int:
    """Run `argv` on every node, output prefixed by node; return how many nodes failed."""
    results = api.run(name, shlex.join(argv), on_line=_print_line)
    return _print_exit_table("node", {node: r.exit_status for node, r in results.items()})


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


def _print_line(who: str, stream: str, line: str) -> None:
    console = err if stream == "stderr" else out
    console.print(f"[cyan]\\[{who}][/] {line}", highlight=False, markup=True)


def _print_exit_table(kind: str, statuses: dict[str, int]) -> int:
    """Print each node's exit status on stderr; return how many failed."""
    failed = sum(1 for status in statuses.values() if status != 0)
    table = Table(kind, "exit status", title=f"{len(statuses) - failed}/{len(statuses)} succeeded")
    for who, status in statuses.items():
        table.add_row(who, f"[{'green' if status == 0 else 'red'}]{status}[/]")
    err.print(table)
    return failed


@app.command()
def run(name: Name, command: Command = None, shell: Shell = None) -> None:
    """Run a command as root on every node: `omnibed run NAME -- PROGRAM ARGS...`.

    The words after `--` reach PROGRAM as they are (no shell reads them); for pipes, globs
    or `;`, give one string to `sh -c` instead: `omnibed run NAME --shell 'id -u; uptime'`.
    """
    argv = _argv(command, shell)
    raise typer.Exit(1 if _run_and_report(_api(), name, argv) else 0)


@app.command("ssh")
def ssh_login(
    name: Name, node: Annotated[str, typer.Argument(help="Node id (`omnibed nodes`).")]
) -> None:
    """Open an interactive root shell on one node."""
    api = _api()
    argv = ssh.ssh_command_line(api.root_endpoint(name, node), api.known_hosts(name))
    os.execvp(argv[0], argv)


@app.command()
def snapshot(
    name: Name,
    node: Annotated[str, typer.Argument(help="Node id (`omnibed nodes`).")],
    image: Annotated[str, typer.Argument(help="Name of the image to create.")],
) -> None:
    """Save a node's disk as an image; reserve from it later with `-o image=IMAGE`."""
    with _progress(f"snapshotting {node}"):
        created = _api().snapshot(name, node, image)
    out.print(created)


@app.command()
def extend(
    name: Name, by: Annotated[str, typer.Option(help="How much longer: 30m, 1h...")] = "1h"
) -> None:
    """Move a reservation's end later; prints the end the testbed granted."""
    api = _api()
    _, reservation = api.reservation(name)
    new_end = max(reservation.end, utcnow()) + _walltime(by)
    granted = api.extend(name, new_end)
    out.print(granted.end.isoformat())


@app.command()
def release(name: Name) -> None:
    """Release a reservation and everything it made; releasing twice is not an error."""
    api = _api()
    if api.ledger.get(name) is None:
        raise UsageError(f"no reservation called {name!r}: see `omnibed ls`")
    with _uninterruptible(), _progress(f"releasing {name}"):
        api.release(name)
    out.print(f"released {name}")


@app.command()
def gc() -> None:
    """Release reservations that are expired or whose reserve-and-run process died."""
    api = _api()
    with _uninterruptible():
        released = api.gc()
    for name, why in released:
        out.print(f"released {name} ({why})")
    if not released:
        out.print("nothing to release")
    _warn_unreadable(api.ledger.entries())


@app.command("reserve-and-run", context_settings={"allow_interspersed_args": False})
def reserve_and_run(
    testbed: Testbed,
    command: Command = None,
    shell: Shell = None,
    nodes: Nodes = 1,
    walltime: Walltime = "1h",
    name: Annotated[str | None, typer.Option(help="Name it (default: TESTBED-xxxxxx).")] = None,
    extra_nics: ExtraNics = 0,
    option: Options = None,
    keep: Annotated[bool, typer.Option(help="Keep the nodes afterwards (release later).")] = False,
    platform: Annotated[
        Path | None,
        typer.Option(help="Build this virtual platform (YAML) and run CMD on every vnode."),
    ] = None,
) -> None:
    """Reserve, wait, run a command as root on every node, print per-node results, release.

    The command is the words after `--`, each reaching the program as it is, or --shell
    'STRING' run with `sh -c` (as with `omnibed run`). The nodes are released also on
    Ctrl-C, SIGTERM or an error, unless --keep; if omnibed itself is killed, `omnibed gc`
    releases them. Exits non-zero when any node failed.
    """
    argv = _argv(command, shell)
    api = _api()
    request = _request(api, testbed, nodes, walltime, name, extra_nics, option)
    platform_to_build = _platform(platform, nodes) if platform is not None else None
    with _sigterm_as_interrupt():
        try:
            _reserve_and_wait(api, testbed, request)
            if platform_to_build is not None:
                failed = _emulate_and_run(
                    api, request.name, platform_to_build, str(platform), argv
                )
            else:
                failed = _run_and_report(api, request.name, argv)
        finally:
            if not keep:
                _release_if_reserved(api, request, sys.exc_info()[1])
            elif api.ledger.set_owner(request.name, None, token=request.token):
                err.print(f"kept {request.name}: `omnibed release {request.name}` when done")
    raise typer.Exit(1 if failed else 0)


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


# -- emulation --------------------------------------------------------------------------

emulate_app = typer.Typer(
    help="Build a virtual platform (vnodes and vnetworks, Distem-style) on a reservation.",
    no_args_is_help=True,
)
app.add_typer(emulate_app, name="emulate")
app.add_typer(image_app, name="image")
Platform = Annotated[Path, typer.Argument(help="Platform description (YAML), see examples/.")]


def _emulator(api: Omnibed, name: str):
    from omnibed.emulator.coordinator import Emulator

    return Emulator(api, name)


def _platform(platform_file: Path, pnodes: int | None = None) -> PlatformSpec:
    """The platform in `platform_file`, checked to fit `pnodes` pnodes when given; a
    PlatformError (exit status 2) names the file, line, column and field at fault."""
    from omnibed.core.errors import PlatformError
    from omnibed.emulator.model import load_platform
    from omnibed.emulator.planner import check_fits

    if not platform_file.is_file():
        raise UsageError(f"platform file {platform_file} does not exist (see examples/*.yaml)")
    from omnibed.emulator.image_refs import resolve

    platform = load_platform(platform_file)
    if pnodes is not None:
        check_fits(platform, pnodes)
    try:
        resolve(platform)  # unknown images, bad tarballs, ssh without sshd: before reserving
    except PlatformError as error:
        raise error.located(str(platform_file)) from None
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
    if emulator.reachable_after is not None:
        out.print(f"vnodes reachable in {emulator.reachable_after:.1f} s", highlight=False)
    if len(built.pnodes) > 1:
        with _progress("checking connectivity between pnodes"):
            checks = emulator.connectivity()
        for check in checks:
            verdict = "[green]reachable[/]" if check["ok"] else "[red]unreachable[/]"
            out.print(f"{check['network']}: {check['from']} -> {check['to']} {verdict}")


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
        _print_json(status)
        return
    for network in status["networks"]:
        out.print(
            f"[bold]{network['name']}[/] {network['cidr']}: {network['mode']}"
            f" (MTU {network['mtu']}) - {network['reason']}",
            highlight=False,
        )
    boxes = any(vnode["container"] for vnode in status["vnodes"])
    columns = ("image", "state", "limits", "OOM kills") if boxes else ()
    table = Table("vnode", "pnode", "addresses", *columns)
    for vnode in status["vnodes"]:
        addresses = ", ".join(f"{i}={a['address']}" for i, a in vnode["ifaces"].items())
        table.add_row(vnode["name"], vnode["pnode"], addresses, *_container_cells(vnode, boxes))
    out.print(table)
    for pnode, state in status["pnodes"].items():
        if state.get("error") or not state.get("complete"):
            err.print(f"[yellow]warning:[/] {pnode}: {state.get('error') or state.get('absent')}")


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


def _container_cells(vnode: dict[str, Any], boxes: bool) -> list[str]:
    """image, state, limits and OOM kills of a container vnode's status row."""
    box = vnode["container"]
    if not boxes:
        return []
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
    out.print(f"copied {source} -> {target} ({vnode})", highlight=False)
