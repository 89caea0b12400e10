"""Project hygiene: the two dependency lists agree, the package needs no plotting library, setup installs the
book's helpers, CI runs the README's test command."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _normalise(req: str) -> str:
    return re.sub(r"\s+", "", req).lower().replace("_", "-")


def _environment_pip_requirements() -> set[str]:
    lines = (ROOT / "environment.yml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "- pip:")
    reqs = set()
    for line in lines[start + 1 :]:
        m = re.match(r"^\s+- (.+)$", line)
        if not m:
            break
        if not m.group(1).startswith("-e"):
            reqs.add(_normalise(m.group(1)))
    return reqs


def test_environment_yml_and_pyproject_list_the_same_requirements():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_normalise(r) for r in project["dependencies"]}
    for extra in ("book", "dev"):
        declared |= {_normalise(r) for r in project["optional-dependencies"][extra]}
    assert _environment_pip_requirements() == declared


def test_runtime_dependencies_are_the_ones_the_package_needs():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=!~ ]", r)[0].lower() for r in project["dependencies"]}
    assert names == {"torch", "transformers", "numpy", "scikit-learn", "tqdm", "pandas", "huggingface_hub",
                     "safetensors"}  # fmt: skip


def test_setup_and_environment_yml_install_the_books_helpers_with_the_package():
    """book/ (dmd-book) is installed beside dmd_core, in the same pip command (it requires dmd-core)."""
    setup = [line for line in (ROOT / "Makefile").read_text().splitlines() if "pip install" in line and "-e" in line]
    assert any('-e ".[book,dev]"' in line and "-e ./book" in line for line in setup), setup
    environment = (ROOT / "environment.yml").read_text()
    assert re.search(r"^\s+- -e \.$", environment, flags=re.M) and re.search(
        r"^\s+- -e \./book$", environment, flags=re.M
    )
    assert (ROOT / "book" / "pyproject.toml").is_file()


def test_license_is_an_spdx_expression_and_setuptools_is_new_enough_to_read_it():
    for path in (ROOT / "pyproject.toml", ROOT / "book" / "pyproject.toml"):
        data = tomllib.loads(path.read_text())
        assert data["project"]["license"] == "MIT", path
        requires = data["build-system"]["requires"]
        assert any(re.fullmatch(r"setuptools>=(7[7-9]|[89]\d|\d{3,})(\.\d+)*", r) for r in requires), (path, requires)


def test_torch_is_never_pinned_to_a_cpu_only_build():
    for name in ("pyproject.toml", "environment.yml"):
        text = (ROOT / name).read_text()
        assert "+cpu" not in text and "download.pytorch.org/whl/cpu" not in text, name


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"^\s*(make \w+)\s*$", readme, flags=re.M)
    assert "make test" in commands and "make book" in commands
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert "make test" in ci
