"""The Python API of omnibed; the CLI is a thin layer over it.

`Omnibed` ties a provider to the ledger and to SSH: every reservation is in the ledger
before the testbed is called, has its own key pair and known_hosts, and is released
(or found again) by name.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from omnibed.core.errors import OmnibedError, ReleaseFailed, ReservationNotFound, UsageError
from omnibed.core.kit import check_options
from omnibed.core.ledger import Entry, Ledger, omnibed_home, process_owner
from omnibed.core.login import Login
from omnibed.core.provider import Progress, Provider, no_progress
from omnibed.core.reservation_access import ReservationAccess
from omnibed.core.timeutil import seconds_setting, utcnow
from omnibed.core.types import (
    Capability,
    Nic,
    Node,
    Reservation,
    ReservationRequest,
    SSHEndpoint,
    check_reservation_name,
)

if TYPE_CHECKING:  # paramiko loads only for the commands that log in to nodes
    from omnibed.core import ssh
    from omnibed.core.plugins import ProviderRegistry  # pluggy: only when a provider is used
    from omnibed.emulator.coordinator import Emulator

CONTROL_DIR = "control"  # in the omnibed home: the control process's socket (0700)
CONTROL_IDLE = 300.0  # s the control process keeps a reservation's agents unused


class Omnibed:
    """Reservations by name over every installed provider, recorded in the ledger."""

    def __init__(
        self,
        home: Path | None = None,
        registry: ProviderRegistry | None = None,
        providers: Mapping[str, Provider] | None = None,
    ) -> None:
        """`providers`: ready instances by testbed name, used instead of constructing one
        from the registry (the conformance suite passes the provider under test)."""
        self.home = home or omnibed_home()
        self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        if registry is not None:
            self.registry = registry
        self.ledger = Ledger(self.home / "ledger.sqlite")
        self._providers: dict[str, Provider] = dict(providers or {})

    @cached_property
    def registry(self) -> ProviderRegistry:
        """The installed providers, found at first use (listing the ledger needs none)."""
        from omnibed.core.plugins import load_providers

        return load_providers()

    # -- providers and paths ------------------------------------------------------------

    def provider(self, testbed: str) -> Provider:
        """The provider instance for `testbed` (UsageError listing the known ones)."""
        if testbed not in self._providers:
            provider_class = self.registry.get(testbed)
            state_dir = self.home / "providers" / testbed
            state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._providers[testbed] = provider_class(state_dir)
        return self._providers[testbed]

    def reservation_dir(self, name: str) -> Path:
        """`<home>/reservations/<name>`: keys, known_hosts and plan of one reservation.

        A name that is not one plain path component (`/`, `.`, `..`) is refused, so no
        name, even one recorded before names were checked, points outside that folder.
        """
        if not _is_folder_name(name):
            raise UsageError(f"reservation name {name!r} cannot be a folder of omnibed's")
        return self.home / "reservations" / name

    def known_hosts(self, name: str) -> Path:
        return self.reservation_dir(name) / "known_hosts"

    def keypair(self, name: str) -> ssh.KeyPair:
        from omnibed.core import ssh

        return ssh.ensure_keypair(self.reservation_dir(name))

    def login(self, name: str, nodes: Sequence[Node] = ()) -> Login:
        """The reservation's Login, with the host keys that `nodes` announce written to its
        known_hosts first, so that SSH checks them rather than trusting first contact."""
        from omnibed.core import ssh

        known_hosts = self.known_hosts(name)
        for node in nodes:
            ssh.announce_host_keys(known_hosts, node.ssh, node.host_keys)
        return Login.of(self.keypair(name), known_hosts)

    # -- reservations -------------------------------------------------------------------

    def make_request(
        self,
        testbed: str,
        *,
        nodes: int,
        walltime: timedelta,
        name: str | None = None,
        extra_nics: int = 0,
        options: Mapping[str, str] | None = None,
        start: datetime | None = None,
    ) -> ReservationRequest:
        """Validate the user's request against the provider's declared capabilities."""
        provider = self.provider(testbed)
        caps = provider.capabilities
        options = dict(options or {})
        check_options(options, caps.options, testbed)
        if nodes < 1:
            raise UsageError(f"--nodes must be at least 1, not {nodes}")
        if extra_nics < 0:
            raise UsageError(f"--extra-nics cannot be negative, not {extra_nics}")
        if extra_nics > caps.max_extra_nics:
            raise UsageError(
                f"{testbed} offers at most {caps.max_extra_nics} extra NIC(s) per node,"
                f" not {extra_nics}"
            )
        if start is not None and Capability.ADVANCE_RESERVATION not in caps:
            raise UsageError(f"{testbed} does not take advance reservations (--start)")
        name = name or f"{testbed}-{secrets.token_hex(3)}"
        try:
            check_reservation_name(name)
        except ValueError as error:
            raise UsageError(str(error)) from None
        if self.ledger.get(name):
            raise UsageError(
                f"a reservation called {name!r} already exists: "
                f"use another --name or `omnibed release {name}`"
            )
        return ReservationRequest(
            name=name,
            nodes=nodes,
            duration=walltime,
            start=start,
            image=options.get("image"),
            site=options.get("site"),
            extra_nics=extra_nics,
            extra=options,
        )

    def reserve(
        self, testbed: str, request: ReservationRequest, *, owner: str | None = None
    ) -> Reservation:
        """Record, then reserve; on any failure nothing is left on the testbed or the ledger.

        The ledger row carries `request.token`: a failure undoes this call's own row and
        reservation only, never those of another process that recorded the same name first.
        `owner` (see :func:`omnibed.core.ledger.process_owner`) marks a reservation that
        `gc` releases once that process is gone.
        """
        provider = self.provider(testbed)
        self.ledger.record_pending(request.name, testbed, owner, token=request.token)
        made_dir = asked = False
        reservation = None
        try:
            self._make_reservation_dir(request.name)
            made_dir = True
            keys = self.keypair(request.name)
            request = _with_key(request, keys.public_openssh)
            asked = True
            reservation = provider.reserve(request)
            if not self.ledger.update(reservation, token=request.token):
                raise OmnibedError(
                    f"the ledger row of {request.name!r} was removed while it was being"
                    " reserved, so its reservation is released again"
                )
        except BaseException as error:
            self._undo(provider, request, asked, reservation, made_dir, error)
            raise
        return reservation

    def _make_reservation_dir(self, name: str) -> None:
        """Create the reservation's folder (0700); refuse one that is already there."""
        (self.home / "reservations").mkdir(mode=0o700, exist_ok=True)
        directory = self.reservation_dir(name)
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:
            raise UsageError(
                f"{directory} already exists and omnibed did not make it for this reservation:"
                f" move it away or use another --name"
            ) from None

    def _undo(
        self,
        provider: Provider,
        request: ReservationRequest,
        asked: bool,
        reservation: Reservation | None,
        made_dir: bool,
        cause: BaseException,
    ) -> None:
        """Release what this reserve call made and forget its own row and folder.

        The testbed is searched by name only if it was `asked` and gave no `reservation`
        back (it may have made one before failing).

        If that release fails too, the row is kept (with what the testbed made, owned by
        this process so that `gc` releases it once the process is gone) and the error
        says the reservation is still live and how to release it.
        """
        leftover = reservation
        try:
            if leftover is None and asked:
                leftover = provider.find(request.name)
            if leftover is not None:
                provider.release(leftover)
        except BaseException as error:
            if leftover is not None:
                self.ledger.update(leftover, token=request.token)
            self.ledger.set_owner(request.name, process_owner(), token=request.token)
            if not isinstance(error, Exception):
                raise
            raise ReleaseFailed(
                request.name, provider=provider.name, cause=cause, error=error
            ) from error
        if made_dir:
            _remove_tree(self.reservation_dir(request.name))
        self.ledger.remove(request.name, token=request.token)

    def _forget(self, name: str, token: str | None) -> None:
        if _is_folder_name(name):
            _remove_tree(self.reservation_dir(name))
        self.ledger.remove(name, token=token)

    def entry(self, name: str) -> Entry:
        entry = self.ledger.get(name)
        if entry is None:
            raise UsageError(f"no reservation called {name!r}: see `omnibed ls`")
        return entry

    def reservation(self, name: str) -> tuple[Provider, Reservation]:
        entry = self.entry(name)
        provider = self.provider(entry.testbed)
        reservation = entry.reservation or provider.find(name)
        if reservation is None:
            raise ReservationNotFound(
                f"{name!r} is in the ledger but unknown to {entry.testbed}:"
                f" `omnibed release {name}` forgets it",
                provider=entry.testbed,
            )
        return provider, reservation

    def wait(
        self, name: str, *, timeout: float = 3600, progress: Progress = no_progress
    ) -> Reservation:
        provider, reservation = self.reservation(name)
        reservation = provider.wait(reservation, timeout=timeout, progress=progress)
        self.ledger.update(reservation)
        return reservation

    def nodes(self, name: str) -> list[Node]:
        provider, reservation = self.reservation(name)
        return provider.list_nodes(reservation)

    def nics(self, name: str, nodes: Sequence[Node] | None = None) -> dict[str, list[Nic]]:
        """node id -> its NICs; `nodes`: the reservation's nodes, if the caller listed them.
        The nodes are asked at the same time (a provider may log in to each)."""
        provider, reservation, nodes = self._reservation_nodes(name, nodes)
        login = self.login(name, nodes)
        if not nodes:
            return {}
        with ThreadPoolExecutor(max_workers=min(32, len(nodes))) as pool:
            found = pool.map(lambda node: provider.nic_capabilities(reservation, node, login),
                             nodes)
            return {node.id: nics for node, nics in zip(nodes, found, strict=True)}

    def root_endpoints(
        self, name: str, nodes: Sequence[Node] | None = None
    ) -> dict[str, SSHEndpoint]:
        """node id -> an endpoint that logs in as root with the reservation's key;
        `nodes`: the reservation's nodes, if the caller listed them."""
        provider, reservation, nodes = self._reservation_nodes(name, nodes)
        login = self.login(name, nodes)
        return {node.id: provider.root_access(reservation, node, login) for node in nodes}

    def root_endpoint(self, name: str, node_id: str) -> SSHEndpoint:
        """The root endpoint of one node (root access is given to that node only)."""
        provider, reservation = self.reservation(name)
        node = self._node(provider, reservation, node_id)
        return provider.root_access(reservation, node, self.login(name, [node]))

    def _reservation_nodes(
        self, name: str, nodes: Sequence[Node] | None
    ) -> tuple[Provider, Reservation, Sequence[Node]]:
        provider, reservation = self.reservation(name)
        return provider, reservation, provider.list_nodes(reservation) if nodes is None else nodes

    def access(self, name: str) -> ReservationAccess:
        """The reservation `name` as the emulator uses it (UsageError if it is unknown)."""
        self.entry(name)
        return _Access(self, name)

    def run(
        self,
        name: str,
        command: str,
        *,
        nodes: Sequence[Node] | None = None,
        on_output: ssh.OutputCallback | None = None,
        timeout: float | None = None,
    ) -> dict[str, ssh.CommandResult]:
        """Run `command` as root on every node in parallel; results by node id, in the
        order of the reservation's nodes (`nodes`, if the caller listed them). `on_output`
        gets each node's output bytes as they come."""
        from omnibed.core import ssh

        return ssh.run_many(
            self.root_endpoints(name, nodes),
            command,
            self.known_hosts(name),
            on_output=on_output,
            timeout=timeout,
        )

    def snapshot(self, name: str, node_id: str, image: str) -> str:
        provider, reservation = self.reservation(name)
        node = self._node(provider, reservation, node_id)
        return provider.snapshot(reservation, node, image, self.login(name, [node]))

    def extend(self, name: str, end: datetime) -> Reservation:
        provider, reservation = self.reservation(name)
        reservation = provider.extend(reservation, end)
        self.ledger.update(reservation)
        return reservation

    def release(self, name: str, *, token: str | None = None) -> bool:
        """Tear down its virtual platform, release on the testbed, then forget; whether
        there was something to release.

        With `token` (a request's), only the reservation that request recorded is released.
        The reservation recorded in the ledger is released, the testbed is searched by name
        only for one still pending. Releasing twice is not an error. If the platform cannot
        be torn down, the nodes are released anyway and the teardown error is raised after.
        """
        entry = self.ledger.get(name)
        if entry is None or (token is not None and entry.token != token):
            return False
        teardown_error = None
        try:
            self._emulation_down(name)
        except OmnibedError as error:
            teardown_error = error
        provider = self.provider(entry.testbed)
        reservation = entry.reservation or provider.find(name)
        if reservation is not None:
            provider.release(reservation)
        self._forget(name, entry.token)
        if teardown_error is not None:
            raise teardown_error
        return True

    def emulator(self, name: str) -> Emulator:
        """The virtual platform of reservation `name`, its agents kept running between
        commands by the user's control process (see :mod:`omnibed.emulator.control`) unless
        $OMNIBED_CONTROL_IDLE is 0; that process ends after that many seconds unused
        (default CONTROL_IDLE) or when its last reservation is released."""
        from omnibed.emulator.control import ControlAgents
        from omnibed.emulator.coordinator import Emulator

        idle = _control_idle()
        agents = ControlAgents(self.home / CONTROL_DIR, idle) if idle > 0 else None
        return Emulator(self.access(name), agents)

    def _emulation_down(self, name: str) -> None:
        """Tear down the platform of `name` if it runs one, then end the agents kept for it."""
        from omnibed.emulator.control import ControlAgents
        from omnibed.emulator.coordinator import PLAN_FILE

        if not _is_folder_name(name):
            return
        try:
            if (self.reservation_dir(name) / PLAN_FILE).exists():
                self.emulator(name).down()
        finally:
            # the agents end with their pnodes anyway: a control process that cannot be
            # told must not keep the reservation from being released
            with contextlib.suppress(OmnibedError, OSError):
                ControlAgents(self.home / CONTROL_DIR, 0).forget(str(self.reservation_dir(name)))

    def gc(self) -> tuple[list[tuple[str, str]], list[tuple[str, OmnibedError]]]:
        """Release what is expired or whose owning process is gone.

        Returns (name, why) of each released and (name, error) of each that could not be:
        one failing release does not stop the others, and what failed stays in the ledger.
        """
        now = utcnow()
        released: list[tuple[str, str]] = []
        failed: list[tuple[str, OmnibedError]] = []
        for entry in self.ledger.entries():
            if entry.expired(now):
                why = "expired"
            elif entry.orphaned():
                why = "its reserve-and-run process is gone"
            else:
                continue
            try:
                self.release(entry.name)
            except OmnibedError as error:
                failed.append((entry.name, error))
            else:
                released.append((entry.name, why))
        self._remove_stale_control_socket()
        return released, failed

    def _remove_stale_control_socket(self) -> None:
        """The socket a killed control process left (the next command would replace it)."""
        from omnibed.emulator.control import remove_stale_socket

        with contextlib.suppress(OmnibedError, OSError):
            remove_stale_socket(self.home / CONTROL_DIR)

    @staticmethod
    def _node(provider: Provider, reservation: Reservation, node_id: str) -> Node:
        nodes = provider.list_nodes(reservation)
        for node in nodes:
            if node.id == node_id:
                return node
        known = ", ".join(node.id for node in nodes)
        raise UsageError(f"no node {node_id!r} in {reservation.name}; its nodes: {known}")


