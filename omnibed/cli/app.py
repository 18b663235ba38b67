"""The `omnibed` application: testbeds, reservations, running commands; `main` runs it.

`omnibed emulate` lives in :mod:`omnibed.cli.emulate`.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from omnibed.cli.common import (
    AsJson,
    Command,
    Name,
    Shell,
    _api,
    _argv,
    _fail,
    _help_without_command,
    _print_json,
    _progress,
    _uninterruptible,
    err,
    escape,
    out,
)
from omnibed.cli.emulate import _emulate_and_run, _platform, emulate_app
from omnibed.cli.image import image_app
from omnibed.cli.remote_output import EXIT_STATUSES_HELP, Outcome, Streams, finish
from omnibed.core.errors import OmnibedError, ReleaseFailed, UsageError

if TYPE_CHECKING:  # the API, ledger and providers load when a command uses them, not for --help
    from omnibed.api import Omnibed
    from omnibed.core.ledger import Entry
    from omnibed.core.plugins import ProviderRegistry
    from omnibed.core.types import ReservationRequest

app = typer.Typer(
    help="Reserve machines on research testbeds, run commands on them as root, and emulate "
    "virtual platforms on them. Start with `omnibed reserve-and-run --testbed local "
    "--nodes 3 -- id -u` (as root).",
    pretty_exceptions_enable=False,
)
Testbed = Annotated[
    str, typer.Option("--testbed", "-t", help="Testbed name: see `omnibed providers`.")
]
Nodes = Annotated[int, typer.Option("--nodes", "-n", help="How many nodes to reserve.")]
Walltime = Annotated[
    str, typer.Option(help="How long to keep the nodes: 30m, 1h, 1h30m, 2d, 01:30:00.")
]
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


def _print_version(asked: bool) -> None:
    if asked:
        from importlib.metadata import version

        print(f"omnibed {version('omnibed')}")
        raise typer.Exit()


_debugging = False  # `omnibed --debug ...`: a failure also prints its traceback


@app.callback(invoke_without_command=True)
def _everywhere(
    context: typer.Context,
    version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True,
        help="Print omnibed's version and exit.")] = False,
    debug: Annotated[bool, typer.Option(
        "--debug", help="On a failure, print its Python traceback before the error line.")] = False,
) -> None:
    global _debugging
    _debugging = debug
    _help_without_command(context)


def main() -> None:
    """Console-script entry point: every error ends as one line on stderr (see
    :func:`exit_status`), a mistake in the command line and a bug too; `--debug` adds the
    traceback."""
    try:
        status = app(standalone_mode=False)
    except typer.TyperException as error:  # what the command line parser refuses
        context = getattr(error, "ctx", None)
        hint = f" (see `{context.command_path} --help`)" if context is not None else ""
        _fail(error.format_message().rstrip(".") + hint, error.exit_code)
    except typer.Abort:
        _fail("aborted", 1)
    except OmnibedError as error:
        _traceback()
        _fail(str(error), exit_status(error))
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except Exception as error:  # a bug, in omnibed or in a provider plugin
        _traceback()
        hint = "" if _debugging else "; `omnibed --debug ...` shows where"
        _fail(f"unexpected {type(error).__name__}: {' '.join(str(error).split())}{hint}", 1)
    raise SystemExit(status if isinstance(status, int) else 0)


def _traceback() -> None:
    """With `--debug`, the traceback of the exception being handled, on stderr."""
    if _debugging:
        import traceback

        traceback.print_exc()


def exit_status(error: OmnibedError) -> int:
    """2 for input the user can fix (a UsageError), 1 for a testbed or remote failure."""
    return 2 if isinstance(error, UsageError) else 1


def _options(pairs: list[str] | None) -> dict[str, str]:
    options = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"option {pair!r} is not KEY=VALUE (e.g. -o profile=xen)")
        options[key] = value
    return options


def _walltime(text: str) -> timedelta:
    from omnibed.core.timeutil import parse_walltime

    try:
        return parse_walltime(text)
    except ValueError as error:
        raise UsageError(str(error)) from None


def _start(text: str | None) -> datetime | None:
    if text is None:
        return None
    from omnibed.core.timeutil import to_utc

    try:
        return to_utc(datetime.fromisoformat(text), assume_zone="UTC")
    except ValueError:
        raise UsageError(f"--start {text!r} is not an ISO date such as 2026-12-01T08:00Z") from None


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
    rows = [_provider_row(registry, name) for name in sorted(registry.providers)]
    if as_json:
        _print_json({"providers": rows, "errors": [str(e) for e in registry.errors]})
        return
    from rich.table import Table

    for row in rows:  # one block per testbed, so that every name fits 80 columns whole
        facts = Table.grid(padding=(0, 2))
        facts.add_column(no_wrap=True)
        facts.add_column()
        for what in ("verbs", "capabilities", "options"):
            facts.add_row(f"  {what}", ", ".join(row[what]) or "-")
        title = f"[bold]{escape(row['name'])}[/]  from {escape(row['source'])}"
        out().print(title, highlight=False)
        out().print(facts, highlight=False)
    for error in registry.errors:
        err().print(f"[yellow]warning:[/] {error}")


def _provider_row(registry: ProviderRegistry, name: str) -> dict[str, Any]:
    """What `omnibed providers --json` says of one testbed."""
    from omnibed.core.provider import implemented_verbs

    provider_class = registry.providers[name]
    caps = provider_class.capabilities
    return {
        "name": name,
        "source": registry.sources[name],
        "verbs": implemented_verbs(provider_class),
        "capabilities": sorted(c.value for c in caps.supported),
        "max_extra_nics": caps.max_extra_nics,
        "options": dict(caps.options),
    }


def _verb_table(registry: ProviderRegistry) -> str:
    """Which verbs each testbed implements, derived from its code and capabilities."""
    from omnibed.core.provider import VERBS, implemented_verbs
    from omnibed.core.types import Capability

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
        out().print(f"[bold]{name}[/]")
        for check in provider_class.doctor(api.home / "providers" / name):
            mark = "[green]ok[/]  " if check.ok else "[red]missing[/]"
            out().print(f"  {mark} {check.what}" + (f": {check.detail}" if check.detail else ""))
            if not check.ok:
                bad += 1
                if check.fix:
                    out().print(f"          fix: {check.fix}")
    for error in api.registry.errors:
        out().print(f"[red]plugin error[/] {error}")
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
    from omnibed.core.ledger import process_owner

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
        err().print(f"released {request.name}")


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
    out().print(request.name)


def _warn_unreadable(entries: list[Entry]) -> None:
    """One warning line per ledger row that cannot be read whole."""
    for e in entries:
        if e.problem:
            err().print(
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
    _warn_unreadable(entries)
    if as_json:
        _print_json([e.to_json() for e in entries])
        return
    from rich.table import Table

    table = Table("name", "testbed", "state", "end (UTC)", "id")
    for e in entries:
        made = e.reservation
        end, made_id = (made.end.isoformat(), made.id) if made else ("-", "-")
        table.add_row(e.name, e.testbed, e.state.value, end, made_id)
    out().print(table)


@app.command()
def nodes(name: Name, as_json: AsJson = False) -> None:
    """List the nodes of a reservation and how to reach them."""
    found = _api().nodes(name)
    if as_json:
        _print_json([n.to_json() for n in found])
        return
    from rich.table import Table

    table = Table("id", "hostname", "addresses", "ssh")
    for n in found:
        via = " via " + ", ".join(j.label() for j in n.ssh.jumps) if n.ssh.jumps else ""
        table.add_row(n.id, n.hostname, " ".join(n.addresses), n.ssh.label() + via)
    out().print(table)


@app.command()
def nics(name: Name, as_json: AsJson = False) -> None:
    """Show each node's NICs: role, MAC, MTU and whether foreign MACs and multicast pass."""
    by_node = _api().nics(name)
    if as_json:
        _print_json({node: [nic.to_json() for nic in nics] for node, nics in by_node.items()})
        return
    from rich.table import Table

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
    out().print(table)


