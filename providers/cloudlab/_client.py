"""The only module that touches geni-lib: credentials, slices, slivers, RSpecs, images.

geni-lib keeps state in module globals (the `portal` context, the aggregate singletons in
`geni.aggregate.cloudlab`, `~/.bssw/geni`). None of it is used: every call builds its own
`Context` whose credential cache lives in `<state_dir>/geni`, and every aggregate is a
fresh `PGCompute` (URL possibly redirected by the settings), so nothing leaks between
reservations. The key is decrypted once per client by geni-lib (`Framework.setKey`) into a
0600 file in a private temporary directory that geni-lib deletes at exit.
"""

from __future__ import annotations

import functools
import hashlib
import json
import threading
import warnings
import xmlrpc.client
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from omnibed.core.errors import CredentialsError, UsageError
from omnibed.core.types import ReservationRequest
from omnibed.providers.cloudlab import _convert
from omnibed.providers.cloudlab._errors import SEARCH_FAILED, am_code, map_geni_errors
from omnibed.providers.cloudlab._settings import SITES, Settings, passphrase


@functools.cache
def _import_pkg_resources() -> None:
    """Import pkg_resources before geni-lib does (inside its calls), silencing its deprecation
    warning for that one import: users cannot act on it (it is why setuptools<81 is pinned).
    Only pkg_resources is imported under the filter, so the filters geni-lib sets when it is
    imported (it turns off urllib3's warnings about its unverified HTTPS) stay in force."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "pkg_resources is deprecated", UserWarning)
        import pkg_resources  # noqa: F401


def _check(res: dict[str, Any], error_class: type[Exception]) -> Any:
    """geni-lib's own result check (apis.AMAPIv2), for the calls it does not wrap."""
    from geni.aggregate import pgutil

    if res["code"]["geni_code"] == 0:
        return res["value"]
    if res["code"].get("am_type") == "protogeni":
        pgutil.raiseError(res)
    raise error_class(res["output"], res)


def _framework_class() -> type:
    """EmulabCH2, fixed for Python 3: geni-lib writes the downloaded credentials to files
    opened "wb" but gets them from xmlrpc as str, so every download raises TypeError."""
    from geni.aggregate.frameworks import EmulabCH2

    class Framework(EmulabCH2):
        def getUserCredentials(self, owner_urn):  # noqa: N802 -- geni-lib's name
            return _as_bytes(super().getUserCredentials(owner_urn))

        def getSliceCredentials(self, context, slicename):  # noqa: N802
            return _as_bytes(super().getSliceCredentials(context, slicename))

    return Framework


def _as_bytes(credential: str | bytes) -> bytes:
    return credential.encode("utf-8") if isinstance(credential, str) else credential


