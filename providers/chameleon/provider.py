"""Chameleon Cloud: Blazar leases of bare-metal hosts (CHI@UC, CHI@TACC) and KVM@TACC servers.

Every object omnibed makes on the cloud (lease, servers, key pair, floating IP) is written,
by id, to a record in the provider's state directory right after the call that made it,
so that `find` returns it again (names are not unique in OpenStack) and `release` frees
exactly it. A `reserve` or `wait` that fails releases what it made before raising.
"""

from __future__ import annotations

import shlex
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from omnibed.core.errors import (
    HostKeyMismatch,
    NotSupported,
    OmnibedError,
    ProviderError,
    ReservationError,
    ReservationNotFound,
    SSHError,
    UsageError,
)
from omnibed.core.kit import RESERVATIONS, Pending, RecordStore, check_options, poll_until
from omnibed.core.login import Login, authorise_root, verify_root
from omnibed.core.provider import Check, Progress, Provider, no_progress
from omnibed.core.timeutil import utcnow
from omnibed.core.types import (
    Capabilities,
    Capability,
    Nic,
    Node,
    Reservation,
    ReservationRequest,
    ReservationState,
    SSHEndpoint,
)
from omnibed.providers.chameleon import _convert, _credentials

if TYPE_CHECKING:
    from omnibed.providers.chameleon._client import ChameleonClient

SITES = ("CHI@UC", "CHI@TACC", "KVM@TACC")
TAG = "omnibed_reservation"  # server metadata key and floating-IP description prefix
DEFAULT_NODE_TYPE = "compute_skylake"
OPTIONS = {
    "cloud": "clouds.yaml entry to use (default: OS_CLOUD or the OS_* variables)",
    "openrc": "OpenRC file to read the credentials from",
    "site": f"{', '.join(SITES)} (default CHI@UC)",
    "node_type": "bare-metal node type, e.g. compute_skylake (the default)",
    "image": "image name or id (default CC-Ubuntu22.04); a snapshot id works",
    "flavor": "Nova flavor (default baremetal, or m1.small on KVM@TACC)",
    "network": "network the nodes join (default sharednet1)",
    "public_network": "network of the floating IP (default public)",
    "api_timeout": "seconds to wait for one OpenStack answer (default 60)",
    "poll": "seconds between status checks while waiting (default 10)",
}


@dataclass
class _Record:
    """What omnibed made for one reservation, by id; saved after every change."""

    name: str
    id: str
    site: str
    options: dict[str, str]
    nodes: int
    start: str
    end: str
    public_key: str | None = None
    lease_id: str | None = None
    host_reservation: str | None = None
    keypair: str | None = None  # set only when omnibed created it
    server_ids: list[str] = field(default_factory=list)
    fip_id: str | None = None
    fip_address: str | None = None
    asked: str = ""  # when omnibed asked Blazar for the lease (UTC ISO); "" in older records

    @property
    def kvm(self) -> bool:
        return self.site.startswith("KVM@")


