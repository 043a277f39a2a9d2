"""What gets deployed: the published files and their requirements, checked offline."""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
RUNTIME_CODE = [
    ROOT / "function_app.py",
    *ROOT.glob("functions/*.py"),
    *ROOT.glob("kvfirewall/*.py"),
]


# ---- requirements.txt: the remote build installs exactly these ------------------------------


def runtime_imports() -> set[str]:
    """Third-party modules the published code imports, at the top or inside functions."""
    local = {"kvfirewall", "functions", "__future__", *sys.stdlib_module_names}
    names = set()
    for path in RUNTIME_CODE:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module)
    return {name for name in names if name.split(".")[0] not in local}


@functools.cache
def module_providers() -> dict[str, str]:
    """Module name -> installed distribution. By file, not by top-level name: `azure` is a
    namespace that dozens of distributions share."""
    providers = {}
    for dist in importlib.metadata.distributions():
        for file in dist.files or ():
            parts = file.with_suffix("").parts
            if file.suffix == ".py" and ".." not in parts:
                module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
                providers[module] = canonicalize_name(dist.metadata["Name"])
    return providers


def provider(module: str) -> str:
    """The distribution of a module, or of its nearest package (`from azure.x import Name`)."""
    parts = module.split(".")
    while parts and ".".join(parts) not in module_providers():
        parts.pop()
    return module_providers()[".".join(parts)]


def with_dependencies(names: set[str]) -> set[str]:
    """The distributions and everything they install, extras left out."""
    found, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name not in found:
            found.add(name)
            for spec in importlib.metadata.requires(name) or ():
                requirement = Requirement(spec)
                if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                    todo.append(canonicalize_name(requirement.name))
    return found


def test_requirements_install_every_runtime_import_and_nothing_unused():
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    declared = {
        canonicalize_name(Requirement(line).name) for line in lines if line and line[0] != "#"
    }
    needed = {provider(module) for module in runtime_imports()}
    assert needed <= with_dependencies(declared), "imported but never installed"
    assert declared <= needed, "installed but never imported"
