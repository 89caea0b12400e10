"""dmd_core needs no plotting library: every module imports, and ``dmd synth``, ``train``, ``test`` and ``predict``
run, in a Python where ``import matplotlib`` and ``import seaborn`` fail (the book's figures live in ``dmd_book``).

The commands run in a fresh subprocess whose ``sys.meta_path`` starts with a finder that refuses both packages,
as if they were not installed; an installed matplotlib cannot hide a module that needs it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFUSED = ("matplotlib", "seaborn")

SCRIPT = textwrap.dedent(
    """
    import importlib
    import pkgutil
    import sys

    REFUSED = {refused!r}


    class RefusePlotting:
        \"\"\"A finder that makes the refused packages look uninstalled.\"\"\"

        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in REFUSED:
                raise ImportError(f"{{name}} is not installed (refused by the test)", name=name)
            return None


    sys.meta_path.insert(0, RefusePlotting())
    for name in REFUSED:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
        else:
            raise SystemExit(f"the finder did not refuse {{name}}")

    import dmd_core
    from dmd_core.cli import main

    work = sys.argv[1]
    data, runs = f"{{work}}/synth.pkl", f"{{work}}/runs"
    tiny = ["--set", "d=8", "--set", "heads=2", "--set", "nlevels=1", "--batch-size", "8", "--no-progress"]
    commands = [
        ["synth", "--sizes", "24", "8", "8", "--out", data],
        ["train", "--data", data, "--seeds", "1", "--max-epochs", "1", "--out", runs, *tiny],
        ["test", runs],
        ["predict", "--model", runs, "--data", data, "--out", f"{{work}}/predictions.csv"],
    ]
    for argv in commands:
        code = main(argv)
        if code != 0:
            raise SystemExit(f"dmd {{argv[0]}} exited with {{code}}")
        print("ran dmd", argv[0])

    modules = [m.name for m in pkgutil.walk_packages(dmd_core.__path__, "dmd_core.")
               if m.name.rpartition(".")[2] != "__main__"]  # __main__ would run the command line
    for name in modules:
        importlib.import_module(name)
    print("imported", len(modules), "modules")
    loaded = sorted(m for m in sys.modules if m.partition(".")[0] in REFUSED)
    if loaded:
        raise SystemExit(f"refused modules were loaded anyway: {{loaded}}")
    """
).format(refused=REFUSED)


def test_every_module_imports_and_synth_train_test_predict_run_without_matplotlib_or_seaborn(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "MPLBACKEND": "Agg"}  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=900,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    for command in ("synth", "train", "test", "predict"):
        assert f"ran dmd {command}" in result.stdout, output[-6000:]
    assert "imported" in result.stdout
    assert (tmp_path / "predictions.csv").is_file()
