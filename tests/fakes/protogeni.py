"""A fake CloudLab: ProtoGENI aggregate manager (AM API v2) and slice/member authorities.

One XML-RPC server on 127.0.0.1 over HTTPS that, like CloudLab, demands a client
certificate signed by its CA (`make_pki` mints a throwaway CA, the server certificate and a
portal-style `cloudlab.pem`: user certificate with the user URN in subjectAltName plus the
key encrypted with a passphrase). Paths, as on boss.<site>.cloudlab.us:12369:

    /protogeni/xmlrpc/am/2.0    GetVersion ListResources CreateSliver SliverStatus
                                RenewSliver DeleteSliver CreateImage ListImages
    /protogeni/xmlrpc/geni-sa/2 create lookup update get_credentials   (CHAPI2, SLICE)
    /protogeni/xmlrpc/geni-ma   get_credentials                        (CHAPI2, user)

State: slices (expiration capped at `max_slice_life`), slivers that advance from
`configuring` to `ready` after `polls_to_ready` SliverStatus calls, manifests built from
the request RSpec (client ids kept; component ids, sliver ids, MACs, host names and login
added, host names deliberately unrelated to the login host; no host IPv4 for Xen VMs, as for
CloudLab's VMs on forwarded ports), and images. Nodes come from a
`backend` (see tests/fakes/protogeni_nodes.py for one backed by real sshd); the default one
hands out unreachable TEST-NET addresses. More nodes than `capacity` gives ProtoGENI's
code 26 (insufficient nodes), an unknown hardware type code 28 (no mapping).
Faults (`faults`, see tests/fakes/faults.py, matched on the XML-RPC method name and the
path): an HTTP error, a ProtoGENI error code (`code=`), a late answer, a dropped connection,
and expired credentials (`revoke`: from then on the authorities refuse the user credential
with CHAPI code 1 and the aggregate refuses every slice credential with code 15, EXPIRED);
`inject(method, am_code, output)` is the code fault in one call; `fail_next_sliver(message)`
makes the next sliver end `failed`; `expire(slice_name)` makes time reach the sliver's
expiration, after which the aggregate reaps it as ProtoGENI does (nodes freed,
SEARCHFAILED). Error answers carry `am_type`, `am_code` and `protogeni_error_url` as
ProtoGENI's do (geni-lib reads all three). `live()` says which
slivers still hold nodes.
ListResources without a slice gives an advertisement of `capacity` PCs saying which are free
(only those with `geni_available`); GetVersion lists the GENI 3 request and advertisement
RSpec versions. SliverStatus gives the expiration as `pg_expires` (ProtoGENI's name;
`geni_expires` is the AM API's). [unverified against a live AM] CreateImage returning
`[image_urn, image_url]`.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import itertools
import secrets
import socketserver
import ssl
import threading
import xmlrpc.client
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from xmlrpc.server import (
    MultiPathXMLRPCServer,
    SimpleXMLRPCDispatcher,
    SimpleXMLRPCRequestHandler,
)

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from lxml import etree

from tests.fakes.faults import Faults, drop_connection

GENI = "http://www.geni.net/resources/rspec/3"
EMULAB = "http://www.protogeni.net/resources/rspec/ext/emulab/1"
AUTHORITY = "utah.cloudlab.us"
CMID = f"urn:publicid:IDN+{AUTHORITY}+authority+cm"
AM_PATH = "/protogeni/xmlrpc/am/2.0"
SA_PATH = "/protogeni/xmlrpc/geni-sa/2"
MA_PATH = "/protogeni/xmlrpc/geni-ma"
CRED_TIME = "%Y-%m-%dT%H:%M:%S"
SEARCHFAILED, BADARGS, FORBIDDEN, EXPIRED, ALREADYEXISTS = 12, 1, 3, 15, 17


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


# -- throwaway PKI ------------------------------------------------------------------------


@dataclass(frozen=True)
class PKI:
    ca_cert: Path
    server_cert: Path
    server_key: Path
    user_pem: Path  # certificate + encrypted key, as the portal's "Download Credentials"
    user_urn: str
    passphrase: str


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _cert(subject: str, key, issuer_key, issuer: x509.Name | None, san, ca: bool = False):
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(directory: Path, user: str = "alice", passphrase: str = "") -> PKI:
    """A CA, a server certificate for 127.0.0.1 and an encrypted `cloudlab.pem` for `user`."""
    directory.mkdir(parents=True, exist_ok=True)
    passphrase = passphrase or secrets.token_urlsafe(12)
    ca_key = _key()
    ca = _cert("fake CloudLab CA", ca_key, ca_key, None, None, ca=True)
    server_key = _key()
    server = _cert("127.0.0.1", server_key, ca_key, ca.subject,
                   [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    user_key = _key()
    urn = f"urn:publicid:IDN+emulab.net+user+{user}"
    user_cert = _cert(user, user_key, ca_key, ca.subject, [x509.UniformResourceIdentifier(urn)])
    pem = serialization.Encoding.PEM
    paths = {name: directory / name for name in ("ca.pem", "server.pem", "server.key")}
    paths["ca.pem"].write_bytes(ca.public_bytes(pem))
    paths["server.pem"].write_bytes(server.public_bytes(pem))
    paths["server.key"].write_bytes(server_key.private_bytes(
        pem, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
    user_pem = directory / "cloudlab.pem"
    user_pem.write_bytes(user_cert.public_bytes(pem) + user_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase.encode()),
    ))
    user_pem.chmod(0o600)
    return PKI(paths["ca.pem"], paths["server.pem"], paths["server.key"], user_pem, urn,
               passphrase)


# -- nodes --------------------------------------------------------------------------------


class Backend(Protocol):
    def boot(self, slice_name: str, client_id: str, xen: bool, username: str,
             public_keys: list[str], interfaces: list[tuple[str, str]]) -> tuple[str, int]:
        """Start a node whose experiment interfaces carry `interfaces` ((MAC `02ab...`,
        `address/prefix` or ""), as the manifest announces them); return its SSH login
        (host, port)."""

    def shutdown(self, slice_name: str, client_id: str) -> None: ...


class NoNodes:
    """Unreachable addresses: raw PCs on 192.0.2.N:22, Xen VMs on 198.51.100.1:<port>."""

    def __init__(self) -> None:
        self._counter = itertools.count(10)

    def boot(self, slice_name, client_id, xen, username, public_keys, interfaces):
        n = next(self._counter)
        return ("198.51.100.1", 30000 + n) if xen else (f"192.0.2.{n % 250 + 1}", 22)

    def shutdown(self, slice_name, client_id) -> None:
        return None


# -- state --------------------------------------------------------------------------------


@dataclass
class Slice:
    urn: str
    name: str
    project_urn: str
    owner: str
    expires: dt.datetime


@dataclass
class Sliver:
    slice_urn: str
    slice_name: str
    urn: str
    manifest: bytes
    expires: dt.datetime
    node_slivers: dict[str, str]  # client_id -> sliver urn
    polls_left: int
    fail_message: str | None = None
    status: str = "configuring"


@dataclass
class State:
    slices: dict[str, Slice] = field(default_factory=dict)
    slivers: dict[str, Sliver] = field(default_factory=dict)  # by slice urn
    images: dict[str, dict[str, str]] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)


def credential(owner_urn: str, target_urn: str, expires: dt.datetime) -> str:
    """A GENI SFA privilege credential (unsigned: geni-lib never checks signatures)."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<signed-credential><credential xml:id="ref0">'
        f"<type>privilege</type><serial>1</serial><owner_urn>{owner_urn}</owner_urn>"
        f"<target_urn>{target_urn}</target_urn><uuid>{secrets.token_hex(8)}</uuid>"
        f"<expires>{expires.strftime(CRED_TIME)}Z</expires><privileges><privilege>"
        "<name>*</name><can_delegate>1</can_delegate></privilege></privileges>"
        "</credential><signatures/></signed-credential>\n"
    )


