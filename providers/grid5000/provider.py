"""Grid'5000 through its REST API: an OAR job per reservation, kadeploy or sudo-g5k for root.

python-grid5000 is imported lazily (in `_client`), so listing providers needs no SDK.
What omnibed must remember about a job beyond what OAR keeps (its options, the image asked,
deployment results, which NICs went into the KaVLAN) is in
``<state_dir>/reservations/<name>.json`` (a :class:`~omnibed.core.kit.RecordStore`),
written before the job is submitted.

SSH: nodes are reached through ``access.grid5000.fr`` unless this machine is inside
Grid'5000 (``-o gateway=auto|none|<host>``). ``<state_dir>/hosts.json`` (optional,
``{"<host name>": {"host": ..., "port": ..., "user": ..., "key_file": ...}}``, each field
optional) says how to log in to a Grid'5000 host name (node FQDN, ``<site>`` frontend,
gateway) otherwise than by that name as your Grid'5000 user: through your own tunnel or
VPN address, with another user or key. Without it, host names are used as they are.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omnibed.core.errors import (
    CredentialsError,
    NotSupported,
    ProviderError,
    ReservationError,
    ReservationNotFound,
    UsageError,
)
from omnibed.core.kit import RESERVATIONS, Pending, RecordStore, check_options, poll_until
from omnibed.core.provider import Check, Progress, Provider, no_progress
from omnibed.core.timeutil import format_walltime
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
from omnibed.providers.grid5000 import _convert

if TYPE_CHECKING:
    from omnibed.core.login import Login
    from omnibed.providers.grid5000._client import Client

DEFAULT_SITE = "rennes"
ACCESS_HOST = "access.grid5000.fr"
HOSTS_FILE = "hosts.json"  # in state_dir: how to log in to a host name (see above)
ROOT_KEYS = "/root/.ssh/authorized_keys"  # the file sudo-g5k's documentation gives root
_IMAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

OPTIONS = {
    "site": f"Grid'5000 site of the OAR job (default {DEFAULT_SITE})",
    "cluster": "cluster to take the nodes from, e.g. gros",
    "queue": "OAR queue: default, production, testing, besteffort",
    "project": "OAR project to account the job to",
    "properties": "OAR SQL property filter, as oarsub -p",
    "types": "more OAR job types, comma-separated, e.g. night (exotic is added by itself)",
    "image": "kadeploy environment (deploy job), e.g. debian12-min or a snapshot's name",
    "vlan": "KaVLAN type for --extra-nics: kavlan (default), kavlan-local, kavlan-global",
    "gateway": f"SSH jump host: auto ({ACCESS_HOST} unless inside Grid'5000), none, or a host",
    "poll": "seconds between two API polls while waiting (default 10)",
    "deploy_timeout": "seconds a kadeploy may take (default 1800)",
    "extend_timeout": "seconds OAR may take to grant a walltime change (default 300)",
}


class Grid5000Provider(Provider):
    """Grid'5000: OAR jobs, kadeploy deployments, KaVLAN and the Reference API over REST."""

    name = "grid5000"
    description = "Grid'5000 through its REST API (python-grid5000)"
    capabilities = Capabilities(
        supported=frozenset(
            {
                Capability.SNAPSHOT,
                Capability.EXTEND,
                Capability.ADVANCE_RESERVATION,
                Capability.EXTRA_NICS,
                Capability.ROOT,
            }
        ),
        max_extra_nics=3,
        options=OPTIONS,
    )

    def __init__(self, state_dir: Path, client: Client | None = None) -> None:
        super().__init__(state_dir)
        self._client = client

    @classmethod
    def doctor(cls, state_dir: Path) -> list[Check]:
        try:
            from omnibed.providers.grid5000._client import config_path, load_config
        except ImportError:
            return [Check("python-grid5000", False, "not installed",
                          "pip install 'omnibed[grid5000]'")]
        path = config_path()
        try:
            load_config(path)
        except Exception as error:  # every problem with the file is reported, not raised
            # the message already says how to fix the file
            return [Check("python-grid5000", True),
                    Check(f"credentials in {path}", False, str(error))]
        return [Check("python-grid5000", True), Check(f"credentials in {path}", True)]

    @property
    def client(self) -> Client:
        """The API client, built from the credentials file at first use."""
        if self._client is None:
            from omnibed.providers.grid5000._client import Client

            self._client = Client.from_config()
        return self._client

    # -- the record omnibed keeps per job --------------------------------------------------

    @property
    def records(self) -> RecordStore:
        store = RecordStore(self.state_dir / RESERVATIONS)
        _adopt_old_records(self.state_dir / "jobs", store)
        return store

    def _record(self, name: str) -> dict[str, Any]:
        return self.records.load(name) or {}

    def _save(self, name: str, record: Mapping[str, Any]) -> None:
        self.records.save(name, record)

    def _view(self, job: Mapping[str, Any], record: Mapping[str, Any]) -> Reservation:
        base = _convert.reservation(job, record["site"])
        extra = {**base.extra, "image": record.get("image"),
                 "extra_nics": record.get("extra_nics", 0)}
        return replace(base, name=base.name or record["name"], extra=extra)

    def _job(self, reservation: Reservation) -> dict[str, Any]:
        job = self.client.job(reservation.site or DEFAULT_SITE, reservation.id)
        if job is None:
            raise ReservationNotFound(
                f"Grid'5000 no longer knows job {reservation.id} at {reservation.site}:"
                f" `omnibed release {reservation.name}` forgets it",
                provider=self.name,
            )
        return job

    # -- verbs -------------------------------------------------------------------------------

    def reserve(self, request: ReservationRequest) -> Reservation:
        options = dict(request.extra)
        check_options(options, OPTIONS, self.name)
        image = request.image or options.get("image")
        request = replace(request, image=image)
        try:
            _convert.job_body(request, options)
        except ValueError as error:
            raise UsageError(str(error)) from error
        existing = self.find(request.name)
        if existing is not None:
            return existing
        site = request.site or options.get("site") or DEFAULT_SITE
        exotic = self._check_cluster(site, options.get("cluster"), request.extra_nics)
        body = _convert.job_body(request, options, exotic)
        record = {"name": request.name, "site": site, "options": options, "image": image,
                  "extra_nics": request.extra_nics, "public_key": request.public_key}
        self._save(request.name, record)
        try:
            job = self.client.submit_job(site, body)
        except (ReservationError, CredentialsError):  # refused: no job was made
            self.records.delete(request.name)
            raise
        except BaseException:
            self._remove_leftovers(site, request.name)  # an unanswered POST may have made one
            self.records.delete(request.name)  # kept if that failed
            raise
        self._save(request.name, {**record, "uid": str(job["uid"])})
        return self._view(job, record)

    def _check_cluster(self, site: str, cluster: str | None, extra_nics: int) -> bool:
        """Whether `cluster` is exotic, from the Reference API; UsageError, before any job is
        submitted, for a cluster the site lacks or one with fewer secondary Ethernet NICs
        than `extra_nics`. Without `cluster`, OAR picks and nothing is checked here."""
        if cluster is None:
            return False
        record = self.client.cluster_record(site, cluster)
        if record is None:
            raise UsageError(f"Grid'5000 has no cluster {cluster!r} at {site}: check"
                             " -o cluster= and -o site= (https://www.grid5000.fr/w/Hardware)")
        if extra_nics:
            node = self.client.first_node_record(site, cluster) or {}
            spare = len(_convert.extra_adapters(node))
            if spare < extra_nics:
                raise UsageError(
                    f"{cluster} nodes have {spare} secondary Ethernet NIC(s), {extra_nics}"
                    f" asked with --extra-nics: pick a cluster with {extra_nics} more Ethernet"
                    " NIC(s) (-o cluster=) or ask fewer"
                )
        return bool(record.get("exotic"))

    def _remove_leftovers(self, site: str, name: str) -> None:
        for job in self.client.find_jobs(site, name, _convert.LIVE_STATES):
            self.client.delete_job(site, str(job["uid"]))

    def find(self, name: str) -> Reservation | None:
        record = self._record(name)
        if not record:
            return None
        jobs = self.client.find_jobs(record["site"], name, _convert.LIVE_STATES)
        if not jobs:
            return None
        uid = str(min(int(job["uid"]) for job in jobs))
        job = self.client.job(record["site"], uid)  # listed jobs lack assigned_nodes
        if job is None:
            return None
        if record.get("uid") != uid:
            self._save(name, {**record, "uid": uid})
        return self._view(job, record)

    def wait(
        self, reservation: Reservation, *, timeout: float = 3600, progress: Progress = no_progress
    ) -> Reservation:
        record = self._record(reservation.name) or {"name": reservation.name,
                                                    "site": reservation.site}
        said = [""]

        def job_ready() -> Reservation | Pending:
            current = self._view(self._job(reservation), record)
            line = f"job {current.id} at {current.site}: {current.extra['oar_state']}"
            if line != said[0]:
                progress(line)
                said[0] = line
            if current.state in (ReservationState.ERROR, ReservationState.RELEASED):
                message = current.extra["message"]
                raise ProviderError(
                    f"OAR job {current.id} at {current.site} ended ({current.extra['oar_state']})"
                    f": {message or 'no message'}; reserve again",
                    provider=self.name,
                    testbed_message=message,
                )
            if current.state is ReservationState.READY:
                return current
            return Pending(current.extra["oar_state"])

        current = poll_until(
            job_ready, timeout=timeout, interval=float(record.get("options", {}).get("poll", 10)),
            what=f"OAR job {reservation.id} at {reservation.site}",
            fix="wait again or release it", provider=self.name,
        )
        self._attach_extra_nics(current, record, progress)
        if "deploy" in current.extra["types"] and record.get("public_key") and (
            "deployment" not in record
        ):
            progress(f"kadeploy {record.get('image')} on {current.extra['assigned_nodes']}")
            self._deploy(current, record, record["public_key"])
        return current

    def _attach_extra_nics(
        self, reservation: Reservation, record: dict[str, Any], progress: Progress
    ) -> None:
        wanted = int(record.get("extra_nics", 0))
        if not wanted or "vlan_nics" in record:
            return
        if not reservation.extra["vlans"]:
            raise ProviderError(f"job {reservation.id} has no KaVLAN for the extra NICs",
                                provider=self.name)
        vlan = reservation.extra["vlans"][0]
        site = reservation.site or DEFAULT_SITE
        moved: dict[str, list[str]] = {}
        for fqdn in reservation.extra["assigned_nodes"]:
            host, cluster, _ = _convert.split_fqdn(fqdn)
            adapters = _convert.extra_adapters(self.client.node_record(site, cluster, host))
            if len(adapters) < wanted:
                raise ProviderError(
                    f"{fqdn} has {len(adapters)} secondary NIC(s), {wanted} asked: pick a"
                    " cluster with more (-o cluster=) or ask fewer --extra-nics",
                    provider=self.name,
                )
            moved[fqdn] = [str(a["device"]) for a in adapters[:wanted]]
        addresses = [_convert.vlan_address(f, d) for f, ds in moved.items() for d in ds]
        progress(f"putting {len(addresses)} extra NIC(s) in KaVLAN {vlan}")
        failures = _convert.vlan_failures(self.client.vlan_submit(site, vlan, addresses))
        if failures:
            raise ProviderError(
                "KaVLAN refused " + "; ".join(f"{a}: {why}" for a, why in failures.items()),
                provider=self.name,
                testbed_message=json.dumps(failures),
            )
        record["vlan_nics"] = moved
        self._save(reservation.name, record)

    def list_nodes(self, reservation: Reservation) -> list[Node]:
        job = self._job(reservation)
        if _convert.STATE_MAP.get(str(job.get("state")).lower()) in (
            ReservationState.RELEASED, ReservationState.ERROR
        ):
            raise ReservationNotFound(f"job {reservation.id} at {reservation.site} is over"
                                      f" ({job.get('state')}): reserve again",
                                      provider=self.name)
        assigned = sorted(job.get("assigned_nodes") or ())
        if not assigned:
            raise ProviderError(f"job {reservation.id} has no nodes yet (state"
                                f" {job.get('state')}): `omnibed wait` first", provider=self.name)
        record = self._record(reservation.name)
        deploy = "deploy" in (job.get("types") or ())
        nodes = []
        arches: dict[str, str] = {}  # a cluster's nodes share one architecture
        for fqdn in assigned:
            host, cluster, site = _convert.split_fqdn(fqdn)
            endpoint = self._endpoint(fqdn, record)
            if deploy:  # a deploy job's nodes only take root logins (after kadeploy)
                endpoint = replace(endpoint, user="root", key_file=record.get("key_file"))
            if cluster not in arches:
                reference = self.client.node_record(site, cluster, host)
                arches[cluster] = str(
                    (reference.get("architecture") or {}).get("platform_type") or "")
            nodes.append(Node(id=fqdn, hostname=host, ssh=endpoint,
                              extra={"cluster": cluster, "site": site},
                              arch=arches[cluster], hardware=cluster, site=site))
        return nodes

    def _endpoint(self, name: str, record: Mapping[str, Any]) -> SSHEndpoint:
        """How the Grid'5000 user logs in to host `name` (through the gateway if needed)."""
        gateway = record.get("options", {}).get("gateway", "auto")
        if gateway == "auto":
            from omnibed.providers.grid5000._client import inside_grid5000

            gateway = "none" if inside_grid5000() else ACCESS_HOST
        jumps = () if gateway == "none" else (self._resolve(gateway),)
        return replace(self._resolve(name), jumps=jumps)

    def _resolve(self, name: str) -> SSHEndpoint:
        """How to log in to host `name`: `<state_dir>/hosts.json`'s entry, else `name`."""
        hosts = self.state_dir / HOSTS_FILE
        entry = json.loads(hosts.read_text()).get(name, {}) if hosts.exists() else {}
        return SSHEndpoint(
            host=entry.get("host", name),
            port=int(entry.get("port", 22)),
            user=entry.get("user", self.client.username),
            key_file=entry.get("key_file"),
        )

    def root_access(self, reservation: Reservation, node: Node, login: Login) -> SSHEndpoint:
        from omnibed.core.login import authorise_root

        record = self._record(reservation.name)
        root = login.endpoint(node.ssh, user="root")
        if node.id in record.get("root", []):
            return root
        if "deploy" in reservation.extra.get("types", ()):
            deployment = (record.get("deployment")
                          or self._deploy(reservation, record, login.public_key))
            failed = deployment["ko"]
            if node.id in failed:
                raise ProviderError(
                    "kadeploy failed on " + ", ".join(f"{n} ({why})" for n, why in failed.items())
                    + f" (deployment {deployment['uid']}): release and reserve again, or use"
                    " the other nodes",
                    provider=self.name,
                    testbed_message=json.dumps(failed),
                )
        else:
            authorise_root(node.ssh, login.public_key, login.known_hosts, become="sudo-g5k",
                           authorized_keys=ROOT_KEYS, node=node.id,
                           fix="sudo-g5k gives root on the nodes of a default job")
        record = self._record(reservation.name)
        record["root"] = sorted({*record.get("root", []), node.id})
        record["key_file"] = str(login.key_file)
        self._save(reservation.name, record)
        return root

    def _deploy(
        self, reservation: Reservation, record: dict[str, Any], public_key: str
    ) -> dict[str, Any]:
        """One kadeploy of every node of the job; root then takes the reservation's key and
        the user's frontend keys (as `kadeploy3 -k` does), so tgz-g5k can snapshot later."""
        site = reservation.site or DEFAULT_SITE
        options = record.get("options", {})
        frontend_keys = self._on_frontend(site, record, "cat ~/.ssh/id_*.pub",
                                          "reading your frontend SSH public keys")
        started = self.client.deploy(site, {
            "nodes": list(reservation.extra["assigned_nodes"]),
            "environment": record.get("image"),
            "key": f"{public_key}\n{frontend_keys.strip()}\n",
        })
        uid = str(started["uid"])

        def deployment_over() -> dict[str, Any] | Pending:
            deployment: dict[str, Any] = self.client.deployment(site, uid)
            if deployment.get("status") in ("terminated", "error", "canceled"):
                return deployment
            return Pending(str(deployment.get("status")))

        deployment = poll_until(
            deployment_over, timeout=float(options.get("deploy_timeout", 1800)),
            interval=float(options.get("poll", 10)), what=f"deployment {uid} at {site}",
            fix="check it, then retry", provider=self.name,
        )
        if deployment["status"] == "terminated":
            ok, ko = _convert.deployment_outcome(deployment.get("result") or {})
        else:
            why = f"deployment {deployment['status']}"
            ok, ko = [], {n: why for n in reservation.extra["assigned_nodes"]}
        record["deployment"] = {"uid": uid, "ok": ok, "ko": ko}
        self._save(reservation.name, record)
        return record["deployment"]

    def _on_frontend(self, site: str, record: Mapping[str, Any], command: str, what: str) -> str:
        """Run `command` as the user on the site's frontend; its stdout, or ProviderError.

        Frontends are not per reservation: their host keys go to `<state_dir>/known_hosts`.
        """
        from omnibed.core import ssh

        frontend = self._endpoint(site, record)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        result = ssh.run(frontend, command, self.state_dir / "known_hosts", node=site,
                         timeout=3600)
        if result.exit_status != 0:
            raise ProviderError(f"{what} failed on the {site} frontend (exit"
                                f" {result.exit_status}): {result.stderr.strip()}",
                                provider=self.name, testbed_message=result.stderr)
        return result.stdout

    def nic_capabilities(self, reservation: Reservation, node: Node, login: Login) -> list[Nic]:
        """From the Reference API's network_adapters and the job's VLAN: `login` is unused."""
        host, cluster, site = _convert.split_fqdn(node.id)
        record = self._record(reservation.name)
        vlans = reservation.extra.get("vlans") or ()
        return _convert.nics(
            self.client.node_record(site, cluster, host),
            in_vlan=record.get("vlan_nics", {}).get(node.id, ()),
            vlan=vlans[0] if vlans else None,
        )

    def snapshot(self, reservation: Reservation, node: Node, image: str, login: Login) -> str:
        """tgz-g5k of the node and a kaenv3 registration on the site's frontend (tgz-g5k logs
        in to the node with the frontend keys kadeploy installed, so `login` is unused)."""

        if not _IMAGE_NAME.match(image):
            raise UsageError(f"image name {image!r}: use letters, digits, '.', '_' and '-'")
        record = self._record(reservation.name)
        if not record.get("image"):
            raise NotSupported(self.name, "snapshot", "only a deployed node can be saved:"
                               " reserve with -o image=debian12-min")
        site = reservation.site or DEFAULT_SITE

        def on_frontend(command: str, what: str) -> str:
            return self._on_frontend(site, record, command, what)

        archive = f"$HOME/public/{image}.tar.zst"  # tgz-g5k logs in to the node as root
        home = on_frontend(f'mkdir -p "$HOME/public" && tgz-g5k -m {shlex.quote(node.id)}'
                           f' -f "{archive}" && echo "$HOME"', "tgz-g5k").strip().splitlines()[-1]
        import yaml  # only to snapshot: not loaded by every command

        base = yaml.safe_load(on_frontend(f"kaenv3 -p {shlex.quote(record['image'])} -u deploy",
                                          "kaenv3 -p"))
        if not isinstance(base, dict):
            raise ProviderError(f"kaenv3 -p {record['image']} printed no environment",
                                provider=self.name)
        description = {
            **base,
            "name": image,
            "version": 1,
            "description": f"snapshot of {node.id} ({reservation.name}) by omnibed",
            "author": self.client.username,
            "visibility": "private",
            "image": {**(base.get("image") or {}), "file": f"{home}/public/{image}.tar.zst",
                      "kind": "tar", "compression": "zstd"},
        }
        text = yaml.safe_dump(description, sort_keys=False)
        path = f'"$HOME/public/{image}.yaml"'
        on_frontend(f"printf '%s' {shlex.quote(text)} > {path} && kaenv3 -a {path}", "kaenv3 -a")
        return image

    def extend(self, reservation: Reservation, end: datetime) -> Reservation:
        current = self._view(self._job(reservation), self._record(reservation.name))
        delta = end - current.end
        if delta.total_seconds() < 1:
            raise UsageError(f"the new end {end:%Y-%m-%d %H:%M} UTC is not after the current"
                             f" end {current.end:%Y-%m-%d %H:%M} UTC")
        site = reservation.site or DEFAULT_SITE
        record = self._record(reservation.name)
        options = record.get("options", {})
        self.client.change_walltime(site, reservation.id, f"+{format_walltime(delta)}")

        def granted() -> Reservation | Pending:  # OAR grants at a later scheduling pass
            now = self._view(self._job(reservation), record)
            return now if now.end != current.end else Pending("pending")

        return poll_until(
            granted, timeout=float(options.get("extend_timeout", 300)),
            interval=float(options.get("poll", 10)),
            what=f"the walltime change of job {reservation.id} at {site}",
            fix="OAR grants it at a later scheduling pass: see `omnibed ls` later",
            provider=self.name,
        )

    def release(self, reservation: Reservation) -> None:
        """Delete the job and wait until OAR has killed it (a deleted job runs on for a
        while, and a second DELETE meanwhile is refused), then forget it."""
        site = reservation.site or DEFAULT_SITE
        poll = float(self._record(reservation.name).get("options", {}).get("poll", 10))
        job = self.client.job(site, reservation.id)
        if _live(job):
            try:
                self.client.delete_job(site, reservation.id)
            except ProviderError:  # a lost answer, and the retried DELETE found it gone
                if _live(self.client.job(site, reservation.id)):
                    raise

            def dead() -> bool | Pending:
                job = self.client.job(site, reservation.id)
                return True if not _live(job) else Pending(str((job or {}).get("state")))

            poll_until(dead, timeout=300, interval=min(poll, 5),
                       what=f"deleted OAR job {reservation.id} at {site}",
                       fix=f"`omnibed release {reservation.name}` again later",
                       provider=self.name)
        self.records.delete(reservation.name)


def _live(job: Mapping[str, Any] | None) -> bool:
    """Whether the OAR job still holds (or waits for) nodes."""
    return job is not None and _convert.STATE_MAP.get(str(job.get("state")).lower()) in (
        ReservationState.WAITING, ReservationState.READY)


def _adopt_old_records(old: Path, store: RecordStore) -> None:
    """Move the records an earlier omnibed kept in `jobs/` into `store`, so that the jobs
    they name are still found and released."""
    if not old.is_dir() or old.is_symlink():
        return
    with store.locked():
        for path in old.glob("*.json"):
            if store.load(path.stem) is None:
                store.save(path.stem, json.loads(path.read_text()))
            path.unlink()
        old.rmdir()
