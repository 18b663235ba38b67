"""Where the CloudLab credentials and aggregate URLs come from (no geni-lib here).

Read from `<state_dir>/config.toml` (state_dir is `$OMNIBED_HOME/providers/cloudlab`), each
key overridable by an environment variable::

    pem = "~/.ssl/cloudlab.pem"        # OMNIBED_CLOUDLAB_PEM: certificate + encrypted key
    project = "myproject"              # OMNIBED_CLOUDLAB_PROJECT
    context = "~/.bssw/geni/context.json"  # OMNIBED_CLOUDLAB_CONTEXT: instead of pem+project
    passphrase_file = "~/.config/cloudlab.pass"  # OMNIBED_CLOUDLAB_PASSPHRASE_FILE (0600)
    poll_interval = 10                 # seconds between SliverStatus calls
    timeout = 60                       # seconds to wait for an answer to one XML-RPC call
    [aggregates]                       # site -> AM API v2 URL (only to point at another AM)
    utah = "https://127.0.0.1:4443/protogeni/xmlrpc/am/2.0"
    [authorities]                      # slice / member authority URLs (idem)
    sa = "https://127.0.0.1:4443/protogeni/xmlrpc/geni-sa/2"
    ma = "https://127.0.0.1:4443/protogeni/xmlrpc/geni-ma"

The passphrase is taken from OMNIBED_CLOUDLAB_PASSPHRASE, else `passphrase_file`, else a
prompt when a terminal is attached; never from the command line.
"""

from __future__ import annotations

import getpass
import os
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from omnibed.core.errors import CredentialsError

# site -> (geni.aggregate module, attribute) of geni-lib's own aggregate definitions
SITES = {
    "utah": ("cloudlab", "Utah"),
    "wisconsin": ("cloudlab", "Wisconsin"),
    "clemson": ("cloudlab", "Clemson"),
    "apt": ("apt", "Apt"),
}

CONFIG_NAME = "config.toml"
ENV_PEM = "OMNIBED_CLOUDLAB_PEM"
ENV_PROJECT = "OMNIBED_CLOUDLAB_PROJECT"
ENV_CONTEXT = "OMNIBED_CLOUDLAB_CONTEXT"
ENV_PASSPHRASE = "OMNIBED_CLOUDLAB_PASSPHRASE"
ENV_PASSPHRASE_FILE = "OMNIBED_CLOUDLAB_PASSPHRASE_FILE"


@dataclass(frozen=True)
class Settings:
    """The provider's configuration; paths are expanded, nothing is read from them yet."""

    config: Path
    pem: Path
    project: str | None = None
    context: Path | None = None
    passphrase_file: Path | None = None
    poll_interval: float = 10.0
    timeout: float = 60.0
    aggregates: dict[str, str] = field(default_factory=dict)
    sa_url: str | None = None
    ma_url: str | None = None


def _path(value: str | None) -> Path | None:
    return Path(value).expanduser() if value else None


def load_settings(state_dir: Path) -> Settings:
    """Merge `config.toml` and the environment; a malformed file is a CredentialsError."""
    config = state_dir / CONFIG_NAME
    data: dict = {}
    if config.exists():
        try:
            data = tomllib.loads(config.read_text())
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise CredentialsError(
                f"{config} cannot be read: {error}", source=str(config)
            ) from error
    authorities = data.get("authorities", {})
    return Settings(
        config=config,
        pem=_path(os.environ.get(ENV_PEM) or data.get("pem")) or state_dir / "cloudlab.pem",
        project=os.environ.get(ENV_PROJECT) or data.get("project"),
        context=_path(os.environ.get(ENV_CONTEXT) or data.get("context")),
        passphrase_file=_path(os.environ.get(ENV_PASSPHRASE_FILE) or data.get("passphrase_file")),
        poll_interval=float(data.get("poll_interval", 10.0)),
        timeout=float(data.get("timeout", 60.0)),
        aggregates={str(k): str(v) for k, v in data.get("aggregates", {}).items()},
        sa_url=authorities.get("sa"),
        ma_url=authorities.get("ma"),
    )


def passphrase(settings: Settings, *, prompt: bool = True) -> str | None:
    """The key passphrase: environment, then file (must be 0600), then a prompt; or None."""
    if os.environ.get(ENV_PASSPHRASE):
        return os.environ[ENV_PASSPHRASE]
    if settings.passphrase_file is not None:
        path = settings.passphrase_file
        try:
            mode = path.stat().st_mode & 0o077
            text = path.read_text().rstrip("\n")
        except OSError as error:
            raise CredentialsError(f"{path} cannot be read: {error}", source=str(path)) from error
        if mode:
            raise CredentialsError(
                f"{path} is readable by others: run `chmod 600 {path}`", source=str(path)
            )
        return text
    if prompt and sys.stdin.isatty():
        return getpass.getpass(f"Passphrase of the key in {settings.pem}: ")
    return None
