"""A fake OpenStack cloud on 127.0.0.1: Keystone v3, Blazar, Nova, Neutron and Glance.

One HTTP server speaks the real wire protocol to the real openstacksdk/keystoneauth:
version discovery, ``POST /v3/auth/tokens`` with a service catalog that points back at
this server (one region per Chameleon site), and the resources a Chameleon reservation
touches (leases, servers, key pairs, ports, floating IPs, images), with state.

Faults are injected per call through ``faults`` (tests/fakes/faults.py: an HTTP error, a
late answer, a dropped connection, tokens and application credentials expired or revoked
mid-run) or as behaviour knobs (``hosts``, ``quota``, ``server_fault``, ``lease_fault``).
``live()`` says what is still reserved (leases, servers, floating IPs, key pairs).
A ``backer`` may give servers a real machine (an sshd in a network namespace): it is called
when a server becomes ACTIVE, when a floating IP is bound to it and when it is deleted.

Payload shapes follow the api-ref samples in tests/fixtures/chameleon/ and the services'
source where the samples are silent: Blazar's lease, reservation and event records and its two
date forms (`2017-02-21T14:50:00.000000` for lease and event dates, `2017-12-27 10:00:00` for
`created_at`/`updated_at`), Nova's scheduler hints under both spellings, Neutron's list
filters (URL-encoded values, repeated values, `fields`, `limit`/`marker` with `next` links),
Glance's `limit`/`marker` and schemas, and the reads clients make besides omnibed's (subnets,
security groups, key pairs, Nova and Neutron quotas). tests/providers/chameleon/
test_chameleon_second_clients.py holds the fake to python-blazarclient and the `openstack`
command.
"""

from __future__ import annotations

import json
import re
import socketserver
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlencode

from tests.fakes.faults import Faults, drop_connection

FIXTURES = Path(__file__).parents[1] / "fixtures" / "chameleon"

SITES = ("CHI@UC", "CHI@TACC", "KVM@TACC")
USER_ID = "5434f637520d4c17bbf254af034b0320"
PROJECT_ID = "aa45f56901ef45ee95e3d211097c0ea3"
PROJECT_NAME = "CH-000000"
NETWORKS = {"sharednet1": "a87cc70a-3e15-4acf-8205-9b711a3531b7",
            "public": "0b901727-cca2-43ed-bcc8-c21b0982dcb1"}
SUBNETS = {NETWORKS["sharednet1"]: "6f6e3a42-8a33-4e8a-a4c3-6b6f2a5b4c10",
           NETWORKS["public"]: "1ba2a2f0-3d5c-4c29-8d6b-2f0a6f0d7b21"}
SECURITY_GROUP = "85cc3048-abc3-43cc-89b3-377341426ac5"
BASE_IMAGES = {"CC-Ubuntu22.04": "70a599e0-31e7-49b7-b260-868f441e862b"}
FLAVORS = {"baremetal": "1", "m1.small": "2"}


def registry_record(node_type: str) -> dict:
    """The resource-registry record of one real Chameleon node of `node_type` (the fixtures
    hold compute_skylake and compute_arm64)."""
    for path in sorted(FIXTURES.glob("chameleon_registry_node_*.json")):
        record = json.loads(path.read_text())
        if record["node_type"] == node_type:
            return record
    raise KeyError(f"no registry fixture of node type {node_type!r}")


def _blazar_host(host_id: int, record: dict) -> dict:
    """A Blazar host as Chameleon's `GET /os-hosts` shows it: the host record
    (doc/api_samples/hosts/host-list-resp.json) with the extra capabilities flattened into it
    (blazar/plugins/oshosts/host_plugin.py get_computehost). Nova's Ironic driver reports no
    `cpu_info` (nova/virt/ironic/driver.py _node_resource; Blazar keeps `str()` of Nova's
    empty object) and names the hypervisor after the
    Ironic node UUID, the registry's `uid`; Chameleon's inventory sync (doni) adds `uid`,
    `node_name`, `node_type`, and the registry's fields as dotted capabilities, which
    python-chi's lease helpers filter on (`$architecture.platform_type`)."""
    uid = str(uuid.uuid4())  # each fake host is another machine of the record's kind
    return {
        "id": str(host_id), "hypervisor_hostname": uid, "hypervisor_type": "ironic",
        "hypervisor_version": 1, "vcpus": record["architecture"]["smt_size"],
        "cpu_info": "{}", "memory_mb": record["main_memory"]["ram_size"] // 2**20,
        "local_gb": 0, "service_name": "ironic-compute", "reservable": True,
        "status": None, "trust_id": uuid.uuid4().hex, "created_at": _db_now(),
        "updated_at": None, "uid": uid, "node_name": f"{record['node_name']}-{host_id}",
        "node_type": record["node_type"],
        **{f"architecture.{key}": value for key, value in record["architecture"].items()},
        "processor.model": record["processor"]["model"],
    }


class Backer(Protocol):
    """Gives fake servers a real machine; returns addresses the fake reports."""

    def boot(self, server_id: str, name: str, public_key: str) -> tuple[str, str]:
        """Start a node; return (fixed IPv4, MAC)."""

    def bind_floating_ip(self, server_id: str) -> str:
        """Make the node reachable from the host; return the floating address."""

    def delete(self, server_id: str) -> None: ...


@dataclass
class Cloud:
    """The fake's state; tests read it to prove what is left."""

    leases: dict[str, dict] = field(default_factory=dict)
    servers: dict[str, dict] = field(default_factory=dict)
    keypairs: dict[str, dict] = field(default_factory=dict)
    ports: dict[str, dict] = field(default_factory=dict)
    floatingips: dict[str, dict] = field(default_factory=dict)
    images: dict[str, dict] = field(default_factory=dict)
    requests: list[tuple[str, str, Any]] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """How many of each resource a user would pay for or see leaked."""
        live_leases = [x for x in self.leases.values() if x["status"] not in ("TERMINATED",)]
        return {"leases": len(live_leases), "servers": len(self.servers),
                "keypairs": len(self.keypairs), "ports": len(self.ports),
                "floatingips": len(self.floatingips)}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")


def _db_now() -> str:
    """Blazar's `created_at`/`updated_at`: blazar/db/sqlalchemy/model_base.py writes the DB
    column (whole seconds) with `isoformat(' ')`, e.g. `2017-12-27 10:00:00` (python-chi
    parses exactly this form and fails on any other)."""
    return datetime.now(UTC).replace(tzinfo=None, microsecond=0).isoformat(" ")


