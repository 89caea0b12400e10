"""The package's layout: the method apart from the machinery, one home per idea, a self-documenting repository."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dmd_core"
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.name not in ("__init__.py", "__main__.py"))
MAX_LINES = 500

# Every module of the package is in exactly one of three lists (names relative to dmd_core; "__init__" is the
# package itself), so that a new module cannot slip in unclassified. The method: read these to learn DMD.
METHOD = ("config", "model", "text_encoder", "transformer", "distill", "losses", "metrics")
# What the method may use besides itself: the kernels' entry points (kernels/__init__.py: attention and dropout,
# which dispatch to the speed code) and the plain functions they equal, and the model folder's format (hub: the
# PyTorchModelHubMixin that DMD inherits). Exact modules only.
SUPPORT = ("kernels", "kernels.definition", "kernels.switch", "hub")
# Running, measuring, sharing and reading the method. A package named here (cli, data) is machinery as a whole,
# its new modules with it.
MACHINERY = ("__init__", "cli", "data", "analysis", "bench", "devices", "epoch_stats", "evaluation", "export",
             "precision", "reference", "rng", "runs", "seeds", "tensorboard", "threads", "trainer", "kernels.tiled",
             "kernels.native")  # fmt: skip
# The one way from the method to the speed code: the kernels' entry points call the implementations.
DISPATCH = {"kernels": ("kernels.tiled",)}


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"))


def module_name(path: Path, package: Path = PACKAGE) -> str:
    """``dmd_core/data/synth.py`` -> ``data.synth``; a package's ``__init__.py`` is the package, the top one
    ``__init__``."""
    parts = list(path.relative_to(package).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts) or "__init__"


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Every module of ``package`` and the modules of the package it imports, read from the source.

    Every import statement counts, wherever it is: at the top, inside a function (a lazy import is still a
    dependency) or under ``TYPE_CHECKING``. ``from .pkg import name`` is an edge to the module ``pkg.name`` when
    there is one (so ``from . import x`` in a package's ``__init__`` is an edge to ``x``), else to ``pkg`` itself
    (its ``__init__``, which defines or re-exports ``name``). The parent packages that Python initialises on the
    way are not edges: every module would otherwise depend on the package's ``__init__``, which imports the
    public names of them all.
    """
    paths = {module_name(p, package): p for p in sorted(package.rglob("*.py"))}
    full = {f"{package.name}.{m}" if m != "__init__" else package.name: m for m in paths}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        here = package.name if name == "__init__" else f"{package.name}.{name}"
        current = here if path.name == "__init__.py" else here.rpartition(".")[0]
        targets: list[str] = []
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.Import):
                targets += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = current.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
                targets += [f"{base}.{a.name}" if f"{base}.{a.name}" in full else base for a in node.names]
        graph[name] = set()
        for target in targets:
            while target and target not in full:  # ``import dmd_core.data.synth``, ``from .kernels.native import x``
                target = target.rpartition(".")[0]
            if target and full[target] != name:
                graph[name].add(full[target])
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) through each group of modules that import each other (Tarjan's strongly
    connected components)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while not group or group[-1] != v:
                group.append(stack.pop())
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = []
    for group in groups:  # the shortest way from the group's first module back to itself, inside the group
        start, paths = group[0], {group[0]: [group[0]]}
        frontier = [start]
        while frontier and start not in [w for v in frontier for w in graph[v]]:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v] & set(group)):
                    if w not in paths:
                        paths[w] = paths[v] + [w]
                        nxt.append(w)
            frontier = nxt
        last = next(v for v in frontier if start in graph[v])
        cycles.append(paths[last] + [start])
    return cycles


def classification(name: str) -> list[str]:
    """The lists that claim module ``name`` (METHOD, SUPPORT, MACHINERY)."""
    claims = []
    for label, entries in (("METHOD", METHOD), ("SUPPORT", SUPPORT), ("MACHINERY", MACHINERY)):
        for entry in entries:
            if name == entry or (label == "MACHINERY" and name.startswith(entry + ".")):
                claims.append(label)
    return claims


