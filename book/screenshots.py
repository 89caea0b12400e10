"""Screenshots of the built book as a reader sees it (headless Chromium), for a visual check.

    python book/screenshots.py                       # every page of _toc.yml -> book/screenshots/
    python book/screenshots.py --pages book/executed/05_edge_analysis

Each page is rendered once in a tall window, trimmed below its last non-white row and cut into
slices of ``--slice`` pixels (``<page>_<k>.png``), small enough to look at one by one. Needs
Debian's ``chromium`` (``apt-get install chromium``); the output folder is gitignored. This is a
check a person runs, not a test.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "book"))

from build import BUILD_DIR, toc_pages  # noqa: E402

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
                  "--virtual-time-budget=8000"]  # fmt: skip


def shoot(html: Path, out_stem: Path, width: int, height: int, slice_height: int, browser: str) -> list[Path]:
    """Screenshot ``html`` and write its slices ``<out_stem>_<k>.png``; returns their paths."""
    with tempfile.TemporaryDirectory() as tmp:
        full = Path(tmp) / "full.png"
        cmd = [browser, *CHROMIUM_FLAGS, f"--window-size={width},{height}", f"--screenshot={full}", html.as_uri()]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)
        image = Image.open(full).convert("RGB")
    pixels = np.asarray(image)
    content = (pixels[:, width // 5 :] < 245).any(axis=2)  # right of the navigation sidebar and its border
    rows = np.where(content.sum(axis=1) > 2)[0]
    bottom = int(rows.max()) + 20 if len(rows) else slice_height
    # The theme pins its footer to the bottom of the (tall) window: cut at the white gap above it.
    gaps = np.where(np.diff(rows) > 300)[0] if len(rows) else []
    if len(gaps) and rows[-1] > height - 200:
        bottom = int(rows[gaps[-1]]) + 40
    elif len(rows) and rows[-1] > height - 200:
        print(f"{html.name}: longer than the {height}px window; the end is cut off", file=sys.stderr)
    paths = []
    for k, top in enumerate(range(0, min(bottom, height), slice_height)):
        path = out_stem.parent / f"{out_stem.name}_{k:02d}.png"
        image.crop((0, top, width, min(top + slice_height, bottom))).save(path)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--html-dir", type=Path, default=BUILD_DIR / "html")
    parser.add_argument("--out", type=Path, default=ROOT / "book" / "screenshots")
    parser.add_argument("--pages", nargs="+", default=None, help="toc pages (default: all of _toc.yml)")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=16000, help="window height: longer pages are cut off")
    parser.add_argument("--slice", type=int, default=1400)
    args = parser.parse_args(argv)
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        parser.error("no chromium found (apt-get install chromium)")
    args.out.mkdir(parents=True, exist_ok=True)
    html_dir = args.html_dir  # the book serves its own MathJax: pages render offline as they are
    for page in args.pages or toc_pages():
        html = html_dir / f"{page}.html"
        if not html.is_file():
            print(f"missing {html}", file=sys.stderr)
            return 1
        paths = shoot(html, args.out / page.replace("/", "_"), args.width, args.height, args.slice, browser)
        print(f"{page}: {len(paths)} slices")
    return 0


if __name__ == "__main__":
    sys.exit(main())
