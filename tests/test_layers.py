"""omnibed's layers import only downwards, checked on the source by parsing every import.

Application (omnibed/: api, cli) -> conformance, emulator, providers -> core. The `omnibed`
package itself only re-exports core's `hookimpl`, so a provider may import it. Imports inside
functions and under TYPE_CHECKING count too: a lazy import upwards is still a cycle.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path

ROOT = Path(__file__).parents[1]

CORE, ROOT_PACKAGE, APPLICATION = "core", "the omnibed package", "application"
PROVIDERS, EMULATOR, CONFORMANCE = "providers", "emulator", "conformance"
LAYER_OF_PACKAGE = {
    "omnibed.core": CORE,
    "omnibed.providers": PROVIDERS,
    "omnibed.emulator": EMULATOR,
    "omnibed.conformance": CONFORMANCE,
}
ALLOWED = {
    CORE: {CORE},
    ROOT_PACKAGE: {CORE},
    PROVIDERS: {CORE, ROOT_PACKAGE, PROVIDERS},
    EMULATOR: {CORE, EMULATOR},
    CONFORMANCE: {CORE, ROOT_PACKAGE, CONFORMANCE, APPLICATION},
    APPLICATION: {CORE, ROOT_PACKAGE, PROVIDERS, EMULATOR, CONFORMANCE, APPLICATION},
}


def package_dirs(root: Path) -> dict[str, Path]:
    """Package -> folder, as pyproject.toml maps them (`omnibed.core` -> core/, ...)."""
    config = tomllib.loads((root / "pyproject.toml").read_text())
    mapping = config["tool"]["setuptools"]["package-dir"]
    return {package: root / folder for package, folder in mapping.items()}


def modules(dirs: Mapping[str, Path]) -> dict[str, Path]:
    """Every module of the tree by its dotted name (a package by its own name)."""
    found: dict[str, Path] = {}
    for package, folder in dirs.items():
        for path in folder.rglob("*.py"):
            relative = path.relative_to(folder).with_suffix("").parts
            parts = relative[:-1] if relative[-1] == "__init__" else relative
            name = ".".join((package, *parts))
            found[name] = path
    return found


def layer(module: str) -> str | None:
    """The layer of an omnibed module; None for anything else (stdlib, third party)."""
    if module == "omnibed":
        return ROOT_PACKAGE
    for package, name in LAYER_OF_PACKAGE.items():
        if module == package or module.startswith(package + "."):
            return name
    return APPLICATION if module.startswith("omnibed.") else None


def imports(module: str, path: Path, known: Mapping[str, Path]) -> Iterator[tuple[int, str]]:
    """(line, imported module) of every import in `path`, relative ones resolved."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                yield node.lineno, submodule if submodule in known else base


def violations(root: Path) -> list[str]:
    """`file:line: layer imports module (layer)` for every import against the layers."""
    known = modules(package_dirs(root))
    found = []
    for module, path in sorted(known.items()):
        source_layer = layer(module)
        assert source_layer is not None, module
        for line, imported in sorted(set(imports(module, path, known))):
            target_layer = layer(imported)
            if target_layer is not None and target_layer not in ALLOWED[source_layer]:
                found.append(
                    f"{path.relative_to(root)}:{line}: {source_layer} imports {imported}"
                    f" ({target_layer})"
                )
    return found


def test_every_layer_imports_only_the_layers_below_it() -> None:
    assert violations(ROOT) == []


def test_an_import_upwards_is_found(tmp_path: Path) -> None:
    """The check fails on a tree that breaks each rule once, lazy and relative imports too."""
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    files = {
        "omnibed/__init__.py": "from omnibed.core.hookspecs import hookimpl\n",
        "omnibed/api.py": "from omnibed.emulator import coordinator\n",
        "core/__init__.py": "",
        "core/types.py": "def late():\n    from omnibed.emulator.coordinator import Emulator\n",
        "core/errors.py": "from omnibed import api\n",
        "emulator/__init__.py": "",
        "emulator/coordinator.py": "from ..core import types\nfrom omnibed.api import Omnibed\n",
        "providers/__init__.py": "",
        "providers/local/__init__.py": "from omnibed import hookimpl\nfrom . import provider\n",
        "providers/local/provider.py": "from omnibed.emulator import coordinator\n",
        "conformance/__init__.py": "",
        "conformance/suite.py": "from omnibed.api import Omnibed\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)

    assert violations(tmp_path) == [
        "core/errors.py:1: core imports omnibed.api (application)",
        "core/types.py:2: core imports omnibed.emulator.coordinator (emulator)",
        "emulator/coordinator.py:2: emulator imports omnibed.api (application)",
        "providers/local/provider.py:1: providers imports omnibed.emulator.coordinator"
        " (emulator)",
    ]
