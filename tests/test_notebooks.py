"""Smoke-run every notebook's code cells in order (no Jupyter needed), in a subprocess so
notebooks may set their own JAX configuration."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

NOTEBOOKS = sorted((pathlib.Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, tmp_path):
    nb = json.loads(path.read_text())
    cells = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    assert cells, f"{path.name} has no code"
    script = tmp_path / "nb.py"
    script.write_text("import matplotlib\nmatplotlib.use('Agg')\n" + "\n\n".join(cells) + "\n")
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, f"{path.name} failed:\n{proc.stderr[-3000:]}"
