"""The provider contract as tests: subclass :class:`ProviderConformance` to run it.

Each test checks one rule, written as the first line of its docstring; a failure reads
``contract rule '<rule>' broken: <what happened>``. Verbs the provider's capabilities
declare unsupported are skipped with the reason. Every reservation a test makes gets a
unique name (``<omnibed_request.name>-<6 hex>``) and is released when the test ends.
Renaming a test is a breaking change for provider authors who deselect it.
"""

from __future__ import annotations

import dataclasses
import functools
import secrets
import socket
import warnings
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from omnibed.core.errors import (
    NotSupported,
    OmnibedError,
    ProviderError,
    ProviderTimeout,
    ReservationNotFound,
    UsageError,
)
from omnibed.core.provider import Provider
from omnibed.core.timeutil import utcnow
from omnibed.core.types import (
    Capability,
    Nic,
    NicRole,
    Node,
    Reservation,
    ReservationRequest,
    ReservationState,
    Tri,
)

if TYPE_CHECKING:
    from omnibed.core.login import Login

CLOCK_SLACK = timedelta(minutes=5)
"""How far a testbed's clock may be from ours before its times count as mislabelled."""

CONNECT_TIMEOUT = 30.0
PENDING_WAIT = 2.0
"""The timeout given to `wait` on a reservation that cannot be READY that soon."""

UNKNOWN_OPTION = "omnibed-conformance-no-such-option"

Failure = TypeVar("Failure", bound=BaseException)

LiveResources = Callable[[Reservation], list[str]]
"""What the testbed itself still holds for a reservation, one line per resource."""


class LiveResourcesUnknown(UserWarning):
    """A release rule was checked with ``find`` alone: the run gives no
    ``omnibed_live_resources`` fixture to ask the testbed what it still holds."""


def contract_rule(test: Callable[..., None]) -> Callable[..., None]:
    """Run `test` so that any failure names its rule (the first line of its docstring)."""
    rule = (test.__doc__ or test.__name__).strip().splitlines()[0].rstrip(".")

    @functools.wraps(test)
    def checked(*args: Any, **kwargs: Any) -> None:
        try:
            test(*args, **kwargs)
        except AssertionError as error:
            pytest.fail(f"contract rule {rule!r} broken: {error}", pytrace=False)
        except Exception as error:
            pytest.fail(f"contract rule {rule!r} broken: {type(error).__name__}: {error}")

    return checked


def reservation_login(key: Any, folder: Path) -> Login:
    """The Login omnibed gives the verbs: `key` (an `omnibed_key`) and `folder`/known_hosts."""
    from omnibed.core.login import Login

    return Login(Path(key.private_path), key.public_openssh, folder / "known_hosts")


def expect_raises(
    expected: type[Failure], call: Callable[..., Any], *args: Any, **kw: Any
) -> Failure:
    """Call and return the `expected` error; a different error propagates as is."""
    try:
        call(*args, **kw)
    except expected as error:
        return error
    raise AssertionError(f"{call.__name__} returned instead of raising {expected.__name__}")


def expect_refused(
    provider: Provider,
    request: ReservationRequest,
    timeout: float,
    at_reserve: type[OmnibedError],
) -> None:
    """`request` is refused: by reserve raising `at_reserve`, or by wait raising a
    ProviderError that is not a timeout."""
    try:
        made = provider.reserve(request)
    except at_reserve:
        return
    error = expect_raises(ProviderError, provider.wait, made, timeout=timeout)
    assert not isinstance(error, ProviderTimeout), f"wait timed out instead: {error}"


def check_utc(reservation: Reservation, where: str) -> None:
    for field in ("start", "end"):
        moment = getattr(reservation, field)
        assert moment.tzinfo is not None, f"{where}: {field} {moment!r} is naive"
        assert moment.utcoffset() == timedelta(0), f"{where}: {field} {moment} is not UTC"
    assert reservation.start <= reservation.end, f"{where}: ends before it starts"


def check_same(found: Reservation | None, made: Reservation, where: str) -> None:
    assert found is not None, f"find({made.name!r}) returned None {where}"
    got = (found.provider, found.id, found.name)
    assert got == (made.provider, made.id, made.name), f"find {where} gave {got}, not {made}"


