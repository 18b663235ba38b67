"""Where the OpenStack credentials come from: clouds.yaml, an OpenRC file or OS_* variables.

Pure (no SDK import) so that `omnibed doctor` works without openstacksdk. Secret values are
kept in `Credentials.settings` and never put in a message.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from omnibed.core.errors import CredentialsError

_EXPORT = re.compile(r"^\s*(?:export\s+)?(OS_[A-Z0-9_]+)=(.*)$")
_KEYS = {  # OS_* variable -> openstack.connect() keyword
    "OS_AUTH_URL": "auth_url",
    "OS_AUTH_TYPE": "auth_type",
    "OS_APPLICATION_CREDENTIAL_ID": "application_credential_id",
    "OS_APPLICATION_CREDENTIAL_SECRET": "application_credential_secret",
    "OS_APPLICATION_CREDENTIAL_NAME": "application_credential_name",
    "OS_USERNAME": "username",
    "OS_USER_ID": "user_id",
    "OS_PASSWORD": "password",
    "OS_PROJECT_NAME": "project_name",
    "OS_PROJECT_ID": "project_id",
    "OS_PROJECT_DOMAIN_NAME": "project_domain_name",
    "OS_PROJECT_DOMAIN_ID": "project_domain_id",
    "OS_USER_DOMAIN_NAME": "user_domain_name",
    "OS_USER_DOMAIN_ID": "user_domain_id",
    "OS_REGION_NAME": "region_name",
    "OS_INTERFACE": "interface",
    "OS_IDENTITY_API_VERSION": "identity_api_version",
    "OS_PROTOCOL": "protocol",
    "OS_IDENTITY_PROVIDER": "identity_provider",
    "OS_ACCESS_TOKEN": "access_token",
}


@dataclass(frozen=True)
class Credentials:
    """`source` says where they came from (for messages); `settings` may hold secrets."""

    source: str
    cloud: str | None = None
    settings: Mapping[str, str] = field(default_factory=dict, repr=False)
    use_environment: bool = False

    @property
    def application_credential(self) -> bool | None:
        """True/False when known from the settings; None for a clouds.yaml entry."""
        if self.cloud is not None:
            return None
        return "application_credential_id" in self.settings or (
            self.settings.get("auth_type", "").endswith("applicationcredential")
        )


def parse_openrc(text: str, environ: Mapping[str, str]) -> dict[str, str]:
    """The OS_* values an OpenRC file exports; `$VAR` values are taken from `environ`.

    Chameleon's OpenRC asks for the password with `read`; then OS_PASSWORD must be in the
    environment already.
    """
    values: dict[str, str] = {}
    for line in text.splitlines():
        match = _EXPORT.match(line)
        if not match:
            continue
        name, raw = match.groups()
        words = shlex.split(raw, comments=True) if raw.strip() else [""]
        value = words[0] if words else ""
        if value.startswith("$"):
            value = environ.get(name, "")
        if value:
            values[name] = value
    return values


def _connect_kwargs(variables: Mapping[str, str]) -> dict[str, str]:
    return {_KEYS[k]: v for k, v in variables.items() if k in _KEYS}


def resolve(options: Mapping[str, str], environ: Mapping[str, str] = os.environ) -> Credentials:
    """Pick the credentials: `-o cloud=`, then `-o openrc=`, then OS_CLOUD, then OS_* vars."""
    if options.get("cloud"):
        return Credentials(source=f"clouds.yaml entry {options['cloud']!r}",
                           cloud=options["cloud"])
    if options.get("openrc"):
        path = Path(options["openrc"]).expanduser()
        try:
            text = path.read_text()
        except OSError as error:
            raise CredentialsError(
                f"cannot read the OpenRC file {path}: {error.strerror}", source=str(path)
            ) from None
        settings = _connect_kwargs(parse_openrc(text, environ))
        if "auth_url" not in settings:
            raise CredentialsError(f"the OpenRC file {path} sets no OS_AUTH_URL: download "
                                   "it again from the Chameleon dashboard", source=str(path))
        if "password" not in settings and "username" in settings:
            raise CredentialsError(
                f"the OpenRC file {path} asks for the password interactively: export "
                "OS_PASSWORD first, or better use an application credential",
                source="OS_PASSWORD")
        return Credentials(source=f"OpenRC file {path}", settings=settings)
    if environ.get("OS_CLOUD"):
        return Credentials(source=f"clouds.yaml entry {environ['OS_CLOUD']!r} (OS_CLOUD)",
                           cloud=environ["OS_CLOUD"])
    if environ.get("OS_AUTH_URL"):
        return Credentials(source="OS_* environment variables",
                           settings=_connect_kwargs(environ), use_environment=True)
    raise CredentialsError(
        "no Chameleon credentials: pass -o cloud=NAME (an entry of clouds.yaml), "
        "-o openrc=FILE, or export OS_CLOUD / OS_AUTH_URL and friends; create an "
        "application credential on the Chameleon dashboard (Identity > Application "
        "Credentials) and download its clouds.yaml",
        source="clouds.yaml",
    )


def clouds_yaml_files(environ: Mapping[str, str] = os.environ) -> list[Path]:
    """The clouds.yaml files openstacksdk would read, that exist (the working directory's
    first, as openstacksdk looks when called, not when omnibed was imported)."""
    candidates = [Path(environ["OS_CLIENT_CONFIG_FILE"])] if environ.get(
        "OS_CLIENT_CONFIG_FILE") else []
    candidates += [
        Path.cwd() / "clouds.yaml",
        Path.home() / ".config" / "openstack" / "clouds.yaml",
        Path("/etc/openstack/clouds.yaml"),
    ]
    return [p for p in candidates if p.is_file()]
