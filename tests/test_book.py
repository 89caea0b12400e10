"""The book's sources: clean notebooks, parameters, Colab cells, table of contents, configuration, citations.

Structural checks only (seconds); tests/test_notebooks.py executes everything.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
REQUIRED_PARAMETERS = {"device", "data_path", "dataset", "aligned", "scale", "bert", "epochs", "seeds", "d",
                       "heads", "nlevels", "lr", "accumulation", "work_dir", "paper_scale"}  # fmt: skip


def _build_module():
    spec = importlib.util.spec_from_file_location("book_build", ROOT / "book" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _build_module()
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
REPOSITORY_URL = CONFIG["repository"]["url"].rstrip("/")


def _read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def _parameters_cell(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, "expected exactly one cell tagged 'parameters'"
    return cells[0]


def _assigned_names(source: str) -> dict[str, object]:
    names = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    names[target.id] = ast.literal_eval(node.value)
    return names


def test_the_chapters_exist_in_order_and_build_py_lists_every_one():
    names = [p.stem for p in NOTEBOOKS]
    assert names[:5] == ["01_data", "02_decoupling", "03_graph_distillation", "04_training", "05_edge_analysis"]
    assert list(build.NOTEBOOKS) == names
    assert set(build.CI_PARAMS) == set(names)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_sources_carry_no_outputs_or_execution_counts(path):
    for i, cell in enumerate(_read(path).cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {i} has outputs (strip them)"
            assert cell.execution_count is None, f"{path.name} cell {i} has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_has_a_tagged_parameters_cell_with_the_shared_parameters(path):
    values = _assigned_names(_parameters_cell(_read(path)).source)
    assert REQUIRED_PARAMETERS <= set(values), f"missing {REQUIRED_PARAMETERS - set(values)}"
    assert values["device"] == "auto"
    assert values["data_path"] is None, "the default must run on synthetic data"
    assert values["paper_scale"] is False
    assert values["work_dir"] == "runs/book"


def test_ci_parameters_are_parameters_of_the_notebooks():
    for name, extra in build.CI_PARAMS.items():
        values = _assigned_names(_parameters_cell(_read(ROOT / "notebooks" / f"{name}.ipynb")).source)
        unknown = set(build.CI_COMMON) | set(extra)
        assert unknown <= set(values), f"{name}: CI sets unknown parameters {unknown - set(values)}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_opens_with_a_colab_badge_for_its_own_source(path):
    first = _read(path).cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# ")
    owner_repo = REPOSITORY_URL.removeprefix("https://github.com/")
    link = f"https://colab.research.google.com/github/{owner_repo}/blob/{CONFIG['repository']['branch']}/notebooks/{path.name}"
    assert link in first.source
    assert "colab-badge.svg" in first.source


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_first_code_cell_installs_from_the_configured_repository_on_colab_only(path):
    code = next(c for c in _read(path).cells if c.cell_type == "code")
    urls = re.findall(r"https://github\.com/[\w.-]+/[\w.-]+", code.source)
    assert urls == [REPOSITORY_URL], f"{path.name}: first code cell must use {REPOSITORY_URL}, found {urls}"
    assert '"google.colab" in sys.modules' in code.source
    assert "nvidia-smi" in code.source  # the GPU check


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_come_right_after_the_colab_cell(path):
    code = [c for c in _read(path).cells if c.cell_type == "code"]
    assert "parameters" in code[1].metadata.get("tags", [])


def test_toc_lists_the_intro_every_executed_notebook_and_the_references():
    pages = build.toc_pages()
    assert pages[0] == "book/intro"
    assert [p for p in pages if p.startswith("book/executed/")] == [f"book/executed/{p.stem}" for p in NOTEBOOKS]
    for page in pages:
        if not page.startswith("book/executed/"):
            assert (ROOT / f"{page}.md").is_file(), f"{page}.md missing"
    assert "book/references" in pages


def test_config_executes_nothing_and_excludes_sources_and_runs():
    assert CONFIG["execute"]["execute_notebooks"] == "off"
    excluded = CONFIG["exclude_patterns"]
    for pattern in ("notebooks/*", ".venv/*", "runs/*", "_build/*"):
        assert pattern in excluded
    assert CONFIG["bibtex_bibfiles"] == ["book/references.bib"]
    assert REPOSITORY_URL.startswith("https://github.com/")


def _bib_keys() -> set[str]:
    return set(re.findall(r"@\w+\{([^,]+),", (ROOT / "book" / "references.bib").read_text()))


def test_bibliography_holds_dmd_mult_mmsa_and_the_datasets():
    assert {"li2023dmd", "tsai2019mult", "mao2022msena", "zadeh2016mosi", "zadeh2018mosei"} <= _bib_keys()


def test_every_citation_in_the_book_is_in_the_bibliography():
    texts = [(ROOT / "book" / "intro.md").read_text()]
    texts += [c.source for p in NOTEBOOKS for c in _read(p).cells if c.cell_type == "markdown"]
    cited = {key.strip() for text in texts for group in re.findall(r"\{cite[:\w]*\}`([^`]+)`", text)
             for key in group.split(",")}  # fmt: skip
    assert cited, "the book cites nothing"
    assert cited <= _bib_keys(), f"unknown keys {cited - _bib_keys()}"
    assert "{bibliography}" in (ROOT / "book" / "references.md").read_text()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_glue_reference_in_prose_is_glued_by_a_code_cell(path):
    nb = _read(path)
    prose = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    used = set(re.findall(r"\{glue:(?:text|md|any)\}`([^`:]+)", prose))
    used |= set(re.findall(r"```\{glue:figure\} (\S+)", prose))
    for key in used:
        literal = re.search(rf"glue\(\s*f?[\"']{re.escape(key)}[\"']", code)
        templated = re.search(r"glue\(\s*f[\"']", code)  # keys built in loops (f-strings) are checked by execution
        assert literal or templated, f"{path.name}: {key!r} is used in prose but never glued"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_figures_have_captions_and_prose_comes_before_code(path):
    nb = _read(path)
    for cell in nb.cells:
        for block in re.findall(r"```\{glue:figure\}[^\n]*\n(.*?)```", cell.source, flags=re.S):
            caption = "\n".join(line for line in block.splitlines() if not line.startswith(":")).strip()
            assert len(caption) > 40, f"{path.name}: a figure without a real caption"
    assert nb.cells[0].cell_type == "markdown"


def test_parse_value_reads_json_scalars_and_falls_back_to_strings():
    assert build.parse_value("3") == 3
    assert build.parse_value("0.5") == 0.5
    assert build.parse_value("true") is True and build.parse_value("None") is None
    assert build.parse_value("[1111, 1112]") == [1111, 1112]
    assert build.parse_value("cuda") == "cuda"
    assert build.parse_value("/data/aligned_50.pkl") == "/data/aligned_50.pkl"


def test_chapter_parameters_layer_ci_values_work_dir_and_overrides():
    params = build.chapter_parameters("04_training", True, Path("/tmp/w"), {"device": "cpu", "epochs": 2})
    # relative to the notebooks' working directory (the repository root): pages show no machine path
    relative = os.path.relpath("/tmp/w", build.ROOT)
    assert params["work_dir"] == relative and params["device"] == "cpu" and params["epochs"] == 2
    assert params["d"] == build.CI_COMMON["d"]
    assert build.chapter_parameters("04_training", False, Path("/tmp/w"), {}) == {"work_dir": relative}
    assert build.chapter_parameters("04_training", False, build.ROOT / "runs" / "book", {}) == {"work_dir": "runs/book"}


def test_notebook_problems_flags_unexecuted_cells_errors_and_warnings(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("1", execution_count=1),
        nbformat.v4.new_code_cell("2"),
        nbformat.v4.new_code_cell("3", execution_count=3, outputs=[
            nbformat.v4.new_output("error", ename="ValueError", evalue="boom", traceback=[])]),
        nbformat.v4.new_code_cell("4", execution_count=4, outputs=[
            nbformat.v4.new_output("stream", name="stderr", text="UserWarning: careful")]),
        nbformat.v4.new_code_cell("5", execution_count=5, outputs=[
            nbformat.v4.new_output("stream", name="stderr", text="epochs: 100%|####| 3/3")]),
    ])  # fmt: skip
    path = tmp_path / "x.ipynb"
    nbformat.write(nb, path)
    problems = build.notebook_problems(path)
    assert len(problems) == 3
    assert "cell 1 was not executed" in problems[0]
    assert "ValueError: boom" in problems[1]
    assert "warning" in problems[2]


def test_notebook_problems_flags_a_glued_figure_that_the_cell_also_shows(tmp_path):
    png = "iVBORw0KGgo="
    glued = nbformat.v4.new_output("display_data", data={"application/papermill.record/image/png": png})
    shown = nbformat.v4.new_output("display_data", data={"image/png": png, "text/plain": "<Figure>"})
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("glue twice", execution_count=1, outputs=[glued, shown]),
        nbformat.v4.new_code_cell("glue, hidden", execution_count=2, outputs=[glued, shown],
                                  metadata={"tags": ["remove-input", "remove-output"]}),
        nbformat.v4.new_code_cell("glue only", execution_count=3, outputs=[glued]),
        nbformat.v4.new_code_cell("plain figure", execution_count=4, outputs=[shown]),
    ])  # fmt: skip
    path = tmp_path / "x.ipynb"
    nbformat.write(nb, path)
    problems = build.notebook_problems(path)
    assert len(problems) == 1 and "cell 0 glues a figure and also shows it" in problems[0], problems


def test_the_executed_copies_and_screenshots_are_not_committed():
    ignored = (ROOT / ".gitignore").read_text() + (ROOT / "book" / ".gitignore").read_text()
    assert "executed/" in ignored and "screenshots/" in ignored


def test_the_book_serves_its_own_mathjax_so_math_renders_offline():
    # _config.yml: the extension that copies MathJax 3 into _build/html/_static/mathjax/, and a relative
    # mathjax_path (under _static) instead of the CDN that Sphinx uses by default.
    sphinx = CONFIG["sphinx"]
    assert "sphinx-mathjax-offline" in sphinx["extra_extensions"]
    path = sphinx["config"]["mathjax_path"]
    assert not re.match(r"^(https?:)?//", path) and not Path(path).is_absolute(), path
    assert not re.search(r"https?://[^\s\"']*mathjax", (ROOT / "_config.yml").read_text(), re.IGNORECASE)
    # pip installs it with the book (`make book`), and it ships the file that mathjax_path names.
    extras = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'"sphinx-mathjax-offline[>=<~\d.,]*"', extras)
    spec = importlib.util.find_spec("sphinx-mathjax-offline")
    assert spec is not None, "sphinx-mathjax-offline is not installed (pip install -e '.[book]')"
    assert (Path(spec.origin).parent / "static" / path).is_file()  # mathjax_path is relative to _static


def test_the_book_check_rejects_a_page_whose_mathjax_is_not_served_locally(tmp_path):
    (tmp_path / "_static" / "mathjax").mkdir(parents=True)
    (tmp_path / "_static" / "mathjax" / "tex-chtml.js").write_text("")
    page = tmp_path / "page.html"
    page.write_text('<script defer="defer" src="_static/mathjax/tex-chtml.js"></script>')
    assert build.mathjax_problems(page) == []
    page.write_text('<script src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js"></script>')
    assert "not served by the book" in build.mathjax_problems(page)[0]
    page.write_text('<script src="_static/mathjax/tex-svg.js"></script>')
    assert "does not hold" in build.mathjax_problems(page)[0]


def _method_differences() -> list[str]:
    """The items of the method page's "Where we differ from the reference" section (one bullet each)."""
    text = (ROOT / "book" / "method.md").read_text(encoding="utf-8")
    section = text.split("(method-differences)=\n", 1)[1].split("\n(", 1)[0]
    return [item.strip() for item in re.split(r"^- ", section, flags=re.M)[1:]]


