"""Execute every chapter with papermill, build the Jupyter Book, and check the result.

    python book/build.py                 # CPU defaults (what `make book` runs)
    python book/build.py --ci            # small parameters for the test suite
    python book/build.py -p device=cuda -p paper_scale=true -p data_path=/data/MOSI/aligned_50.pkl

Steps:

1. papermill executes ``notebooks/<name>.ipynb`` in the order of :data:`NOTEBOOKS` into
   ``book/executed/<name>.ipynb`` (the sources are never written). Every chapter gets the
   same ``work_dir`` so later chapters find the data file of chapter 1 and the run of
   chapter 4. A chapter that raises stops the build (the executed copy keeps the error).
2. ``jupyter-book build . -W -n --keep-going --all`` renders the executed copies (the book
   executes nothing itself: ``execute_notebooks: "off"``), warnings as errors.
3. :func:`check_book` fails the build when a code cell was not executed, an output is an
   error or a traceback, a chapter does not follow the book's frame (:func:`chapter_problems`:
   it opens with its goals and run time and no visible code, and ends with a summary and
   exercises), a page of ``_toc.yml`` has no HTML file, or a page loads MathJax from outside the
   build (the book must render its math offline).

The executed copies are prepared for reading (:func:`prepare_page`): progress bars show their
final state once, papermill's injected-parameters cell is hidden (tag ``remove-cell``: it stays
in the notebook), and relative image links (the Colab badge, ``book/_static/colab-badge.svg``)
point from ``book/executed/`` to the same files as they do from ``notebooks/``.

Timings per chapter go to ``book/executed/timings.json``, with the machine that measured them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = ROOT / "notebooks"
EXECUTED_DIR = ROOT / "book" / "executed"
BUILD_DIR = ROOT / "_build"
NOTEBOOKS = ("01_data", "02_decoupling", "03_graph_distillation", "04_training", "05_edge_analysis", "06_ablations")

# Small parameters for CI (`--ci`): a tiny model on a small synthetic file, a few epochs, two seeds.
CI_COMMON: dict[str, Any] = {
    "scale": 0.12,
    "d": 16,
    "heads": 2,
    "nlevels": 1,
    "epochs": 4,
    "seeds": [1111, 1112],
    "threads": 1,  # a tiny model gains nothing from a second thread, and oversubscribed cores cost a lot
}
CI_PARAMS: dict[str, dict[str, Any]] = {
    "01_data": {},
    "02_decoupling": {},
    "03_graph_distillation": {},
    "04_training": {},
    "05_edge_analysis": {},
    "06_ablations": {},
}

log = logging.getLogger("book.build")


def parse_value(text: str) -> Any:
    """A ``-p name=value`` value: JSON when it parses (numbers, true/false, null, lists), else a string."""
    lowered = {"none": "null", "true": "true", "false": "false"}.get(text.lower(), text)
    try:
        return json.loads(lowered)
    except json.JSONDecodeError:
        return text


def page_path(path: Path) -> str:
    """``path`` relative to the repository root (the notebooks' working directory), so that no page
    shows the build machine's absolute paths (the injected parameters, ``settings``); absolute only
    where no relative path exists (another drive)."""
    try:
        return os.path.relpath(path, ROOT)
    except ValueError:
        return str(path)


def chapter_parameters(name: str, ci: bool, work_dir: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """The papermill parameters of chapter ``name``: CI values (if asked), work dir, then overrides."""
    params: dict[str, Any] = {}
    if ci:
        params.update(CI_COMMON)
        params.update(CI_PARAMS.get(name, {}))
    params["work_dir"] = page_path(work_dir)
    params.update(overrides)
    return params


def terminal_text(text: str) -> str:
    """What a terminal would show after printing ``text``, as plain lines.

    Handles what progress bars (tqdm) use to redraw themselves: carriage returns, newlines and
    cursor-up (``ESC[A``) for nested bars. Lines left blank by cleared bars are dropped.
    """
    lines: dict[int, str] = {}
    row = col = 0
    for token in re.split(r"(\r|\n|\x1b\[A)", text):
        if token == "\r":
            col = 0
        elif token == "\n":
            row, col = row + 1, 0
        elif token == "\x1b[A":
            row = max(row - 1, 0)
        elif token:
            old = "" if col == 0 else lines.get(row, "")  # progress bars rewrite whole lines
            lines[row] = old[:col] + token + old[col + len(token) :]
            col += len(token)
    kept = [lines[r].rstrip() for r in sorted(lines) if lines[r].strip()]
    return "\n".join(kept) + ("\n" if kept else "")


def tidy_streams(nb: Any) -> None:
    """Merge consecutive stream outputs of each cell and render carriage returns (in place).

    The executed copy then shows each progress bar's final state once, as a reader of a static
    page should see it (the sources are never touched).
    """
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        merged: list = []
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and merged and merged[-1].get("output_type") == "stream" \
                    and merged[-1].get("name") == out.get("name"):  # fmt: skip
                merged[-1]["text"] += out["text"]
            else:
                merged.append(out)
        for out in merged:
            if out.get("output_type") == "stream":
                out["text"] = terminal_text(out["text"])
        cell["outputs"] = [o for o in merged if o.get("output_type") != "stream" or o["text"]]


def hide_injected_parameters(nb: Any) -> int:
    """Tag papermill's ``injected-parameters`` cell ``remove-cell`` (in place): the page does not show it,
    the executed notebook keeps it. Returns how many cells were tagged."""
    count = 0
    for cell in nb.cells:
        tags = cell.setdefault("metadata", {}).setdefault("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            tags.append("remove-cell")
            count += 1
    return count


IMAGE_LINK = re.compile(r"(!\[[^\]]*\]\()([^)\s]+)(\))")


def relocate_images(nb: Any, source_dir: Path, target_dir: Path) -> None:
    """Rewrite the relative image paths of markdown cells (in place) so that a notebook written to
    ``target_dir`` shows the files its source in ``source_dir`` showed (e.g. the Colab badge,
    ``../book/_static/colab-badge.svg`` from ``notebooks/``, becomes ``../_static/colab-badge.svg`` from
    ``book/executed/``). URLs and paths that resolve to no file are left as they are."""

    def move(match: re.Match) -> str:
        link = match.group(2)
        if re.match(r"^([a-z][a-z0-9+.-]*:|/|#)", link, flags=re.IGNORECASE):
            return match.group(0)
        target = (source_dir / link).resolve()
        if not target.is_file():
            return match.group(0)
        return match.group(1) + Path(os.path.relpath(target, target_dir.resolve())).as_posix() + match.group(3)

    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = IMAGE_LINK.sub(move, cell.source)


def prepare_page(path: Path, source_dir: Path = NOTEBOOK_DIR) -> None:
    """Prepare an executed notebook for reading (:func:`tidy_streams`, :func:`hide_injected_parameters`,
    :func:`relocate_images` from ``source_dir``) and write it back."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    tidy_streams(nb)
    hide_injected_parameters(nb)
    relocate_images(nb, source_dir, path.parent)
    nbformat.write(nb, path)


def execute(names: list[str], ci: bool, work_dir: Path, overrides: dict[str, Any], kernel: str | None) -> dict:
    """Run papermill on each chapter in order; returns ``{name: seconds}``. Raises on the first failure."""
    import papermill

    EXECUTED_DIR.mkdir(parents=True, exist_ok=True)
    env_defaults = {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
    }
    for key, value in env_defaults.items():
        os.environ.setdefault(key, value)
    timings = {}
    for name in names:
        src, dst = NOTEBOOK_DIR / f"{name}.ipynb", EXECUTED_DIR / f"{name}.ipynb"
        params = chapter_parameters(name, ci, work_dir, overrides)
        log.info("executing %s with %s", src.relative_to(ROOT), params)
        start = time.perf_counter()
        try:
            papermill.execute_notebook(
                str(src), str(dst), parameters=params, cwd=str(ROOT), kernel_name=kernel,
                progress_bar=False, request_save_on_cell_execute=False,
            )  # fmt: skip
        except papermill.PapermillExecutionError as err:
            raise SystemExit(
                f"{src.relative_to(ROOT)} raised in cell {err.exec_count}: {err.ename}: {err.evalue}\n"
                f"(the executed copy with the traceback is {dst.relative_to(ROOT)})"
            ) from None
        prepare_page(dst)
        timings[name] = round(time.perf_counter() - start, 1)
        log.info("%s executed in %.1f s", name, timings[name])
    return timings


def jupyter_book_build() -> float:
    """``jupyter-book build`` of the repository root, warnings as errors; returns seconds."""
    exe = Path(sys.executable).parent / "jupyter-book"
    cmd = [str(exe) if exe.exists() else (shutil.which("jupyter-book") or "jupyter-book"),
           "build", str(ROOT), "-W", "-n", "--keep-going", "--all", "--builder", "html"]  # fmt: skip
    log.info("%s", " ".join(cmd))
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.stderr.write(result.stdout[-20000:] + result.stderr[-20000:])
        raise SystemExit(f"jupyter-book build failed (exit {result.returncode}); see the warnings above")
    return seconds


def toc_pages(toc_file: Path = ROOT / "_toc.yml") -> list[str]:
    """The pages ``_toc.yml`` lists (root first), as paths without suffix."""
    import yaml

    toc = yaml.safe_load(toc_file.read_text())
    pages = [toc["root"]]

    def walk(entries: list[dict]) -> None:
        for entry in entries or []:
            if "file" in entry:
                pages.append(entry["file"])
            walk(entry.get("sections", []))
            for part in entry.get("parts", []):
                walk(part.get("chapters", []))

    walk(toc.get("chapters", []))
    for part in toc.get("parts", []):
        walk(part.get("chapters", []))
    return pages


def notebook_problems(path: Path) -> list[str]:
    """What is wrong with an executed notebook: unexecuted code cells, errors, tracebacks in streams, and a figure
    shown twice (glued for a ``{glue:figure}`` and also left as the cell's own output, which Jupyter shows when a
    cell leaves a figure open: tag such a cell ``remove-output``; in Colab it then shows once, in the page once).
    """
    import nbformat

    problems = []
    nb = nbformat.read(path, as_version=4)
    if nb.metadata.get("papermill", {}).get("exception"):
        problems.append(f"{path.name}: papermill recorded an exception")
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or not cell.source.strip():
            continue
        if cell.get("execution_count") is None:
            problems.append(f"{path.name}: code cell {i} was not executed")
        outputs = cell.get("outputs", [])
        glued = any(any(k.startswith(GLUE_MIME) and k.endswith("image/png") for k in out.get("data", {}))
                    for out in outputs)  # fmt: skip
        shown = any("image/png" in out.get("data", {}) for out in outputs)
        if glued and shown and "remove-output" not in cell.get("metadata", {}).get("tags", []):
            problems.append(f"{path.name}: cell {i} glues a figure and also shows it: the page would draw it twice "
                            "(tag the cell remove-output)")  # fmt: skip
        for out in outputs:
            if out.get("output_type") == "error":
                problems.append(f"{path.name}: cell {i} raised {out.get('ename')}: {out.get('evalue')}")
            elif out.get("output_type") == "stream" and out.get("name") == "stderr":
                text = out.get("text", "")
                if "Traceback" in text or "Error" in text or "Warning" in text:
                    problems.append(f"{path.name}: cell {i} wrote an error or warning to stderr: {text[:300]!r}")
    return problems


GLUE_MIME = "application/papermill.record/"  # the outputs myst_nb.glue(..., display=False) records


# The frame of every chapter page (book/intro.md's conventions): it opens with its goals and run time and
# no visible code, and ends with a summary and exercises.
OPENING_PHRASES = ("What you will learn", "Run time")
CLOSING_SECTIONS = ["Summary", "Exercises"]
HIDDEN_CODE_TAGS = frozenset({"remove-cell", "remove-input"})
BADGE = "colab-badge.svg"


def section_titles(markdown: str) -> list[str]:
    """The titles of the level-2 headings (``## Title``) of a markdown text, outside code fences."""
    titles, fence = [], None
    for line in markdown.splitlines():
        marker = re.match(r"^\s*(`{3,}|~{3,})", line)
        if marker:
            if fence is None:
                fence = marker.group(1)[0]
            elif marker.group(1)[0] == fence:
                fence = None
            continue
        heading = re.match(r"^##\s+(.+?)\s*#*\s*$", line)
        if fence is None and heading:
            titles.append(heading.group(1))
    return titles


def chapter_problems(path: Path) -> list[str]:
    """What breaks the frame of a chapter (an executed notebook, or a source):

    * the first cell is markdown with the chapter's goals (``What you will learn``) and its
      ``Run time``, and a Colab badge that is the book's own image (a relative path to
      ``colab-badge.svg`` that resolves from the notebook's folder);
    * no code shows before the first section (``## ...``): every code cell there is tagged
      ``remove-cell`` or ``remove-input`` (papermill's injected cell included, see :func:`prepare_page`);
    * the last two sections are ``## Summary`` and ``## Exercises``.
    """
    import nbformat

    nb = nbformat.read(path, as_version=4)
    problems: list[str] = []
    first = nb.cells[0] if nb.cells else None
    if first is None or first.cell_type != "markdown":
        problems.append(f"{path.name}: the first cell must be markdown (title, why, goals, run time)")
    else:
        for phrase in OPENING_PHRASES:
            if phrase not in first.source:
                problems.append(f"{path.name}: the first cell lacks {phrase!r} (a chapter opens with its goals and "
                                "run time)")  # fmt: skip
        badges = [link for link in IMAGE_LINK.findall(first.source) if link[1].endswith(BADGE)]
        if not badges:
            problems.append(f"{path.name}: the first cell has no {BADGE} image (the Colab badge)")
        for _, link, _ in badges:
            if re.match(r"^[a-z][a-z0-9+.-]*:", link, flags=re.IGNORECASE) or not (path.parent / link).is_file():
                problems.append(f"{path.name}: the Colab badge {link!r} is not the book's own image (expected a "
                                f"relative path to book/_static/{BADGE} from {path.parent.name}/)")  # fmt: skip
    sections: list[tuple[int, str]] = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            sections += [(i, title) for title in section_titles(cell.source)]
    first_section = sections[0][0] if sections else len(nb.cells)
    for i, cell in enumerate(nb.cells[:first_section]):
        tags = set(cell.get("metadata", {}).get("tags", []))
        if cell.cell_type == "code" and cell.source.strip() and not tags & HIDDEN_CODE_TAGS:
            problems.append(f"{path.name}: code cell {i} shows its code before the first section: tag it remove-cell "
                            f"(machinery) or remove-input (its output shows), found tags {sorted(tags)}")  # fmt: skip
    last = [title for _, title in sections[-len(CLOSING_SECTIONS) :]]
    if last != CLOSING_SECTIONS:
        problems.append(f"{path.name}: a chapter ends with '## Summary' then '## Exercises', found last sections "
                        f"{last}")  # fmt: skip
    return problems


def mathjax_problems(html: Path) -> list[str]:
    """A page must load MathJax from the build itself: a relative ``src`` to a file that exists.

    A MathJax from a CDN leaves the math as raw ``\\(...\\)`` when the book is read offline.
    """
    text = html.read_text(encoding="utf-8")
    problems = []
    for src in re.findall(r"<script[^>]*\bsrc=\"([^\"]*mathjax[^\"]*)\"", text, flags=re.IGNORECASE):
        if re.match(r"^(https?:)?//", src):
            problems.append(f"{html}: loads MathJax from {src} (not served by the book)")
        elif not (html.parent / src.split("?")[0]).is_file():
            problems.append(f"{html}: loads MathJax from {src}, which the build does not hold")
    return problems


def check_book(html_dir: Path = BUILD_DIR / "html", names: tuple[str, ...] = NOTEBOOKS) -> list[str]:
    """Every chapter executed without error and in the book's frame, every ``_toc.yml`` page rendered to HTML."""
    problems = []
    for name in names:
        path = EXECUTED_DIR / f"{name}.ipynb"
        if not path.is_file():
            problems.append(f"{path.relative_to(ROOT)}: missing (chapter not executed)")
            continue
        problems += notebook_problems(path)
        problems += chapter_problems(path)
    for page in toc_pages():
        html = html_dir / f"{page}.html"
        if not html.is_file():
            problems.append(f"{html}: missing (page of _toc.yml not rendered)")
            continue
        text = html.read_text(encoding="utf-8")
        if "Traceback (most recent call last)" in text:
            problems.append(f"{html}: shows a traceback")
        problems += mathjax_problems(html)
    return problems


def machine() -> str:
    """The machine that measured the timings, in words: cores and processor model (from /proc/cpuinfo on Linux)."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(errors="replace"), flags=re.M)
        model = found.group(1).strip() if found else model
    return f"{os.cpu_count()} cores, {model}, {platform.system()}"


def write_timings(seconds: dict[str, float], ci: bool) -> Path:
    """``book/executed/timings.json``: seconds per chapter (and for the Jupyter Book build), their total,
    whether the CI parameters were used, the machine and the date; the introduction's build time refers here."""
    EXECUTED_DIR.mkdir(parents=True, exist_ok=True)
    path = EXECUTED_DIR / "timings.json"
    record = {"ci": ci, "seconds": seconds, "total_seconds": round(sum(seconds.values()), 1), "machine": machine(),
              "date": time.strftime("%Y-%m-%d")}  # fmt: skip
    path.write_text(json.dumps(record, indent=2) + "\n")
    log.info("timings (s): %s, total %.0f s on %s", seconds, record["total_seconds"], record["machine"])
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ci", action="store_true", help="small CI parameters (tiny model, small data, 4 epochs)")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="folder shared by the chapters for data and runs (default runs/book, with --ci runs/book-ci)")  # fmt: skip
    parser.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                        help="set a notebook parameter in every chapter (repeatable), e.g. -p device=cuda")  # fmt: skip
    parser.add_argument("--only", nargs="+", choices=NOTEBOOKS, help="execute only these chapters")
    parser.add_argument("--no-execute", action="store_true", help="build and check the executed copies as they are")
    parser.add_argument("--no-build", action="store_true", help="execute the chapters only")
    parser.add_argument("--kernel", default=None, help="Jupyter kernel name (default: the notebooks' own)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    overrides = {}
    for item in args.param:
        name, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--param expects NAME=VALUE, found {item!r}")
        overrides[name.strip()] = parse_value(value.strip())
    work_dir = args.work_dir or ROOT / ("runs/book-ci" if args.ci else "runs/book")
    timings: dict[str, Any] = {}
    if not args.no_execute:
        timings = execute(list(args.only or NOTEBOOKS), args.ci, work_dir.resolve(), overrides, args.kernel)
    if not args.no_build:
        timings["jupyter-book build"] = round(jupyter_book_build(), 1)
    if not args.no_execute:
        write_timings(timings, args.ci)
    if not args.no_build:
        problems = check_book()
        if problems:
            print("\n".join(["book check failed:", *problems]), file=sys.stderr)
            return 1
        log.info("book built and checked: %s", BUILD_DIR / "html" / "index.html")
    return 0


if __name__ == "__main__":
    sys.exit(main())
