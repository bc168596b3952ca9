"""Every third-party module the package imports is a declared dependency, and the lock holds them all:
an undeclared import works only while something else happens to pull the package in."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import tomllib


ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "sentitune"


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _top_level_imports() -> dict[str, list[str]]:
    """Top-level module name -> the files that import it (absolute imports only)."""
    found: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], []).append(str(path.relative_to(ROOT)))
    return found


def _declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    requirements = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra
    return {_normalise(re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0]) for r in requirements}


PROVIDED_BY_THE_HOST = {"triton_python_backend_utils"}
"""Modules that no package provides: the host process injects them (Triton's Python backend gives its
model.py files `triton_python_backend_utils`; sentitune ships such a file in `export --format triton`)."""


def test_every_imported_third_party_module_is_declared():
    distributions = packages_distributions()
    declared = _declared()
    undeclared = {}
    for module, files in _top_level_imports().items():
        if module in sys.stdlib_module_names or module == "sentitune" or module in PROVIDED_BY_THE_HOST:
            continue
        providers = {_normalise(d) for d in distributions.get(module, [])}
        assert providers, f"{module} (imported by {files[0]}) is not installed, so no distribution provides it"
        if not providers & declared:
            undeclared[module] = (sorted(providers), files[0])
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"


def test_the_lock_pins_every_declared_dependency():
    lock = (ROOT / "requirements.lock").read_text(encoding="utf-8")
    pinned = {_normalise(m.group(1)): m.group(2) for m in re.finditer(r"^([A-Za-z0-9_.-]+)==(\S+)", lock, re.M)}
    missing = sorted(_declared() - set(pinned))
    assert not missing, f"declared in pyproject.toml but absent from requirements.lock: {missing}"
    assert pinned["torch"].startswith("2.13.0"), pinned["torch"]
    unhashed = re.findall(r"^([A-Za-z0-9_.-]+==\S+)(?! \\)\s*$", lock, re.M)
    assert not unhashed, f"pins without hashes: {unhashed}"