def test_the_method_page_holds_the_one_list_of_differences_each_with_its_switch_and_the_readme_links_to_it():
    items = _method_differences()
    assert len(items) >= 10, items
    for item in items:
        assert re.match(r"\*\*[^*]+\*\*", item), f"a difference starts with its name in bold: {item[:80]!r}"
        assert "*Switch:*" in item or "*No switch.*" in item, f"a difference names its switch: {item[:80]!r}"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Where we differ from the reference", 1)[1].split("\n## ", 1)[0]
    assert "book/method.md#where-we-differ-from-the-reference" in section
    assert not re.search(r"^\s*- ", section, flags=re.M), "the README links to the list instead of repeating it"


# --------------------------------------------------------------------------- the frame of a chapter page


def _chapter(cells: list) -> nbformat.NotebookNode:
    """A small synthetic chapter: badge, goals and run time, hidden machinery, a section, summary, exercises."""
    first = ("# 9. A chapter\n\n[![Open in Colab](../book/_static/colab-badge.svg)](https://colab.research.google.com/)"
             "\n\nWhy.\n\n**What you will learn**\n\n- one thing\n\n**Run time**: about 1 min on a 2-core CPU.")  # fmt: skip
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(first), *cells])


def _good_cells() -> list:
    return [
        nbformat.v4.new_code_cell("import sys", metadata={"tags": ["remove-cell"]}),
        nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters", "remove-cell"]}),
        nbformat.v4.new_code_cell("glue('x', x)", metadata={"tags": ["remove-input"]}),
        nbformat.v4.new_markdown_cell("## The idea\n\n```python\n## not a heading (code)\n```"),
        nbformat.v4.new_code_cell("x + 1"),
        nbformat.v4.new_markdown_cell("## Summary\n\n- x is 1"),
        nbformat.v4.new_markdown_cell("## Exercises\n\n1. Predict, then run."),
    ]


