"""``jaxnlls pgo`` / ``jaxnlls ba`` end to end (in a subprocess: the commands own their process
and set ``jax_enable_x64``)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from jaxnlls.io import read_g2o, read_pose_graph


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jaxnlls.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_pgo_json_output_and_plot(shared_data, tmp_path):
    src = shared_data / "pgo2d/ring.g2o"
    out, png = tmp_path / "opt.g2o", tmp_path / "opt.png"
    p = _cli("pgo", str(src), "--json", "-o", str(out), "--plot", str(png))
    assert p.returncode == 0, p.stderr
    lines = [ln for ln in p.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1  # ONE JSON object, nothing else
    r = json.loads(lines[0])
    for key in ("initial_cost", "final_cost", "iterations", "solve_seconds", "compile_seconds"):
        assert key in r
    assert r["converged"] is True
    g = read_pose_graph(src)
    assert r["initial_cost"] == pytest.approx(g.cost(), rel=1e-9)
    h = read_g2o(out)  # the optimized file: same graph, new poses, with the reported cost
    np.testing.assert_array_equal(h.edges, g.edges)
    assert h.cost() == pytest.approx(r["final_cost"], rel=1e-9)
    assert r["final_cost"] < 1e-4 * r["initial_cost"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # GTSAM's stopping rule: sooner, at the same optimum
    p = _cli("pgo", str(src), "--json", "--stop", "gtsam")
    assert p.returncode == 0, p.stderr
    fast = json.loads(p.stdout)
    assert fast["converged"] is True and fast["iterations"] < r["iterations"]
    assert fast["final_cost"] == pytest.approx(r["final_cost"], rel=1e-9)
    # chordal initialization: a different start (not the file's poses), the same optimum
    p = _cli("pgo", str(src), "--json", "--init", "chordal")
    assert p.returncode == 0, p.stderr
    ch = json.loads(p.stdout)
    assert ch["converged"] is True and ch["init"] == "chordal" and ch["init_seconds"] > 0
    assert ch["initial_cost"] < 1e-2 * r["initial_cost"]
    assert ch["final_cost"] == pytest.approx(r["final_cost"], rel=1e-9)


def test_pgo_bad_information_exit_code(tmp_path):
    bad = tmp_path / "bad.g2o"
    bad.write_text("VERTEX_SE2 0 0 0 0\nVERTEX_SE2 1 1 0 0\nEDGE_SE2 0 1 1 0 0 1 0 0 -1 0 1\n")
    p = _cli("pgo", str(bad))
    assert p.returncode == 2
    assert f"{bad}:3: EDGE_SE2: information matrix" in p.stderr
    assert "--fix-information" in p.stderr
    p = _cli("pgo", str(tmp_path / "missing.g2o"), "--json")
    assert p.returncode == 2 and "cannot open" in json.loads(p.stdout)["error"]


@pytest.mark.slow
def test_pgo_fix_information_and_progress(tmp_path):
    bad = tmp_path / "bad.g2o"
    bad.write_text(
        "VERTEX_SE2 0 0 0 0\nVERTEX_SE2 1 1.5 0 0\nVERTEX_SE2 2 2 0 0\n"
        "EDGE_SE2 0 1 1 0 0 1 0 0 1 0 1\nEDGE_SE2 1 2 1 0 0 1 0 0 -1 0 1\n"
    )
    p = _cli("pgo", str(bad), "--fix-information")
    assert p.returncode == 0, p.stderr
    assert "1 information matrices repaired" in p.stdout
    assert "step    1" in p.stdout and "final cost" in p.stdout


@pytest.mark.slow
def test_pgo_suggests_and_uses_the_chordal_start(shared_data):
    src = str(shared_data / "pgo2d/input_M3500a_g2o.g2o")
    p = _cli("pgo", src)
    assert p.returncode == 0, p.stderr
    assert "hint:" in p.stdout and "--init chordal" in p.stdout
    file_start = json.loads(_cli("pgo", src, "--json").stdout)
    chordal = json.loads(_cli("pgo", src, "--json", "--init", "chordal").stdout)
    assert chordal["converged"] and chordal["iterations"] < 25 < file_start["iterations"]
    assert chordal["final_cost"] < 0.2 * file_start["final_cost"]
    p = _cli("pgo", src, "--init", "chordal")
    assert p.returncode == 0 and "hint:" not in p.stdout and "chordal initialization:" in p.stdout


@pytest.mark.slow
def test_ba_json(shared_data, tmp_path):
    out = tmp_path / "ba.txt"
    p = _cli(
        "ba",
        str(shared_data / "bal/dubrovnik-3-7-pre.txt"),
        "--json",
        "-o",
        str(out),
        "--max-steps",
        "4000",
    )
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["final_cost"] < 1e-8 * r["initial_cost"]
    # 38 residuals, 48 unknowns: converged, to an optimum that is not unique
    assert r["converged"] and r["rank_deficient"]
    from jaxnlls.io import read_bal

    assert read_bal(out).cost() == pytest.approx(r["final_cost"], rel=1e-6, abs=1e-12)
