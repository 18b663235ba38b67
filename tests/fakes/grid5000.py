"""A fake Grid'5000 REST API on 127.0.0.1 for the real python-grid5000 client.

It keeps state and schedules like OAR (oar-team/oar3 `kao` and the g5k-api it sits behind):
jobs move waiting -> launching -> running as time passes (`step` seconds each); a job whose
nodes are busy waits in the queue until they are free; an advance reservation takes nodes
free over its whole window, or is refused with OAR's "This reservation could run at ...".
Nodes come from the Reference API records in tests/fixtures/grid5000 (each fixture node is
cloned into `nodes_per_cluster` nodes); nodes of clusters whose record says `exotic` are
given only to jobs of type `exotic` (the Grid'5000 admission rule), `{cluster='x'}` and the
`properties` filter (`cluster`, `host`, `network_address`, `exotic`, joined by `and`) select
nodes. A walltime change is registered and granted at a later scheduling pass
(`walltime_grant_delay`), at most `walltime_grant_cap` seconds of it. A deleted job keeps
running for `kill_delay` seconds, and a second DELETE meanwhile says it was already killed.
A job gives its times as g5k-api does: `started_at` 0 until it starts (an advance
reservation's start once accepted), `scheduled_at` (OAR's predicted start) only once the
scheduler has placed it, `stopped_at` once it has ended.
Job collections are paginated (`offset`, `limit`, at most `page_size` a page, newest
first); with `filters_ignored` the collection ignores its filters, as an unfiltered listing
would.
Deployments (kadeploy) finish after one `step`, append their `key` to the node's
authorized_keys file (`node_keys[fqdn]`, a real sshd's) and answer OK, or KO for the nodes
in `deploy_ko`; `GET /sites/X/deployments` lists them as g5k-api does (newest first, `user`,
`status`, `offset`, `limit`). `/sites/X/status` and `/sites/X/clusters/Y/status` say, as
g5k-api's OAR status does, which live jobs hold each node (and, for a site, each VLAN).
Every request needs HTTP Basic auth. Faults (`faults`, see
tests/fakes/faults.py): a status with an OAR-style message, a late answer, a dropped
connection, a refused login (HTTP 401); `error_next_job()` makes a job fail. `live()` says
which jobs still hold nodes.

`G5kSSHD` is a FakeSSHD whose sessions see the testbed's fake `sudo-g5k`, `tgz-g5k` and
`kaenv3` (shell scripts that log their calls to `FAKE_G5K_LOG` and stay inside the fake).
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import yaml

from tests.fakes.faults import Faults, drop_connection
from tests.fakes.sshd import FakeSSHD

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "grid5000"
REFERENCE_ENVIRONMENTS = ("debian11-min", "debian12-min", "debian12-base", "debian12-nfs")
_VLAN_IDS = {"kavlan-local": ["1", "2", "3"], "kavlan": ["4", "5", "6", "7", "8", "9"],
             "kavlan-global": ["16"]}
_LIVE = ("waiting", "launching", "running")


@dataclass
class _Job:
    uid: int
    site: str
    body: dict[str, Any]
    user: str
    submitted: float
    start: float  # earliest start (now, or the advance reservation's)
    walltime: int
    types: list[str]
    nodes: list[str]
    vlan_type: str | None
    vlan: str | None = None
    started: float | None = None
    ended: str | None = None  # "terminated" or "error"
    message: str = ""
    fail_with: str | None = None
    count: int = 0  # nodes asked
    pool: list[str] = field(default_factory=list)  # the nodes its selectors allow
    killed_at: float | None = None
    stopped: float | None = None  # when it ended (OAR's stop_time)
    walltime_change: tuple[float, int] | None = None  # (granted at, seconds)

    def window(self) -> tuple[float, float]:
        begin = self.started or self.start
        return begin, begin + self.walltime


@dataclass
class FakeGrid5000:
    username: str = "alice"
    password: str = "g5k-secret"
    step: float = 0.3
    nodes_per_cluster: int = 3
    node_keys: dict[str, Path] = field(default_factory=dict)
    deploy_ko: set[str] = field(default_factory=set)
    environments_dir: Path | None = None  # where the fake kaenv3 -a registers environments
    requests: list[tuple[str, str, Any]] = field(default_factory=list)
    walltime_grant_delay: float | None = None  # default: one `step`
    walltime_grant_cap: int | None = None
    kill_delay: float = 0.0
    page_size: int = 50
    filters_ignored: bool = False

    def __post_init__(self) -> None:
        self.reference = _load_reference(self.nodes_per_cluster)
        self.clusters = _load_clusters()
        self.jobs: dict[int, _Job] = {}
        self.deployments: dict[str, dict[str, Any]] = {}
        self.vlan_members: dict[tuple[str, str], set[str]] = {}
        self.faults = Faults()
        self._next_error: str | None = None
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None

    # -- control -----------------------------------------------------------------------------

    def start(self) -> FakeGrid5000:
        fake = self

        class Handler(_Handler):
            owner = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeGrid5000:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/stable"

    def write_config(self, path: Path, *, password: str | None = None, timeout: float = 10) -> Path:
        """A python-grid5000 YAML file pointing at this fake, mode 0600."""
        path.write_text(yaml.safe_dump({"uri": self.url, "username": self.username,
                                        "password": password or self.password,
                                        "timeout": timeout}))
        path.chmod(0o600)
        return path

    def error_next_job(self, message: str) -> None:
        """The next submitted job goes to OAR's error state with `message` when it launches."""
        self._next_error = message

    def live_jobs(self) -> list[int]:
        with self._lock:
            return [uid for uid, job in self.jobs.items() if self._state(job) in _LIVE]

    def add_job_of(self, user: str, name: str, site: str) -> int:
        """A running job of another user that holds no node (it shows in listings)."""
        with self._lock:
            uid = max(self.jobs, default=4000) + 1
            now = time.time() - 2 * self.step
            self.jobs[uid] = _Job(uid, site, {"name": name, "command": "sleep 1"}, user, now,
                                  now, 3600, [], [], None)
            return uid

    def live(self) -> list[str]:
        """What is still reserved on this testbed: one line per live OAR job."""
        with self._lock:
            return [f"job {uid} {job.body.get('name')!r} ({self._state(job)})"
                    for uid, job in self.jobs.items() if self._state(job) in _LIVE]

    # -- state -------------------------------------------------------------------------------

    def _state(self, job: _Job) -> str:
        now = time.time()
        if job.ended:
            return job.ended
        if job.killed_at is not None and now >= job.killed_at + self.kill_delay:
            job.ended, job.message = "error", "job deleted by the user"
            job.stopped = job.killed_at + self.kill_delay
            return "error"
        if job.walltime_change is not None and now >= job.walltime_change[0]:
            job.walltime += job.walltime_change[1]
            job.walltime_change = None
        if len(job.nodes) < job.count:  # queued: take the nodes once they are free
            free = self._free(job.pool, now, now + job.walltime, besides=job)
            if len(free) < job.count:
                return "waiting"
            job.nodes, job.start = free[: job.count], now
        if now < max(job.start, job.submitted + self.step):
            return "waiting"
        if now < max(job.start, job.submitted + self.step) + self.step:
            return "launching"
        if job.fail_with:
            job.ended, job.message, job.stopped = "error", job.fail_with, now
            return "error"
        if job.started is None:
            job.started = now
        if now > job.started + job.walltime:
            job.ended, job.stopped = "terminated", job.started + job.walltime
            return "terminated"
        return "running"

    def _free(self, pool: list[str], begin: float, end: float, besides: _Job) -> list[str]:
        """The nodes of `pool` that no other live job holds during [begin, end]."""
        taken = set()
        for other in self.jobs.values():
            if other is besides or not other.nodes or self._state(other) not in _LIVE:
                continue
            other_begin, other_end = other.window()
            if other_begin < end and begin < other_end:
                taken.update(other.nodes)
        return [node for node in pool if node not in taken]

    def _could_run_at(self, pool: list[str], job: _Job) -> float:
        """The earliest end of a live job holding nodes of `pool` (OAR's suggestion)."""
        ends = [other.window()[1] for other in self.jobs.values()
                if other.nodes and set(other.nodes) & set(pool)
                and self._state(other) in _LIVE]
        return min(ends, default=time.time())

    def _job_json(self, job: _Job, *, listed: bool = False) -> dict[str, Any]:
        state = self._state(job)
        data: dict[str, Any] = {
            "uid": job.uid, "name": job.body.get("name"), "state": state, "user": job.user,
            "user_uid": job.user, "queue": job.body.get("queue", "default"),
            "types": job.types, "walltime": job.walltime, "command": job.body.get("command"),
            "project": job.body.get("project", "default"), "message": job.message,
            "submitted_at": int(job.submitted),
            "started_at": int(job.started or self._reserved_start(job)),
            "properties": job.body.get("properties", ""), "mode": "PASSIVE",
        }
        scheduled = self._predicted_start(job, state)
        if scheduled is not None:
            data["scheduled_at"] = int(scheduled)
        if job.stopped is not None:
            data["stopped_at"] = int(job.stopped)
        if not listed:
            running = state == "running"
            data["assigned_nodes"] = job.nodes if running else []
            data["resources_by_type"] = {
                "cores": [], "vlans": [job.vlan] if running and job.vlan else []}
        return data

    @staticmethod
    def _reserved_start(job: _Job) -> float:
        """An advance reservation's start, which OAR writes in the job's start_time when it
        accepts the reservation (a real waiting one: tests/fixtures/grid5000/
        job-rennes-384886.json); 0 for any other job not started yet."""
        return job.start if job.body.get("reservation") else 0

    def _predicted_start(self, job: _Job, state: str) -> float | None:
        """OAR's predicted start (gantt_jobs_predictions), which g5k-api gives as
        `scheduled_at` and leaves out when there is none (grid5000/g5k-api lib/oar/job.rb;
        `started_at` is OAR's start_time, see `_reserved_start`; `stopped_at` its
        stop_time, absent until it stops): an advance reservation is in the gantt from its
        submission, at its start; any other job only from the first scheduling pass (one
        `step` after submission), at the end of the jobs holding its nodes while it queues;
        an ended job has left the gantt."""
        if job.ended or state not in _LIVE:
            return None
        if job.started is not None or job.body.get("reservation"):
            return job.started or job.start
        if time.time() < job.submitted + self.step:
            return None
        if len(job.nodes) < job.count:
            return self._could_run_at(job.pool, job)
        return job.start

    def _submit(self, site: str, body: dict[str, Any]) -> tuple[int, Any]:
        resources = str(body.get("resources", ""))
        nodes_match = re.search(r"(?:\{cluster='([^']+)'\}/)?nodes=(\d+)", resources)
        wall = re.search(r"walltime=(\d+):(\d\d):(\d\d)", resources)
        if nodes_match is None or wall is None:
            return 400, {"message": f"Bad resource request: {resources}"}
        cluster, count = nodes_match.group(1), int(nodes_match.group(2))
        clusters = self.reference.get(site, {})
        if cluster is not None and cluster not in clusters:
            return 400, {"message": f"There are not enough resources: no cluster {cluster}"}
        types = list(body.get("types") or [])
        try:
            selected = _selector(str(body.get("properties") or ""))
        except ValueError as error:
            return 400, {"message": f"Bad resource SQL constraint: {error}"}
        pool = [f"{host}.{site}.grid5000.fr" for c, hosts in sorted(clusters.items())
                if cluster in (None, c)
                and ("exotic" in types or not self.clusters.get(c, {}).get("exotic"))
                for host in sorted(hosts)
                if selected({"cluster": c, "host": f"{host}.{site}.grid5000.fr",
                             "network_address": f"{host}.{site}.grid5000.fr",
                             "exotic": "YES" if self.clusters.get(c, {}).get("exotic") else "NO"})]
        if len(pool) < count:
            return 400, {"message": "There are not enough resources for your request"}
        vlan_type = None
        vlan_match = re.search(r"\{type='(kavlan[^']*)'\}/vlan=1", resources)
        vlan = None
        if vlan_match:
            vlan_type = vlan_match.group(1)
            taken = {j.vlan for j in self.jobs.values() if self._state(j) in _LIVE}
            vlan = next((v for v in _VLAN_IDS.get(vlan_type, []) if v not in taken), None)
            if vlan is None:
                return 400, {"message": f"There are not enough resources: no free {vlan_type}"}
        now = time.time()
        start = now
        hours, minutes, seconds = (int(x) for x in wall.groups())
        walltime = hours * 3600 + minutes * 60 + seconds
        uid = max(self.jobs, default=4000) + 1
        job = _Job(uid, site, body, self.username, now, start, walltime, types, [],
                   vlan_type, vlan, fail_with=self._next_error, count=count, pool=pool)
        if body.get("reservation"):
            paris = datetime.strptime(body["reservation"], "%Y-%m-%d %H:%M:%S")
            job.start = paris.replace(tzinfo=ZoneInfo("Europe/Paris")).timestamp()
            if job.start < now - 60:
                return 400, {"message": "Reservation not valid --> KO (Reservation too old)"}
            free = self._free(pool, job.start, job.start + walltime, besides=job)
            if len(free) < count:
                could = datetime.fromtimestamp(self._could_run_at(pool, job),
                                               ZoneInfo("Europe/Paris"))
                return 400, {"message": "Reservation not valid --> KO (This reservation could"
                                        f" run at {could:%Y-%m-%d %H:%M:%S})"}
            job.nodes = free[:count]
        self._next_error = None
        self.jobs[uid] = job
        return 201, self._job_json(job)

    def _environments(self) -> set[str]:
        names = set(REFERENCE_ENVIRONMENTS)
        if self.environments_dir is not None:
            for path in self.environments_dir.glob("*.yaml"):
                names.add(str((yaml.safe_load(path.read_text()) or {}).get("name")))
        return names

    def _deploy(self, site: str, body: dict[str, Any]) -> tuple[int, Any]:
        nodes = list(body.get("nodes") or [])
        if body.get("environment") not in self._environments():
            return 400, {"message": f"Environment {body.get('environment')!r} does not exist"}
        deployable = {n for j in self.jobs.values() if j.site == site and "deploy" in j.types
                      and self._state(j) == "running" for n in j.nodes}
        if not nodes or not set(nodes) <= deployable:
            return 400, {"message": "Nodes must be part of a running deploy job of yours"}
        uid = f"D-{len(self.deployments) + 1:04d}"
        self.deployments[uid] = {"uid": uid, "site": site, "status": "processing",
                                 "nodes": nodes, "environment": body["environment"],
                                 "key": body.get("key", ""), "created_at": int(time.time()),
                                 "user_uid": self.username}
        return 201, self._deployment_json(uid)

    def _deployment_json(self, uid: str) -> dict[str, Any]:
        deployment = self.deployments[uid]
        if deployment["status"] == "processing" and time.time() > deployment["created_at"] + (
            self.step
        ):
            result = {}
            for node in deployment["nodes"]:
                ok = node not in self.deploy_ko
                result[node] = {"state": "OK" if ok else "KO", "macro": "", "micro": ""}
                if ok and node in self.node_keys:
                    with self.node_keys[node].open("a") as keys:
                        keys.write(deployment["key"].strip() + "\n")
            deployment.update(status="terminated", result=result)
        return {k: v for k, v in deployment.items() if k != "key"}

    def _vlan_submit(self, site: str, vlan: str, addresses: list[str]) -> dict[str, Any]:
        owned = {n for j in self.jobs.values() if j.site == site and j.vlan == vlan
                 and self._state(j) == "running" for n in j.nodes}
        answer = {}
        for address in addresses:
            host, rest = address.split(".", 1)
            node = f"{host.rsplit('-', 1)[0]}.{rest}"
            if node in owned:
                self.vlan_members.setdefault((site, vlan), set()).add(address)
                answer[address] = {"status": "success", "message": f"moved to vlan {vlan}"}
            else:
                answer[address] = {"status": "failure", "message": "not in a job of yours"}
        return answer

    def _status(self, site: str, clusters: list[str], path: str) -> dict[str, Any]:
        """`GET /sites/X/status` and `/sites/X/clusters/Y/status`, as g5k-api's
        SitesController#status and ClustersController#status answer (lib/oar/resource.rb
        `status`): `nodes` keyed by network address, each with OAR's `hard` state, a `soft`
        state (`free`, or `busy` while a job runs on it), its core slots, and `reservations`:
        the live jobs holding it, running or planned. `disks` (none here) is always there; a
        site's status also has its `vlans` (kavlan resources) the same way."""
        holders: dict[str, list[dict[str, Any]]] = {}
        running: set[str] = set()
        for job in self.jobs.values():
            state = self._state(job)
            if job.site != site or state not in _LIVE:
                continue
            for node in job.nodes:
                holders.setdefault(node, []).append(self._job_json(job, listed=True))
                if state == "running":
                    running.add(node)
            if job.vlan is not None:
                holders.setdefault(f"vlan {job.vlan}", []).append(self._job_json(job, listed=True))
                if state == "running":
                    running.add(f"vlan {job.vlan}")
        nodes = {}
        for cluster in clusters:
            for host, record in sorted(self.reference[site][cluster].items()):
                address = f"{host}.{site}.grid5000.fr"
                cores = int(record.get("architecture", {}).get("nb_cores") or 1)
                busy = address in running
                nodes[address] = {"hard": "alive", "soft": "busy" if busy else "free",
                                  "comment": "", "free_slots": 0 if busy else cores,
                                  "freeable_slots": 0, "busy_slots": cores if busy else 0,
                                  "reservations": holders.get(address, [])}
        url = f"/stable{path}"
        answer: dict[str, Any] = {
            "uid": int(time.time()), "nodes": nodes, "disks": {},
            "links": [{"rel": "self", "href": url, "type": "application/vnd.grid5000.item+json"},
                      {"rel": "parent", "href": url.removesuffix("/status"),
                       "type": "application/vnd.grid5000.item+json"}]}
        if path == f"/sites/{site}/status":
            answer["vlans"] = {vlan: {"hard": "alive", "type": kind,
                                      "soft": "busy" if f"vlan {vlan}" in running else "free",
                                      "reservations": holders.get(f"vlan {vlan}", [])}
                               for kind, vlans in _VLAN_IDS.items() for vlan in vlans}
        return answer

    def _deployment_list(self, site: str, query: dict[str, str], path: str) -> dict[str, Any]:
        """`GET /sites/X/deployments`, as g5k-api's DeploymentsController#index answers:
        newest first (`reverse=true`: oldest first), filtered by `user` and `status`, paged
        by `offset` and `limit` (50 unless asked, at most 500), with the `total`."""
        items = [self._deployment_json(uid) for uid, deployment in self.deployments.items()
                 if deployment["site"] == site]
        items = [item for item in items if query.get("user") in (None, item["user_uid"])
                 and query.get("status") in (None, item["status"])]
        items.sort(key=lambda item: (item["created_at"], item["uid"]),
                   reverse=query.get("reverse") != "true")
        offset = max(int(query.get("offset") or 0), 0)
        limit = min(int(query.get("limit") or 50), 500)
        return {"total": len(items), "offset": offset, "items": items[offset:offset + limit],
                "links": [{"rel": "self", "href": f"/stable{path}",
                           "type": "application/vnd.grid5000.collection+json"}]}

    # -- routing -----------------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        with self._lock:
            return self._route(method, path, query, body)

    def _route(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        parts = [p for p in path.split("/") if p]
        ref = self.reference
        if method == "GET" and parts == []:
            return 200, {"uid": "grid5000", "type": "grid"}
        if parts[:1] != ["sites"]:
            return 404, {"message": f"no route {path}"}
        if len(parts) == 1:
            return 200, {"items": [{"uid": s} for s in sorted(ref)], "total": len(ref)}
        site = parts[1]
        if site not in ref:
            return 404, {"message": f"Site {site} not found"}
        rest = parts[2:]
        if method == "GET" and rest == []:
            return 200, {"uid": site, "type": "site"}
        if rest[:1] == ["clusters"]:
            return self._reference(site, rest[1:])
        if rest == ["status"]:
            return 200, self._status(site, sorted(ref[site]), f"/sites/{site}/status")
        if rest == ["jobs"] and method == "POST":
            return self._submit(site, body or {})
        if rest == ["jobs"] and method == "GET":
            filters = {} if self.filters_ignored else query
            states = set(filter(None, filters.get("state", "").split(",")))
            newest_first = sorted(self.jobs.values(), key=lambda j: -j.uid)  # as g5k-api
            items = [self._job_json(j, listed=True) for j in newest_first if j.site == site
                     and filters.get("name") in (None, j.body.get("name"))
                     and filters.get("user") in (None, j.user)]
            items = [i for i in items if not states or i["state"] in states]
            offset = int(query.get("offset") or 0)
            limit = min(int(query.get("limit") or self.page_size), self.page_size)
            return 200, {"items": items[offset:offset + limit], "total": len(items),
                         "offset": offset}
        if rest[:1] == ["jobs"] and len(rest) >= 2:
            job = self.jobs.get(int(rest[1])) if rest[1].isdigit() else None
            if job is None or job.site != site:
                return 404, {"message": f"Job {rest[1]} not found"}
            if len(rest) == 2 and method == "GET":
                return 200, self._job_json(job)
            if len(rest) == 2 and method == "DELETE":
                if self._state(job) not in _LIVE:
                    return 400, {"message": f"Job {job.uid} is already finished"}
                if job.killed_at is not None:
                    return 400, {"message": f"Job {job.uid} was already killed"}
                job.killed_at = time.time()
                self._state(job)  # with no kill_delay it ends at once
                return 202, {"uid": job.uid, "status": "Delete request registered"}
            if rest[2:] == ["walltime"] and method == "POST":
                change = re.fullmatch(r"\+(\d+):(\d\d):(\d\d)", str((body or {}).get("walltime")))
                if change is None or self._state(job) != "running":
                    return 400, {"message": "walltime change needs a running job and +H:MM:SS"}
                h, m, s = (int(x) for x in change.groups())
                asked = h * 3600 + m * 60 + s
                granted = min(asked, self.walltime_grant_cap or asked)
                delay = self.step if self.walltime_grant_delay is None else (
                    self.walltime_grant_delay)
                job.walltime_change = (time.time() + delay, granted)
                return 202, {"status": "walltime change registered", "walltime": job.walltime}
        if rest == ["deployments"] and method == "POST":
            return self._deploy(site, body or {})
        if rest == ["deployments"] and method == "GET":
            return 200, self._deployment_list(site, query, f"/sites/{site}/deployments")
        if rest[:1] == ["deployments"] and len(rest) == 2 and rest[1] in self.deployments:
            return 200, self._deployment_json(rest[1])
        if rest[:1] == ["vlans"]:
            ids = sorted({v for vs in _VLAN_IDS.values() for v in vs}, key=int)
            if len(rest) == 1:
                return 200, {"items": [{"uid": v} for v in ids], "total": len(ids)}
            if rest[1] in ids and len(rest) == 2:
                kind = next(k for k, vs in _VLAN_IDS.items() if rest[1] in vs)
                return 200, {"uid": rest[1], "type": kind}
            if rest[1] in ids and rest[2:] == ["nodes"] and method == "POST":
                return 200, self._vlan_submit(site, rest[1], list(body or []))
            if rest[1] in ids and rest[2:] == ["nodes"]:
                members = sorted(self.vlan_members.get((site, rest[1]), ()))
                return 200, {"items": [{"uid": m, "vlan": rest[1]} for m in members]}
        return 404, {"message": f"no route {method} {path}"}

    def _reference(self, site: str, rest: list[str]) -> tuple[int, Any]:
        clusters = self.reference[site]
        if rest == []:
            return 200, {"items": [{"uid": c} for c in sorted(clusters)]}
        if rest[0] not in clusters:
            return 404, {"message": f"Cluster {rest[0]} not found"}
        nodes = clusters[rest[0]]
        if len(rest) == 1:
            return 200, self.clusters.get(rest[0], {"uid": rest[0], "type": "cluster"})
        if rest[1:] == ["status"]:
            return 200, self._status(site, [rest[0]], f"/sites/{site}/clusters/{rest[0]}/status")
        if rest[1:] == ["nodes"]:
            return 200, {"items": [nodes[h] for h in sorted(nodes)], "total": len(nodes)}
        if len(rest) == 3 and rest[2] in nodes:
            return 200, nodes[rest[2]]
        return 404, {"message": f"Node {'/'.join(rest)} not found"}



class _Handler(BaseHTTPRequestHandler):
    owner: FakeGrid5000
    protocol_version = "HTTP/1.1"

    def log_message(self, *_: Any) -> None:
        return None

    def _serve(self) -> None:
        fake = self.owner
        url = urlsplit(self.path)
        path = url.path.removeprefix("/stable")
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        fake.requests.append((self.command, path, body))
        expected = base64.b64encode(f"{fake.username}:{fake.password}".encode()).decode()
        fault = fake.faults.take(self.command, path)
        if fault is not None and fault.kind == "drop":
            drop_connection(self)
            return
        if fake.faults.revoked or self.headers.get("Authorization") != f"Basic {expected}":
            status, answer = 401, {"code": 401, "message": "Unauthorized"}
        elif fault is not None and fault.kind == "fail":
            status, answer = fault.status, {"code": fault.status, "message": fault.message}
        else:
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            status, answer = fake.handle(self.command, path, query, body)
        if fault is not None and fault.kind == "delay":
            fault.wait_late()
        data = json.dumps(answer).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            if status == 401:
                self.send_header("WWW-Authenticate", 'Basic realm="Grid\'5000 API"')
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
            pass

    do_GET = do_POST = do_DELETE = do_PUT = _serve


def _load_reference(copies: int) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """{site: {cluster: {host: record}}} from the fixture records, each cloned `copies` times
    (the first clone is the file's node, MACs included)."""
    reference: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    for path in sorted(FIXTURES.glob("*-1.json")):
        record = json.loads(path.read_text())
        host = record["uid"]
        cluster = host.rsplit("-", 1)[0]
        site = next(a["network_address"] for a in record["network_adapters"]
                    if a.get("mounted")).split(".")[1]
        for index in range(1, copies + 1):
            clone = json.loads(json.dumps(record).replace(f'{host}"', f'{cluster}-{index}"')
                               .replace(f"{host}.", f"{cluster}-{index}.")
                               .replace(f"{host}-", f"{cluster}-{index}-"))
            for adapter in clone["network_adapters"]:  # the file's MACs, then each its own
                mac = adapter["mac"].split(":")
                mac[4] = f"{(int(mac[4], 16) + index - 1) % 256:02x}"
                adapter["mac"] = ":".join(mac)
            reference.setdefault(site, {}).setdefault(cluster, {})[f"{cluster}-{index}"] = clone
    return reference


def _load_clusters() -> dict[str, dict[str, Any]]:
    """{cluster: its Reference API record} from the fixtures' `<cluster>.json` files."""
    records = (json.loads(path.read_text()) for path in sorted(FIXTURES.glob("*.json")))
    return {record["uid"]: record for record in records if record.get("type") == "cluster"}


_CONDITION = re.compile(r"\s*(\w+)\s*(?:=\s*'([^']*)'|in\s*\(([^)]*)\))\s*", re.IGNORECASE)


def _selector(properties: str) -> Any:
    """A predicate over a node's properties for OAR's `-p` filter: conditions `key='value'`
    or `key in ('a', 'b')` on `cluster`, `host`, `network_address`, `exotic`, joined by
    `and`. Anything else raises ValueError (OAR refuses what its SQL cannot run)."""
    conditions = []
    for part in filter(str.strip, re.split(r"\band\b", properties, flags=re.IGNORECASE)):
        match = _CONDITION.fullmatch(part)
        if match is None or match.group(1) not in ("cluster", "host", "network_address",
                                                   "exotic"):
            raise ValueError(part.strip())
        key, value, values = match.groups()
        allowed = {value} if values is None else {
            v.strip().strip("'") for v in values.split(",")}
        conditions.append((key, allowed))
    return lambda node: all(node[key] in allowed for key, allowed in conditions)


_SUDO_G5K = """#!/bin/sh
echo "sudo-g5k $*" >> "$FAKE_G5K_LOG"
for arg do  # root's authorized_keys on a fake node is its sshd's
  shift
  [ "$arg" = /root/.ssh/authorized_keys ] && arg="$FAKE_AUTHORIZED_KEYS"
  set -- "$@" "$arg"
done
exec "$@"
"""
_TGZ_G5K = """#!/bin/sh
echo "tgz-g5k $*" >> "$FAKE_G5K_LOG"
while [ $# -gt 0 ]; do [ "$1" = -f ] && out="$2"; shift; done
mkdir -p "$(dirname "$out")" && echo "fake image" > "$out"
"""
_KAENV3 = """#!/bin/sh
echo "kaenv3 $*" >> "$FAKE_G5K_LOG"
case "$1" in
  -p) printf '%s\\n' "---" "name: $2" "version: 2024010100" "arch: x86_64" \
        "description: $2 reference environment" "author: support-staff@lists.grid5000.fr" \
        "visibility: public" "destructive: false" "os: linux" "image:" \
        "  file: server:///grid5000/images/$2.tar.zst" "  kind: tar" "  compression: zstd" \
        "filesystem: ext4" "partition_type: 131" "multipart: false" ;;
  -a) cp "$2" "$FAKE_G5K_ENVS/" ;;
  *) echo "kaenv3: unknown call" >&2; exit 1 ;;
esac
"""


def write_tools(directory: Path) -> Path:
    """The testbed's fake command-line tools in `directory`/bin; returns that bin directory."""
    bin_dir = directory / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, text in (("sudo-g5k", _SUDO_G5K), ("tgz-g5k", _TGZ_G5K), ("kaenv3", _KAENV3)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return bin_dir


class G5kSSHD(FakeSSHD):
    """A node or frontend: its sessions find the fake Grid'5000 tools first on PATH."""

    def __init__(self, authorized_keys: list[str], tools: Path, log: Path, envs: Path,
                 home: Path | None = None) -> None:
        super().__init__(authorized_keys)
        self.tools, self.log_file, self.envs, self.home = tools, log, envs, home

    @property
    def authorized_keys_file(self) -> Path:
        assert self.directory is not None
        return self.directory / "authorized_keys"

    def _config(self, directory: Path) -> str:
        lines = [line for line in super()._config(directory).splitlines()
                 if not line.startswith("SetEnv")]
        env = [f"PATH={self.tools}:/usr/sbin:/usr/bin:/sbin:/bin", f"FAKE_G5K_LOG={self.log_file}",
               f"FAKE_G5K_ENVS={self.envs}", f"FAKE_AUTHORIZED_KEYS={directory}/authorized_keys"]
        if self.home is not None:
            env.append(f"HOME={self.home}")
        return "\n".join([*lines, "SetEnv " + " ".join(env)]) + "\n"
