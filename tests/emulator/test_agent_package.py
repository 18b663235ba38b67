"""emulator/agent/ is what runs on a pnode: the pnode's python3 (MIN_PYTHON or newer), its
standard library and pyroute2, nothing of omnibed outside the package. Each check is also run
on a package that breaks it, so a check that stopped seeing anything fails here too."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

from omnibed.emulator import agent
from omnibed.emulator.agent import MIN_PYTHON, ops
from omnibed.emulator.agent.server import Agent

AGENT = Path(agent.__file__).resolve().parent
BUNDLED_LIBRARIES = {"pyroute2"}  # what the bundle carries besides the agent package
OLDEST = "{}.{}".format(*MIN_PYTHON)


def foreign_imports(package: Path) -> list[str]:
    """`file: module` for each import in `package` of what is neither in it, nor in the
    standard library, nor bundled."""
    found = []
    for path in sorted(package.rglob("*.py")):
        depth = len(path.relative_to(package).parts)  # relative levels that stay inside
        for node in ast.walk(ast.parse(path.read_text(), path.name)):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level > depth:
                names = ["." * node.level + (node.module or "")]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            found += [
                f"{path.name}: {name}"
                for name in names
                if name.split(".")[0] not in sys.stdlib_module_names | BUNDLED_LIBRARIES
            ]
    return found


def newer_python(package: Path) -> str:
    """What vermin (syntax, modules, functions, arguments) and ruff (annotations that the
    oldest Python would evaluate) find in `package` that needs a Python newer than OLDEST."""
    vermin = subprocess.run(
        [str(Path(sys.executable).with_name("vermin")), f"--target={OLDEST}-", "--no-tips",
         "--violations", str(package)],
        capture_output=True, text=True,
    )
    ruff = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--isolated", "--output-format=concise",
         "--target-version", "py{}{}".format(*MIN_PYTHON), "--select", "FA102", str(package)],
        capture_output=True, text=True,
    )
    return "".join(run.stdout + run.stderr for run in (vermin, ruff) if run.returncode != 0)


def test_agent_package_imports_only_the_standard_library_and_pyroute2() -> None:
    assert foreign_imports(AGENT) == []


def test_agent_package_runs_on_the_oldest_pnode_python() -> None:
    assert newer_python(AGENT) == ""


def test_the_checks_see_what_a_pnode_could_not_run(tmp_path: Path) -> None:
    package = tmp_path / "agent"
    (package / "sub").mkdir(parents=True)
    (package / "server.py").write_text(
        "from omnibed.core.errors import UsageError\n"
        "import yaml\n"
        "from .. import planner\n"
        "from . import ops\n"
    )
    (package / "sub" / "inner.py").write_text("from .. import ops\nfrom ... import model\n")
    (package / "matching.py").write_text(
        "def kind(x):\n    match x:\n        case 1:\n            return 'one'\n"
    )
    (package / "annotated.py").write_text("def f(x: int | None) -> None:\n    pass\n")

    assert foreign_imports(package) == [
        "server.py: omnibed.core.errors", "server.py: yaml", "server.py: ..", "inner.py: ...",
    ]
    found = newer_python(package)
    assert "matching.py" in found and "pattern matching" in found  # vermin
    assert "annotated.py" in found and "FA102" in found  # ruff


def test_everyday_lint_of_the_agent_targets_the_oldest_pnode_python() -> None:
    config = tomllib.loads((AGENT / "ruff.toml").read_text())
    assert config["target-version"] == "py{}{}".format(*MIN_PYTHON)
    assert "FA102" in config["lint"]["extend-select"]


def test_the_agent_answers_every_op_its_callers_can_name() -> None:
    assert set(Agent().handlers) == set(ops.ALL)
