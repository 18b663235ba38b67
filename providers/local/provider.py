"""The `local` testbed: pnodes are network namespaces of this machine, each with a real sshd."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
from datetime import datetime
from pathlib import Path

from omnibed.core.errors import (
    OmnibedError,
    ReservationError,
    ReservationNotFound,
    UsageError,
)
from omnibed.core.kit import Pending, check_options, poll_until
from omnibed.core.ledger import process_owner
from omnibed.core.login import Login
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
from omnibed.providers.local import cgroups, images, neighbours, rootfs, sshd, underlay
from omnibed.providers.local.profiles import (
    DEFAULT_PROFILE,
    PROFILES,
    Profile,
    check_extra_nics,
    get_profile,
)
from omnibed.providers.local.shell import run
from omnibed.providers.local.state import (
    LOCK_TIMEOUT,
    NodeRecord,
    Record,
    command_of,
    load_record,
    load_records,
    machine_lock,
)

OPTIONS = {
    "profile": "underlay behaviour: " + ", ".join(PROFILES) + f" (default {DEFAULT_PROFILE})",
    "image": "start every pnode's directory from an image made by `omnibed snapshot`",
}
NOT_ROOT = "the local testbed needs root: run omnibed with sudo"
# where the emulator's agent keeps each container runtime's state on a pnode
# (omnibed.emulator.agent.containers)
EMULATOR_RUNTIME_ROOTS = {"crun": "/run/omnibed/crun", "runc": "/run/omnibed/runc"}
_FACTS = {"mac": Source.API, "mtu": Source.API, "addresses": Source.API,
          "foreign_mac": Source.TABLE, "multicast": Source.TABLE}


def _tri(value: bool) -> Tri:
    return Tri.YES if value else Tri.NO


class LocalProvider(Provider):
    """Pnodes are namespaces on one underlay switch; see :mod:`.underlay` for the layout."""

    name = "local"
    description = "network namespaces with a real sshd on this machine (needs root)"
    capabilities = Capabilities(
        supported=frozenset(
            {Capability.SNAPSHOT, Capability.EXTEND, Capability.EXTRA_NICS, Capability.ROOT}
        ),
        max_extra_nics=1,
        options=OPTIONS,
    )
    lock_timeout = LOCK_TIMEOUT  # s a reserve waits for another one before giving up

    @classmethod
    def doctor(cls, state_dir: Path) -> list[Check]:
        release = platform.release()
        version = re.match(r"(\d+)\.(\d+)", release)
        major, minor = (int(part) for part in version.groups()) if version else (0, 0)
        tools = [
            ("ip", "iproute2"), ("bridge", "iproute2"), ("ssh-keygen", "openssh-client"),
            ("unshare", "util-linux"), ("pivot_root", "util-linux"),
        ]
        return [
            Check("running as root", os.geteuid() == 0, fix="run omnibed with sudo"),
            Check(f"{sshd.SSHD}", sshd.SSHD.is_file(), fix="apt-get install openssh-server"),
            *(
                Check(f"`{tool}` command", shutil.which(tool) is not None,
                      fix=f"apt-get install {package}")
                for tool, package in tools
            ),
            Check("network namespaces", Path("/proc/self/ns/net").exists(),
                  fix="use a kernel built with CONFIG_NET_NS"),
            Check("overlayfs (each pnode's own root filesystem)", rootfs.overlay_available(),
                  fix="modprobe overlay, or use a kernel built with CONFIG_OVERLAY_FS"),
            Check(f"kernel {release} can lock bridge ports (5.18+, for xen/kvm/nomcast)",
                  (major, minor) >= (5, 18), fix="use a Linux kernel 5.18 or newer"),
            Check("writable cgroup2 hierarchy (release also kills processes that left a pnode)",
                  cgroups.hierarchy() is not None,
                  fix="mount cgroup2; without it release kills the pnodes' processes only"),
        ]

    # reserve -----------------------------------------------------------------------------

    def reserve(self, request: ReservationRequest) -> Reservation:
        profile, image = self._check_request(request)
        if os.geteuid() != 0:
            raise UsageError(NOT_ROOT)
        with machine_lock(self.lock_timeout):
            existing = self._record_named(request.name)
            if existing is not None and existing.state == ReservationState.READY.value:
                return existing.to_reservation()
            if existing is not None:  # left half-made by a process that died or failed
                self._refuse_if_being_made(existing)
                self._undo(existing)
            record = self._new_record(request, profile, image)
            record.save(self.state_dir)
            try:
                self._build(record, profile, request.public_key, image)
            except BaseException as error:
                self._undo(record)
                if isinstance(error, OmnibedError) or not isinstance(error, Exception):
                    raise
                raise ReservationError(
                    f"the local reservation {request.name!r} ({record.id}) failed and was "
                    f"undone: {error}",
                    provider=self.name,
                ) from error
            record.state = ReservationState.READY.value
            record.save(self.state_dir)
        return record.to_reservation()

    def _check_request(self, request: ReservationRequest) -> tuple[Profile, Path | None]:
        check_options(request.extra, OPTIONS, self.name)
        if request.nodes > underlay.MAX_NODES:
            raise UsageError(
                f"the local testbed makes at most {underlay.MAX_NODES} pnodes per reservation, "
                f"not {request.nodes}"
            )
        if request.start is not None:
            raise UsageError("the local testbed starts reservations at once; drop the start time")
        profile = get_profile(request.extra.get("profile", DEFAULT_PROFILE))
        check_extra_nics(profile, request.extra_nics)
        image_name = request.extra.get("image") or request.image
        image = images.require(self.state_dir, image_name) if image_name else None
        return profile, image

    def _new_record(
        self, request: ReservationRequest, profile: Profile, image: Path | None
    ) -> Record:
        reservation_id = underlay.new_reservation_id()
        subnet = underlay.free_subnet({record.subnet for record in load_records(self.state_dir)})
        switch, nodes = underlay.plan(
            reservation_id, subnet, request.nodes, request.extra_nics,
            self.state_dir / reservation_id,
        )
        start = utcnow()
        return Record(
            id=reservation_id,
            name=request.name,
            profile=profile.name,
            subnet=str(subnet),
            start=start.isoformat(),
            end=(start + request.duration).isoformat(),
            state=ReservationState.PENDING.value,
            extra_nics=request.extra_nics,
            image=image.name if image else None,
            nodes=nodes,
            owner=process_owner(),
            **switch,
        )

    def _build(
        self, record: Record, profile: Profile, public_key: str | None, image: Path | None
    ) -> None:
        underlay.build_switch(record, profile)
        prefix = cgroups.launcher(cgroups.create(record.id))
        for node in record.nodes:
            underlay.build_pnode(record, node, profile)
            node_dir = Path(node.dir)
            sshd.prepare(node_dir, node.address, public_key)
            upper = rootfs.prepare(node_dir)
            if image is not None:
                images.unpack(image, upper)
            sshd.start(node.netns, node_dir, prefix)
        neighbours.make_room()
        for node in record.nodes:
            sshd.wait_accepting(node.address, Path(node.dir))

    # queries -----------------------------------------------------------------------------

    def wait(
        self, reservation: Reservation, *, timeout: float = 3600, progress: Progress = no_progress
    ) -> Reservation:

        def built() -> Reservation | Pending:
            record = self._record(reservation)
            if record.state == ReservationState.READY.value:
                progress(f"{len(record.nodes)} pnode(s) ready on {record.subnet}")
                return record.to_reservation()
            progress(f"{reservation.name}: being built by another process")
            return Pending("being built by another process")

        return poll_until(
            built, timeout=timeout, interval=0.2,
            what=f"the local reservation {reservation.name!r}",
            fix=f"release it with omnibed release {reservation.name}", provider=self.name,
        )

    def find(self, name: str) -> Reservation | None:
        record = self._record_named(name)
        return record.to_reservation() if record else None

    def list_nodes(self, reservation: Reservation) -> list[Node]:
        record = self._record(reservation)
        return [
            Node(
                id=node.id,
                hostname=node.netns,
                ssh=SSHEndpoint(host=node.address, port=sshd.PORT, user="root"),
                addresses=(node.address,),
                extra={"netns": node.netns, "node_dir": str(rootfs.upper(Path(node.dir)))},
                host_keys=(sshd.host_public_key(Path(node.dir)),),
                arch=platform.machine(),
                hardware=record.profile,
                site="local",
            )
            for node in record.nodes
        ]

    def root_access(self, reservation: Reservation, node: Node, login: Login) -> SSHEndpoint:
        """Authorize the reservation's key in the pnode's sshd (its host key is on the
        node: `list_nodes` announces it)."""
        pnode = self._pnode(reservation, node)
        sshd.authorize(Path(pnode.dir), login.public_key)
        return SSHEndpoint(host=pnode.address, port=sshd.PORT, user="root",
                           key_file=str(login.key_file))

    def nic_capabilities(self, reservation: Reservation, node: Node, login: Login) -> list[Nic]:
        """eth0 (CONTROL) and eth1 if any, read in the pnode's netns: `login` is unused."""
        record = self._record(reservation)
        pnode = self._pnode(reservation, node)
        profile = get_profile(record.profile)
        links = {
            link["ifname"]: link
            for link in json.loads(run("ip", "-n", pnode.netns, "-j", "addr", "show") or "[]")
        }
        nics = [self._nic(links["eth0"], NicRole.CONTROL, profile.foreign_mac, profile.multicast)]
        if "eth1" in links:
            nics.append(self._nic(links["eth1"], NicRole.EXTRA, True, True))
        return nics

    @staticmethod
    def _nic(link: dict, role: NicRole, foreign_mac: bool, multicast: bool) -> Nic:
        addresses = tuple(
            f"{info['local']}/{info['prefixlen']}"
            for info in link.get("addr_info", [])
            if info.get("family") == "inet"
        )
        return Nic(
            name=link["ifname"], mac=link["address"], role=role, mtu=int(link["mtu"]),
            addresses=addresses, foreign_mac=_tri(foreign_mac), multicast=_tri(multicast),
            sources=_FACTS,
        )

    # changes -----------------------------------------------------------------------------

    def snapshot(self, reservation: Reservation, node: Node, image: str, login: Login) -> str:
        """Save the pnode's writable layer (what it wrote or changed) as image `image`."""
        pnode = self._pnode(reservation, node)
        return images.pack(rootfs.upper(Path(pnode.dir)), self.state_dir, image,
                           work_dir=self.state_dir / reservation.id)

    def extend(self, reservation: Reservation, end: datetime) -> Reservation:
        require_utc(end)
        record = self._record(reservation)
        record.end = end.isoformat()
        record.save(self.state_dir)
        return record.to_reservation()

    def release(self, reservation: Reservation) -> None:
        if not underlay.OUR_NAME.match(f"{reservation.id}h"):
            raise UsageError(f"{reservation.id!r} is not a local reservation id")
        record = load_record(self.state_dir, reservation.id)
        if record is not None:
            self._refuse_if_being_made(record)
            self._undo(record)
            return
        namespaces = list(reservation.extra.get("netns", []))
        namespaces.append(reservation.extra.get("switch_netns", f"{reservation.id}-s"))
        host_link = reservation.extra.get("host_link", f"{reservation.id}h")
        self._undo_objects(reservation.id, namespaces, host_link)

    # helpers -----------------------------------------------------------------------------

    def _refuse_if_being_made(self, record: Record) -> None:
        """Only the process making a reservation may undo it while it is being made."""
        if record.being_made_elsewhere():
            pid = record.owner.partition(":")[0]
            raise ReservationError(
                f"the local reservation {record.name!r} ({record.id}) is being made by "
                f"process {pid} ({command_of(pid)}); release it once that process has finished",
                provider=self.name,
            )

    def _undo(self, record: Record) -> None:
        """Remove everything `record` made: processes, namespaces, host link, directory."""
        self._undo_objects(record.id, record.namespaces, record.host_link)

    def _undo_objects(self, reservation_id: str, namespaces: list[str], host_link: str) -> None:
        _remove_containers(reservation_id)
        cgroups.kill_all(reservation_id)
        underlay.teardown(namespaces, host_link)
        rootfs.unmount_under(self.state_dir / reservation_id)
        shutil.rmtree(self.state_dir / reservation_id, ignore_errors=True)

    def _record_named(self, name: str) -> Record | None:
        for record in load_records(self.state_dir):
            if record.name == name:
                if record.state == ReservationState.READY.value and not all(
                    underlay.netns_exists(ns) for ns in record.namespaces
                ):
                    record.state = ReservationState.ERROR.value  # e.g. lost at a reboot
                return record
        return None

    def _record(self, reservation: Reservation) -> Record:
        record = load_record(self.state_dir, reservation.id)
        if record is None:
            raise ReservationNotFound(
                f"the local reservation {reservation.name!r} ({reservation.id}) does not exist "
                "any more; make a new one with omnibed reserve --testbed local",
                provider=self.name,
            )
        return record

    def _pnode(self, reservation: Reservation, node: Node) -> NodeRecord:
        for pnode in self._record(reservation).nodes:
            if pnode.id == node.id:
                return pnode
        raise UsageError(f"{reservation.name} has no node {node.id!r}")


def _remove_containers(reservation_id: str) -> None:
    """Remove the container vnodes the emulator's agent started on the reservation's pnodes
    with crun or runc (in cgroups of their own, which killing the reservation's cgroup
    misses): in each pnode's mount namespace, where the runtime keeps their state."""
    runtimes = {p: r for p, r in EMULATOR_RUNTIME_ROOTS.items() if shutil.which(p) is not None}
    for pid in cgroups.one_per_mount_namespace(reservation_id) if runtimes else ():
        for program, state_root in runtimes.items():
            enter = ["nsenter", f"--target={pid}", "--mount", program, "--root", state_root]
            listed = subprocess.run([*enter, "list", "-q"], capture_output=True, text=True)
            for name in listed.stdout.split():
                subprocess.run([*enter, "delete", "--force", name], capture_output=True)