def _problems(tmp_path: Path, nb: nbformat.NotebookNode) -> list[str]:
    (tmp_path / "notebooks").mkdir(exist_ok=True)
    path = tmp_path / "notebooks" / "09_chapter.ipynb"
    nbformat.write(nb, path)
    (tmp_path / "book" / "_static").mkdir(parents=True, exist_ok=True)
    (tmp_path / "book" / "_static" / "colab-badge.svg").write_text("<svg/>")
    return build.chapter_problems(path)


def test_the_chapter_check_passes_a_chapter_in_the_books_frame(tmp_path):
    assert _problems(tmp_path, _chapter(_good_cells())) == []


def test_the_chapter_check_fails_a_chapter_without_goals_or_run_time(tmp_path):
    nb = _chapter(_good_cells())
    nb.cells[0].source = nb.cells[0].source.replace("**What you will learn**", "**Contents**")
    assert any("What you will learn" in p for p in _problems(tmp_path, nb))
    nb.cells[0].source = nb.cells[0].source.replace("**Run time**", "**Time**")
    assert any("Run time" in p for p in _problems(tmp_path, nb))


def test_the_chapter_check_fails_visible_code_before_the_first_section(tmp_path):
    cells = _good_cells()
    cells[2].metadata["tags"] = ["hide-input"]  # a toggle still shows a code cell on the first screen
    problems = _problems(tmp_path, _chapter(cells))
    assert len(problems) == 1 and "code cell 3" in problems[0]