def _cred_fields(text: str) -> dict[str, str]:
    root = etree.fromstring(text.encode("latin-1", errors="replace"))
    return {tag: (root.findtext(f"credential/{tag}") or "")
            for tag in ("owner_urn", "target_urn", "expires")}


# -- the server ---------------------------------------------------------------------------


class _Handler(SimpleXMLRPCRequestHandler):
    rpc_paths = (AM_PATH, SA_PATH, MA_PATH)

    def do_POST(self) -> None:  # noqa: N802 -- http.server's name
        """Dispatch as SimpleXMLRPCRequestHandler does, after the fake's faults."""
        cert = self.connection.getpeercert() or {}
        uris = [value for kind, value in cert.get("subjectAltName", ()) if kind == "URI"]
        self.server.local.caller = uris[0] if uris else ""
        data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            method = xmlrpc.client.loads(data)[1] or ""
        except Exception:  # noqa: BLE001 -- not XML-RPC: let the dispatcher say so
            method = ""
        fake = self.server.fake
        fake.state.calls.append(method)
        if self.path == AM_PATH:
            fake._reap()
        fault = fake.faults.take(method, self.path)
        if fault is not None and fault.kind == "drop":
            drop_connection(self)
            return
        if fault is not None and fault.kind == "fail" and fault.code is None:
            self.send_error(fault.status, fault.message)
            return
        if fault is not None and fault.kind == "fail":
            answer = _response(fake._error(fault.code, fault.message))
        elif fake.faults.revoked and self.path in (SA_PATH, MA_PATH):
            answer = _response({"code": 1, "value": None, "output": "user credential expired"})
        else:
            answer = self.server._marshaled_dispatch(data, path=self.path)
        if fault is not None and fault.kind == "delay":
            fault.wait_late()
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/xml")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up waiting (a late-answer fault)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        return None


