"""A testbed made of hosts you can already SSH into as root (see :mod:`.inventory`).

reserve claims free hosts in a local claim book; wait installs the reservation's public key
for root on each of them once they accept SSH; release removes that key and frees the hosts.
There is no scheduler (reservations start at once), no disk image and so no snapshot.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import uuid
from datetime import datetime
from pathlib import Path

from omnibed.core.errors import (
    NotSupported,
    ProviderError,
    ReservationError,
    ReservationNotFound,
    SSHError,
    UsageError,
)
from omnibed.core.kit import Pending, check_options, poll_until
from omnibed.core.login import Login, authorise_root, verify_root
from omnibed.core.provider import Check, Progress, Provider, no_progress
from omnibed.core.timeutil import require_utc, utcnow
from omnibed.core.types import (
    Capabilities,
    Capability,
    Nic,
    NicRole,
    Node,
    Reservation,
    ReservationRequest,
    ReservationState,
    Source,
    SSHEndpoint,
    Tri,
)
from omnibed_statichosts.claims import Claim, ClaimBook
from omnibed_statichosts.inventory import Host, load_inventory

INVENTORY_ENV = "OMNIBED_STATICHOSTS_INVENTORY"
MARK = "omnibed-statichosts"
POLL = 1.0
PROBED = {"mac": Source.PROBE, "mtu": Source.PROBE, "addresses": Source.PROBE}


class StaticHostsProvider(Provider):
    """Claims hosts of an inventory; the inventory is `$OMNIBED_STATICHOSTS_INVENTORY`,
    else `<state_dir>/inventory.yaml`."""

    name = "statichosts"
    description = "a fixed inventory of hosts already reachable as root over SSH"
    capabilities = Capabilities(
        supported=frozenset({Capability.EXTEND, Capability.ROOT}),
        options={"hosts": "comma-separated inventory names to choose from (default: all)"},
    )

    def __init__(self, state_dir: Path, inventory: Path | None = None) -> None:
        super().__init__(state_dir)
        self.inventory = inventory or Path(
            os.environ.get(INVENTORY_ENV) or state_dir / "inventory.yaml"
        )
        self.claims = ClaimBook(state_dir)
        self.known_hosts = state_dir / "known_hosts"

    @classmethod
    def doctor(cls, state_dir: Path) -> list[Check]:
        provider = cls(state_dir)
        try:
            hosts = load_inventory(provider.inventory)
        except UsageError as error:
            return [Check(f"inventory {provider.inventory}", False, str(error),
                          fix=f"write it or set {INVENTORY_ENV}")]
        return [Check(f"inventory {provider.inventory}", True, f"{len(hosts)} host(s)")]

    # reserve ---------------------------------------------------------------------------

    def reserve(self, request: ReservationRequest) -> Reservation:
        check_options(request.extra, self.capabilities.options, self.name)
        if request.start is not None:
            raise NotSupported(self.name, "advance reservation", "claims start at once")
        if request.image is not None:
            raise NotSupported(self.name, "images", "the hosts keep the system they have")
        inventory = load_inventory(self.inventory)
        candidates = self._candidates(inventory, request.extra.get("hosts"))
        with self.claims.locked() as claims:
            existing = self._existing(claims, request.name)
            if existing is not None:
                return self._reservation(existing)
            taken = {host for claim in claims.values() for host in claim.hosts}
            free = [name for name in candidates if name not in taken]
            if len(free) < request.nodes:
                raise ReservationError(
                    f"{len(free)} of the {len(candidates)} statichosts are free and "
                    f"{request.nodes} were asked: ask for fewer or release a reservation "
                    "(omnibed ls)",
                    provider=self.name,
                )
            start = utcnow()
            claim = Claim(
                id=uuid.uuid4().hex[:12],
                name=request.name,
                hosts=free[: request.nodes],
                start=start.isoformat(),
                end=(start + request.duration).isoformat(),
                public_key=request.public_key,
            )
            claims[claim.name] = claim
        return self._reservation(claim)

    @staticmethod
    def _candidates(inventory: dict[str, Host], option: str | None) -> list[str]:
        if option is None:
            return list(inventory)
        names = [name.strip() for name in option.split(",") if name.strip()]
        missing = [name for name in names if name not in inventory]
        if missing or not names:
            raise UsageError(
                f"-o hosts={option}: not in the inventory: {', '.join(missing) or 'no name'}; "
                f"known: {', '.join(inventory)}"
            )
        return names

    @staticmethod
    def _existing(claims: dict[str, Claim], name: str) -> Claim | None:
        return claims.get(name)

    # wait ------------------------------------------------------------------------------

    def wait(
        self, reservation: Reservation, *, timeout: float = 3600, progress: Progress = no_progress
    ) -> Reservation:
        """READY once every host accepts SSH and holds the key; a refused login is an error."""

        def hosts_ready() -> Reservation | Pending:
            claim = self._claim(reservation)
            if claim.ready:
                return self._reservation(claim)
            hosts = self._hosts(claim)
            down = [host.name for host in hosts if not _listening(host)]
            if not down:
                for host in hosts:
                    self._install_key(host, claim)
                    with self.claims.locked() as claims:
                        claims[claim.name].keyed.append(host.name)
                with self.claims.locked() as claims:
                    claims[claim.name].ready = True
                    claim = claims[claim.name]
                progress(f"{reservation.name}: {len(hosts)} host(s) ready")
                return self._reservation(claim)
            progress(f"{reservation.name}: waiting for {', '.join(down)} to accept SSH")
            return Pending(f"waiting for {', '.join(down)} to accept SSH")

        return poll_until(
            hosts_ready, timeout=timeout, interval=POLL, what=reservation.name,
            fix=f"start the hosts, or release {reservation.name} and reserve other hosts",
            provider=self.name,
        )

    def _install_key(self, host: Host, claim: Claim) -> None:
        """Make the inventory login (which must be root) accept the reservation's key too,
        marked with the claim so that release removes it."""
        try:
            verify_root(host.admin(), self.known_hosts, node=host.name,
                        fix=f"put a root login in the inventory {self.inventory}")
            if claim.public_key:
                kind, blob = claim.public_key.split()[:2]
                authorise_root(host.admin(), f"{kind} {blob} {MARK}:{claim.id}",
                               self.known_hosts, become="", node=host.name,
                               authorized_keys=host.authorized_keys or "")
        except SSHError as error:
            raise ProviderError(f"cannot install the reservation's key on {host.name}: "
                                f"{error}", provider=self.name,
                                testbed_message=str(error)) from error

    # queries ---------------------------------------------------------------------------

    def find(self, name: str) -> Reservation | None:
        claim = self.claims.get(name)
        return self._reservation(claim) if claim else None

    def list_nodes(self, reservation: Reservation) -> list[Node]:
        return [
            Node(
                id=f"{self.name}:{host.name}",
                hostname=host.host,
                ssh=SSHEndpoint(host=host.host, port=host.port, user=host.user),
                addresses=(host.host,),
                extra={"inventory_name": host.name},
            )
            for host in self._hosts(self._claim(reservation))
        ]

    def root_access(self, reservation: Reservation, node: Node, login: Login) -> SSHEndpoint:
        """The node's endpoint with the reservation's key, once `id -u` there says 0 (`wait`
        installed the key)."""
        host = self._host(reservation, node)
        endpoint = login.endpoint(node.ssh)
        verify_root(endpoint, login.known_hosts, node=host.name,
                    fix="reserve with that key's public half (omnibed does by default)")
        return endpoint

    def nic_capabilities(self, reservation: Reservation, node: Node, login: Login) -> list[Nic]:
        """Probed with `ip -j addr`; the NIC holding the address SSH came in on is CONTROL.

        The inventory key always logs in, so `login` is unused."""
        host = self._host(reservation, node)
        output = self._admin(host, 'echo "$SSH_CONNECTION"; ip -j addr show', "list its NICs")
        connection, _, links = output.partition("\n")
        server_address = connection.split()[2]
        nics = []
        for link in json.loads(links):
            addresses = link.get("addr_info", [])
            control = any(info.get("local") == server_address for info in addresses)
            if link.get("link_type") == "loopback" and not control:
                continue
            nics.append(Nic(
                name=link["ifname"],
                mac=link.get("address", ""),
                role=NicRole.CONTROL if control else NicRole.EXPERIMENT,
                mtu=int(link.get("mtu", 1500)),
                addresses=tuple(f"{info['local']}/{info['prefixlen']}" for info in addresses),
                foreign_mac=Tri.UNKNOWN,
                multicast=Tri.UNKNOWN,
                sources=PROBED,
            ))
        if not any(nic.role is NicRole.CONTROL for nic in nics):
            raise ProviderError(
                f"no NIC of {host.name} holds {server_address}, the address SSH reached",
                provider=self.name,
            )
        return nics

    # changes ---------------------------------------------------------------------------

    def extend(self, reservation: Reservation, end: datetime) -> Reservation:
        require_utc(end)
        if end <= reservation.start:
            raise UsageError(f"the new end {end} is before the start {reservation.start}")
        self._claim(reservation)
        with self.claims.locked() as claims:
            claims[reservation.name].end = end.isoformat()
            claim = claims[reservation.name]
        return self._reservation(claim)

    def release(self, reservation: Reservation) -> None:
        """Remove the reservation's key where it was installed and free the hosts; idempotent."""
        claim = self.claims.get(reservation.name)
        if claim is None or claim.id != reservation.id:
            return
        for host in self._hosts(claim):
            if host.name in claim.keyed:
                path = _authorized_keys(host)
                marker = shlex.quote(f" {MARK}:{claim.id}$")
                self._admin(host, f"if [ -f {path} ]; then sed -i '/'{marker}'/d' {path}; fi",
                            "remove the reservation's key")
        with self.claims.locked() as claims:
            if claims.get(claim.name, claim).id == claim.id:
                claims.pop(claim.name, None)

    # helpers ---------------------------------------------------------------------------

    def _reservation(self, claim: Claim) -> Reservation:
        return Reservation(
            provider=self.name,
            id=claim.id,
            name=claim.name,
            start=datetime.fromisoformat(claim.start),
            end=datetime.fromisoformat(claim.end),
            state=ReservationState.READY if claim.ready else ReservationState.WAITING,
            extra={"hosts": list(claim.hosts)},
        )

    def _claim(self, reservation: Reservation) -> Claim:
        claim = self.claims.get(reservation.name)
        if claim is None or claim.id != reservation.id:
            raise ReservationNotFound(
                f"the statichosts reservation {reservation.name!r} ({reservation.id}) was "
                "released; reserve again",
                provider=self.name,
            )
        return claim

    def _hosts(self, claim: Claim) -> list[Host]:
        inventory = load_inventory(self.inventory)
        gone = [name for name in claim.hosts if name not in inventory]
        if gone:
            raise ProviderError(
                f"{', '.join(gone)} left the inventory {self.inventory} while claimed by "
                f"{claim.name}: put them back or release {claim.name}",
                provider=self.name,
            )
        return [inventory[name] for name in claim.hosts]

    def _host(self, reservation: Reservation, node: Node) -> Host:
        for host in self._hosts(self._claim(reservation)):
            if node.id == f"{self.name}:{host.name}":
                return host
        raise UsageError(f"{reservation.name} has no node {node.id!r}")

    def _admin(self, host: Host, command: str, purpose: str) -> str:
        """Run `command` with the inventory key; its stdout, or ProviderError saying why."""
        from omnibed.core.ssh import run  # paramiko loads when a host is reached, not before

        try:
            result = run(host.admin(), command, self.known_hosts, timeout=60)
        except SSHError as error:
            raise ProviderError(
                f"cannot {purpose} on {host.name}: {error}", provider=self.name,
                testbed_message=str(error),
            ) from error
        if result.exit_status != 0:
            raise ProviderError(
                f"cannot {purpose} on {host.name} (exit {result.exit_status}): "
                f"{result.stderr.strip()}",
                provider=self.name,
                testbed_message=result.stderr,
            )
        return result.stdout.strip()


def _listening(host: Host) -> bool:
    try:
        socket.create_connection((host.host, host.port), timeout=5).close()
    except OSError:
        return False
    return True


def _authorized_keys(host: Host) -> str:
    """The shell word naming root's authorized_keys on `host`."""
    if host.authorized_keys:
        return shlex.quote(host.authorized_keys)
    return '"$HOME/.ssh/authorized_keys"'