class Reservations:
    """The reservations one test makes: uniquely named, released at teardown if still there."""

    def __init__(
        self,
        provider: Provider,
        template: ReservationRequest,
        public_key: str,
        timeout: float,
        live: LiveResources | None = None,
    ) -> None:
        self.provider = provider
        self.template = template
        self.public_key = public_key
        self.timeout = timeout
        self.live = live
        self.names: list[str] = []

    def request(self, base: ReservationRequest | None = None, **changes: Any) -> ReservationRequest:
        """`base` (default: the template) under a fresh name, carrying the test's public key."""
        base = base or self.template
        name = f"{base.name}-{secrets.token_hex(3)}"
        self.names.append(name)
        fields = {"name": name, "public_key": base.public_key or self.public_key}
        return dataclasses.replace(base, **{**fields, **changes})

    def ready(self, **changes: Any) -> Reservation:
        """Reserve a fresh request and wait until it is READY."""
        made = self.provider.reserve(self.request(**changes))
        return self.provider.wait(made, timeout=self.timeout)

    def release_leftovers(self) -> None:
        for name in self.names:
            left = self.provider.find(name)
            if left is not None:
                self.provider.release(left)


def check_released(
    provider: Provider, reservation: Reservation, live: LiveResources | None, where: str
) -> None:
    """Nothing of `reservation` is left `where`: find(name) is None and, when the run gives
    `live` (``omnibed_live_resources``), the testbed lists nothing live for it either.

    Without `live` a provider that forgets its records but leaves its machines running would
    pass, so the check says (with a :class:`LiveResourcesUnknown` warning) that it could
    only ask `find`.
    """
    left = provider.find(reservation.name)
    assert left is None, f"find({reservation.name!r}) still returns {left} {where}"
    if live is None:
        warnings.warn(
            LiveResourcesUnknown(
                f"{provider.name}: whether {reservation.name!r} is gone from the testbed was "
                "checked with find() only; define an omnibed_live_resources fixture that asks "
                "the testbed what it still holds (docs/writing-a-provider.md)"
            ),
            stacklevel=2,
        )
        return
    still = live(reservation)
    assert not still, (
        f"the testbed still holds {still} {where}, although find({reservation.name!r}) is None"
    )


def first_hop(node: Node) -> tuple[str, int]:
    endpoint = node.ssh.jumps[0] if node.ssh.jumps else node.ssh
    return endpoint.host, endpoint.port