def _zulu_now() -> str:
    """Nova's and Glance's timestamps, e.g. `2017-02-14T19:23:58Z` (their api-ref samples)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _blazar_time(value: datetime) -> str:
    """Blazar's lease and event dates: oslo.serialization's jsonutils writes datetimes with
    timeutils.PERFECT_TIME_FORMAT, e.g. `2017-02-21T14:50:00.000000`."""
    return value.strftime("%Y-%m-%dT%H:%M:%S.%f")


class FakeOpenStack:
    """Start with ``with FakeOpenStack() as cloud:``; ``cloud.auth_url`` is Keystone v3."""

    def __init__(self, *, username: str = "demo", password: str = "secret",
                 app_cred_id: str = "appcred", app_cred_secret: str = "appsecret",
                 backer: Backer | None = None, hosts: int = 8, ticks: int = 1,
                 unix_socket: str | None = None) -> None:
        self.users = {username: password}
        self.app_creds = {app_cred_id: app_cred_secret}
        self.backer = backer
        self.hosts = hosts  # physical hosts free for leases
        self.ticks = ticks  # GETs a resource stays in each transient state
        self.quota: dict[str, int] = {"instances": 100, "floatingip": 100}
        self.server_fault: str | None = None  # servers go ERROR with this fault message
        self.lease_fault = False  # leases go ERROR after STARTING
        self.missing_services: set[str] = set()  # service types left out of the catalogue
        self.hosts_busy_from: datetime | None = None  # another lease takes the hosts then
        self.hide_hypervisor = False  # Nova's default policy: hypervisor names admin-only
        self.hosts_forbidden = False  # Blazar's default policy: host lists admin-only
        self.host_records: dict[str, dict] = {}  # Blazar host id -> host view
        self.allocations: dict[str, list[str]] = {}  # host reservation id -> Blazar host ids
        self.state = Cloud()
        self.tokens: set[str] = set()
        self.faults = Faults()
        self._lock = threading.RLock()
        self.add_hosts(registry_record("compute_skylake"), hosts, free=False)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.auth_url = f"{self.url}/identity/v3"
        self._servers = [self._server]
        if unix_socket is not None:  # for nodes in network namespaces (cc-snapshot's upload)
            unix = socketserver.ThreadingUnixStreamServer(unix_socket, self._handler())
            unix.daemon_threads = True
            self._servers.append(unix)

    def add_hosts(self, record: dict, count: int, *, free: bool = True) -> None:
        """`count` more Blazar hosts like the registry `record` (see `registry_record`)."""
        with self._lock:
            for _ in range(count):
                host_id = len(self.host_records) + 1
                self.host_records[str(host_id)] = _blazar_host(host_id, record)
            if free:
                self.hosts += count

    def __enter__(self) -> FakeOpenStack:
        for server in self._servers:
            threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()

    def live(self) -> list[str]:
        """What is still reserved or allocated on this cloud, one line per object."""
        with self._lock:
            state = self.state
            return [*(f"lease {x['name']!r} ({x['status']})" for x in state.leases.values()
                      if x["status"] != "TERMINATED"),
                    *(f"server {x['name']!r}" for x in state.servers.values()),
                    *(f"floating IP {x['floating_ip_address']} ({x['description']})"
                      for x in state.floatingips.values()),
                    *(f"key pair {name!r}" for name in state.keypairs)]

    # catalog -------------------------------------------------------------------------------
    def _catalog(self) -> list[dict]:
        services = {"identity": "/identity", "compute": "/compute/v2.1",
                    "network": "/network", "image": "/image",
                    "reservation": "/reservation/v1"}
        catalog = []
        for kind, path in services.items():
            if kind in self.missing_services:
                continue
            endpoints = [{"id": uuid.uuid4().hex, "interface": "public", "region": site,
                          "region_id": site, "url": self.url + path} for site in SITES]
            catalog.append({"type": kind, "id": uuid.uuid4().hex, "name": kind,
                            "endpoints": endpoints})
        return catalog

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                return None

            def _serve(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                path = self.path.split("?")[0].rstrip("/") or "/"
                query = self.path.partition("?")[2]
                fault = fake.faults.take(method, path)
                if fault and fault.kind == "drop":
                    drop_connection(self)
                    return
                if fault and fault.kind == "fail":
                    status, payload, headers = fault.status, _error_body(
                        path, fault.status, fault.message), {}
                else:
                    try:
                        status, payload, headers = fake._route(
                            method, path, query, body, self.headers.get("X-Auth-Token"),
                            _compute_version(self.headers))
                    except Exception as error:  # a bug of the fake or its backer: say it
                        status, payload, headers = 500, {"error": {
                            "code": 500, "message": f"fake failed: {error!r}"}}, {}
                if fault and fault.kind == "delay":
                    fault.wait_late()
                data = b"" if payload is None else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting (a slow-answer fault)

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

            def do_PUT(self) -> None:
                self._serve("PUT")

            def do_DELETE(self) -> None:
                self._serve("DELETE")

        return Handler

    # routing -------------------------------------------------------------------------------
    def _route(self, method: str, path: str, query: str, body: Any, token: str | None,
               compute_version: tuple[int, int] = (2, 1)) -> tuple[int, Any, dict[str, str]]:
        with self._lock:
            self.state.requests.append((method, path, body))
            if path.startswith("/identity"):
                return self._identity(method, path, body)
            if self.faults.revoked:  # every token issued so far is refused
                self.tokens.clear()
            # version documents are public: each service's api-paste/WSGI root answers them
            # before authentication, and keystoneauth asks for them without a token first
            public = path in ("/compute", "/compute/v2.1", "/network", "/image", "/reservation")
            if token not in self.tokens and not public:
                return 401, {"error": {"code": 401, "message": "The request you have made "
                                       "requires authentication.", "title": "Unauthorized"}}, {}
            if path.startswith("/compute"):
                return self._nova(method, path.removeprefix("/compute") or "/", body,
                                  compute_version)
            for prefix, handler in (("/reservation", self._blazar),
                                    ("/network", self._neutron), ("/image", self._glance)):
                if path.startswith(prefix):
                    return handler(method, path[len(prefix):] or "/", query, body)
        return 404, {"error": {"message": f"no route {path}"}}, {}

    def _identity(self, method: str, path: str, body: Any) -> tuple[int, Any, dict]:
        version = {"id": "v3.14", "status": "stable", "updated": "2020-04-07T00:00:00Z",
                   "links": [{"rel": "self", "href": self.auth_url + "/"}],
                   "media-types": [{"base": "application/json",
                                    "type": "application/vnd.openstack.identity-v3+json"}]}
        if method == "GET" and path in ("/identity", "/identity/v3"):
            return 200, {"version": version} if path.endswith("v3") else {
                "versions": {"values": [version]}}, {}
        if method == "POST" and path == "/identity/v3/auth/tokens":
            identity = body["auth"]["identity"]
            methods = identity["methods"]
            if "application_credential" in methods:
                cred = identity["application_credential"]
                ok = self.app_creds.get(cred.get("id")) == cred.get("secret")
            elif "password" in methods:
                user = identity["password"]["user"]
                ok = self.users.get(user.get("name")) == user.get("password")
            else:
                ok = False
            if not ok or self.faults.revoked:
                return 401, {"error": {"code": 401, "title": "Unauthorized",
                                       "message": "The request you have made requires "
                                       "authentication."}}, {}
            scope = (body["auth"].get("scope") or {}).get("project")
            unscoped = "password" in methods and not scope
            if "password" in methods and scope and not (
                scope.get("id") == PROJECT_ID or scope.get("name") == PROJECT_NAME
            ):  # Keystone: a project the user has no role on is 401
                return 401, {"error": {"code": 401, "title": "Unauthorized",
                                       "message": "The request you have made requires "
                                       "authentication."}}, {}
            token = uuid.uuid4().hex
            if unscoped:  # Keystone: no scope, no catalogue and no project in the token
                return 201, {"token": {
                    "methods": methods, "expires_at": "2099-01-01T00:00:00.000000Z",
                    "issued_at": _now() + "Z", "audit_ids": [uuid.uuid4().hex[:22]],
                    "user": {"domain": {"id": "default", "name": "Default"}, "id": USER_ID,
                             "name": "demo"}}}, {"X-Subject-Token": token}
            self.tokens.add(token)
            return 201, {"token": {
                "methods": methods, "expires_at": "2099-01-01T00:00:00.000000Z",
                "issued_at": _now() + "Z", "audit_ids": [uuid.uuid4().hex[:22]],
                "is_domain": False, "catalog": self._catalog(),
                "project": {"domain": {"id": "default", "name": "Default"},
                            "id": PROJECT_ID, "name": PROJECT_NAME},
                "roles": [{"id": uuid.uuid4().hex, "name": "member"}],
                "user": {"domain": {"id": "default", "name": "Default"}, "id": USER_ID,
                         "name": "demo"}}}, {"X-Subject-Token": token}
        return 404, {"error": {"message": "no such identity route"}}, {}

    # Blazar --------------------------------------------------------------------------------
    def _blazar(self, method: str, path: str, query: str, body: Any) -> tuple[int, Any, dict]:
        def error(code: int, message: str) -> tuple[int, Any, dict]:
            return code, {"error_code": code, "error_message": message,
                          "error_name": code}, {}

        if path == "/":
            return 200, {"versions": [{"id": "v1.0", "status": "CURRENT", "links": [
                {"href": self.url + "/reservation/v1/", "rel": "self"}]}]}, {}
        if path.startswith("/v1/os-hosts") and method == "GET":
            return self._blazar_hosts(path, query, error)
        if path == "/v1/leases" and method == "GET":
            for lease in self.state.leases.values():
                self._advance_lease(lease)
            return 200, {"leases": [_public(x) for x in self.state.leases.values()]}, {}
        if path == "/v1/leases" and method == "POST":
            return self._create_lease(body, error)
        match = re.fullmatch(r"/v1/leases/([\w-]+)", path)
        lease = self.state.leases.get(match.group(1)) if match else None
        if lease is None:
            return error(404, f"Object with {{'lease_id': '{path}'}} not found")
        if method == "GET":
            self._advance_lease(lease)
            return 200, {"lease": _public(lease)}, {}
        if method == "PUT":  # blazar/manager/service.py update_lease, its checks in order
            now = datetime.now(UTC).replace(tzinfo=None, second=0, microsecond=0)
            start = datetime.fromisoformat(lease["start_date"])
            end = datetime.fromisoformat(lease["end_date"])
            new_start = _blazar_date(body.get("start_date"), start)
            new_end = _blazar_date(body.get("end_date"), end)
            if new_start is None or new_end is None:
                return error(400, "Malformed parameter start_date/end_date")
            if start < now and new_start != start:
                return error(403, "Cannot modify the start date of already started leases")
            if start > now and new_start < now:
                return error(403, "Start date must be later than current date")
            if end < now:
                return error(403, "Terminated leases can only be renamed")
            if new_end < now or new_end < new_start:
                return error(403, "End date must be later than current and start date")
            busy = self.hosts_busy_from
            if busy is not None and new_end > busy.replace(tzinfo=None):
                return error(500, "Not enough hosts available")
            lease["start_date"] = _blazar_time(new_start)
            lease["end_date"] = _blazar_time(new_end)
            lease["updated_at"] = _db_now()
            for event in lease["events"]:
                event["time"] = _blazar_time({"start_lease": new_start, "end_lease": new_end}.get(
                    event["event_type"], max(new_start, new_end - timedelta(minutes=60))))
            return 200, {"lease": _public(lease)}, {}
        if method == "DELETE":
            self._end_lease(lease)
            del self.state.leases[lease["id"]]
            return 204, None, {}
        return error(405, "method not allowed")

    def _blazar_hosts(self, path: str, query: str, error: Callable) -> tuple[int, Any, dict]:
        """`GET /os-hosts`, `/os-hosts/{id}` and `/os-hosts/allocations` (api-ref hosts.inc;
        allocations filtered by `lease_id` / `reservation_id`, host_plugin.py
        query_allocations). Chameleon's policy lets projects read them
        (chi-in-a-box kolla/node_custom_config/blazar/policy.yaml); upstream's is admin-only."""
        if self.hosts_forbidden:
            return error(403, "Policy doesn't allow blazar:oshosts:get to be performed.")
        if path == "/v1/os-hosts":
            return 200, {"hosts": list(self.host_records.values())}, {}
        if path == "/v1/os-hosts/allocations":
            wanted = {key: values[0] for key, values in parse_qs(query).items()}
            allocations = []
            for host_id in self.host_records:
                held = [{"id": r["id"], "lease_id": lease["id"],
                         "start_date": lease["start_date"], "end_date": lease["end_date"]}
                        for lease in self.state.leases.values()
                        if lease["status"] != "TERMINATED" for r in lease["reservations"]
                        if host_id in self.allocations.get(r["id"], ())]
                held = [x for x in held if all(x.get(k if k != "reservation_id" else "id") == v
                                               for k, v in wanted.items())]
                allocations.append({"resource_id": host_id, "reservations": held})
            return 200, {"allocations": allocations}, {}
        host = self.host_records.get(path.removeprefix("/v1/os-hosts/"))
        if host is None:
            return error(404, f"Object with {{'host_id': '{path}'}} not found")
        return 200, {"host": host}, {}

    def _free_hosts(self, resource_properties: str) -> list[str]:
        """Hosts no live lease holds that match `resource_properties` (omnibed and python-chi
        send `["==", "$key", value]`; blazar/utils/plugins.py convert_requirements). Simpler
        than Blazar: a host held by any live lease is busy, whatever the dates."""
        wanted = json.loads(resource_properties) if resource_properties else []
        held = {host for lease in self.state.leases.values() if lease["status"] != "TERMINATED"
                for r in lease["reservations"] for host in self.allocations.get(r["id"], ())}
        return [host_id for host_id, host in self.host_records.items() if host_id not in held
                and (not wanted or str(host.get(wanted[1].lstrip("$"))) == str(wanted[2]))]

    def _create_lease(self, body: dict, error: Callable) -> tuple[int, Any, dict]:
        """blazar/manager/service.py create_lease: its checks and their HTTP codes."""
        for key in ("start_date", "end_date"):
            value = body[key]
            if value != "now" and not re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d", value):
                return error(400, f"Malformed parameter {key}: {value!r}")
        now = datetime.now(UTC).replace(tzinfo=None, second=0, microsecond=0)
        start = _blazar_date(body["start_date"], now)
        end = _blazar_date(body["end_date"], now)
        assert start is not None and end is not None
        if start < now:
            return error(403, "Start date must be later than current date")
        if end <= start:
            return error(400, "End date must be later than start date")
        if any(x["name"] == body["name"] for x in self.state.leases.values()):
            return error(409, f"The lease with name: {body['name']} already exists")
        for wanted in body["reservations"]:
            if wanted.get("resource_type") not in ("physical:host", "virtual:instance",
                                                   "network", "device"):
                return error(500, f"The {wanted.get('resource_type')} resource type is not"
                                  " supported")
            if int(wanted.get("min", 1)) > int(wanted.get("max", wanted.get("min", 1))):
                return error(400, "Invalid values for min/max of hosts. Max must be equal to"
                                  " or larger than min.")
        lease_id = str(uuid.uuid4())
        reservations = []
        for wanted in body["reservations"]:
            hosts: list[str] = []
            if wanted["resource_type"] == "physical:host":
                hosts = self._free_hosts(wanted.get("resource_properties", ""))[:wanted["min"]]
                if wanted["min"] > min(self.hosts, len(hosts)):
                    return error(500, "Not enough hosts available")
                self.hosts -= wanted["min"]
            reservation_id = str(uuid.uuid4())
            self.allocations[reservation_id] = hosts
            reservations.append({"resource_properties": "", **wanted, "id": reservation_id,
                                 "lease_id": lease_id, "resource_id": str(uuid.uuid4()),
                                 "status": "pending", "missing_resources": False,
                                 "resources_changed": False, "created_at": _db_now(),
                                 "updated_at": None})
        # service.py create_lease: a start_lease and an end_lease event, and a before_end_lease
        # event `minutes_before_end_lease` (default 60) before the end, never before the start
        times = {"start_lease": start, "end_lease": end,
                 "before_end_lease": max(start, end - timedelta(minutes=60))}
        events = [{"id": str(uuid.uuid4()), "lease_id": lease_id, "event_type": kind,
                   "time": _blazar_time(at), "status": "UNDONE", "created_at": _db_now(),
                   "updated_at": None} for kind, at in times.items()]
        lease = {"id": lease_id, "name": body["name"], "start_date": _blazar_time(start),
                 "end_date": _blazar_time(end), "status": "PENDING",
                 "degraded": False, "user_id": USER_ID, "project_id": PROJECT_ID,
                 "trust_id": uuid.uuid4().hex, "created_at": _db_now(), "updated_at": None,
                 "reservations": reservations, "events": events, "_seen": 0}
        self.state.leases[lease_id] = lease
        return 201, {"lease": _public(lease)}, {}

    def _advance_lease(self, lease: dict) -> None:
        if lease["status"] in ("TERMINATED", "ERROR"):
            return
        if datetime.fromisoformat(lease["end_date"]).replace(tzinfo=UTC) <= datetime.now(UTC):
            self._end_lease(lease)  # Blazar's end_lease event: instances deleted, hosts freed
            return
        if lease["status"] == "ACTIVE":
            return
        if datetime.fromisoformat(lease["start_date"]).replace(tzinfo=UTC) > datetime.now(UTC):
            return  # an advance reservation stays PENDING until its start
        lease["_seen"] += 1
        if lease["_seen"] > self.ticks:
            lease["status"] = {"PENDING": "STARTING", "STARTING":
                               "ERROR" if self.lease_fault else "ACTIVE"}[lease["status"]]
            lease["_seen"] = 0
            for reservation in lease["reservations"]:
                reservation["status"] = lease["status"].lower()
            if lease["status"] == "ACTIVE":
                _mark_done(lease, "start_lease")

    def _end_lease(self, lease: dict) -> None:
        """What Blazar does at a lease's end (or deletion): its servers go, its hosts return."""
        if lease["status"] != "TERMINATED":
            self.hosts += sum(r.get("min", 0) for r in lease["reservations"]
                              if r["resource_type"] == "physical:host")
        for server in list(self.state.servers.values()):
            if server["_reservation"] in {r["id"] for r in lease["reservations"]}:
                self._delete_server(server["id"])
        lease["status"] = "TERMINATED"
        for reservation in lease["reservations"]:
            reservation["status"] = "deleted"
        _mark_done(lease, "end_lease")

    def expire(self, name: str) -> None:
        """Time passes: the lease called `name` reaches its end."""
        with self._lock:
            for lease in self.state.leases.values():
                if lease["name"] == name:
                    past = datetime.now(UTC) - timedelta(minutes=1)
                    lease["end_date"] = past.strftime("%Y-%m-%dT%H:%M:00.000000")

    # Nova ----------------------------------------------------------------------------------
    def _nova(self, method: str, path: str, body: Any,
              version: tuple[int, int]) -> tuple[int, Any, dict]:
        base = self.url + "/compute/v2.1"
        if path in ("/", "/v2.1"):
            version = {"id": "v2.1", "status": "CURRENT", "version": "2.79",
                       "min_version": "2.1", "updated": "2013-07-23T11:33:21Z",
                       "links": [{"rel": "self", "href": base + "/"}]}
            return 200, {"version": version} if path == "/v2.1" else {"versions": [version]}, {}
        path = path.removeprefix("/v2.1")
        if path == "/flavors/detail" or path == "/flavors":
            return 200, {"flavors": [{"id": fid, "name": name, "vcpus": 1, "ram": 512,
                                      "disk": 10, "links": []}
                                     for name, fid in FLAVORS.items()]}, {}
        match = re.fullmatch(r"/flavors/([\w.@-]+)", path)
        if match:
            for name, fid in FLAVORS.items():
                if match.group(1) in (name, fid):
                    return 200, {"flavor": {"id": fid, "name": name, "vcpus": 1, "ram": 512,
                                            "disk": 10, "links": []}}, {}
            return 404, {"itemNotFound": {"code": 404, "message": "Flavor not found."}}, {}
        if path == "/os-keypairs" and method == "POST":
            pair = body["keypair"]
            if pair["name"] in self.state.keypairs:
                return 409, {"conflictingRequest": {"code": 409, "message":
                             f"Key pair '{pair['name']}' already exists."}}, {}
            self.state.keypairs[pair["name"]] = {
                "name": pair["name"], "public_key": pair["public_key"], "type": "ssh",
                "fingerprint": "fake", "user_id": USER_ID, "id": len(self.state.keypairs) + 1,
                "created_at": _now(), "updated_at": None, "deleted": False,
                "deleted_at": None}
            return 200, {"keypair": self.state.keypairs[pair["name"]]}, {}
        if path == "/os-keypairs" and method == "GET":  # api-ref: each wrapped in "keypair"
            brief = ("name", "public_key", "fingerprint", "type")
            return 200, {"keypairs": [{"keypair": {k: pair[k] for k in brief}}
                                      for pair in self.state.keypairs.values()]}, {}
        match = re.fullmatch(r"/os-quota-sets/([\w-]+)(/detail)?", path)
        if match and method == "GET":  # api-ref: show a quota (detail: in_use, limit, reserved)
            limits = {"cores": 2000, "instances": self.quota["instances"], "key_pairs": 100,
                      "metadata_items": 128, "ram": 5120000, "server_groups": 10,
                      "server_group_members": 10}
            if not match.group(2):
                return 200, {"quota_set": {"id": match.group(1), **limits}}, {}
            used = {"instances": len(self.state.servers), "key_pairs": len(self.state.keypairs)}
            return 200, {"quota_set": {"id": match.group(1), **{
                k: {"limit": v, "in_use": used.get(k, 0), "reserved": 0}
                for k, v in limits.items()}}}, {}
        match = re.fullmatch(r"/os-keypairs/([^/]+)", path)
        if match:
            pair = self.state.keypairs.get(match.group(1))
            if pair is None:
                return 404, {"itemNotFound": {"code": 404, "message":
                             f"Keypair {match.group(1)} not found for user {USER_ID}"}}, {}
            if method == "DELETE":
                del self.state.keypairs[pair["name"]]
                return 202, None, {}
            return 200, {"keypair": pair}, {}
        if path == "/servers" and method == "POST":
            return self._create_server(body)
        if path in ("/servers", "/servers/detail") and method == "GET":
            for server in self.state.servers.values():
                self._advance_server(server)
            return 200, {"servers": [self._server_view(s, version)
                                     for s in self.state.servers.values()]}, {}
        match = re.fullmatch(r"/servers/([\w-]+)(/action)?", path)
        server = self.state.servers.get(match.group(1)) if match else None
        if server is None:
            return 404, {"itemNotFound": {"code": 404, "message":
                         "Instance could not be found."}}, {}
        if match.group(2) and method == "POST" and "createImage" in body:
            image = self._add_image(body["createImage"]["name"], server_id=server["id"])
            return 202, {"image_id": image["id"]}, {"Location": f"{self.url}/image/v2/images/"
                                                                f"{image['id']}"}
        if method == "GET":
            self._advance_server(server)
            return 200, {"server": self._server_view(server, version)}, {}
        if method == "DELETE":
            self._delete_server(server["id"])
            return 204, None, {}
        return 405, {"error": {"message": "method not allowed"}}, {}

    def _server_view(self, server: dict, version: tuple[int, int]) -> dict:
        """Chameleon's Nova policy shows a server's owner its extended attributes
        (`os_compute_api:os-extended-server-attributes: rule:admin_or_owner` in chi-in-a-box
        kolla/node_custom_config/nova/policy.yaml); upstream's shows them to admins only."""
        view = _server_view(server, version)
        if self.hide_hypervisor:
            view.pop("OS-EXT-SRV-ATTR:hypervisor_hostname", None)
        return view

    def _create_server(self, body: dict) -> tuple[int, Any, dict]:
        wanted = body["server"]
        # nova/api/openstack/compute/servers.py create: `os:scheduler_hints`, else the older
        # `OS-SCH-HNT:scheduler_hints` (both in the api-ref; clients send either)
        hints = body.get("os:scheduler_hints") or body.get("OS-SCH-HNT:scheduler_hints") or {}
        if len(self.state.servers) >= self.quota["instances"]:
            return 403, {"forbidden": {"code": 403, "message": "Quota exceeded for instances: "
                                       f"Requested 1, but already used "
                                       f"{len(self.state.servers)} of "
                                       f"{self.quota['instances']} instances"}}, {}
        if wanted.get("key_name") and wanted["key_name"] not in self.state.keypairs:
            return 400, {"badRequest": {"code": 400, "message":
                         "Invalid key_name provided."}}, {}
        reservation = hints.get("reservation")
        if wanted["flavorRef"] == FLAVORS["baremetal"]:
            leases = [lease for lease in self.state.leases.values() if lease["status"] ==
                      "ACTIVE" and reservation in {r["id"] for r in lease["reservations"]}]
            if not leases:
                return 400, {"badRequest": {"code": 400, "message": "No valid host was found. "
                             "There are not enough hosts available."}}, {}
        server_id = str(uuid.uuid4())
        network = wanted["networks"][0]["uuid"]
        taken = {s.get("OS-EXT-SRV-ATTR:hypervisor_hostname")
                 for s in self.state.servers.values()}
        hosts = [self.host_records[h]["hypervisor_hostname"]
                 for h in self.allocations.get(reservation, ())]
        hypervisor = next((h for h in hosts if h not in taken), None)
        self.state.servers[server_id] = {
            **({"OS-EXT-SRV-ATTR:hypervisor_hostname": hypervisor} if hypervisor else {}),
            "id": server_id, "name": wanted["name"], "status": "BUILD", "progress": 0,
            "key_name": wanted.get("key_name"), "metadata": wanted.get("metadata", {}),
            "image": {"id": wanted["imageRef"], "links": []},
            "flavor": {"id": wanted["flavorRef"], "links": []}, "addresses": {},
            "tenant_id": PROJECT_ID, "user_id": USER_ID, "created": _zulu_now(),
            "updated": _zulu_now(), "hostId": uuid.uuid4().hex, "links": [],
            "OS-EXT-STS:vm_state": "building", "_reservation": reservation,
            "_network": network, "_seen": 0}
        return 202, {"server": {"id": server_id, "links": [], "OS-DCF:diskConfig": "MANUAL",
                                "security_groups": [{"name": "default"}],
                                "adminPass": "fake"}}, {}

    def _advance_server(self, server: dict) -> None:
        if server["status"] != "BUILD":
            return
        server["_seen"] += 1
        server["progress"] = min(90, server["progress"] + 30)
        if server["_seen"] <= self.ticks:
            return
        if self.server_fault:
            server.update(status="ERROR", fault={
                "code": 500, "message": self.server_fault, "created": _zulu_now()})
            server["OS-EXT-STS:vm_state"] = "error"
            return
        if self.backer is not None:
            pair = self.state.keypairs.get(server["key_name"] or "", {})
            address, mac = self.backer.boot(server["id"], server["name"],
                                            pair.get("public_key", ""))
        else:
            number = len(self.state.ports) + 10
            address, mac = f"10.140.81.{number}", f"fa:16:3e:00:00:{number:02x}"
        port_id = str(uuid.uuid4())
        self.state.ports[port_id] = {
            "id": port_id, "name": "", "network_id": server["_network"],
            "device_id": server["id"], "device_owner": "compute:nova",
            "mac_address": mac, "fixed_ips": [{"subnet_id": SUBNETS[server["_network"]],
                                               "ip_address": address}],
            "port_security_enabled": not server["flavor"]["id"] == FLAVORS["baremetal"],
            "allowed_address_pairs": [], "security_groups": [], "status": "ACTIVE",
            "admin_state_up": True, "project_id": PROJECT_ID, "tenant_id": PROJECT_ID,
            "tags": [], "description": "", "revision_number": 1}
        server["addresses"] = {"sharednet1": [{"addr": address, "version": 4,
                                               "OS-EXT-IPS:type": "fixed",
                                               "OS-EXT-IPS-MAC:mac_addr": mac}]}
        server.update(status="ACTIVE", progress=100)
        server["OS-EXT-STS:vm_state"] = "active"

    def _delete_server(self, server_id: str) -> None:
        del self.state.servers[server_id]
        for port in [p for p in self.state.ports.values() if p["device_id"] == server_id]:
            for fip in self.state.floatingips.values():
                if fip["port_id"] == port["id"]:
                    fip.update(port_id=None, fixed_ip_address=None, status="DOWN")
            del self.state.ports[port["id"]]
        if self.backer is not None:
            self.backer.delete(server_id)

    # Neutron -------------------------------------------------------------------------------
    def _neutron(self, method: str, path: str, query: str, body: Any) -> tuple[int, Any, dict]:
        if path == "/":
            return 200, {"versions": [{"id": "v2.0", "status": "CURRENT", "links": [
                {"href": self.url + "/network/v2.0/", "rel": "self"}]}]}, {}
        path = path.removeprefix("/v2.0")
        collections = {"networks": _networks, "subnets": _subnets,
                       "security-groups": _security_groups,
                       "ports": lambda: list(self.state.ports.values()),
                       "floatingips": lambda: list(self.state.floatingips.values())}
        kind, _, item = path.strip("/").partition("/")
        if kind in collections and method == "GET" and not item:
            return 200, _neutron_list(kind, collections[kind](), query,
                                      f"{self.url}/network/v2.0/{kind}"), {}
        if kind in ("networks", "subnets", "security-groups") and method == "GET":
            singular = {"networks": "network", "subnets": "subnet",
                        "security-groups": "security_group"}[kind]
            for resource in collections[kind]():
                if resource["id"] == item:
                    return 200, {singular: resource}, {}
            missing = {"networks": "Network", "subnets": "Subnet",
                       "security-groups": "Security group"}[kind]
            return 404, {"NeutronError": {"type": f"{missing.replace(' ', '')}NotFound",
                                          "detail": "", "message": f"{missing} {item} could "
                                          "not be found."}}, {}
        match = re.fullmatch(r"/quotas/([\w-]+)(/details)?", path)
        if match and method == "GET":  # neutron api-ref: show quota (details: used, limit)
            limits = {"floatingip": self.quota["floatingip"], "network": 100, "port": 500,
                      "rbac_policy": 10, "router": 10, "security_group": 10,
                      "security_group_rule": 100, "subnet": 100, "subnetpool": -1}
            if not match.group(2):
                return 200, {"quota": limits}, {}
            used = {"floatingip": len(self.state.floatingips), "port": len(self.state.ports)}
            return 200, {"quota": {k: {"limit": v, "used": used.get(k, 0), "reserved": 0}
                                   for k, v in limits.items()}}, {}
        match = re.fullmatch(r"/ports/([\w-]+)", path)
        if match:
            port = self.state.ports.get(match.group(1))
            if port is None:
                return 404, {"NeutronError": {"type": "PortNotFound", "detail": "",
                             "message": f"Port {match.group(1)} could not be found."}}, {}
            if method == "DELETE":
                del self.state.ports[port["id"]]
                return 204, None, {}
            return 200, {"port": port}, {}
        if path == "/floatingips" and method == "POST":
            if len(self.state.floatingips) >= self.quota["floatingip"]:
                return 409, {"NeutronError": {"type": "OverQuota", "detail": "",
                             "message": "Quota exceeded for resources: ['floatingip']."}}, {}
            fip_id = str(uuid.uuid4())
            wanted = body["floatingip"]
            number = len(self.state.floatingips) + 2
            self.state.floatingips[fip_id] = {
                "id": fip_id, "floating_network_id": wanted["floating_network_id"],
                "floating_ip_address": f"192.5.87.{number}", "fixed_ip_address": None,
                "port_id": None, "router_id": None, "status": "DOWN",
                "description": wanted.get("description", ""), "project_id": PROJECT_ID,
                "tenant_id": PROJECT_ID, "tags": [], "revision_number": 0}
            return 201, {"floatingip": self.state.floatingips[fip_id]}, {}
        match = re.fullmatch(r"/floatingips/([\w-]+)", path)
        fip = self.state.floatingips.get(match.group(1)) if match else None
        if fip is None:
            return 404, {"NeutronError": {"type": "FloatingIPNotFound", "detail": "",
                         "message": f"Floating IP {path} could not be found"}}, {}
        if method == "DELETE":
            del self.state.floatingips[fip["id"]]
            return 204, None, {}
        if method == "PUT":
            port = self.state.ports.get(body["floatingip"].get("port_id") or "")
            if port is None:
                return 404, {"NeutronError": {"type": "PortNotFound", "detail": "",
                             "message": "Port could not be found."}}, {}
            address = fip["floating_ip_address"]
            if self.backer is not None:
                address = self.backer.bind_floating_ip(port["device_id"])
            fip.update(port_id=port["id"], status="ACTIVE", floating_ip_address=address,
                       fixed_ip_address=port["fixed_ips"][0]["ip_address"])
        return 200, {"floatingip": fip}, {}

    # Glance --------------------------------------------------------------------------------
    def _add_image(self, name: str, server_id: str | None = None) -> dict:
        image_id = str(uuid.uuid4())
        self.state.images[image_id] = {
            "id": image_id, "name": name, "status": "active", "visibility": "private",
            "container_format": "bare", "disk_format": "qcow2", "min_disk": 0, "min_ram": 0,
            "protected": False, "tags": [], "owner": PROJECT_ID, "created_at": _zulu_now(),
            "updated_at": _zulu_now(), "self": f"/v2/images/{image_id}",
            "file": f"/v2/images/{image_id}/file", "schema": "/v2/schemas/image",
            "size": 13167616, "os_hidden": False, "instance_uuid": server_id}
        return self.state.images[image_id]

    def _glance(self, method: str, path: str, query: str, body: Any) -> tuple[int, Any, dict]:
        if path == "/":
            return 200, {"versions": [{"id": "v2.16", "status": "CURRENT", "links": [
                {"href": self.url + "/image/v2/", "rel": "self"}]}]}, {}
        path = path.removeprefix("/v2")
        images = [*({"id": iid, "name": name, "status": "active", "visibility": "public",
                     "tags": [], "container_format": "bare", "disk_format": "qcow2",
                     "min_disk": 0, "min_ram": 0, "protected": False, "os_hidden": False,
                     "owner": None, "size": 2147483648, "self": f"/v2/images/{iid}",
                     "file": f"/v2/images/{iid}/file", "schema": "/v2/schemas/image",
                     "created_at": "2023-01-04T18:24:26Z", "updated_at": "2023-01-04T18:24:26Z"}
                    for name, iid in BASE_IMAGES.items()), *self.state.images.values()]
        if path == "/images" and method == "GET":
            return 200, _glance_list(images, query), {}
        if path == "/schemas/image" and method == "GET":
            return 200, _GLANCE_IMAGE_SCHEMA, {}
        if path == "/schemas/images" and method == "GET":
            return 200, {"name": "images", "properties": {
                "images": {"type": "array", "items": _GLANCE_IMAGE_SCHEMA},
                "schema": {"type": "string"}, "first": {"type": "string"},
                "next": {"type": "string"}},
                "links": [{"rel": "first", "href": "{first}"}, {"rel": "next", "href": "{next}"},
                          {"rel": "describedby", "href": "{schema}"}]}, {}
        if path == "/images" and method == "POST":  # what `openstack image create` sends
            image = self._add_image(body["name"])
            image["uploaded_by"] = "cc-snapshot"
            return 201, image, {}
        match = re.fullmatch(r"/images/([\w-]+)", path)
        for image in images:
            if match and image["id"] == match.group(1):
                if method == "DELETE":
                    self.state.images.pop(image["id"], None)
                    return 204, None, {}
                return 200, image, {}
        return 404, {"message": "No image found", "code": "404 Not Found",
                     "title": "Not Found"}, {}