def test_the_chapter_check_fails_a_chapter_that_does_not_end_with_summary_then_exercises(tmp_path):
    for drop in (-1, -2):
        cells = _good_cells()
        del cells[drop]
        assert any("'## Summary' then '## Exercises'" in p for p in _problems(tmp_path, _chapter(cells)))
    cells = _good_cells()
    cells[-2:] = cells[-1], cells[-2]  # exercises before the summary
    assert any("'## Summary' then '## Exercises'" in p for p in _problems(tmp_path, _chapter(cells)))


def test_the_chapter_check_fails_a_badge_that_the_book_does_not_serve(tmp_path):
    nb = _chapter(_good_cells())
    nb.cells[0].source = nb.cells[0].source.replace(
        "../book/_static/colab-badge.svg", "https://colab.research.google.com/assets/colab-badge.svg"
    )
    assert any("not the book's own image" in p for p in _problems(tmp_path, nb))


def test_section_titles_reads_level_two_headings_outside_code_fences():
    text = "# Title\n\n## One\n\ntext ## no\n\n```python\n## comment\n```\n\n~~~\n## x\n~~~\n\n## Two ##\n### Three"
    assert build.section_titles(text) == ["One", "Two"]


def test_prepare_page_hides_the_injected_parameters_and_points_the_badge_at_the_same_file(tmp_path):
    source_dir, executed = tmp_path / "notebooks", tmp_path / "book" / "executed"
    for folder in (source_dir, executed, tmp_path / "book" / "_static"):
        folder.mkdir(parents=True, exist_ok=True)
    badge = tmp_path / "book" / "_static" / "colab-badge.svg"
    badge.write_text("<svg/>")
    nb = _chapter([
        nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("x = 2", metadata={"tags": ["injected-parameters"]}),
        nbformat.v4.new_markdown_cell("![a figure](https://example.org/a.png) ![missing](nowhere.png)"),
    ])  # fmt: skip
    path = executed / "09_chapter.ipynb"
    nbformat.write(nb, path)
    build.prepare_page(path, source_dir)
    out = _read(path)
    assert out.cells[2].metadata["tags"] == ["injected-parameters", "remove-cell"]
    assert out.cells[1].metadata["tags"] == ["parameters"]  # the notebook's own cells keep their tags
    assert "(../_static/colab-badge.svg)" in out.cells[0].source
    assert (executed / "../_static/colab-badge.svg").resolve() == badge.resolve()
    assert out.cells[3].source == nb.cells[3].source  # URLs and unknown files are left alone


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_chapters_colab_badge_is_the_books_own_image_from_its_source_folder(path):
    first = _read(path).cells[0].source
    links = [m[1] for m in build.IMAGE_LINK.findall(first) if m[1].endswith("colab-badge.svg")]
    assert links, f"{path.name}: no Colab badge"
    for link in links:
        assert (path.parent / link).resolve() == (ROOT / "book" / "_static" / "colab-badge.svg").resolve(), link