@dataclass(frozen=True)
class _Access:
    """One reservation of an :class:`Omnibed`, as a
    :class:`~omnibed.core.reservation_access.ReservationAccess`."""

    api: Omnibed
    name: str

    @property
    def state_dir(self) -> Path:
        return self.api.reservation_dir(self.name)

    @property
    def known_hosts(self) -> Path:
        return self.api.known_hosts(self.name)

    @property
    def reservation_id(self) -> str:
        recorded = self.api.entry(self.name).reservation  # no provider needed to read it
        return (recorded or self.api.reservation(self.name)[1]).id

    @property
    def key_file(self) -> Path:
        return self.api.keypair(self.name).private_path

    @property
    def public_key(self) -> str:
        return self.api.keypair(self.name).public_openssh

    def nodes(self) -> list[Node]:
        return self.api.nodes(self.name)

    def nics(self, nodes: Sequence[Node]) -> dict[str, list[Nic]]:
        return self.api.nics(self.name, nodes)

    def root_endpoints(self, nodes: Sequence[Node] | None = None) -> dict[str, SSHEndpoint]:
        return self.api.root_endpoints(self.name, nodes)

    def root_endpoint(self, node_id: str) -> SSHEndpoint:
        return self.api.root_endpoint(self.name, node_id)


def _control_idle() -> float:
    """Seconds the control process stays unused: $OMNIBED_CONTROL_IDLE or CONTROL_IDLE."""
    return seconds_setting("OMNIBED_CONTROL_IDLE", CONTROL_IDLE, 0, zero="no control process")


def _is_folder_name(name: str) -> bool:
    """Whether `name` is one plain path component (a name recorded before names were
    checked may not be: such a reservation has no folder omnibed may touch)."""
    return bool(name) and "/" not in name and "\0" not in name and name not in (".", "..")


def _remove_tree(directory: Path) -> None:
    """Remove a reservation's folder; a symlink in its place is unlinked, never followed."""
    if directory.is_symlink():
        directory.unlink()
    else:
        shutil.rmtree(directory, ignore_errors=True)


def _with_key(request: ReservationRequest, public_key: str) -> ReservationRequest:
    return replace(request, public_key=public_key)