def _error_body(path: str, status: int, message: str) -> dict:
    """An error answer as the service of `path` words it (Blazar has its own shape)."""
    if path.startswith("/reservation"):
        return {"error_code": status, "error_message": message, "error_name": status}
    return {"error": {"message": message, "code": status}}


def _public(resource: dict) -> dict:
    """A resource as the service shows it: without the fake's own bookkeeping (`_...` keys)."""
    return {k: v for k, v in resource.items() if not k.startswith("_")}


def _compute_version(headers: Any) -> tuple[int, int]:
    """The compute microversion a client asked for (`OpenStack-API-Version: compute 2.79`, or
    the older `X-OpenStack-Nova-API-Version: 2.79`); 2.1 when it asked for none."""
    asked = headers.get("OpenStack-API-Version") or ""
    value = asked.split()[-1] if asked.startswith("compute ") else (
        headers.get("X-OpenStack-Nova-API-Version") or "2.1")
    if value == "latest":
        return (2, 79)
    major, _, minor = value.partition(".")
    return (int(major), int(minor or 0))


def _server_view(server: dict, version: tuple[int, int]) -> dict:
    """A server as Nova shows it at `version`: from 2.47 its flavor is embedded (name and
    sizes, no id), as nova/api/openstack/compute/views/servers.py writes it."""
    view = _public(server)
    if version >= (2, 47):
        name = next(n for n, fid in FLAVORS.items() if fid == server["flavor"]["id"])
        view["flavor"] = {"original_name": name, "vcpus": 1, "ram": 512, "disk": 10,
                          "ephemeral": 0, "swap": 0, "extra_specs": {}}
    return view


