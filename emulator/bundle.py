"""The agent bundle: one zipapp holding the agent, state.py and the pure-Python pyroute2.

`python3 -I omnibed-agent-<hash>.pyz` runs the agent on any pnode with python3 >= 3.9 and
nothing else installed. The archive is deterministic (fixed timestamps, sorted entries), named
by the hash of its content and cached, so a pnode that already holds it is not sent it again.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import platformdirs
import pyroute2

PACKAGE = "omnibed_agent"  # the emulator modules' name inside the bundle
AGENT_MODULES = (
    "agent.py",
    "netlink_apply.py",
    "nlbatch.py",
    "nsutil.py",
    "preflight.py",
    "probe.py",
    "shaping.py",
    "state.py",
)
MAIN = f"from {PACKAGE}.agent import main\n\nmain()\n"
_EPOCH = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class Bundle:
    path: Path
    digest: str  # sha256 of the archive's entries, hex

    @property
    def remote_name(self) -> str:
        """The file name on a pnode: the cached file's own, which names its content."""
        return self.path.name


def _entries() -> dict[str, bytes]:
    here = Path(__file__).resolve().parent
    entries = {"__main__.py": MAIN.encode(), f"{PACKAGE}/__init__.py": b""}
    for name in AGENT_MODULES:
        entries[f"{PACKAGE}/{name}"] = (here / name).read_bytes()
    root = Path(pyroute2.__file__).resolve().parent
    for path in sorted(root.rglob("*.py")):
        if "__pycache__" not in path.parts:
            entries["pyroute2/" + path.relative_to(root).as_posix()] = path.read_bytes()
    return entries


def build(cache_dir: Path | None = None) -> Bundle:
    """The bundle for the installed code, built unless the cache already holds it."""
    entries = _entries()
    digest = hashlib.sha256()
    for name in sorted(entries):
        digest.update(name.encode() + b"\0" + hashlib.sha256(entries[name]).digest())
    hexdigest = digest.hexdigest()
    directory = Path(cache_dir or platformdirs.user_cache_dir("omnibed")) / "agent"
    path = directory / f"omnibed-agent-{hexdigest[:16]}.pyz"
    if not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for name in sorted(entries):
                info = zipfile.ZipInfo(name, _EPOCH)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                archive.writestr(info, entries[name])
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(buffer.getvalue())
        tmp.replace(path)
    return Bundle(path, hexdigest)