def _run_and_report(api: Omnibed, name: str, argv: list[str], *, as_json: bool = False) -> int:
    """Run `argv` on every node, its output handed over as it comes (see
    :mod:`omnibed.cli.remote_output`); return the exit status to end with."""
    nodes = api.nodes(name)
    streams = None if as_json else Streams(len(nodes))
    results = api.run(name, shlex.join(argv), nodes=nodes,
                      on_output=None if streams is None else streams.write)
    if streams is not None:
        streams.end()
    outcomes = {node: Outcome(r.exit_status, r.stdout_bytes, r.stderr_bytes)
                for node, r in results.items()}
    return finish("node", outcomes, as_json=as_json)


@app.command(epilog=EXIT_STATUSES_HELP)
def run(
    name: Name,
    command: Command = None,
    shell: Shell = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print each node's exit status, stdout and stderr as one JSON object "
        "(`stdout_base64` instead of `stdout` for output that is not UTF-8).")] = False,
) -> None:
    """Run a command as root on every node: `omnibed run NAME -- PROGRAM ARGS...`.

    The words after `--` reach PROGRAM as they are (no shell reads them); for pipes, globs
    or `;`, give one string to `sh -c` instead: `omnibed run NAME --shell 'id -u; uptime'`.
    On a one-node reservation, stdout and stderr are the command's own, byte for byte; on
    several nodes each line is prefixed by `[node] ` and a table of exit statuses ends
    stderr.
    """
    argv = _argv(command, shell)
    raise typer.Exit(_run_and_report(_api(), name, argv, as_json=as_json))


