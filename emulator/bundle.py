"""The agent bundle: one zipapp holding the `agent` package and the pure-Python pyroute2.

`python3 -I <bundle>` runs the agent on any pnode with python3 >= MIN_PYTHON and nothing else
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

from . import agent

PACKAGE = "omnibed_agent"  # the agent package's name inside the bundle
MAIN = f"from {PACKAGE}.server import main\n\nmain()\n"
_EPOCH = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class Bundle:
    data: bytes  # the zipapp
    sha256: str  # of `data`, hex

    @property
    def remote_name(self) -> str:
        """The file name on a pnode, which names its content."""
        return f"omnibed-agent-{self.sha256[:16]}.pyz"


def _sources(package: Path, prefix: str) -> dict[str, bytes]:
    """{name in the bundle: content} of every .py file in the package directory."""
    return {
        prefix + path.relative_to(package).as_posix(): path.read_bytes()
        for path in sorted(package.rglob("*.py"))
        if "__pycache__" not in path.parts
    }


def _entries() -> dict[str, bytes]:
    return {
        "__main__.py": MAIN.encode(),
        **_sources(Path(agent.__file__).resolve().parent, f"{PACKAGE}/"),
        **_sources(Path(pyroute2.__file__).resolve().parent, "pyroute2/"),
    }


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