def _mark_done(lease: dict, event_type: str) -> None:
    """Blazar's manager marks an event DONE once it has run it."""
    for event in lease["events"]:
        if event["event_type"] == event_type:
            event.update(status="DONE", updated_at=_db_now())


def _blazar_date(value: str | None, default: datetime) -> datetime | None:
    """A Blazar request date (`now`, `YYYY-MM-DD HH:MM`, absent: `default`), naive UTC."""
    if value is None:
        return default
    if value == "now":
        return datetime.now(UTC).replace(tzinfo=None, second=0, microsecond=0)
    try:
        return datetime.strptime(value, "%Y-%m-%d %H:%M")
    except ValueError:
        return None


def _networks() -> list[dict]:
    """Chameleon's shared networks, as neutron's api-ref shows a network."""
    return [{"id": nid, "name": name, "status": "ACTIVE", "admin_state_up": True,
             "shared": True, "router:external": name == "public", "subnets": [SUBNETS[nid]],
             "port_security_enabled": True, "mtu": 1500, "availability_zones": ["nova"],
             "availability_zone_hints": [], "ipv4_address_scope": None,
             "ipv6_address_scope": None, "description": "", "tags": [],
             "project_id": PROJECT_ID, "tenant_id": PROJECT_ID, "revision_number": 1,
             "created_at": "2016-03-08T20:19:41Z", "updated_at": "2016-03-08T20:19:41Z"}
            for name, nid in NETWORKS.items()]