def test_the_badge_is_an_svg_image_of_its_own():
    svg = (ROOT / "book" / "_static" / "colab-badge.svg").read_text()
    assert svg.lstrip().startswith("<svg") and "Open in Colab" in svg
    assert not re.search(r"(href|src)=\"https?://", svg), "the badge loads nothing from elsewhere"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_chapter_source_follows_the_books_frame(path):
    # The build checks the executed copies (check_book); the sources are the same cells, minus papermill's.
    assert build.chapter_problems(path) == []


def test_one_search_field_per_page_the_top_bar_of_the_theme_is_off():
    # pydata-sphinx-theme adds a top bar with a search field unless navbar_persistent is set; the book's theme
    # (sphinx-book-theme) has its own in the sidebar. recursive_update keeps Jupyter Book's other theme options.
    sphinx = CONFIG["sphinx"]
    assert sphinx["recursive_update"] is True
    assert sphinx["config"]["html_theme_options"]["navbar_persistent"] == []


def test_the_timings_record_says_which_machine_measured_them(tmp_path, monkeypatch):
    monkeypatch.setattr(build, "EXECUTED_DIR", tmp_path)
    path = build.write_timings({"01_data": 10.0, "02_decoupling": 20.5}, ci=False)
    record = yaml.safe_load(path.read_text())  # JSON is YAML
    assert record["seconds"] == {"01_data": 10.0, "02_decoupling": 20.5} and record["ci"] is False
    assert record["total_seconds"] == 30.5
    assert f"{os.cpu_count()} cores" in record["machine"]