@app.command("ssh")
def ssh_login(
    name: Name, node: Annotated[str, typer.Argument(help="Node id (`omnibed nodes`).")]
) -> None:
    """Open an interactive root shell on one node."""
    from omnibed.core import ssh

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
    out().print(created)


@app.command()
def extend(
    name: Name, by: Annotated[str, typer.Option(help="How much longer: 30m, 1h...")] = "1h"
) -> None:
    """Move a reservation's end later; prints the end the testbed granted."""
    api = _api()
    _, reservation = api.reservation(name)
    from omnibed.core.timeutil import utcnow

    new_end = max(reservation.end, utcnow()) + _walltime(by)
    granted = api.extend(name, new_end)
    out().print(granted.end.isoformat())


@app.command()
def release(name: Name) -> None:
    """Release a reservation and everything it made; releasing twice is not an error."""
    api = _api()
    if api.ledger.get(name) is None:
        raise UsageError(f"no reservation called {name!r}: see `omnibed ls`")
    with _uninterruptible(), _progress(f"releasing {name}"):
        api.release(name)
    out().print(f"released {name}")


@app.command()
def gc() -> None:
    """Release reservations that are expired or whose reserve-and-run process died.

    A reservation that cannot be released is reported (exit status 1) and kept in the
    ledger; the others are released all the same.
    """
    api = _api()
    with _uninterruptible():
        released, failed = api.gc()
    for name, why in released:
        out().print(f"released {name} ({why})")
    if not released and not failed:
        out().print("nothing to release")
    _warn_unreadable(api.ledger.entries())
    for name, error in failed:
        err().print(
            f"[bold red]error:[/] {escape(name)} is still live: {escape(str(error))};"
            " `omnibed gc` again later",
            highlight=False, soft_wrap=True,
        )
    if failed:
        raise typer.Exit(1)


@app.command("reserve-and-run", context_settings={"allow_interspersed_args": False},
             epilog=EXIT_STATUSES_HELP)
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
    'STRING' run with `sh -c`, and its output is printed as `omnibed run` prints it. The
    nodes are released also on Ctrl-C, SIGTERM or an error, unless --keep; if omnibed
    itself is killed, `omnibed gc` releases them.
    """
    argv = _argv(command, shell)
    api = _api()
    request = _request(api, testbed, nodes, walltime, name, extra_nics, option)
    platform_to_build = _platform(platform, nodes) if platform is not None else None
    with _sigterm_as_interrupt():
        try:
            _reserve_and_wait(api, testbed, request)
            if platform_to_build is not None:
                status = _emulate_and_run(
                    api, request.name, platform_to_build, str(platform), argv
                )
            else:
                status = _run_and_report(api, request.name, argv)
        finally:
            if not keep:
                _release_if_reserved(api, request, sys.exc_info()[1])
            elif api.ledger.set_owner(request.name, None, token=request.token):
                err().print(f"kept {request.name}: `omnibed release {request.name}` when done")
    raise typer.Exit(status)


app.add_typer(emulate_app, name="emulate")
app.add_typer(image_app, name="image")
