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


def test_pgo_errors_before_and_after_the_solve(tmp_path):
    """Outputs that cannot be written fail before the solve, with exit 2 and, under --json, an
    error object; a disconnected graph under --init chordal names the file's vertex ids."""
    good = tmp_path / "good.g2o"
    good.write_text("VERTEX_SE2 0 0 0 0\nVERTEX_SE2 1 1 0 0\nEDGE_SE2 0 1 1 0 0 1 0 0 1 0 1\n")
    for flags, message in [
        (["-o", str(tmp_path / "no" / "out.g2o")], "does not exist"),
        (["--plot", str(tmp_path / "out.xyz")], "unknown image format 'xyz'"),
        # pgf needs an external LaTeX program: refused up front, not a traceback after
        (["--plot", str(tmp_path / "out.pgf")], "unknown image format 'pgf'"),
        (["-o", str(tmp_path)], "is a directory"),
        # an empty path (-o "$UNSET") used to be ignored: exit 0, nothing written
        (["-o", ""], "-o: empty path"),
        (["--plot", ""], "--plot: empty path"),
    ]:
        p = _cli("pgo", str(good), "--json", *flags)
        assert p.returncode == 2, (flags, p.stderr)
        assert message in json.loads(p.stdout)["error"] and message in p.stderr
    p = _cli("pgo", str(good), "--max-steps", "-5")
    assert p.returncode == 2 and "--max-steps: needs a positive integer" in p.stderr
    island = tmp_path / "island.g2o"
    island.write_text("VERTEX_SE2 10 0 0 0\nVERTEX_SE2 20 1 0 0\nVERTEX_SE2 30 5 5 0\n"
                      "EDGE_SE2 10 20 1 0 0 1 0 0 1 0 1\n")
    p = _cli("pgo", str(island), "--json", "--init", "chordal")
    assert p.returncode == 2
    error = json.loads(p.stdout)["error"]
    assert error.startswith(f"{island}: --init chordal") and "e.g. vertex 30" in error


def test_pgo_notes_fix_lines_it_does_not_enforce(tmp_path):
    """Only the first pose is held (by the gauge); FIX lines naming other vertices used to be
    ignored without a word."""
    src = tmp_path / "fix.g2o"
    body = ("VERTEX_SE2 0 0 0 0\nVERTEX_SE2 1 1 0 0\nVERTEX_SE2 2 2 0 0\n"
            "EDGE_SE2 0 1 1.5 0 0 1 0 0 1 0 1\nEDGE_SE2 1 2 1.5 0 0 1 0 0 1 0 1\n")
    src.write_text(body + "FIX 0 2\n")
    for flags in ([], ["--json"]):
        p = _cli("pgo", str(src), *flags)
        assert p.returncode == 0, p.stderr
        assert "1 FIX vertex not enforced (id 2)" in p.stderr
        assert "only the first pose (vertex 0) is held, by the gauge" in p.stderr
    json.loads(p.stdout)  # stdout stays one JSON object
    src.write_text(body + "FIX 0\n")  # the vertex the gauge holds anyway
    p = _cli("pgo", str(src), "--json")
    assert p.returncode == 0 and "FIX" not in p.stderr


def test_pgo_plots_the_start_it_solved_from(shared_data, tmp_path):
    """With --init chordal the plot's "initial" curve is the chordal start (whose cost the title
    reports), not the file's poses."""
    src = shared_data / "pgo2d/ring.g2o"
    dump = tmp_path / "start.npy"
    script = (
        "import sys, numpy as np\n"
        "from jaxnlls import _cli_graph, cli\n"
        "def plot(path, pg, start, *rest):\n"
        f"    np.save({str(dump)!r}, start)\n"
        "_cli_graph._plot_pgo = plot\n"
        "sys.exit(cli.main(sys.argv[1:]))\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", script, "pgo", str(src), "--json", "--init", "chordal",
         "--plot", str(tmp_path / "x.png")],
        capture_output=True, text=True, timeout=600,
    )
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    g = read_pose_graph(src)
    start = np.load(dump)
    assert start.shape == g.poses.shape
    assert g.cost(start) == pytest.approx(r["initial_cost"], rel=1e-9)
    assert r["initial_cost"] < 1e-2 * g.cost()  # not the file's poses


def test_pgo_json_is_strict_when_the_cost_overflows(tmp_path):
    """JSON has no inf: a cost that overflows is written as null, not as ``Infinity``."""
    huge = tmp_path / "huge.g2o"
    huge.write_text("VERTEX_SE2 0 0 0 0\nVERTEX_SE2 1 0 0 0\n"
                    "EDGE_SE2 0 1 1e10 0 0 1e300 0 0 1e300 0 1e300\n")
    p = _cli("pgo", str(huge), "--json")
    assert p.returncode == 1, p.stderr

    def strict(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    r = json.loads(p.stdout, parse_constant=strict)
    assert r["initial_cost"] is None and r["converged"] is False


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