MAX_EQUATION_EX = 70  # about 560 CSS px at the page's 16 px font: the text column is about 690 px wide


def test_the_method_pages_display_equations_fit_the_text_column():
    # Typesets every display equation of the method page with the book's own MathJax (node), and checks that it
    # parses and is at most MAX_EQUATION_EX wide; a wider one is broken over lines (aligned).
    node = shutil.which("node") or shutil.which("nodejs")
    spec = importlib.util.find_spec("sphinx-mathjax-offline")
    if node is None or spec is None:
        pytest.skip("needs node and sphinx-mathjax-offline (the book extra)")
    mathjax = Path(spec.origin).parent / "static" / "mathjax" / "node-main.js"
    equations = {f"{page.name}:{label or i}": body for page in [ROOT / "book" / "method.md", ROOT / "book" / "data_format.md"]
                 for i, (body, label) in enumerate(re.findall(r"^\$\$\n(.*?)\n\$\$(?: \((\S+)\))?$",
                                                                page.read_text(encoding="utf-8"), flags=re.S | re.M))}  # fmt: skip
    assert len(equations) > 20, "the method page's equations were not found"
    script = """
const MJ = require(process.argv[1]);
const equations = JSON.parse(require('fs').readFileSync(0, 'utf8'));
MJ.init({loader: {load: ['input/tex', 'output/svg']}}).then((MathJax) => {
  const out = {};
  for (const [name, tex] of Object.entries(equations)) {
    const html = MathJax.startup.adaptor.outerHTML(MathJax.tex2svg(tex, {display: true}));
    const width = /width="([\\d.]+)ex"/.exec(html);
    out[name] = {ex: width ? Number(width[1]) : null, error: html.includes('data-mjx-error')};
  }
  console.log(JSON.stringify(out));
});
"""
    result = subprocess.run([node, "-e", script, str(mathjax)], input=json.dumps(equations), capture_output=True,
                            text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    widths = json.loads(result.stdout)
    assert set(widths) == set(equations)
    errors = [name for name, w in widths.items() if w["error"] or w["ex"] is None]
    assert not errors, f"MathJax cannot typeset {errors}"
    wide = {name: w["ex"] for name, w in widths.items() if w["ex"] > MAX_EQUATION_EX}
    assert not wide, f"break these equations over lines (width in ex, limit {MAX_EQUATION_EX}): {wide}"


def test_the_introduction_points_at_the_builds_own_timings_instead_of_typing_a_build_time():
    intro = (ROOT / "book" / "intro.md").read_text(encoding="utf-8")
    assert "book/executed/timings.json" in intro
    typed = re.findall(
        r"(?:took|takes|in)\s+(?:about\s+)?[\d.]+(?:\s+to\s+[\d.]+)?\s*(?:min|minutes|s\b|seconds)", intro
    )
    assert not typed, f"a build time typed into the introduction, which the next build may contradict: {typed}"


def test_the_build_check_runs_the_chapter_frame_check_on_every_executed_chapter(tmp_path, monkeypatch):
    executed = tmp_path / "book" / "executed"
    executed.mkdir(parents=True)
    cells = _good_cells()
    del cells[-1]  # no exercises
    nbformat.write(_chapter(cells), executed / "09_chapter.ipynb")
    monkeypatch.setattr(build, "EXECUTED_DIR", executed)
    problems = build.check_book(html_dir=tmp_path / "html", names=("09_chapter",))
    assert any("09_chapter.ipynb" in p and "'## Summary' then '## Exercises'" in p for p in problems), problems
