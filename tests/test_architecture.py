"""The package's imports point one way: errors/runtime/metrics -> methods -> config -> data/models/
results -> training -> compare/inference -> analysis/export/serve -> reporting -> cli. A lower layer
that imports a higher one (even inside a function) is how import cycles and hidden coupling start.

The registry sits below config, a deliberate departure from "config before methods": config types the
method section through the registry (CLI choices, validation), so methods import config only for type
hints (under TYPE_CHECKING).
"""

from __future__ import annotations

import ast
from pathlib import Path


PACKAGE = Path(__file__).resolve().parents[1] / "src" / "sentitune"

# Lower number = lower layer. Keys are dotted module paths below sentitune; the longest match wins.
LAYERS = {
    "errors": 0,
    "runtime": 1,
    "metrics": 1,
    "methods": 2,
    "config": 3,
    "data": 4,
    "models": 4,
    "modelcard": 4,  # the model card and portable base reference of a run's model/; training and export write it
    "results": 4,
    "training": 5,
    "trainer": 5,  # MeasuredTrainer and its Meter; training imports it when a neural run starts
    "pretraining": 5,
    "reporting.plots": 6,  # figures only (matplotlib in, Figure out); analysis draws with them
    "compare": 6,
    "distill": 6,  # a teacher run's Predictor (inference) -> soft targets -> the one training loop
    "tuning": 5,  # the search (optuna) behind compare --tune; compare runs its trials
    "inference": 6,
    "explain": 6,  # attributions over a loaded Predictor; analyze, serve and the explain command use it
    "analysis": 7,
    "export": 7,
    "serve": 7,
    "scale": 7,  # Ray Data / Ray Serve / Triton around the Predictor, the app and the export; ray imported lazily
    "reporting": 8,
    "cli": 9,  # a package: cli.main (parser, dispatch), cli.options, cli.commands.<command>
    "__main__": 9,
    "__init__": 9,
}


def _layer(dotted: str) -> tuple[str, int]:
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        key = ".".join(parts[:end])
        if key in LAYERS:
            return key, LAYERS[key]
    raise AssertionError(f"sentitune.{dotted} has no layer; add it to LAYERS in {__file__}")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def _type_checking_blocks(tree: ast.AST) -> set[int]:
    """ids of nodes inside `if TYPE_CHECKING:` blocks (imports for type hints only)."""
    inside = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for child in node.body:
                inside |= {id(n) for n in ast.walk(child)}
    return inside


def _package_imports(path: Path):
    """(line, imported dotted module below sentitune) for every import of the package in `path`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = _type_checking_blocks(tree)
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and node.module
            and (node.module == "sentitune" or node.module.startswith("sentitune."))
        ):
            base = node.module.split(".")[1:]
            targets = [".".join(base)] if base else [alias.name for alias in node.names]
            if base:  # `from sentitune.reporting import plots` reaches reporting.plots
                targets = [".".join([*base, alias.name]) for alias in node.names]
            for target in targets:
                yield node.lineno, target
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("sentitune."):
                    yield node.lineno, alias.name.split(".", 1)[1]


def _files():
    return sorted(PACKAGE.rglob("*.py"))


def test_no_import_reaches_up_a_layer():
    upward = []
    for path in _files():
        me, my_layer = _layer(_module_name(path))
        for line, target in _package_imports(path):
            key, layer = _layer(target)
            if layer > my_layer:
                upward.append(
                    f"{path.relative_to(PACKAGE)}:{line}: {me} (layer {my_layer}) imports {key} (layer {layer})"
                )
    assert not upward, "imports against the layering:\n" + "\n".join(upward)


def test_no_import_cycles_between_modules():
    graph: dict[str, set[str]] = {}
    for path in _files():
        me = _layer(_module_name(path))[0]
        graph.setdefault(me, set()).update(_layer(t)[0] for _, t in _package_imports(path))
    for node in graph:
        graph[node].discard(node)
    seen, stack, cycles = set(), [], []

    def visit(node):
        if node in stack:
            cycles.append(stack[stack.index(node) :] + [node])
            return
        if node in seen:
            return
        seen.add(node)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            visit(nxt)
        stack.pop()

    for node in sorted(graph):
        visit(node)
    assert not cycles, f"import cycles: {[' -> '.join(c) for c in cycles]}"


def test_argparse_lives_only_in_the_cli():
    users = [
        str(p.relative_to(PACKAGE))
        for p in _files()
        if _module_name(p).split(".")[0] not in ("cli", "__main__")
        and any(
            isinstance(n, (ast.Import, ast.ImportFrom)) and "argparse" in ast.dump(n)
            for n in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
        )
    ]
    assert not users, f"argparse imported outside the CLI: {users}"
