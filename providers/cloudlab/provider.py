"""CloudLab through geni-lib: one slice and one sliver per reservation (AM API v2).

A reservation is a slice at the CloudLab slice authority (renewed so that it outlives the
sliver) plus a sliver on one aggregate (`-o site=`). Its id is the slice URN; the site is
kept in `<state_dir>/reservations/<name>.json` so that `find` knows where to look.
geni-lib is imported only inside methods (see `_client`).
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from omnibed.core.errors import (
    CredentialsError,
    OmnibedError,
    ProviderError,
    ReservationNotFound,
    SSHError,
    UsageError,
)
from omnibed.core.kit import RESERVATIONS, Pending, RecordStore, check_options, poll_until
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
from omnibed.providers.cloudlab import _convert
from omnibed.providers.cloudlab._errors import PROVIDER
from omnibed.providers.cloudlab._settings import SITES, load_settings

if TYPE_CHECKING:  # the client loads xmlrpc and http: only for a command that calls CloudLab
    from omnibed.core.login import Login
    from omnibed.providers.cloudlab._client import CloudLabClient

DEFAULT_SITE = "utah"
SLICE_MARGIN = timedelta(hours=1)  # the slice outlives its sliver by this much
_SLICE_NAME = re.compile(r"^[a-z][a-z0-9-]{0,18}$")
_IMAGE_NAME = re.compile(r"^[A-Za-z0-9]{1,64}$")
# every device with its MAC and addresses, a blank line, then the default routes
_LIST_DEVICES = "ip -j addr show && echo && ip -j route show default"


class CloudLabProvider(Provider):
    """CloudLab raw PCs or Xen VMs, reached as the user then root via passwordless sudo."""

    name = "cloudlab"
    description = "CloudLab (ProtoGENI AM API v2 through geni-lib)"
    capabilities = Capabilities(
        supported=frozenset(
            {Capability.SNAPSHOT, Capability.EXTEND, Capability.EXTRA_NICS, Capability.ROOT}
        ),
        max_extra_nics=2,
        options={
            "site": f"aggregate: {', '.join(SITES)} (default {DEFAULT_SITE})",
            "hardware_type": "raw PC type, e.g. d430, m510, c220g5 (default: any)",
            "vm": "xen: shared Xen VMs instead of raw PCs",
            "image": "disk image URN, e.g. urn:publicid:IDN+emulab.net+image+emulab-ops//"
            "UBUNTU22-64-STD, or one that `omnibed snapshot` returned",
        },
    )

    def __init__(self, state_dir: Path) -> None:
        super().__init__(state_dir)
        self._client: CloudLabClient | None = None

    @property
    def client(self) -> CloudLabClient:
        if self._client is None:
            from omnibed.providers.cloudlab._client import CloudLabClient

            self._client = CloudLabClient(load_settings(self.state_dir), self.state_dir)
        return self._client

    # -- the local record of where each reservation lives ----------------------------

    @property
    def records(self) -> RecordStore:
        return RecordStore(self.state_dir / RESERVATIONS)

    def _record(self, name: str) -> dict | None:
        return self.records.load(name)

    def _write_record(self, name: str, site: str, start: datetime) -> None:
        self.records.save(name, {"site": site, "start": start.isoformat()})

    def _reservation(
        self, name: str, site: str, start: datetime, status: dict, end: datetime
    ) -> Reservation:
        return Reservation(
            provider=PROVIDER,
            id=self.client.slice_urn(name),
            name=name,
            start=start,
            end=_convert.expiration(status) or end,
            state=_convert.state_of(status),
            site=site,
        )

    # -- verbs --------------------------------------------------------------------------

    def reserve(self, request: ReservationRequest) -> Reservation:
        if not _SLICE_NAME.match(request.name):
            raise UsageError(
                f"{request.name!r} cannot name a CloudLab slice: use 1-19 lowercase letters,"
                " digits or hyphens, starting with a letter"
            )
        check_options(request.extra, self.capabilities.options, self.name)
        if request.extra.get("vm", "xen") != "xen":
            raise UsageError(f"-o vm= takes only xen, not {request.extra['vm']!r}")
        existing = self.find(request.name)
        if existing is not None:
            return existing
        site = request.site or request.extra.get("site") or DEFAULT_SITE
        client = self.client
        rspec = client.build_request(request, site)
        start = utcnow()
        end = start + request.duration
        self._write_record(request.name, site, start)
        try:
            slice_end = client.ensure_slice(request.name, end + SLICE_MARGIN)
            keys = [request.public_key] if request.public_key else []
            client.create_sliver(site, request.name, rspec, keys)
            status = client.status(site, request.name) or {}
            granted = _convert.expiration(status)
            if granted is None or granted < end:
                client.renew_sliver(site, request.name, min(end, slice_end))
                status = client.status(site, request.name) or {}
        except BaseException:
            # A refused CreateSliver made nothing; any later failure (or a lost answer)
            # may have left a sliver: delete it, keeping the original error.
            with contextlib.suppress(OmnibedError):
                client.delete_sliver(site, request.name)
            self.records.delete(request.name)
            raise
        return self._reservation(request.name, site, start, status, end)

    def wait(
        self, reservation: Reservation, *, timeout: float = 3600, progress: Progress = no_progress
    ) -> Reservation:
        site = reservation.site or DEFAULT_SITE

        def sliver_ready() -> Reservation | Pending:
            status = self.client.status(site, reservation.name)
            if status is None:
                raise ReservationNotFound(
                    f"{reservation.name} has no sliver at {site} any more (expired or deleted)",
                    provider=PROVIDER,
                )
            progress(_convert.progress_line(status))
            state = _convert.state_of(status)
            if state is ReservationState.READY:
                return replace(
                    reservation, state=state, end=_convert.expiration(status) or reservation.end
                )
            if state is ReservationState.ERROR:
                message = _convert.status_errors(status)
                self.client.delete_sliver(site, reservation.name)
                raise ProviderError(
                    f"the sliver of {reservation.name} failed at {site} and was deleted: {message}",
                    provider=PROVIDER,
                    testbed_message=message,
                )
            return Pending(_convert.progress_line(status))

        return poll_until(
            sliver_ready, timeout=timeout, interval=self.client.settings.poll_interval,
            what=f"{reservation.name} at {site}", fix="`omnibed release` it or wait again",
            provider=PROVIDER,
        )

    def find(self, name: str) -> Reservation | None:
        record = self._record(name)
        if record is None:
            return None
        status = self.client.status(record["site"], name)
        if status is None:
            return None
        start = datetime.fromisoformat(record["start"])
        return self._reservation(name, record["site"], start, status, start)

    def list_nodes(self, reservation: Reservation) -> list[Node]:
        site = reservation.site or DEFAULT_SITE
        manifest = self.client.manifest(site, reservation.name)
        return _convert.to_nodes(manifest, self.client.username, site)

    def root_access(self, reservation: Reservation, node: Node, login: Login) -> SSHEndpoint:
        """Log in as the CloudLab user with the reservation's key; passwordless sudo adds it
        for root."""
        from omnibed.core.login import authorise_root

        authorise_root(login.endpoint(node.ssh), login.public_key, login.known_hosts,
                       node=node.id, fix="the CloudLab user needs passwordless sudo (the"
                       " standard CloudLab images give it)")
        return login.endpoint(node.ssh, user="root")

    def nic_capabilities(self, reservation: Reservation, node: Node, login: Login) -> list[Nic]:
        """The sliver manifest's NICs, named as on the node: logged in as the CloudLab user
        with the reservation's key, `ip -j addr` gives each MAC's device (the manifest names
        NICs by RSpec ids such as `node0:if0`) and the default route the control NIC and
        its address (see `_convert.on_node`)."""
        manifest = self.client.manifest(reservation.site or DEFAULT_SITE, reservation.name)
        nics = _convert.to_nics(manifest, node.id)
        from omnibed.core import ssh  # paramiko only when a node is reached

        result = ssh.run(login.endpoint(node.ssh), _LIST_DEVICES, login.known_hosts,
                         node=node.id, timeout=60)
        try:
            if result.exit_status != 0:
                raise ValueError(result.stderr.strip() or f"exit {result.exit_status}")
            links, routes = (json.loads(part.strip() or "[]")
                             for part in result.stdout.split("\n\n", 1))
        except ValueError as error:
            raise SSHError(
                f"listing the network devices of {node.id} failed ({error}); omnibed reads"
                " them with `ip -j` (iproute2 4.14 or later, as in every current CloudLab"
                " image)", host=node.ssh.host) from None
        return _convert.on_node(nics, links, routes)

    def snapshot(self, reservation: Reservation, node: Node, image: str, login: Login) -> str:
        """ProtoGENI CreateImage of the node's disk; returns the URN `-o image=` takes.

        CloudLab image names are alphanumeric: other characters of `image` are dropped
        (`web-v2` becomes `webv2`); the returned URN holds the name actually used. CloudLab
        images the disk itself: `login` is unused.
        """
        image = "".join(char for char in image if char.isascii() and char.isalnum())
        if not _IMAGE_NAME.match(image):
            raise UsageError("a CloudLab image name needs 1-64 letters or digits")
        sliver_urn = node.extra.get("sliver_id")
        if not sliver_urn:
            raise UsageError(f"node {node.id} has no sliver id: list the nodes again")
        return self.client.create_image(
            reservation.site or DEFAULT_SITE, reservation.name, sliver_urn, image
        )

    def extend(self, reservation: Reservation, end: datetime) -> Reservation:
        """Renew the slice, then the sliver; the returned end is what CloudLab granted."""
        site = reservation.site or DEFAULT_SITE
        slice_end = self.client.ensure_slice(reservation.name, end + SLICE_MARGIN)
        self.client.renew_sliver(site, reservation.name, min(end, slice_end))
        status = self.client.status(site, reservation.name)
        if status is None:
            raise ReservationNotFound(
                f"{reservation.name} has no sliver at {site} any more", provider=PROVIDER
            )
        granted = _convert.expiration(status) or reservation.end
        return replace(
            reservation,
            end=granted,
            state=_convert.state_of(status),
            extra={**reservation.extra, "requested_end": end.isoformat()},
        )

    def release(self, reservation: Reservation) -> None:
        """Delete the sliver (the slice expires by itself); releasing twice is fine."""
        record = self._record(reservation.name)
        site = (record or {}).get("site") or reservation.site or DEFAULT_SITE
        self.client.delete_sliver(site, reservation.name)
        self.records.delete(reservation.name)

    # -- doctor -------------------------------------------------------------------------

    @classmethod
    def doctor(cls, state_dir: Path) -> list[Check]:
        from omnibed.providers.cloudlab._doctor import checks

        try:
            settings = load_settings(state_dir)
        except CredentialsError as error:
            return [Check("CloudLab configuration", False, str(error), f"fix {error.source}")]
        return checks(settings)
