"""The package's layout: the method apart from the machinery, one home per idea, a self-documenting repository."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dmd_core"
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.name not in ("__init__.py", "__main__.py"))
METHOD = ("config", "model", "text_encoder", "transformer", "distill", "losses", "metrics")
MACHINERY = ("cli", "bench", "data", "book", "analysis", "plots", "runs", "trainer", "reference")


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"))


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


@pytest.mark.parametrize("name", METHOD)
def test_method_files_hold_no_machinery(name):
    tree = _tree(PACKAGE / f"{name}.py")
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level >= 1:
            imported.add((node.module or "").split(".")[0])
            if node.module and node.module.startswith("kernels."):
                imported.add(node.module)
    assert not imported & set(MACHINERY), f"{name}.py imports {imported & set(MACHINERY)}"
    # Speed code is reached only through kernels' two entry points and the plain definitions.
    assert not imported & {"kernels.tiled", "kernels.native"}
    assert len((PACKAGE / f"{name}.py").read_text(encoding="utf-8").splitlines()) <= 500


def test_method_and_loop_functions_stay_short():
    long = []
    for name in (*METHOD, "trainer", "evaluation"):
        for node in ast.walk(_tree(PACKAGE / f"{name}.py")):
            if isinstance(node, ast.FunctionDef) and node.end_lineno - node.lineno + 1 > 80:
                long.append(f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not long, long


def test_import_dmd_core_does_not_import_transformers_the_hub_or_the_book_tools():
    import subprocess
    import sys

    heavy = ("transformers", "huggingface_hub", "safetensors", "matplotlib", "pandas", "sklearn", "torch._dynamo")
    code = (
        f"import sys, dmd_core, dmd_core.cli, dmd_core.trainer; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