class ChameleonProvider(Provider):
    """Bare metal through a Blazar `physical:host` lease; KVM through plain Nova servers."""

    name: ClassVar[str] = "chameleon"
    description: ClassVar[str] = "Chameleon Cloud (OpenStack + Blazar): bare metal and KVM"
    capabilities: ClassVar[Capabilities] = Capabilities(
        supported=frozenset({Capability.SNAPSHOT, Capability.EXTEND, Capability.ROOT,
                             Capability.ADVANCE_RESERVATION}),
        max_extra_nics=0,
        options=OPTIONS,
    )

    def __init__(self, state_dir: Path) -> None:
        super().__init__(state_dir)
        self._clients: dict[tuple, ChameleonClient] = {}

    # -- doctor -----------------------------------------------------------------------------
    @classmethod
    def doctor(cls, state_dir: Path) -> list[Check]:
        checks = []
        try:
            import openstack  # noqa: F401

            checks.append(Check("openstacksdk", True))
        except ImportError:
            checks.append(Check("openstacksdk", False, "not installed",
                                "pip install 'omnibed[chameleon]'"))
        try:
            credentials = _credentials.resolve({})
        except OmnibedError as error:
            files = _credentials.clouds_yaml_files()
            detail = f"{error}" + (f" (clouds.yaml found: {', '.join(map(str, files))}; "
                                   "pick an entry with -o cloud=NAME)" if files else "")
            checks.append(Check("credentials", False, detail,
                                "download an application credential's clouds.yaml from the "
                                "Chameleon dashboard to ~/.config/openstack/clouds.yaml"))
            return checks
        checks.append(Check("credentials", True, credentials.source))
        if credentials.application_credential is False:
            checks.append(Check("application credential", False, "password authentication "
                                "in use; federated Chameleon logins need application "
                                "credentials", "create one: Identity > Application "
                                "Credentials, and use its clouds.yaml"))
        return checks

    # -- records ----------------------------------------------------------------------------
    @property
    def records(self) -> RecordStore:
        return RecordStore(self.state_dir / RESERVATIONS)

    def _load(self, name: str) -> _Record | None:
        fields = self.records.load(name)
        return _Record(**fields) if fields is not None else None

    def _save(self, record: _Record) -> None:
        self.records.save(record.name, asdict(record))

    def _client(self, record: _Record) -> ChameleonClient:
        from omnibed.providers.chameleon._client import ChameleonClient

        key = (record.site, tuple(sorted(record.options.items())))
        if key not in self._clients:
            credentials = _credentials.resolve(record.options)
            timeout = float(record.options.get("api_timeout", 60))
            self._clients[key] = ChameleonClient(credentials, record.site, timeout)
        return self._clients[key]

    def _reservation(self, record: _Record, state: ReservationState) -> Reservation:
        return Reservation(
            provider=self.name, id=record.id, name=record.name,
            start=datetime.fromisoformat(record.start), end=datetime.fromisoformat(record.end),
            state=state, site=record.site,
            extra={"lease_id": record.lease_id, "kind": "kvm" if record.kvm else "baremetal"},
        )

    def _record(self, reservation: Reservation) -> _Record:
        record = self._load(reservation.name)
        if record is None or record.id != reservation.id:
            raise ReservationNotFound(f"omnibed holds no record of {reservation.name!r} "
                                      f"({reservation.id}): it was released",
                                      provider=self.name)
        return record

    # -- reserve / find ---------------------------------------------------------------------
    def reserve(self, request: ReservationRequest) -> Reservation:
        options = dict(request.extra)
        check_options(options, OPTIONS, self.name)
        site = request.site or options.get("site") or "CHI@UC"
        if site not in SITES:
            raise UsageError(f"unknown Chameleon site {site!r}: use -o site= one of "
                             f"{', '.join(SITES)}")
        kvm = site.startswith("KVM@")
        if request.extra_nics:
            raise UsageError(
                "Chameleon cannot add NICs: on KVM@TACC no extra port can be attached and "
                "Neutron port security drops foreign MACs (the emulator uses VXLAN there); "
                "bare-metal extra links need a Blazar network reservation omnibed does not "
                "make yet; drop --extra-nics")
        if kvm and request.start is not None:
            raise UsageError("KVM@TACC servers start at once: drop --start")
        existing = self.find(request.name)
        if existing is not None:
            return existing
        options["site"] = site
        if request.image:
            options["image"] = request.image
        asked = utcnow()
        start = request.start or asked
        record = _Record(name=request.name, id=str(uuid.uuid4()), site=site, options=options,
                         nodes=request.nodes, start=start.isoformat(),
                         end=(start + request.duration).isoformat(),
                         public_key=request.public_key, asked=asked.isoformat())
        client = self._client(record)
        self._save(record)  # before the testbed call: a lost answer still gets released
        try:
            if not kvm:
                body = _convert.lease_body(request.name, request.nodes,
                                           options.get("node_type", DEFAULT_NODE_TYPE),
                                           request.start, start + request.duration)
                lease = client.create_lease(body)
                record.lease_id = lease["id"]
                record.host_reservation = _convert.host_reservation_id(lease)
                record.start = _convert.parse_blazar_date(lease["start_date"]).isoformat()
                record.end = _convert.parse_blazar_date(lease["end_date"]).isoformat()
                self._save(record)
        except UsageError:  # refused before anything was made (the lease name is taken)
            self.records.delete(record.name)
            raise
        except BaseException as error:
            self._rollback(record, error)
            raise
        return self._reservation(record, ReservationState.WAITING)

    def find(self, name: str) -> Reservation | None:
        record = self._load(name)
        if record is None:
            return None
        if record.kvm:
            return self._reservation(record, ReservationState.WAITING)
        client = self._client(record)
        if record.lease_id is None:  # the create call's answer was lost: look by name
            leases = _leases_made_for(client, record)
            if leases:
                record.lease_id = leases[0]["id"]
                record.host_reservation = _convert.host_reservation_id(leases[0])
                self._save(record)
        lease = client.get_lease(record.lease_id) if record.lease_id else None
        if lease is None and not (record.server_ids or record.fip_id or record.keypair):
            self.records.delete(name)
            return None
        status = lease["status"] if lease else "ERROR"
        return self._reservation(record, _convert.LEASE_STATES.get(
            status, ReservationState.UNKNOWN))

    # -- wait -------------------------------------------------------------------------------
    def wait(self, reservation: Reservation, *, timeout: float = 3600,
             progress: Progress = no_progress) -> Reservation:
        record = self._record(reservation)
        deadline = time.monotonic() + timeout
        try:
            client = self._client(record)
            if not record.kvm:
                self._wait_lease(record, client, deadline, progress)
            self._launch(record, client)
            self._wait_servers(record, client, deadline, progress)
            self._attach_gateway(record, client)
        except BaseException as error:
            self._rollback(record, error)
            raise
        progress(f"{record.name}: {record.nodes} node(s) ACTIVE, gateway {record.fip_address}")
        return self._reservation(record, ReservationState.READY)

    def _poll(self, record: _Record, deadline: float, what: str,
              check: Callable[[], bool | Pending]) -> None:
        """Poll `check` until it is done or `deadline` (a time.monotonic() value) passes."""
        poll_until(check, timeout=max(0.0, deadline - time.monotonic()),
                   interval=float(record.options.get("poll", 10)),
                   what=f"{what} on {record.site}",
                   fix="wait longer (bare metal takes 10 to 20 minutes)", provider=self.name)

    def _wait_lease(self, record: _Record, client: ChameleonClient, deadline: float,
                    progress: Progress) -> None:
        def lease_active() -> bool | Pending:
            lease = client.get_lease(record.lease_id) if record.lease_id else None
            if lease is None:
                raise ReservationError(f"the lease {record.lease_id} of {record.name!r} is "
                                       "gone from Blazar", provider=self.name)
            progress(f"lease {record.name}: {lease['status']}")
            if lease["status"] == "ACTIVE":
                return True
            if lease["status"] in ("ERROR", "TERMINATED", "TERMINATING", "DELETING"):
                words = lease.get("status_reason") or f"lease status {lease['status']}"
                raise ReservationError(f"Blazar could not start the lease {record.name!r}: "
                                       f"{words}", provider=self.name, testbed_message=words)
            return Pending(lease["status"])

        self._poll(record, deadline, f"the lease {record.name!r}", lease_active)

    def _launch(self, record: _Record, client: ChameleonClient) -> None:
        if len(record.server_ids) >= record.nodes:
            return
        options = record.options
        image = client.image_id(options.get("image", "CC-Ubuntu22.04"))
        flavor = client.flavor_id(_flavor(record))
        network = client.network_id(options.get("network", "sharednet1"))
        if record.keypair is None:
            if not record.public_key:
                raise UsageError("the reservation has no public key to install on the nodes")
            keypair = f"omnibed-{record.name}-{record.id[:8]}"
            client.create_keypair(keypair, record.public_key)
            record.keypair = keypair
            self._save(record)
        for index in range(len(record.server_ids), record.nodes):
            server_id = client.create_server(
                f"{record.name}-{index}", image, flavor, network, record.keypair,
                record.host_reservation, {TAG: record.id})
            record.server_ids.append(server_id)
            self._save(record)

    def _wait_servers(self, record: _Record, client: ChameleonClient, deadline: float,
                      progress: Progress) -> None:
        def servers_active() -> bool | Pending:
            states = []
            for server_id in record.server_ids:
                server = client.server(server_id)
                if server is None:
                    raise ProviderError(f"the server {server_id} of {record.name!r} vanished",
                                        provider=self.name)
                if server["status"] == "ERROR":
                    words = server["fault"].get("message") or "no fault message"
                    raise ProviderError(
                        f"Nova could not start {server['name']} ({server_id}): {words}",
                        provider=self.name, testbed_message=words)
                states.append(f"{server['name']} {server['status']} {server['progress'] or 0}%")
            progress("servers: " + ", ".join(states))
            if all(" ACTIVE " in state for state in states):
                return True
            return Pending(", ".join(states))

        self._poll(record, deadline, f"the servers of {record.name!r}", servers_active)

    def _attach_gateway(self, record: _Record, client: ChameleonClient) -> None:
        if record.fip_id is None:
            network = client.network_id(record.options.get("public_network", "public"))
            fip = client.create_floating_ip(network, f"{TAG}={record.id}")
            record.fip_id, record.fip_address = fip["id"], fip["address"]
            self._save(record)
        ports = client.ports(record.server_ids[0])
        if not ports:
            raise ProviderError(f"the gateway server {record.server_ids[0]} has no port",
                                provider=self.name)
        record.fip_address = client.bind_floating_ip(record.fip_id, ports[0]["id"])
        self._save(record)

    # -- nodes and access -------------------------------------------------------------------
    def list_nodes(self, reservation: Reservation) -> list[Node]:
        record = self._record(reservation)
        client = self._client(record)
        gateway = record.fip_address
        if gateway is None:
            raise ProviderError(f"{record.name!r} has no floating IP yet, so its nodes cannot"
                                " be reached: release it and reserve again", provider=self.name)
        servers = [s for s in map(client.server, record.server_ids) if s is not None]
        archs = _archs(record, client, servers)
        nodes = []
        for server in servers:
            server_id = server["id"]
            index = record.server_ids.index(server_id)
            address, mac = _convert.fixed_address(server["addresses"])
            host = gateway if index == 0 else address
            nodes.append(Node(
                id=server_id, hostname=server["name"],
                ssh=_convert.login(host, gateway, None),
                addresses=(address, *((gateway,) if index == 0 else ())),
                extra={"fixed_ip": address, "mac": mac, "gateway": index == 0,
                       "site": record.site},
                hardware=_hardware(record),
                site=record.site,
                arch=archs.get(server_id, ""),
            ))
        return nodes

    def _endpoint(self, record: _Record, node: Node, login: Login, user: str
                  ) -> SSHEndpoint:
        return _convert.login(node.ssh.host, record.fip_address, str(login.key_file), user)

    def root_access(self, reservation: Reservation, node: Node, login: Login) -> SSHEndpoint:
        """Log in as `cc` and, with sudo, let the reservation's key log in as root (CC
        images answer root with "Please login as cc")."""
        record = self._record(reservation)
        root = self._endpoint(record, node, login, "root")
        if _is_root(root, login.known_hosts):
            return root
        authorise_root(self._endpoint(record, node, login, _convert.CC_USER), login.public_key,
                       login.known_hosts, node=node.hostname,
                       fix="the cc user needs passwordless sudo, as CC images give it")
        verify_root(root, login.known_hosts, node=node.hostname,
                    fix="check PermitRootLogin in its sshd_config")
        return root

    def nic_capabilities(self, reservation: Reservation, node: Node, login: Login) -> list[Nic]:
        """The server's Neutron ports, named from `ip -o link` on the node (logged in as cc
        with the reservation's key): Neutron does not know interface names."""
        record = self._record(reservation)
        ports = self._client(record).ports(node.id)
        from omnibed.core import ssh  # paramiko only when a node is reached

        listing = ssh.run(self._endpoint(record, node, login, _convert.CC_USER),
                          "ip -o link", login.known_hosts, node=node.id, timeout=60)
        if listing.exit_status != 0:
            raise SSHError(f"`ip -o link` failed on {node.hostname} (exit "
                           f"{listing.exit_status}): {listing.stderr.strip()}; the interface "
                           "names are read there: check that iproute2 is installed",
                           host=node.ssh.host)
        names = _convert.interface_names(listing.stdout)
        return [_convert.nic_from_port(port, names.get(port["mac_address"].lower(), ""),
                                       record.kvm, control=index == 0)
                for index, port in enumerate(ports)]

    # -- snapshot / extend ------------------------------------------------------------------
    def snapshot(self, reservation: Reservation, node: Node, image: str, login: Login) -> str:
        """KVM: Nova createImage. Bare metal: `cc-snapshot` on the node (logged in as cc with
        the reservation's key), then found in Glance."""
        record = self._record(reservation)
        client = self._client(record)
        if record.kvm:
            image_id = client.snapshot_server(node.id, image)
        else:
            self._cc_snapshot(record, client, node, image, login)
            found = client.image(image)
            if found is None:
                raise ProviderError(f"cc-snapshot ended but Glance has no image {image!r}",
                                    provider=self.name)
            image_id = found["id"]
        return image_id

    def _cc_snapshot(self, record: _Record, client: ChameleonClient, node: Node,
                     image: str, login: Login) -> None:
        endpoint = self._endpoint(record, node, login, _convert.CC_USER)
        command = ("IFS= read -r OS_TOKEN && export OS_TOKEN && exec sudo -E cc-snapshot "
                   f"-f -y {shlex.quote(image)}")
        from omnibed.core import ssh  # paramiko only when a node is reached

        connection = ssh.connect(endpoint, login.known_hosts)
        try:
            stdin, stdout, stderr = connection.exec_command(command, timeout=3 * 3600)
            stdin.write(client.token() + "\n")  # on stdin: never in a command line
            stdin.channel.shutdown_write()
            output = stdout.read().decode(errors="replace")
            errors = stderr.read().decode(errors="replace")
            status = stdout.channel.recv_exit_status()
        finally:
            connection.close()
        if status != 0:
            raise ProviderError(f"cc-snapshot failed on {node.hostname} (exit {status})",
                                provider=self.name, testbed_message=(errors or output)[-2000:])

    def extend(self, reservation: Reservation, end: datetime) -> Reservation:
        record = self._record(reservation)
        if record.kvm:
            raise NotSupported(self.name, "extend", "KVM@TACC servers have no lease to extend")
        if record.lease_id is None:
            raise ProviderError(f"{record.name!r} has no lease recorded to extend",
                                provider=self.name)
        if end <= utcnow():
            raise UsageError(f"the new end {end:%Y-%m-%d %H:%M} UTC must be after now")
        client = self._client(record)
        current = client.get_lease(record.lease_id)
        if current is None or current["status"] in ("TERMINATING", "TERMINATED", "DELETING"):
            raise ProviderError(
                f"the lease of {record.name!r} has ended"
                f" ({current['status'] if current else 'gone'}): `omnibed release"
                f" {record.name}`, then reserve again", provider=self.name)
        lease = client.update_lease(record.lease_id, {"end_date": _convert.blazar_date(end)})
        record.end = _convert.parse_blazar_date(lease["end_date"]).isoformat()
        self._save(record)
        return self._reservation(record, _convert.LEASE_STATES.get(
            lease["status"], ReservationState.UNKNOWN))

    # -- release ----------------------------------------------------------------------------
    def release(self, reservation: Reservation) -> None:
        record = self._load(reservation.name)
        if record is None or record.id != reservation.id:
            return
        client = self._client(record)
        failures: list[str] = []

        def attempt(what: str, action: Callable[[], Any]) -> None:
            try:
                action()
            except OmnibedError as error:
                failures.append(f"{what}: {error}")

        fips = {*([record.fip_id] if record.fip_id else []),
                *client.floating_ips_described(f"{TAG}={record.id}")}
        for fip_id in fips:
            attempt(f"floating IP {fip_id}", partial(client.delete_floating_ip, fip_id))
        servers = {*record.server_ids, *client.servers_tagged(TAG, record.id)}
        for server_id in servers:
            attempt(f"server {server_id}", partial(client.delete_server, server_id))
        if record.keypair:
            attempt(f"key pair {record.keypair}", partial(client.delete_keypair, record.keypair))
        leases = {record.lease_id} if record.lease_id else set()
        if not record.kvm and not leases:  # the create answer was lost: made since the record
            leases = {x["id"] for x in _leases_made_for(client, record)}
        for lease_id in leases:
            attempt(f"lease {lease_id}", partial(client.delete_lease, lease_id))
        if failures:
            raise ProviderError(f"could not release all of {record.name!r}; run "
                                "`omnibed release` again: " + "; ".join(failures),
                                provider=self.name)
        self.records.delete(record.name)

    def _rollback(self, record: _Record, cause: BaseException) -> None:
        """Release what a failed reserve/wait made; a failure to do so is noted on `cause`."""
        try:
            self.release(self._reservation(record, ReservationState.ERROR))
        except OmnibedError as error:  # the record stays: `omnibed release` retries
            cause.add_note(f"and releasing what was made failed too: {error}")


