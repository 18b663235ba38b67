"""The agent bundle: one zipapp holding the agent, state.py and the pure-Python pyroute2.

`python3 -I <bundle>` runs the agent on any pnode with python3 >= 3.9 and nothing else
installed. The archive is deterministic (fixed timestamps, sorted entries) and named by the
sha256 of its bytes, so a pnode that already holds it is not sent it again. It is built in
memory from the installed code, never read back from a file someone else could have written.
"""

from __future__ import annotations

import functools
import hashlib
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

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
    data: bytes  # the zipapp
    sha256: str  # of `data`, hex

    @property
    def remote_name(self) -> str:
        """The file name on a pnode, which names its content."""
        return f"omnibed-agent-{self.sha256[:16]}.pyz"


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


@functools.cache
def build() -> Bundle:
    """The bundle for the installed code (built once per process)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in sorted(_entries().items()):
            info = zipfile.ZipInfo(name, _EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, content)
    data = buffer.getvalue()
    return Bundle(data, hashlib.sha256(data).hexdigest())