def test_the_readme_table_names_every_module_of_the_package():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    missing = []
    for path in MODULES:
        rel = path.relative_to(ROOT).as_posix()
        folder = path.parent.relative_to(ROOT).as_posix() + "/"
        named = rel in readme or (folder != "dmd_core/" and f"`{folder}`" in readme and f"`{path.name}`" in readme)
        if not named and f"`{path.name}`" not in readme:
            missing.append(rel)
    assert not missing, f"README's module table does not mention {missing}"


@pytest.mark.parametrize("path", MODULES + sorted(PACKAGE.rglob("__init__.py")), ids=lambda p: p.name)
def test_docstrings_cite_only_the_book_or_the_paper(path):
    text = path.read_text(encoding="utf-8")
    for pattern in (r"spec section", r"mmsa-format\.md", r"dmd-method\.md", r"/work/", r"\.\./shared"):
        assert not re.search(pattern, text), f"{path.name} cites {pattern!r}: a document outside the repository"


def test_no_private_name_is_imported_or_used_outside_its_module():
    offenders = []
    for path in MODULES + sorted(PACKAGE.rglob("__init__.py")):
        tree = _tree(path)
        modules = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    if alias.name.startswith("_") and alias.name != "__version__":
                        offenders.append(f"{path.name}: from {node.module} import {alias.name}")
                    modules.add(alias.asname or alias.name)
            elif isinstance(node, ast.Import):
                modules.update((a.asname or a.name).split(".")[0] for a in node.names)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and isinstance(node.value, ast.Name)
                and node.value.id in modules
                and node.value.id not in ("torch", "np", "os", "sys", "F", "nn", "dist", "pickle", "ctypes")
            ):
                offenders.append(f"{path.name}: {node.value.id}.{node.attr}")  # fmt: skip
    assert not offenders, offenders


def test_no_module_of_the_package_is_over_500_lines():
    long = [f"{p.relative_to(ROOT).as_posix()}: {n} lines" for p in sorted(PACKAGE.rglob("*.py"))
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES]  # fmt: skip
    assert not long, f"over {MAX_LINES} lines: {long}"


def test_no_import_circle_in_the_package():
    cycles = import_cycles(import_graph())
    assert not cycles, "modules that import each other: " + "; ".join(" -> ".join(c) for c in cycles)


def test_every_module_is_classified_once_as_method_support_or_machinery():
    graph = import_graph()
    wrong = {m: claims for m in sorted(graph) if len(claims := classification(m)) != 1}
    assert not wrong, f"each module in exactly one of METHOD, SUPPORT, MACHINERY: {wrong}"
    entries = [*METHOD, *SUPPORT, *MACHINERY]
    stale = [e for e in entries if e not in graph]
    assert not stale and len(entries) == len(set(entries)), f"names of no module, or named twice: {stale}"


@pytest.mark.parametrize("name", (*METHOD, *SUPPORT))
def test_method_files_and_what_they_use_import_no_machinery(name):
    allowed = {*METHOD, *SUPPORT, *DISPATCH.get(name, ())}
    machinery = sorted(import_graph()[name] - allowed)
    assert not machinery, f"{name} imports {machinery} (machinery: the method reaches only {SUPPORT})"


def test_method_and_loop_functions_stay_short():
    long = []
    for name in (*METHOD, "trainer", "evaluation"):
        for node in ast.walk(_tree(PACKAGE / f"{name}.py")):
            if isinstance(node, ast.FunctionDef) and node.end_lineno - node.lineno + 1 > 80:
                long.append(f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not long, long


def test_import_dmd_core_does_not_import_transformers_or_the_book_tools():
    import subprocess
    import sys

    # huggingface_hub is imported: DMD inherits its PyTorchModelHubMixin (dmd_core.hub), the library's own
    # save_pretrained / from_pretrained / push_to_hub rather than a copy kept to save a fraction of a second.
    heavy = ("transformers", "safetensors", "matplotlib", "seaborn", "pandas", "sklearn", "torch._dynamo")
    code = (
        f"import sys, dmd_core, dmd_core.cli, dmd_core.trainer; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