def _subnets() -> list[dict]:
    """One IPv4 subnet per network (sharednet1's as on CHI@UC: 10.140.80.0/22)."""
    cidrs = {"sharednet1": ("10.140.80.0/22", "10.140.83.254"),
             "public": ("192.5.87.0/24", "192.5.87.1")}
    return [{"id": SUBNETS[nid], "name": f"{name}-subnet", "network_id": nid, "ip_version": 4,
             "cidr": cidrs[name][0], "gateway_ip": cidrs[name][1], "enable_dhcp": True,
             "dns_nameservers": [], "host_routes": [], "allocation_pools": [],
             "ipv6_address_mode": None, "ipv6_ra_mode": None, "subnetpool_id": None,
             "service_types": [], "description": "", "tags": [], "project_id": PROJECT_ID,
             "tenant_id": PROJECT_ID, "revision_number": 0,
             "created_at": "2016-03-08T20:19:41Z", "updated_at": "2016-03-08T20:19:41Z"}
            for name, nid in NETWORKS.items()]


def _security_groups() -> list[dict]:
    """The project's `default` group: egress open, ingress from its own members only."""
    rules = [{"id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"rule-{n}")), "direction": direction,
              "ethertype": ethertype, "protocol": None, "port_range_min": None,
              "port_range_max": None, "remote_ip_prefix": None,
              "remote_group_id": SECURITY_GROUP if direction == "ingress" else None,
              "security_group_id": SECURITY_GROUP, "project_id": PROJECT_ID,
              "tenant_id": PROJECT_ID, "description": "", "revision_number": 0}
             for n, (direction, ethertype) in enumerate(
                 [(d, e) for d in ("egress", "ingress") for e in ("IPv4", "IPv6")])]
    return [{"id": SECURITY_GROUP, "name": "default", "description": "Default security group",
             "stateful": True, "shared": False, "security_group_rules": rules, "tags": [],
             "project_id": PROJECT_ID, "tenant_id": PROJECT_ID, "revision_number": 1,
             "created_at": "2016-03-08T20:19:41Z", "updated_at": "2016-03-08T20:19:41Z"}]


