"""The only module that touches python-grid5000: credentials, one client, the API calls used.

Credentials come from ``~/.python-grid5000.yaml`` (or ``$OMNIBED_GRID5000_CONFIG``), the file
python-grid5000 itself reads: ``username``, ``password`` and optionally ``uri`` (the API base
URL; tests point it at a fake), ``verify_ssl`` and ``timeout``. The file must be mode 0600.
Without it, only a machine inside Grid'5000 (where the API authenticates by source) may go on
anonymously; python-grid5000's own silent fallback to anonymous is never used.
"""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from grid5000 import DEFAULT_BASE_URL, Grid5000
from grid5000.exceptions import Grid5000Error
from grid5000.objects import Site

from omnibed.core.errors import CredentialsError, ReservationError
from omnibed.providers.grid5000._convert import PROVIDER, retry_at
from omnibed.providers.grid5000._errors import map_errors, not_found

CONFIG_ENV = "OMNIBED_GRID5000_CONFIG"
_CLIENT_KEYS = ("uri", "username", "password", "verify_ssl", "timeout")
PAGE = 50  # jobs asked per page of a listing (the API may give fewer)


def config_path() -> Path:
    return Path(os.environ.get(CONFIG_ENV) or Path.home() / ".python-grid5000.yaml")


def inside_grid5000() -> bool:
    """True on a Grid'5000 frontend or node (its host names end in .grid5000.fr)."""
    return socket.getfqdn().endswith(".grid5000.fr")


def load_config(path: Path) -> dict[str, Any]:
    """The client settings in `path`; CredentialsError says what is wrong with the file."""
    fix = f"create {path} with `username:` and `password:` lines and `chmod 600 {path}`"
    if not path.exists():
        if inside_grid5000():
            return {}
        raise CredentialsError(f"no Grid'5000 credentials: {path} does not exist; {fix}",
                               source=str(path))
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        text = path.read_text()
    except OSError as error:
        raise CredentialsError(f"cannot read {path} ({error.strerror}); {fix}",
                               source=str(path)) from error
    if mode & 0o077:
        raise CredentialsError(
            f"{path} holds a password but is readable by others (mode {mode:o}):"
            f" run `chmod 600 {path}`",
            source=str(path),
        )
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:  # its text quotes the line, which may be the password
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise CredentialsError(f"{path} is not valid YAML{where}; {fix}",
                               source=str(path)) from None
    if not isinstance(data, dict) or not data.get("username") or "password" not in data:
        raise CredentialsError(f"{path} lacks `username` or `password`; {fix}", source=str(path))
    return {key: data[key] for key in _CLIENT_KEYS if key in data}


@dataclass
class Client:
    """The Grid'5000 REST calls omnibed makes, each mapped to omnibed errors."""

    api: Grid5000
    username: str
    config: str

    @classmethod
    def from_config(cls, path: Path | None = None) -> Client:
        path = path or config_path()
        settings = load_config(path)
        return cls(Grid5000(**settings), settings.get("username") or os.environ.get("USER", ""),
                   str(path))

    @property
    def uri(self) -> str:
        return str(getattr(self.api, "_uri", DEFAULT_BASE_URL))

    def _errors(self, action: str) -> Any:
        return map_errors(action, self.config, self.uri)

    def _site(self, site: str) -> Site:
        return Site(self.api.sites, {"uid": site})  # no GET /sites/{site} round trip

    def submit_job(self, site: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """The new job; ReservationError when OAR refuses it (HTTP 400: no job was made)."""
        with self._errors(f"submit a job at {site}"):
            try:
                return self._site(site).jobs.create(dict(body)).to_dict()
            except Grid5000Error as error:
                if error.response_code != 400 or retry_at(str(error.error_message)):
                    raise
                message = str(error.error_message)
                raise ReservationError(
                    f"OAR refused the job at {site}: {message}; change the request"
                    " (nodes, -o cluster=, -o properties=) and retry",
                    provider=PROVIDER, testbed_message=message,
                ) from error

    def find_jobs(self, site: str, name: str, states: str) -> list[dict[str, Any]]:
        """This user's jobs called `name` in one of `states`, from every page of the listing
        (read until an empty page, as the API may cap a page below PAGE); the filters are
        checked here too, not left to the server."""
        wanted = set(states.split(","))
        found: list[dict[str, Any]] = []
        offset = 0
        with self._errors(f"list the jobs named {name!r} at {site}"):
            while True:
                page = self._site(site).jobs.list(name=name, state=states, user=self.username,
                                                  offset=offset, limit=PAGE)
                if not page:
                    break
                found += [job.to_dict() for job in page]
                offset += len(page)
        return [job for job in found if job.get("name") == name
                and job.get("user", job.get("user_uid")) == self.username
                and str(job.get("state", "")).lower() in wanted]

    def cluster_record(self, site: str, cluster: str) -> dict[str, Any] | None:
        """The Reference API record of a cluster (`exotic`, `queues`, ...), None if unknown."""
        with self._errors(f"read the reference record of cluster {cluster} at {site}"):
            try:
                return self._site(site).clusters[cluster].to_dict()
            except Exception as error:
                if not_found(error):
                    return None
                raise

    def first_node_record(self, site: str, cluster: str) -> dict[str, Any] | None:
        """The Reference API record of the cluster's first node, None if it has none."""
        with self._errors(f"read the nodes of cluster {cluster} at {site}"):
            nodes = self._site(site).clusters[cluster].nodes.list()
        return nodes[0].to_dict() if nodes else None

    def job(self, site: str, uid: str) -> dict[str, Any] | None:
        """The job's payload, or None when the API no longer knows it."""
        with self._errors(f"read job {uid} at {site}"):
            try:
                return self._site(site).jobs[uid].to_dict()
            except Exception as error:
                if not_found(error):
                    return None
                raise

    def delete_job(self, site: str, uid: str) -> None:
        """Delete the job; one the API no longer knows is already gone."""
        with self._errors(f"delete job {uid} at {site}"):
            try:
                self._site(site).jobs.delete(uid)
            except Exception as error:
                if not not_found(error):
                    raise

    def change_walltime(self, site: str, uid: str, delta: str) -> None:
        with self._errors(f"change the walltime of job {uid} at {site}"):
            self._site(site).jobs[uid].walltime_change.create({"walltime": delta})

    def node_record(self, site: str, cluster: str, host: str) -> dict[str, Any]:
        """The Reference API record of one node (`network_adapters`, `kavlan`, ...)."""
        with self._errors(f"read the reference record of {host}"):
            return self._site(site).clusters[cluster].nodes[host].to_dict()

    def vlan_submit(self, site: str, vlan: str, addresses: list[str]) -> dict[str, Any]:
        with self._errors(f"put {', '.join(addresses)} in KaVLAN {vlan}"):
            return dict(self._site(site).vlans[vlan].nodes.submit(addresses))

    def deploy(self, site: str, body: Mapping[str, Any]) -> dict[str, Any]:
        with self._errors(f"start a deployment at {site}"):
            return self._site(site).deployments.create(dict(body)).to_dict()

    def deployment(self, site: str, uid: str) -> dict[str, Any]:
        with self._errors(f"read deployment {uid} at {site}"):
            return self._site(site).deployments[uid].to_dict()