def _address(iface: etree._Element) -> str:
    """`10.11.1.1/24` from an interface's `<ip address netmask>`; "" when it has none."""
    ip = iface.find(f"{{{GENI}}}ip")
    if ip is None or not ip.get("address"):
        return ""
    return str(ipaddress.ip_interface(f"{ip.get('address')}/{ip.get('netmask') or '32'}"))


def _response(value: dict[str, Any]) -> bytes:
    return xmlrpc.client.dumps((value,), methodresponse=True, allow_none=True).encode()


class _Server(socketserver.ThreadingMixIn, MultiPathXMLRPCServer):
    daemon_threads = True

    def __init__(self, tls: ssl.SSLContext, fake: FakeProtoGENI) -> None:
        self.tls = tls
        self.fake = fake
        self.local = threading.local()
        super().__init__(("127.0.0.1", 0), requestHandler=_Handler, logRequests=False,
                         allow_none=True)

    def get_request(self):
        sock, address = self.socket.accept()
        return self.tls.wrap_socket(sock, server_side=True), address


class FakeProtoGENI:
    """`with FakeProtoGENI(pki) as cl:` serves at `cl.am_url`, `cl.sa_url`, `cl.ma_url`."""

    def __init__(
        self,
        pki: PKI,
        backend: Backend | None = None,
        *,
        polls_to_ready: int = 2,
        max_slice_life: dt.timedelta = dt.timedelta(days=7),
        max_sliver_life: dt.timedelta = dt.timedelta(days=7),
        initial_sliver_life: dt.timedelta = dt.timedelta(hours=6),
        project: str = "omnibedtest",
        capacity: int = 8,
        hardware_types: tuple[str, ...] = ("d430", "m510", "xl170", "c220g5", "c6525-100g"),
    ) -> None:
        self.pki = pki
        self.backend = backend or NoNodes()
        self.polls_to_ready = polls_to_ready
        self.max_slice_life = max_slice_life
        self.max_sliver_life = max_sliver_life
        self.initial_sliver_life = initial_sliver_life
        self.project = project
        self.capacity = capacity
        self.hardware_types = hardware_types
        self.state = State()
        self.lock = threading.RLock()
        self._ids = itertools.count(2110433)
        self._fail_next: str | None = None
        self.faults = Faults()
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(pki.server_cert, pki.server_key)
        tls.load_verify_locations(pki.ca_cert)
        tls.verify_mode = ssl.CERT_REQUIRED
        self.server = _Server(tls, self)
        self.port = self.server.server_address[1]
        for path, functions in (
            (AM_PATH, ["GetVersion", "ListResources", "CreateSliver", "SliverStatus",
                       "RenewSliver", "DeleteSliver", "CreateImage", "ListImages"]),
            (SA_PATH, ["create", "lookup", "update", "get_credentials"]),
            (MA_PATH, ["get_credentials"]),
        ):
            dispatcher = SimpleXMLRPCDispatcher(allow_none=True)
            for name in functions:
                prefix = "ma_" if path == MA_PATH else ""
                dispatcher.register_function(getattr(self, f"_{prefix}{name}"), name)
            self.server.add_dispatcher(path, dispatcher)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    # -- lifecycle and test controls --------------------------------------------------

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    am_url = property(lambda self: self.base + AM_PATH)
    sa_url = property(lambda self: self.base + SA_PATH)
    ma_url = property(lambda self: self.base + MA_PATH)

    def start(self) -> FakeProtoGENI:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        with self.lock:
            for sliver in list(self.state.slivers.values()):
                self._teardown(sliver)
            self.state.slivers.clear()

    def __enter__(self) -> FakeProtoGENI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def write_config(self, state_dir: Path, site: str = "utah", poll: float = 0.05,
                     timeout: float = 60) -> Path:
        """The provider's config.toml pointing every authority at this fake."""
        state_dir.mkdir(parents=True, exist_ok=True)
        path = state_dir / "config.toml"
        path.write_text(
            f'pem = "{self.pki.user_pem}"\nproject = "{self.project}"\n'
            f"poll_interval = {poll}\ntimeout = {timeout}\n"
            f'[aggregates]\n{site} = "{self.am_url}"\n'
            f'[authorities]\nsa = "{self.sa_url}"\nma = "{self.ma_url}"\n'
        )
        return path

    def inject(self, method: str, am_code: int, output: str) -> None:
        """The next call of `method` fails with ProtoGENI code `am_code`."""
        self.faults.fail(method, code=am_code, message=output)

    def live(self) -> list[str]:
        """What is still reserved on this aggregate: one line per sliver."""
        with self.lock:
            return [f"sliver of {s.slice_name!r} ({s.status}, {len(s.node_slivers)} nodes)"
                    for s in self.state.slivers.values()]

    def expire(self, slice_name: str, *, slice_too: bool = False) -> None:
        """Time passes: the sliver of `slice_name` reaches its expiration (and, with
        `slice_too`, so does its slice). The next aggregate call reaps it (see `_reap`)."""
        with self.lock:
            past = _now() - dt.timedelta(seconds=1)
            self._sliver_by_name(slice_name).expires = past
            if slice_too:
                for slice_ in self.state.slices.values():
                    if slice_.name == slice_name:
                        slice_.expires = past

    def _reap(self) -> None:
        """Tear down every sliver past its expiration, as ProtoGENI's expire daemon does
        (emulab-devel protogeni/scripts/expire_daemon): the nodes are freed and the
        aggregate forgets the sliver, so that later calls on its slice answer SEARCHFAILED
        (or EXPIRED once the slice credential has expired too)."""
        with self.lock:
            for urn, sliver in list(self.state.slivers.items()):
                if sliver.expires <= _now():
                    del self.state.slivers[urn]
                    self._teardown(sliver)

    def fail_next_sliver(self, message: str) -> None:
        """The next sliver created ends `failed` with `message` instead of `ready`."""
        self._fail_next = message

    def rename_hosts(self, slice_name: str, suffix: str) -> None:
        """Give every node of the slice a new host name (what a re-image may do)."""
        with self.lock:
            sliver = self._sliver_by_name(slice_name)
            root = etree.fromstring(sliver.manifest)
            for host in root.iter(f"{{{GENI}}}host"):
                host.set("name", f"{suffix}-{host.get('name')}")
            sliver.manifest = etree.tostring(root)

    def _sliver_by_name(self, slice_name: str) -> Sliver:
        return next(s for s in self.state.slivers.values() if s.slice_name == slice_name)

    # -- helpers ----------------------------------------------------------------------

    @property
    def caller(self) -> str:
        return getattr(self.server.local, "caller", "")

    def _error(self, code: int, output: str) -> dict[str, Any]:
        return {
            "code": {"geni_code": code, "am_type": "protogeni", "am_code": code,
                     "protogeni_error_url": f"{self.base}/spewlogfile.php3?logfile={code}"},
            "value": 0,
            "output": output,
        }

    def _ok(self, value: Any) -> dict[str, Any]:
        return {"code": {"geni_code": 0, "am_type": "protogeni", "am_code": 0,
                         "protogeni_error_url": f"{self.base}/spewlogfile.php3"},
                "value": value, "output": ""}

    def _check_slice_cred(self, slice_urn: str, creds: list[str]) -> dict[str, Any] | None:
        for text in creds:
            fields = _cred_fields(text)
            if fields["target_urn"] != slice_urn:
                continue
            if fields["owner_urn"] != self.caller:
                return self._error(FORBIDDEN, "credential not owned by the caller")
            expires = dt.datetime.strptime(fields["expires"].rstrip("Z"), CRED_TIME)
            if self.faults.revoked or expires.replace(tzinfo=dt.UTC) < _now():
                return self._error(EXPIRED, "slice credential has expired")
            if slice_urn not in self.state.slices:
                return self._error(SEARCHFAILED, f"no such slice {slice_urn}")
            return None
        return self._error(FORBIDDEN, f"no credential for {slice_urn}")

    # -- slice authority (CHAPI2) -----------------------------------------------------

    def _ch(self, value: Any, code: int = 0, output: str = "") -> dict[str, Any]:
        return {"code": code, "value": value, "output": output}

    def _slice_info(self, s: Slice) -> dict[str, Any]:
        return {"SLICE_URN": s.urn, "SLICE_NAME": s.name, "SLICE_PROJECT_URN": s.project_urn,
                "SLICE_EXPIRATION": s.expires.strftime(CRED_TIME) + "Z",
                "SLICE_EXPIRED": s.expires <= _now()}

    def _capped(self, text: str) -> dt.datetime:
        asked = dt.datetime.strptime(text.rstrip("Z"), CRED_TIME).replace(tzinfo=dt.UTC)
        return min(asked, _now() + self.max_slice_life)

    def _create(self, kind, creds, options):
        with self.lock:
            fields = options.get("fields", {})
            project = fields["SLICE_PROJECT_URN"].rsplit("+", 1)[-1]
            name = fields["SLICE_NAME"]
            urn = f"urn:publicid:IDN+emulab.net:{project}+slice+{name}"
            existing = self.state.slices.get(urn)
            if existing and existing.expires > _now():
                return self._ch(None, 5, f"slice {name} already exists")
            expires = self._capped(fields.get("SLICE_EXPIRATION") or
                                   (_now() + dt.timedelta(hours=2)).strftime(CRED_TIME))
            self.state.slices[urn] = Slice(urn, name, fields["SLICE_PROJECT_URN"], self.caller,
                                           expires)
            return self._ch(self._slice_info(self.state.slices[urn]))

    def _lookup(self, kind, creds, options):
        with self.lock:
            match = options.get("match", {})
            found = {
                s.urn: self._slice_info(s)
                for s in self.state.slices.values()
                if all(self._slice_info(s).get(k) == v for k, v in match.items())
            }
            return self._ch(found)

    def _update(self, kind, urn, creds, options):
        with self.lock:
            slice_ = self.state.slices.get(urn)
            if slice_ is None:
                return self._ch(None, 3, f"no such slice {urn}")
            new = options.get("fields", {}).get("SLICE_EXPIRATION")
            if new:
                slice_.expires = max(slice_.expires, self._capped(new))
            return self._ch(None)

    def _get_credentials(self, target_urn, creds, options):
        with self.lock:
            slice_ = self.state.slices.get(target_urn)
            if slice_ is None:
                return self._ch(None, 3, f"no such slice {target_urn}")
            value = credential(self.caller, target_urn, slice_.expires)
            return self._ch([{"geni_type": "geni_sfa", "geni_version": "3", "geni_value": value}])

    def _ma_get_credentials(self, target_urn, creds, options):
        value = credential(self.caller, self.caller, _now() + dt.timedelta(days=30))
        return self._ch([{"geni_type": "geni_sfa", "geni_version": "3", "geni_value": value}])

    # -- aggregate manager (AM API v2 + ProtoGENI CreateImage) ------------------------

    def _GetVersion(self, options=None):  # noqa: N802 -- the wire names
        """The AM API v2 GetVersion: the API, and the request and advertisement RSpec
        versions (GAPI_AM_API_V2 requires both lists; ProtoGENI's GeniAM.pm gives GENI 3)."""
        def rspec(kind: str) -> dict[str, Any]:
            return {"type": "GENI", "version": "3", "schema": f"{GENI}/{kind}.xsd",
                    "namespace": GENI, "extensions": [EMULAB]}

        return self._ok({"geni_api": 2, "geni_am_type": "protogeni",
                         "geni_api_versions": {"2": self.am_url},
                         "geni_request_rspec_versions": [rspec("request")],
                         "geni_ad_rspec_versions": [rspec("ad")]})

    def _advertisement(self, available_only: bool) -> str:
        """The aggregate's nodes as ProtoGENI advertises them (the node shape of the opstate
        extension's example advertisement in the Emulab source): `capacity` PCs, each of one
        hardware type, able to run raw-pc and emulab-xen slivers, `available now` false for
        those slivers hold; with `geni_available`, only the free ones."""
        busy = sum(len(s.node_slivers) for s in self.state.slivers.values())
        root = etree.Element(f"{{{GENI}}}rspec", type="advertisement",
                             nsmap={None: GENI, "emulab": EMULAB})
        for index in range(self.capacity):
            if available_only and index < busy:
                continue
            name = f"pc{index + 1}"
            node = etree.SubElement(root, f"{{{GENI}}}node", component_manager_id=CMID,
                                    component_name=name, exclusive="true",
                                    component_id=f"urn:publicid:IDN+{AUTHORITY}+node+{name}")
            hardware = etree.SubElement(node, f"{{{GENI}}}hardware_type",
                                        name=self.hardware_types[index % len(self.hardware_types)])
            etree.SubElement(hardware, f"{{{EMULAB}}}node_type", type_slots="1")
            for sliver_type in ("raw-pc", "emulab-xen"):
                etree.SubElement(node, f"{{{GENI}}}sliver_type", name=sliver_type)
            etree.SubElement(node, f"{{{GENI}}}available", now=str(index >= busy).lower())
        return etree.tostring(root).decode()

    def _ListResources(self, creds, options):  # noqa: N802
        with self.lock:
            slice_urn = options.get("geni_slice_urn")
            if not slice_urn:
                return self._ok(self._advertisement(bool(options.get("geni_available"))))
            bad = self._check_slice_cred(slice_urn, creds)
            if bad:
                return bad
            sliver = self.state.slivers.get(slice_urn)
            if sliver is None:
                return self._error(SEARCHFAILED, f"no sliver for {slice_urn}")
            return self._ok(sliver.manifest.decode())

    def _known_image(self, urn: str) -> bool:
        return "+image+emulab-ops//" in urn or urn in self.state.images

    def _CreateSliver(self, slice_urn, creds, rspec, users, options):  # noqa: N802
        with self.lock:
            refused = self._check_slice_cred(slice_urn, creds)
            if refused:
                return refused
            if slice_urn in self.state.slivers:
                return self._error(ALREADYEXISTS, f"{slice_urn} already has a sliver here")
            root = etree.fromstring(rspec.encode())
            busy = sum(len(s.node_slivers) for s in self.state.slivers.values())
            asked = len(root.findall(f"{{{GENI}}}node"))
            if busy + asked > self.capacity:
                return self._error(26, f"*** Insufficient free nodes: {asked} asked,"
                                       f" {self.capacity - busy} free")
            for hardware in root.iter(f"{{{GENI}}}hardware_type"):
                if hardware.get("name") not in self.hardware_types:
                    name = hardware.get("name")
                    return self._error(28, f"*** No mapping: no nodes of type {name}")
            for image in root.iter(f"{{{GENI}}}disk_image"):
                if not self._known_image(image.get("name", "")):
                    return self._error(BADARGS, f"no such image {image.get('name')}")
            slice_ = self.state.slices[slice_urn]
            keys = [key for user in users for key in user.get("keys", [])]
            username = self.caller.rsplit("+", 1)[-1]
            sliver = Sliver(
                slice_urn=slice_urn, slice_name=slice_.name,
                urn=self._sliver_urn(), manifest=b"",
                expires=min(slice_.expires, _now() + self.initial_sliver_life),
                node_slivers={}, polls_left=self.polls_to_ready, fail_message=self._fail_next,
            )
            self._fail_next = None
            self._to_manifest(root, sliver, slice_, username, keys)
            self.state.slivers[slice_urn] = sliver
            return self._ok(sliver.manifest.decode())

    def _sliver_urn(self) -> str:
        return f"urn:publicid:IDN+{AUTHORITY}+sliver+{next(self._ids)}"

    def _to_manifest(self, root, sliver: Sliver, slice_: Slice, username: str, keys) -> None:
        root.set("type", "manifest")
        project = slice_.project_urn.rsplit("+", 1)[-1]
        iface_slivers: dict[str, str] = {}
        for number, node in enumerate(root.findall(f"{{{GENI}}}node")):
            client_id = node.get("client_id")
            xen = node.find(f"{{{GENI}}}sliver_type").get("name") == "emulab-xen"
            pc = f"pcvm{600 + number}-1" if xen else f"pc{500 + number}"
            node.set("component_manager_id", CMID)
            node.set("component_id", f"urn:publicid:IDN+{AUTHORITY}+node+{pc}")
            interfaces = []
            for iface in node.findall(f"{{{GENI}}}interface"):
                iface_slivers[iface.get("client_id")] = self._sliver_urn()
                iface.set("sliver_id", iface_slivers[iface.get("client_id")])
                iface.set("component_id", f"urn:publicid:IDN+{AUTHORITY}+interface+{pc}:eth1")
                iface.set("mac_address", "02" + secrets.token_hex(5))
                interfaces.append((iface.get("mac_address"), _address(iface)))
            host, port = self.backend.boot(slice_.name, client_id, xen, username, keys,
                                           interfaces)
            sliver.node_slivers[client_id] = self._sliver_urn()
            node.set("sliver_id", sliver.node_slivers[client_id])
            # a Xen VM reached on its host's forwarded port has no IPv4 of its own here
            etree.SubElement(node, f"{{{GENI}}}host",
                             name=f"{client_id}.{slice_.name}.{project}.{AUTHORITY}",
                             **({} if xen else {"ipv4": host}))
            services = node.find(f"{{{GENI}}}services")
            if services is None:
                services = etree.SubElement(node, f"{{{GENI}}}services")
            etree.SubElement(services, f"{{{GENI}}}login", authentication="ssh-keys",
                             hostname=host, port=str(port), username=username)
        for link in root.findall(f"{{{GENI}}}link"):
            link.set("sliver_id", self._sliver_urn())
            link.set("vlantag", str(200 + len(self.state.slivers)))
            for ref in link.findall(f"{{{GENI}}}interface_ref"):
                ref.set("sliver_id", iface_slivers.get(ref.get("client_id"), ""))
        sliver.manifest = etree.tostring(root)

    def _SliverStatus(self, slice_urn, creds, options):  # noqa: N802
        with self.lock:
            refused = self._check_slice_cred(slice_urn, creds)
            if refused:
                return refused
            sliver = self.state.slivers.get(slice_urn)
            if sliver is None:
                return self._error(SEARCHFAILED, f"no sliver for {slice_urn}")
            if sliver.status == "configuring":
                sliver.polls_left -= 1
                if sliver.polls_left <= 0:
                    sliver.status = "failed" if sliver.fail_message else "ready"
            resources = [
                {"geni_urn": urn, "geni_status": sliver.status,
                 "geni_error": sliver.fail_message if sliver.status == "failed" else ""}
                for urn in sliver.node_slivers.values()
            ]
            return self._ok({
                "geni_urn": sliver.urn, "geni_status": sliver.status,
                "pg_status": sliver.status, "geni_resources": resources,
                "pg_expires": sliver.expires.strftime(CRED_TIME) + "Z",  # as ProtoGENI's
            })

    def _RenewSliver(self, slice_urn, creds, expiration, options):  # noqa: N802
        with self.lock:
            refused = self._check_slice_cred(slice_urn, creds)
            if refused:
                return refused
            sliver = self.state.slivers.get(slice_urn)
            if sliver is None:
                return self._error(SEARCHFAILED, f"no sliver for {slice_urn}")
            asked = dt.datetime.fromisoformat(expiration.replace("Z", "+00:00"))
            limit = min(self.state.slices[slice_urn].expires, _now() + self.max_sliver_life)
            if asked > limit and not options.get("geni_extend_alap"):
                return self._error(BADARGS, f"cannot renew past {limit:%Y-%m-%d %H:%M} UTC")
            sliver.expires = min(asked, limit)
            return self._ok(True)

    def _DeleteSliver(self, slice_urn, creds, options):  # noqa: N802
        with self.lock:
            refused = self._check_slice_cred(slice_urn, creds)
            if refused:
                return refused
            sliver = self.state.slivers.pop(slice_urn, None)
            if sliver is None:
                return self._error(SEARCHFAILED, f"no sliver for {slice_urn}")
            self._teardown(sliver)
            return self._ok(True)

    def _teardown(self, sliver: Sliver) -> None:
        for client_id in sliver.node_slivers:
            self.backend.shutdown(sliver.slice_name, client_id)

    def _CreateImage(self, slice_urn, image_name, sliver_urn, creds, options):  # noqa: N802
        with self.lock:
            refused = self._check_slice_cred(slice_urn, creds)
            if refused:
                return refused
            sliver = self.state.slivers.get(slice_urn)
            if sliver is None or sliver_urn not in sliver.node_slivers.values():
                return self._error(SEARCHFAILED, f"no node sliver {sliver_urn} in {slice_urn}")
            if not image_name.isalnum():
                return self._error(BADARGS, "image name must be alphanumeric")
            project = self.state.slices[slice_urn].project_urn.rsplit("+", 1)[-1]
            urn = f"urn:publicid:IDN+{AUTHORITY}+image+{project}//{image_name}"
            url = f"https://www.{AUTHORITY}/image_metadata.php?uuid={secrets.token_hex(8)}"
            node = next(c for c, u in sliver.node_slivers.items() if u == sliver_urn)
            self.state.images[urn] = {"urn": urn, "url": url, "node": node,
                                      "global": str(bool(options.get("global")))}
            return self._ok([urn, url])

    def _ListImages(self, owner_urn, creds, options):  # noqa: N802
        with self.lock:
            images = self.state.images.values()
            return self._ok([{"urn": i["urn"], "url": i["url"]} for i in images])