def _leases_made_for(client: ChameleonClient, record: _Record) -> list[dict]:
    """The live leases named like `record` that Blazar made since omnibed asked for one (its
    answer was lost). A lease of that name made before (a teammate's, in the same project)
    is not ours: Blazar refused our create with a 409 for it."""
    made = datetime.fromisoformat(record.asked or record.start) - timedelta(minutes=5)
    return [x for x in client.leases_named(record.name)
            if x.get("status") not in ("TERMINATED", "DELETING")
            and _convert.parse_blazar_date(x["created_at"]) >= made]


def _archs(record: _Record, client: ChameleonClient, servers: list[dict]) -> dict[str, str]:
    """Server id -> CPU architecture, from the Blazar host each bare-metal server runs on:
    the host whose `hypervisor_hostname` (the Ironic node) is the server's, else, when Nova
    hides that from projects, the hosts of the lease if they all say the same. KVM servers
    and sites that keep Blazar's hosts from projects give none."""
    if record.kvm or record.host_reservation is None:
        return {}
    hosts = client.hosts()
    if hosts is None:
        return {}
    by_hypervisor = {h["hypervisor_hostname"]: _convert.host_arch(h) for h in hosts
                     if h.get("hypervisor_hostname")}
    shared = ""
    if not all(s["hypervisor"] in by_hypervisor for s in servers):
        allocated = client.allocated_hosts(record.host_reservation) or []
        found = {_convert.host_arch(h) for h in hosts if str(h.get("id")) in allocated}
        shared = found.pop() if len(found) == 1 else ""
    return {s["id"]: by_hypervisor.get(s["hypervisor"]) or shared for s in servers}


def _hardware(record: _Record) -> str:
    """The node type of a bare-metal lease, or the flavor of KVM servers."""
    if record.kvm:
        return _flavor(record)
    return str(record.options.get("node_type", DEFAULT_NODE_TYPE))


def _flavor(record: _Record) -> str:
    """The Nova flavor: `-o flavor=`, else m1.small on KVM@TACC and baremetal elsewhere."""
    return str(record.options.get("flavor", "m1.small" if record.kvm else "baremetal"))


def _is_root(endpoint: SSHEndpoint, known_hosts: Path) -> bool:
    """Whether `endpoint` logs in and runs commands as uid 0 (CC images answer root logins
    with a "Please login as cc" message); a changed host key is raised, never taken for a
    refusal."""
    try:
        verify_root(endpoint, known_hosts)
    except HostKeyMismatch:
        raise
    except SSHError:
        return False
    return True