_NEUTRON_PAGING = {"fields", "limit", "marker", "page_reverse", "sort_key", "sort_dir"}


def _neutron_list(kind: str, items: list[dict], query: str, url: str) -> dict:
    """A Neutron list answer, as neutron/api/v2/base.py and api_common.py make it.

    Query values are URL-decoded; an attribute given twice matches either value; booleans
    match `true`/`True`/`1`. `fields=` (repeatable) keeps only those attributes. `limit=`
    and `marker=` page through the items sorted by id, and a full page carries a `next`
    link in `<collection>_links` (api_common.get_pagination_links).
    """
    params = parse_qs(query, keep_blank_values=True)
    wanted = {k: v for k, v in params.items() if k not in _NEUTRON_PAGING}

    def matches(resource: dict, key: str, values: list[str]) -> bool:
        have = resource.get(key)
        if isinstance(have, bool):
            return have in {value.lower() in ("true", "1") for value in values}
        return str(have) in values

    found = sorted((r for r in items if all(matches(r, k, v) for k, v in wanted.items())),
                   key=lambda r: r["id"])
    marker = params.get("marker", [None])[-1]
    if marker is not None:
        found = [r for r in found if r["id"] > marker]
    collection = kind.replace("-", "_")
    answer: dict[str, Any] = {}
    limit = int(params.get("limit", ["0"])[-1] or 0)
    if limit > 0:
        found = found[:limit]
        if len(found) == limit:
            rest = {k: v for k, v in params.items() if k not in ("limit", "marker")}
            following = urlencode({**rest, "limit": limit, "marker": found[-1]["id"]},
                                  doseq=True)
            answer[f"{collection}_links"] = [{"rel": "next", "href": f"{url}?{following}"}]
    fields = params.get("fields")
    if fields:
        found = [{k: v for k, v in r.items() if k in fields} for r in found]
    answer[collection] = [_public(r) for r in found]
    return answer


