"""The notebooks' first code cell on Colab: installs ``dmd-core[colab]`` and the chapters' helpers ``dmd-book`` (from
the repository's ``book/`` folder), and together they bring everything the notebooks import; the cell survives a
machine without a GPU.

The cell runs here with ``google.colab`` faked and ``subprocess``/``shutil`` recorded (nothing is installed).
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
import tomllib
import types
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
BOOK_PROJECT = tomllib.loads((ROOT / "book" / "pyproject.toml").read_text())
REPOSITORY_URL = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"].rstrip("/")


def _first_code_cell(path: Path) -> str:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return "".join(next(c for c in cells if c["cell_type"] == "code")["source"])


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~ ;\[@]", requirement, maxsplit=1)[0].strip().lower().replace("_", "-")


def _notebook_imports() -> set[str]:
    """Top-level modules imported by any notebook cell (distribution-style: ``myst_nb`` -> ``myst-nb``)."""
    names = set()
    for path in NOTEBOOKS:
        for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
            if cell["cell_type"] != "code":
                continue
            source = "\n".join(line for line in "".join(cell["source"]).splitlines()
                               if not line.lstrip().startswith(("%", "!")))  # fmt: skip
            for node in ast.walk(ast.parse(source)):
                if isinstance(node, ast.Import):
                    names |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names.add(node.module.split(".")[0])
    return {n.lower().replace("_", "-") for n in names}


def _run_on_fake_colab(source: str, monkeypatch, nvidia_smi: str | None) -> list[list[str]]:
    """Execute the cell as Colab would (``google.colab`` imported), recording every subprocess it starts."""
    calls = []

    def run(args, **kwargs):
        calls.append(list(args))
        if args[0] == "nvidia-smi" and nvidia_smi is None:
            raise FileNotFoundError(2, "No such file or directory", "nvidia-smi")
        return subprocess.CompletedProcess(args, 0, stdout="GPU 0: Tesla T4 (UUID: GPU-0)\n" if nvidia_smi else "",
                                           stderr="")  # fmt: skip

    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    monkeypatch.setattr(subprocess, "run", run)
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: nvidia_smi if name == "nvidia-smi" else None)
    exec(compile(source, "<first cell>", "exec"), {"__name__": "__main__"})
    return calls


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
@pytest.mark.parametrize("nvidia_smi", [None, "/usr/bin/nvidia-smi"], ids=["no-gpu", "gpu"])
def test_the_colab_cell_installs_dmd_core_and_the_book_helpers_in_one_pip_call_and_runs_without_nvidia_smi(
    path, monkeypatch, capsys, nvidia_smi
):
    calls = _run_on_fake_colab(_first_code_cell(path), monkeypatch, nvidia_smi)
    pip = [c for c in calls if c[1:4] == ["-m", "pip", "install"]]
    assert len(pip) == 1, f"expected one pip install (dmd-book requires dmd-core, found in the same call): {pip}"
    requirements = [a for a in pip[0][4:] if not a.startswith("-")]
    assert requirements == [f"dmd-core[colab] @ git+{REPOSITORY_URL}",
                            f"dmd-book @ git+{REPOSITORY_URL}#subdirectory=book"], requirements  # fmt: skip
    out = capsys.readouterr().out
    assert ("Tesla T4" in out) if nvidia_smi else ("No GPU" in out)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_colab_cell_does_nothing_outside_colab(path, monkeypatch):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("a subprocess was started outside Colab"))
    exec(compile(_first_code_cell(path), "<first cell>", "exec"), {"__name__": "__main__"})


def test_the_subdirectory_the_cell_installs_is_the_dmd_book_distribution_with_the_dmd_book_package():
    assert BOOK_PROJECT["project"]["name"] == "dmd-book"
    assert BOOK_PROJECT["tool"]["setuptools"]["packages"]["find"]["include"] == ["dmd_book*"]
    assert (ROOT / "book" / "dmd_book" / "__init__.py").is_file()
    assert "dmd-core" in {_name(r) for r in BOOK_PROJECT["project"]["dependencies"]}


def test_the_colab_extra_holds_only_what_the_notebooks_import_beyond_the_package():
    colab = {_name(r) for r in PROJECT["optional-dependencies"]["colab"]}
    own = {_name(r) for r in PROJECT["dependencies"]}
    assert colab, "the colab extra is empty"
    assert colab <= _notebook_imports() | own, f"colab extra installs what no notebook imports: {colab}"
    assert not colab & {"jupyter-book", "papermill", "pytest", "ruff"}, "build and test tools do not belong on Colab"
    stdlib = {n.replace("_", "-") for n in sys.stdlib_module_names}
    imported = _notebook_imports() - own - stdlib - {"dmd-core", "dmd-book", "ipython"}  # IPython: the kernel itself
    assert imported <= colab, f"notebooks import {imported - colab}, which the colab extra does not install"


def test_dmd_book_requires_everything_its_modules_import_and_dmd_core_requires_no_plotting_library():
    book = {_name(r) for r in BOOK_PROJECT["project"]["dependencies"]}
    own = {_name(r) for r in PROJECT["dependencies"]}
    imported = set()
    for path in (ROOT / "book" / "dmd_book").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module.split(".")[0])
    distribution = {"sklearn": "scikit-learn"}  # import names that differ from the distribution's
    third_party = {distribution.get(n, n.replace("_", "-")) for n in imported - set(sys.stdlib_module_names)}
    third_party -= {"dmd-book"}
    assert "matplotlib" in third_party, "dmd_book.plots draws with matplotlib"
    assert third_party <= book | own, f"dmd_book imports {third_party - book - own}, which dmd-book does not require"
    assert not own & {"matplotlib", "seaborn", "myst-nb"}, f"dmd-core requires a plotting or book library: {own}"