class CloudLabClient:
    """geni-lib calls for one CloudLab user and project."""

    def __init__(self, settings: Settings, state_dir: Path) -> None:
        _import_pkg_resources()
        self.settings = settings
        self.state_dir = state_dir
        self._framework: Any = None
        self._user_urn = ""
        self._user_keys: list[str] = []
        # geni-lib caches slice credentials in files it rewrites on each call: threads
        # (nics asks every node at once) must not read one while another writes it
        self._one_call_at_a_time = threading.RLock()

    # -- credentials ------------------------------------------------------------------

    def _credential_paths(self) -> tuple[Path, Path, str | None]:
        """(certificate, key, project) from context.json or from cloudlab.pem + project."""
        settings = self.settings
        if settings.context is not None:
            try:
                data = json.loads(settings.context.read_text())
            except (OSError, ValueError) as error:
                raise CredentialsError(
                    f"the geni-lib context {settings.context} cannot be read: {error}",
                    source=str(settings.context),
                ) from error
            info = data.get("framework-info", data)
            users = data.get("users") or [{"keys": [data.get("user-pubkeypath")]}]
            self._user_keys = [k for user in users for k in user.get("keys", []) if k]
            return (
                Path(info["cert-path"]).expanduser(),
                Path(info["key-path"]).expanduser(),
                settings.project or info.get("project"),
            )
        if not settings.pem.exists():
            raise CredentialsError(
                f"no CloudLab credentials: download cloudlab.pem from the portal (menu"
                f" 'Download Credentials') to {settings.pem}, or set pem= in {settings.config}"
                " or OMNIBED_CLOUDLAB_PEM",
                source=str(settings.pem),
            )
        return settings.pem, settings.pem, settings.project

    @property
    def framework(self) -> Any:
        """geni-lib's EmulabCH2 framework with certificate, decrypted key and project."""
        if self._framework is not None:
            return self._framework
        cert, key, project = self._credential_paths()
        if not project:
            raise CredentialsError(
                f"no CloudLab project: set project= in {self.settings.config}"
                " or OMNIBED_CLOUDLAB_PROJECT",
                source=str(self.settings.config),
            )
        from geni.minigcf import config

        config.HTTP.TIMEOUT = self.settings.timeout  # every geni-lib call goes through minigcf
        framework = _framework_class()()
        framework.cert = str(cert)
        with self._one_call_at_a_time, map_geni_errors("loading the CloudLab key", str(key)):
            secret = passphrase(self.settings, prompt=False)
            try:
                framework.setKey(str(key), secret.encode() if secret is not None else None)
            except TypeError:  # the key is encrypted and no passphrase was found
                secret = passphrase(self.settings, prompt=True)
                if secret is None:
                    raise CredentialsError(
                        f"the key in {key} is encrypted: set OMNIBED_CLOUDLAB_PASSPHRASE or"
                        f" passphrase_file in {self.settings.config} (never a command-line"
                        " argument)",
                        source=str(key),
                    ) from None
                framework.setKey(str(key), secret.encode())
        framework.project = project
        if self.settings.sa_url:
            framework._sa = framework._ch = self.settings.sa_url
        if self.settings.ma_url:
            framework._ma = self.settings.ma_url
        urn = framework.userurn
        if not urn:
            raise CredentialsError(
                f"{cert} carries no user URN: it is not a CloudLab portal certificate",
                source=str(cert),
            )
        self._user_urn = urn
        self._framework = framework
        return framework

    @property
    def username(self) -> str:
        """The CloudLab login name (last field of the user URN in the certificate)."""
        self.framework  # noqa: B018 -- loads the certificate
        return self._user_urn.rsplit("+", 1)[-1]

    def context(self, public_keys: Sequence[str] = ()) -> Any:
        """A fresh geni-lib Context: our framework, our datadir, the given SSH public keys."""
        from geni.aggregate.context import Context
        from geni.aggregate.user import User

        framework = self.framework
        context = Context()
        context.cf = framework
        datadir = self.state_dir / "geni"
        datadir.mkdir(mode=0o700, parents=True, exist_ok=True)
        context.datadir = str(datadir)
        user = User()
        user.name = self.username
        user.urn = self._user_urn
        for path in self._user_keys:
            user.addKey(str(Path(path).expanduser()))
        for key in public_keys:
            key_path = datadir / f"sshkey-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pub"
            key_path.write_text(key.strip() + "\n")
            user.addKey(str(key_path))
        context.addUser(user)
        return context

    # -- aggregates and slices --------------------------------------------------------

    def aggregate(self, site: str) -> Any:
        """A new PGCompute for `site` (its URL from the settings when given there)."""
        import importlib

        from geni.aggregate.protogeni import PGCompute

        if site not in SITES:
            raise UsageError(f"unknown CloudLab site {site!r}; choose one of {', '.join(SITES)}")
        module, attribute = SITES[site]
        base = getattr(importlib.import_module(f"geni.aggregate.{module}"), attribute)
        url = self.settings.aggregates.get(site, base.url)
        return PGCompute(base.name, None, base.component_manager_id, url=url)

    def slice_urn(self, name: str) -> str:
        return self.framework.sliceNameToURN(name)

    def slice_expiration(self, name: str) -> datetime | None:
        """The live slice's expiration (UTC) at the slice authority, or None if there is none."""
        with self._one_call_at_a_time, map_geni_errors(f"looking up slice {name}"):
            slices = self.framework.listSlices(self.context())
        info = slices.get(self.slice_urn(name)) if isinstance(slices, dict) else None
        if not info or info.get("SLICE_EXPIRED"):
            return None
        return _convert.parse_geni_time(info.get("SLICE_EXPIRATION"))

    def ensure_slice(self, name: str, expires: datetime) -> datetime:
        """Create the slice or renew it to `expires`; return the expiration granted."""
        current = self.slice_expiration(name)
        with self._one_call_at_a_time, map_geni_errors(f"creating slice {name}"):
            if current is None:
                self.framework.createSlice(self.context(), name, exp=expires)
            elif current < expires:
                self.framework.renewSlice(self.context(), name, expires)
        granted = self.slice_expiration(name)
        if granted is None:
            raise CredentialsError(
                f"slice {name} was not created in project {self.framework.project}: check that"
                " your account may create slices there",
                source=str(self.settings.config),
            )
        return granted

    # -- slivers ----------------------------------------------------------------------

    def build_request(self, request: ReservationRequest, site: str) -> Any:
        """The request RSpec: N raw PCs or Xen VMs, disk image, one LAN per extra NIC."""
        import geni.rspec.igext as ig
        import geni.rspec.pg as pg

        options = request.extra
        cmid = self.aggregate(site).component_manager_id
        rspec = pg.Request()
        nodes = []
        for index in range(request.nodes):
            if options.get("vm", "") == "xen":
                node = ig.XenVM(f"node{index}")
                node.exclusive = False
            else:
                node = pg.RawPC(f"node{index}")
                if options.get("hardware_type"):
                    node.hardware_type = options["hardware_type"]
            if request.image:
                node.disk_image = request.image
            node.component_manager_id = cmid
            nodes.append(node)
            rspec.addResource(node)
        for lan_index in range(request.extra_nics):
            lan = pg.LAN(f"{_convert.EXTRA_LAN_PREFIX}{lan_index}")
            for index, node in enumerate(nodes):
                iface = node.addInterface(f"if{lan_index}")
                iface.addAddress(
                    pg.IPv4Address(f"10.{10 + lan_index}.1.{index + 1}", "255.255.255.0")
                )
                lan.addInterface(iface)
            rspec.addResource(lan)
        return rspec

    def create_sliver(
        self, site: str, name: str, rspec: Any, public_keys: Sequence[str]
    ) -> Any:
        """CreateSliver with our users' keys; return the manifest."""
        with self._one_call_at_a_time, map_geni_errors(f"creating the sliver of {name} at {site}"):
            return self.aggregate(site).createsliver(self.context(public_keys), name, rspec)

    def status(self, site: str, name: str) -> dict[str, Any] | None:
        """SliverStatus, or None when the aggregate has no sliver for the slice."""
        from geni.aggregate.exceptions import AMError

        with self._one_call_at_a_time, map_geni_errors(f"asking the status of {name} at {site}"):
            try:
                return self.aggregate(site).sliverstatus(self.context(), name)
            except AMError as error:
                if am_code(error) == SEARCH_FAILED:
                    return None
                raise

    def manifest(self, site: str, name: str) -> Any:
        """The sliver's manifest (ListResources on the slice)."""
        with self._one_call_at_a_time, map_geni_errors(f"reading the manifest of {name} at {site}"):
            return self.aggregate(site).listresources(self.context(), name)

    def renew_sliver(self, site: str, name: str, end: datetime) -> None:
        """RenewSliver to `end`, as far as allowed (geni_extend_alap), through minigcf."""
        from geni.aggregate.apis import RenewSliverError
        from geni.minigcf import amapi2

        with self._one_call_at_a_time, map_geni_errors(f"renewing the sliver of {name} at {site}"):
            context = self.context()
            info = context.getSliceInfo(name)
            cred = Path(info.path).read_text(encoding="latin-1")
            res = amapi2.renewsliver(
                self.aggregate(site).url, False, self.framework.cert, self.framework.key,
                [cred], info.urn, end, {"geni_extend_alap": True},
            )
            _check(res, RenewSliverError)

    def delete_sliver(self, site: str, name: str) -> bool:
        """DeleteSliver; False when there was nothing to delete."""
        from geni.aggregate.exceptions import AMError

        with self._one_call_at_a_time, map_geni_errors(f"deleting the sliver of {name} at {site}"):
            try:
                self.aggregate(site).deletesliver(self.context(), name)
            except AMError as error:
                if am_code(error) == SEARCH_FAILED:
                    return False
                raise
        return True

    def create_image(self, site: str, name: str, sliver_urn: str, image: str) -> str:
        """ProtoGENI CreateImage (not wrapped by geni-lib); return the new image's URN."""
        from geni.aggregate.exceptions import AMError
        from geni.minigcf.util import _rpcpost

        what = f"creating image {image} from {name} at {site}"
        with self._one_call_at_a_time, map_geni_errors(what):
            context = self.context()
            info = context.getSliceInfo(name)
            cred = Path(info.path).read_text(encoding="latin-1")
            body = xmlrpc.client.dumps(
                (info.urn, image, sliver_urn, [cred], {"global": False}),
                methodname="CreateImage",
            )
            res = _rpcpost(
                self.aggregate(site).url, body, (self.framework.cert, self.framework.key), False
            )
            value = _check(res, AMError)
        return value[0] if isinstance(value, list | tuple) else str(value)
