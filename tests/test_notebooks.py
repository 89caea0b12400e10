"""SLOW (minutes): execute every chapter with the CI parameters and build the book, once.

Runs ``book/build.py --ci`` on a copy of the book's sources in a temporary folder (so that it never
overwrites the checkout's own ``book/executed/`` and ``_build/``): papermill executes the notebooks in
order, Jupyter Book renders them with warnings as errors, and the build's own check
fails on any unexecuted cell, error output or missing page. This test then checks what a reader
gets: every chapter page with its figures and glued numbers, and the chapters sharing one training
run. How long it took is no assertion (a busy machine is slower): the build records each chapter's
seconds in ``book/executed/timings.json``, and this test checks that the record is complete.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = [p.stem for p in sorted((ROOT / "notebooks").glob("*.ipynb"))]
_spec = importlib.util.spec_from_file_location("book_build", ROOT / "book" / "build.py")
build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build)
# Figures each chapter must show (glued figures with captions).
MIN_FIGURES = {
    "01_data": 3,
    "02_decoupling": 2,
    "03_graph_distillation": 2,
    "04_training": 2,
    "05_edge_analysis": 6,
    "06_ablations": 1,
}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Build a copy of the book's sources in a temporary folder (the checkout's own build stays untouched)."""
    tmp = tmp_path_factory.mktemp("book-ci")
    repo, work = tmp / "repo", tmp / "work"
    shutil.copytree(ROOT / "notebooks", repo / "notebooks")
    shutil.copytree(
        ROOT / "book",
        repo / "book",
        ignore=shutil.ignore_patterns("executed", "screenshots", "__pycache__", "*.egg-info"),
    )
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy2(ROOT / name, repo / name)
    result = subprocess.run(
        [sys.executable, str(repo / "book" / "build.py"), "--ci", "--work-dir", str(work)],
        cwd=repo, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, f"book/build.py --ci failed:\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}"
    return repo, work


def test_every_chapter_executes_the_book_builds_and_the_build_records_every_chapters_seconds(built):
    repo, _ = built
    timings = json.loads((repo / "book" / "executed" / "timings.json").read_text())
    assert timings["ci"] is True
    assert set(NOTEBOOKS) | {"jupyter-book build"} == set(timings["seconds"])
    assert all(isinstance(s, (int, float)) and s >= 0 for s in timings["seconds"].values()), timings


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_every_chapter_page_shows_its_figures_and_glued_numbers_and_no_error(built, name):
    repo, _ = built
    html = (repo / "_build" / "html" / "book" / "executed" / f"{name}.html").read_text(encoding="utf-8")
    figures = len(re.findall(r'<figure[^>]*id="fig-', html))
    assert figures >= MIN_FIGURES.get(name, 0), f"{name}: {figures} captioned figures"
    assert html.count('class="pasted-text"') + html.count("pasted-inline") > 0, f"{name}: no glued number"
    text = re.sub(r"<[^>]+>", "", html)
    for bad in ("Traceback", "Error:", "Warning:", "nan%"):
        assert bad not in text, f"{name}: page shows {bad!r}"
    # Math in glued Markdown renders only when pasted as MyST ({glue:md}`key:myst`); otherwise the reader sees $x_m$.
    raw = re.findall(r"\$\\?[A-Za-z]+_\{?[A-Za-z]", text)
    assert not raw, f"{name}: page shows raw TeX {raw[:3]}"


def test_pages_render_math_with_the_books_own_mathjax_and_show_no_machine_paths(built):
    repo, work = built
    pages = [repo / "_build" / "html" / "book" / "executed" / f"{name}.html" for name in NOTEBOOKS]
    pages.append(repo / "_build" / "html" / "book" / "method.html")
    local = 0
    for page in pages:
        html = page.read_text(encoding="utf-8")
        assert build.mathjax_problems(page) == [], build.mathjax_problems(page)
        local += bool(re.search(r'<script[^>]*src="(\.\./)*_static/mathjax/[^"]+"', html))
        for folder in (repo, work, work.resolve()):
            assert str(folder) not in html, f"{page.name} shows the build machine's path {folder}"
    assert local > 0, "no page loads the book's own MathJax"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_every_chapter_page_opens_without_code_and_has_one_search_field(built, name):
    repo, _ = built
    html = (repo / "_build" / "html" / "book" / "executed" / f"{name}.html").read_text(encoding="utf-8")
    # The build's check_book already passed chapter_problems on the executed copy; this is what the reader gets.
    for machinery in ('"google.colab" in sys.modules', "# Parameters", "injected-parameters", "work_dir ="):
        assert machinery not in html, f"{name}: the page shows {machinery!r}"
    assert html.count('class="btn search-button-field') == 1, f"{name}: not exactly one search field"
    assert re.search(r'<img[^>]*src="[^"]*colab-badge\.svg"', html), f"{name}: no Colab badge image"


def test_later_chapters_reuse_the_training_chapters_run(built):
    _, work = built
    runs = sorted(p.name.rsplit("-", 1)[0] for p in work.iterdir() if p.is_dir() and p.name != "data")
    assert runs.count("training") == 1, runs
    assert set(runs) == {
        "training",
        "uniform-prior",
        "no-prior",
        "audio-signal",
        "audio-signal-no-prior",
        "no-decoupling",
        "no-distillation",
    }
    training = next(work.glob("training-*"))
    assert (training / "summary.json").is_file()
