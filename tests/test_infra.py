"""What gets deployed: the published files and their requirements, checked offline."""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pathspec
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


# ---- .funcignore: what `func azure functionapp publish` uploads -------------------------------


def published(paths: list[str]) -> set[str]:
    """The paths that .funcignore (gitignore syntax) lets through."""
    spec = pathspec.GitIgnoreSpec.from_lines((ROOT / ".funcignore").read_text().splitlines())
    return {path for path in paths if not spec.match_file(path)}


def test_funcignore_publishes_the_app_and_nothing_else():
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    # Not tracked, but present on a developer's machine when they publish.
    local = [
        ".venv/bin/python",
        "node_modules/azurite/package.json",
        "local.settings.json",
        "kvfirewall/__pycache__/rules.cpython-311.pyc",
        ".azurite/__azurite_db_blob__.json",
        "bench/run.py",
        "docs/notes.md",
        "infra/azuredeploy.json",
        ".git/HEAD",
    ]
    kept = published(tracked + local)
    app = ("function_app.py", "host.json", "requirements.txt", "functions/", "kvfirewall/")
    assert kept == {path for path in tracked if path.startswith(app)}
    assert {
        "kvfirewall/data/ServiceTags_Public_20251028.AzureDevOps-only.json",
        "kvfirewall/settings.py",
        "functions/event_grid.py",
    } <= kept
