"""The agent bundle: one zipapp holding the `agent` package and the pure-Python pyroute2.

`python3 -I <bundle>` runs the agent on any pnode with python3 >= MIN_PYTHON and nothing else
installed. The archive is deterministic (fixed timestamps, sorted entries) and named by the
sha256 of its bytes, so a pnode that already holds it is not sent it again. It is built in
memory from the installed code, never read back from a file someone else could have written.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import marshal
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


def _sources(package: Path, prefix: str) -> dict[str, Path]:
    """{name in the bundle: file} of every .py file in the package directory."""
    return {
        prefix + path.relative_to(package).as_posix(): path
        for path in sorted(package.rglob("*.py"))
        if "__pycache__" not in path.parts
    }


def _bytecode(path: Path, source: bytes) -> bytes:
    """`source` (of `path`) compiled by this interpreter, as an unchecked hash-based .pyc
    (PEP 552); the code is taken from the interpreter's own cache of `path` when that is
    up to date, which saves compiling it again."""
    code = None
    try:
        cached = Path(importlib.util.cache_from_source(str(path))).read_bytes()
        info = path.stat()
        if (
            cached[:4] == importlib.util.MAGIC_NUMBER
            and int.from_bytes(cached[4:8], "little") == 0  # timestamp-based
            and int.from_bytes(cached[8:12], "little") == int(info.st_mtime) & 0xFFFFFFFF
            and int.from_bytes(cached[12:16], "little") == info.st_size & 0xFFFFFFFF
        ):
            code = cached[16:]
    except OSError:
        pass
    if code is None:
        code = marshal.dumps(compile(source, str(path), "exec", dont_inherit=True))
    flags = (1).to_bytes(4, "little")  # hash-based, not checked against the source
    return importlib.util.MAGIC_NUMBER + flags + importlib.util.source_hash(source) + code


def _entries() -> dict[str, bytes]:
    """The bundle's files: every module's source, and beside it (`name.pyc`, which zipimport
    tries first) its bytecode, which a pnode whose python3 has this interpreter's bytecode
    version loads instead of compiling every module at each agent start (three times the
    CPU of the start); any other python3 skips it and compiles the source."""
    files = {
        **_sources(Path(agent.__file__).resolve().parent, f"{PACKAGE}/"),
        **_sources(Path(pyroute2.__file__).resolve().parent, "pyroute2/"),
    }
    entries = {"__main__.py": MAIN.encode()}
    for name, path in files.items():
        source = path.read_bytes()
        entries[name] = source
        entries[f"{name}c"] = _bytecode(path, source)
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