class ProviderConformance:
    """The provider contract; inherit it in a test class and define ``omnibed_provider``.

    Optional fixtures (defaults in :mod:`omnibed.conformance.plugin`): ``omnibed_request``,
    ``omnibed_key``, ``omnibed_failing_request``, ``omnibed_pending_request``,
    ``omnibed_wait_timeout``, ``omnibed_live_resources``.
    """

    @pytest.fixture
    def reservations(
        self,
        omnibed_provider: Provider,
        omnibed_request: ReservationRequest,
        omnibed_key: Any,
        omnibed_wait_timeout: float,
        omnibed_live_resources: LiveResources | None,
    ) -> Iterator[Reservations]:
        made = Reservations(
            omnibed_provider,
            omnibed_request,
            omnibed_key.public_openssh,
            omnibed_wait_timeout,
            omnibed_live_resources,
        )
        try:
            yield made
        finally:
            made.release_leftovers()

    @staticmethod
    def require(provider: Provider, capability: Capability) -> None:
        if capability not in provider.capabilities:
            pytest.skip(reason=f"{provider.name} declares no {capability.value} capability")

    @contract_rule
    def test_find_returns_the_reservation(
        self, omnibed_provider: Provider, reservations: Reservations
    ) -> None:
        """reserve then find(name) returns the same reservation.

        Same provider, id and name, both right after reserve and once READY.
        """
        request = reservations.request()
        made = omnibed_provider.reserve(request)
        assert made.name == request.name, f"reserve named it {made.name!r}, not {request.name!r}"
        assert made.provider == omnibed_provider.name, f"provider is {made.provider!r}"
        check_same(omnibed_provider.find(request.name), made, "right after reserve")
        ready = omnibed_provider.wait(made, timeout=reservations.timeout)
        check_same(omnibed_provider.find(request.name), ready, "once READY")

    @contract_rule
    def test_reserving_twice_under_one_name_does_not_duplicate(
        self, omnibed_provider: Provider, reservations: Reservations
    ) -> None:
        """reserving twice under one name returns the existing reservation.

        The second reserve gives the same id and the nodes are not doubled.
        """
        request = reservations.request()
        first = omnibed_provider.reserve(request)
        second = omnibed_provider.reserve(request)
        assert second.id == first.id, f"second reserve made {second.id!r} beside {first.id!r}"
        ready = omnibed_provider.wait(second, timeout=reservations.timeout)
        nodes = omnibed_provider.list_nodes(ready)
        assert len(nodes) == request.nodes, f"{len(nodes)} nodes for {request.nodes} asked"

    @contract_rule
    def test_wait_returns_ready(
        self, omnibed_provider: Provider, reservations: Reservations
    ) -> None:
        """wait returns the reservation READY."""
        made = omnibed_provider.reserve(reservations.request())
        ready = omnibed_provider.wait(made, timeout=reservations.timeout)
        assert ready.id == made.id, f"wait returned {ready.id!r}, not {made.id!r}"
        assert ready.state is ReservationState.READY, f"wait returned state {ready.state}"

    @contract_rule
    def test_wait_raises_on_error_state(
        self,
        omnibed_provider: Provider,
        reservations: Reservations,
        omnibed_failing_request: ReservationRequest,
    ) -> None:
        """wait raises ProviderError on the testbed's error state, without waiting it out.

        A reserve refused at once with a ProviderError also keeps the rule.
        """
        request = reservations.request(omnibed_failing_request)
        expect_refused(omnibed_provider, request, reservations.timeout, ProviderError)

    @contract_rule
    def test_wait_times_out(
        self,
        omnibed_provider: Provider,
        reservations: Reservations,
        omnibed_pending_request: ReservationRequest | None,
    ) -> None:
        """wait raises ProviderTimeout when the reservation is not READY in time.

        Uses ``omnibed_pending_request``, else a start one hour ahead (advance reservation).
        """
        if omnibed_pending_request is not None:
            request = reservations.request(omnibed_pending_request)
        else:
            if Capability.ADVANCE_RESERVATION not in omnibed_provider.capabilities:
                pytest.skip(
                    reason=f"{omnibed_provider.name} declares no advance_reservation and no "
                    "omnibed_pending_request fixture gives a reservation that stays pending"
                )
            request = reservations.request(start=utcnow() + timedelta(hours=1))
        made = omnibed_provider.reserve(request)
        expect_raises(ProviderTimeout, omnibed_provider.wait, made, timeout=PENDING_WAIT)

    @contract_rule
    def test_list_nodes_gives_stable_ids(
        self, omnibed_provider: Provider, reservations: Reservations
    ) -> None:
        """list_nodes gives one Node per node asked, with stable ids that are not host names."""
        ready = reservations.ready()
        first = omnibed_provider.list_nodes(ready)
        second = omnibed_provider.list_nodes(ready)
        assert all(isinstance(node, Node) for node in first), f"not Node values: {first}"
        assert len(first) == reservations.template.nodes, f"{len(first)} nodes listed"
        ids = [node.id for node in first]
        assert len(set(ids)) == len(ids), f"ids repeat: {ids}"
        assert ids == [node.id for node in second], "ids or their order changed between calls"
        assert all(node.id != node.hostname for node in first), f"an id is a host name: {ids}"

    @contract_rule
    def test_ssh_endpoints_are_reachable(
        self, omnibed_provider: Provider, reservations: Reservations
    ) -> None:
        """every node's SSH endpoint (or its first jump host) accepts a TCP connection."""
        for node in omnibed_provider.list_nodes(reservations.ready()):
            host, port = first_hop(node)
            try:
                socket.create_connection((host, port), timeout=CONNECT_TIMEOUT).close()
            except OSError as error:
                raise AssertionError(f"node {node.id}: {host}:{port} refused: {error}") from None

    @contract_rule
    def test_root_access_logs_in_as_root(
        self,
        omnibed_provider: Provider,
        reservations: Reservations,
        omnibed_key: Any,
        tmp_path: Path,
    ) -> None:
        """root_access returns an endpoint where the reservation's key logs in as uid 0."""
        self.require(omnibed_provider, Capability.ROOT)
        from omnibed.core.ssh import announce_host_keys, run

        ready = reservations.ready()
        login = reservation_login(omnibed_key, tmp_path)
        for node in omnibed_provider.list_nodes(ready):
            announce_host_keys(login.known_hosts, node.ssh, node.host_keys)  # as omnibed does
            endpoint = omnibed_provider.root_access(ready, node, login)
            endpoint = dataclasses.replace(endpoint, key_file=endpoint.key_file or
                                           str(login.key_file))
            result = run(endpoint, "id -u", known_hosts=login.known_hosts)
            uid = result.stdout.strip()
            assert result.exit_status == 0 and uid == "0", (
                f"node {node.id}: `id -u` on {endpoint.label()} gave {uid!r} "
                f"(exit {result.exit_status}: {result.stderr.strip()})"
            )

    @contract_rule
    def test_nic_capabilities_name_a_control_nic(
        self, omnibed_provider: Provider, reservations: Reservations, omnibed_key: Any,
        tmp_path: Path,
    ) -> None:
        """nic_capabilities gives at least one CONTROL NIC and tri-state foreign_mac/multicast."""
        ready = reservations.ready()
        login = reservation_login(omnibed_key, tmp_path)
        for node in omnibed_provider.list_nodes(ready):
            nics = omnibed_provider.nic_capabilities(ready, node, login)
            assert all(isinstance(nic, Nic) for nic in nics), f"node {node.id}: not Nic: {nics}"
            roles = [nic.role for nic in nics]
            assert all(isinstance(role, NicRole) for role in roles), f"roles {roles}"
            assert NicRole.CONTROL in roles, f"node {node.id}: no CONTROL NIC among {nics}"
            for nic in nics:
                for fact in ("foreign_mac", "multicast"):
                    value = getattr(nic, fact)
                    assert isinstance(value, Tri), f"{node.id}/{nic.name}: {fact}={value!r}"

    @contract_rule
    def test_snapshot_gives_an_image_a_new_reservation_accepts(
        self, omnibed_provider: Provider, reservations: Reservations, omnibed_key: Any,
        tmp_path: Path,
    ) -> None:
        """snapshot returns an image id that a new reservation (image=...) accepts."""
        self.require(omnibed_provider, Capability.SNAPSHOT)
        ready = reservations.ready()
        node = omnibed_provider.list_nodes(ready)[0]
        login = reservation_login(omnibed_key, tmp_path)
        image = omnibed_provider.snapshot(ready, node, f"{ready.name}-image", login)
        assert isinstance(image, str) and image, f"snapshot returned {image!r}"
        again = reservations.ready(image=image)
        assert again.state is ReservationState.READY, f"reservation on {image} is {again.state}"

    @contract_rule
    def test_extend_moves_the_end(
        self, omnibed_provider: Provider, reservations: Reservations
    ) -> None:
        """extend moves the end date later and find sees the new end."""
        self.require(omnibed_provider, Capability.EXTEND)
        ready = reservations.ready()
        extended = omnibed_provider.extend(ready, ready.end + timedelta(minutes=30))
        check_utc(extended, "extend")
        assert extended.end > ready.end, f"end stayed {extended.end} (was {ready.end})"
        found = omnibed_provider.find(ready.name)
        check_same(found, ready, "after extend")
        assert found is not None and found.end == extended.end, "find does not see the new end"

    @contract_rule
    def test_undeclared_verbs_raise_not_supported(
        self, omnibed_provider: Provider, reservations: Reservations, omnibed_key: Any,
        tmp_path: Path,
    ) -> None:
        """a verb whose capability is not declared raises NotSupported."""
        verbs = {Capability.SNAPSHOT: "snapshot", Capability.EXTEND: "extend"}
        declared = omnibed_provider.capabilities
        undeclared = [verb for cap, verb in verbs.items() if cap not in declared]
        if not undeclared:
            pytest.skip(reason=f"{omnibed_provider.name} declares every optional verb")
        ready = reservations.ready()
        node = omnibed_provider.list_nodes(ready)[0]
        calls = {
            "snapshot": lambda: omnibed_provider.snapshot(
                ready, node, f"{ready.name}-image", reservation_login(omnibed_key, tmp_path)
            ),
            "extend": lambda: omnibed_provider.extend(ready, ready.end + timedelta(minutes=30)),
        }
        for verb in undeclared:
            error = expect_raises(NotSupported, calls[verb])
            assert error.verb == verb, f"NotSupported names {error.verb!r} for {verb}"

    @contract_rule
    def test_release_is_idempotent_and_leaves_nothing(
        self, omnibed_provider: Provider, reservations: Reservations
    ) -> None:
        """release is idempotent and leaves nothing: find(name) is None afterwards.

        Nor does the testbed hold anything of it, when ``omnibed_live_resources`` can ask
        (and lists the reservation while it is READY).
        """
        ready = reservations.ready()
        if reservations.live is not None:
            assert reservations.live(ready), (
                f"omnibed_live_resources lists nothing for {ready.name!r} while it is READY, "
                "so it cannot show what release leaves"
            )
        omnibed_provider.release(ready)
        omnibed_provider.release(ready)
        check_released(omnibed_provider, ready, reservations.live, "after release")

    @contract_rule
    def test_release_through_omnibed_leaves_nothing_in_ls(
        self, omnibed_provider: Provider, reservations: Reservations, tmp_path: Path
    ) -> None:
        """release through omnibed leaves nothing in `omnibed ls` nor on the testbed.

        Reserve, wait and release (twice) through :class:`omnibed.api.Omnibed` with
        its own ledger; the ledger is what `omnibed ls` lists.
        """
        from omnibed.api import Omnibed
        from omnibed.core.plugins import ProviderRegistry

        home = tmp_path / "omnibed-home"
        home.mkdir(mode=0o700)
        bed = Omnibed(
            home=home,
            registry=ProviderRegistry(),
            providers={omnibed_provider.name: omnibed_provider},
        )
        request = reservations.request()
        bed.reserve(omnibed_provider.name, request)
        ready = bed.wait(request.name, timeout=reservations.timeout)
        listed = [entry.name for entry in bed.ledger.entries()]
        assert listed == [request.name], f"omnibed ls lists {listed} after reserve"
        bed.release(request.name)
        bed.release(request.name)
        listed = [entry.name for entry in bed.ledger.entries()]
        assert listed == [], f"omnibed ls still lists {listed} after release"
        check_released(omnibed_provider, ready, reservations.live, "after omnibed release")

    @contract_rule
    def test_released_reservation_raises_not_found(
        self, omnibed_provider: Provider, reservations: Reservations
    ) -> None:
        """list_nodes on a released reservation raises ReservationNotFound."""
        ready = reservations.ready()
        omnibed_provider.release(ready)
        expect_raises(ReservationNotFound, omnibed_provider.list_nodes, ready)

    @contract_rule
    def test_times_are_utc(self, omnibed_provider: Provider, reservations: Reservations) -> None:
        """times are tz-aware UTC and an immediate reservation spans now.

        A start later than now or an end earlier than now (beyond 5 minutes of clock skew)
        is the mark of a testbed's local time labelled as UTC.
        """
        request = reservations.request()
        made = omnibed_provider.reserve(request)
        ready = omnibed_provider.wait(made, timeout=reservations.timeout)
        found = omnibed_provider.find(request.name)
        now = utcnow()
        for where, reservation in (("reserve", made), ("wait", ready), ("find", found)):
            assert reservation is not None, f"find({request.name!r}) returned None"
            check_utc(reservation, where)
            assert reservation.start <= now + CLOCK_SLACK, (
                f"{where}: start {reservation.start} is after now ({now}): local time as UTC?"
            )
            assert reservation.end >= now - CLOCK_SLACK, (
                f"{where}: end {reservation.end} is before now ({now}): local time as UTC?"
            )

    @contract_rule
    def test_impossible_request_raises_a_typed_error(
        self, omnibed_provider: Provider, reservations: Reservations
    ) -> None:
        """a request the testbed cannot satisfy raises an omnibed error, from reserve or wait."""
        request = reservations.request(nodes=100_000)
        expect_refused(omnibed_provider, request, reservations.timeout, OmnibedError)

    @contract_rule
    def test_unknown_option_is_refused(
        self, omnibed_provider: Provider, reservations: Reservations
    ) -> None:
        """an option missing from capabilities.options is refused with UsageError.

        Nothing is reserved: find(name) is None afterwards.
        """
        extra = {**reservations.template.extra, UNKNOWN_OPTION: "1"}
        request = reservations.request(extra=extra)
        expect_raises(UsageError, omnibed_provider.reserve, request)
        left = omnibed_provider.find(request.name)
        assert left is None, f"the refused request left {left}"