# glance/api/v2/images.py get_schema, reduced to the attributes this fake's images carry
_GLANCE_IMAGE_SCHEMA: dict[str, Any] = {
    "name": "image", "additionalProperties": {"type": "string"},
    "properties": {
        "id": {"type": "string", "pattern": "^([0-9a-fA-F]){8}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}"
               "-([0-9a-fA-F]){4}-([0-9a-fA-F]){12}$"},
        "name": {"type": ["null", "string"], "maxLength": 255},
        "status": {"type": "string", "readOnly": True, "enum": [
            "queued", "saving", "active", "killed", "deleted", "uploading", "importing",
            "pending_delete", "deactivated"]},
        "visibility": {"type": "string", "enum": ["community", "public", "private", "shared"]},
        "protected": {"type": "boolean"}, "os_hidden": {"type": "boolean"},
        "owner": {"type": ["null", "string"], "maxLength": 255},
        "container_format": {"type": ["null", "string"], "enum": [
            None, "ami", "ari", "aki", "bare", "ovf", "ova", "docker", "compressed"]},
        "disk_format": {"type": ["null", "string"], "enum": [
            None, "ami", "ari", "aki", "vhd", "vhdx", "vmdk", "raw", "qcow2", "vdi", "iso",
            "ploop"]},
        "size": {"type": ["null", "integer"], "readOnly": True},
        "min_ram": {"type": "integer"}, "min_disk": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 255}},
        "created_at": {"type": "string", "readOnly": True},
        "updated_at": {"type": "string", "readOnly": True},
        "self": {"type": "string", "readOnly": True},
        "file": {"type": "string", "readOnly": True},
        "schema": {"type": "string", "readOnly": True}},
    "links": [{"rel": "self", "href": "{self}"}, {"rel": "enclosure", "href": "{file}"},
              {"rel": "describedby", "href": "{schema}"}]}


def _glance_list(images: list[dict], query: str) -> dict:
    """A Glance image list (api-ref "List images"): URL-decoded filters on any attribute,
    `limit`/`marker` paging with a `next` link while a page is full."""
    params = parse_qs(query, keep_blank_values=True)
    wanted = {k: v[-1] for k, v in params.items()
              if k not in ("limit", "marker", "sort", "sort_key", "sort_dir", "member_status")}
    found = [i for i in images if all(str(i.get(k)) == v for k, v in wanted.items())]
    marker = params.get("marker", [None])[-1]
    if marker is not None:
        ids = [i["id"] for i in found]
        found = found[ids.index(marker) + 1:] if marker in ids else []
    answer: dict[str, Any] = {"schema": "/v2/schemas/images", "first": "/v2/images"}
    limit = int(params.get("limit", ["0"])[-1] or 0)
    if limit > 0:
        found = found[:limit]
        if len(found) == limit:
            rest = {k: v for k, v in params.items() if k not in ("limit", "marker")}
            answer["next"] = "/v2/images?" + urlencode(
                {**rest, "limit": limit, "marker": found[-1]["id"]}, doseq=True)
    answer["images"] = found
    return answer
