#!/usr/bin/env python
"""Bundle-adjustment benchmark (BAL problem-49-7776): jaxnlls vs GTSAM in the same run.

Usage (from the repository root)::

    .venv/bin/python bench/ba.py [--file bal/problem-49-7776-pre.txt] [--repeats 1]
        [--max-steps 200] [--gtsam-max-steps N] [--no-gtsam] [--json-out out.json]

jaxnlls: BAL-convention reprojection factors (all observations, points behind a camera counted),
``FactorGraph`` default solver (LM, auto linear solver = Schur complement on the points), float64.
Reported: read, build, first call (compile + solve), steady-state solve (median of
``--repeats``), iterations, final cost; the target is ``13344.46`` (peers/REFERENCE_COSTS.md:
GTSAM LM with a BAL-convention factor after 200 iterations; the optimum is at or below it).

GTSAM (subprocess with the peers' Python, ``--gtsam-worker``): its native C++ path,
``SfmData.FromBalFile`` + ``sfmFactorGraph()`` (``GeneralSFMFactor`` on
``PinholeCamera<Cal3Bundler>``, unit pixel noise, camera 0 and point 0 fixed for the gauge) and
LM (relative/absolute error tolerance 1e-10, at most ``--max-steps`` iterations). GTSAM's
factor gives a zero residual to the 31 observations behind their camera, so its own cost is
not the BAL cost; the BAL cost of GTSAM's result is recomputed here with
``jaxnlls.io.BALProblem.cost`` after ``writeBAL`` (and the round trip is checked on the initial
values: it must reproduce the file's initial cost).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
PEERS_PY = pathlib.Path("/work/peers-venv/bin/python")
TARGET = 13344.46


def run_jaxnlls(path: pathlib.Path, repeats: int, max_steps: int) -> dict:
    import jax

    jax.config.update("jax_enable_x64", True)
    import numpy as np

    from jaxnlls.factors import BalCamera, BalPoint
    from jaxnlls.graph import auto_linear_solver
    from jaxnlls.io import bal_to_factor_graph, read_bal

    t0 = time.perf_counter()
    b = read_bal(path)
    read_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    fg, init = bal_to_factor_graph(b)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    sol = fg.solve(init, max_steps=max_steps, throw=False)
    jax.block_until_ready(sol)
    first_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sol = fg.solve(init, max_steps=max_steps, throw=False)
        jax.block_until_ready(sol)
        times.append(time.perf_counter() - t0)
    solve_s = statistics.median(times) if times else first_s
    cams = np.asarray(sol.value.get(BalCamera), np.float64)
    pts = np.asarray(sol.value.get(BalPoint), np.float64)
    return {
        "iterations": int(sol.stats.steps),
        "result": int(sol.result),
        "initial_cost": b.cost(),
        "final_cost": b.cost(cams, pts),
        "behind_camera_final": int(b.behind_camera(cams, pts).sum()),
        "read_s": read_s,
        "build_s": build_s,
        "first_call_s": first_s,
        "compile_s": max(first_s - solve_s, 0.0) if times else None,
        "solve_s": solve_s,
        "times": times,
        "first_solution_s": read_s + build_s + first_s,
        "linear_solver": type(auto_linear_solver(fg.structure)).__name__,
    }


def gtsam_worker(path: str, max_steps: int) -> None:
    """Runs under the peers' Python; prints ``RESULT {json}``."""
    import gtsam

    sys.path.insert(0, str(REPO / "bench"))
    from gtsam_reference import load_jaxnlls_io

    io = load_jaxnlls_io()
    b = io.read_bal(path)

    def bal_cost(sfm, values) -> float:
        out = gtsam.SfmData()
        for i in range(sfm.numberCameras()):
            out.addCamera(values.atPinholeCameraCal3Bundler(i))
        for j in range(sfm.numberTracks()):
            tr = sfm.track(j)
            tr.p = values.atPoint3(gtsam.symbol("p", j))
            out.addTrack(tr)
        with tempfile.TemporaryDirectory() as tmp:
            f = os.path.join(tmp, "out.txt")
            gtsam.writeBAL(f, out)
            c = io.read_bal(f)
        return c.cost()

    t0 = time.perf_counter()
    sfm = gtsam.SfmData.FromBalFile(path)
    graph = sfm.sfmFactorGraph()
    init = gtsam.initialCamerasAndPointsEstimate(sfm)
    build_s = time.perf_counter() - t0
    init_bal = bal_cost(sfm, init)
    if abs(init_bal - b.cost()) > 1e-6 * b.cost():
        raise RuntimeError(
            f"writeBAL round trip changed the initial cost: {init_bal} vs {b.cost()}"
        )
    params = gtsam.LevenbergMarquardtParams()
    params.setMaxIterations(max_steps)
    params.setRelativeErrorTol(1e-10)
    params.setAbsoluteErrorTol(1e-10)
    t0 = time.perf_counter()
    opt = gtsam.LevenbergMarquardtOptimizer(graph, init, params)
    res = opt.optimize()
    solve_s = time.perf_counter() - t0
    print(
        "RESULT "
        + json.dumps(
            {
                "iterations": int(opt.iterations()),
                "own_initial_cost": float(graph.error(init)),
                "own_final_cost": float(graph.error(res)),
                "initial_cost": init_bal,
                "final_cost": bal_cost(sfm, res),
                "solve_s": solve_s,
                "build_s": build_s,
                "gtsam": _gtsam_version(),
            }
        )
    )


def _gtsam_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("gtsam")
    except metadata.PackageNotFoundError:
        return "unknown"


def run_gtsam(path: pathlib.Path, max_steps: int, timeout: float) -> dict:
    if not PEERS_PY.exists():
        return {"error": f"{PEERS_PY} missing"}
    cmd = [
        str(PEERS_PY),
        __file__,
        "--gtsam-worker",
        "--file",
        str(path),
        "--max-steps",
        str(max_steps),
    ]
    from _common import worker_result

    return worker_result(cmd, timeout)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--file", default="bal/problem-49-7776-pre.txt", help="relative to shared/data")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--max-steps", type=int, default=200)
    ap.add_argument("--gtsam-max-steps", type=int, default=None,
                    help="GTSAM's iteration budget (default --max-steps). GTSAM's LM on the full "
                    "BA graph takes ~11 s per iteration here, so 200 iterations need ~40 min; a "
                    "small budget still gives the per-iteration time ratio")
    ap.add_argument("--no-gtsam", action="store_true")
    ap.add_argument("--timeout", type=float, default=1800.0)
    ap.add_argument("--json-out", default=None)
    ap.add_argument("--gtsam-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    path = pathlib.Path(args.file)
    if not path.is_absolute():
        path = DATA / path
    if args.gtsam_worker:
        gtsam_worker(str(path), args.max_steps)
        return
    out = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "file": str(args.file),
        "cpus": os.cpu_count(),
        "load_avg_start": os.getloadavg(),
        "python": platform.python_version(),
        "target_cost": TARGET,
    }
    out["jaxnlls"] = j = run_jaxnlls(path, args.repeats, args.max_steps)
    print(
        f"jaxnlls: {j['iterations']} it, cost {j['final_cost']:.8g} (target {TARGET}), solve "
        f"{j['solve_s']:.2f} s, first call {j['first_call_s']:.1f} s, build {j['build_s']:.2f} s, "
        f"{j['linear_solver']}",
        flush=True,
    )
    if not args.no_gtsam:
        g_steps = args.gtsam_max_steps if args.gtsam_max_steps is not None else args.max_steps
        out["gtsam_lm"] = g = run_gtsam(path, g_steps, args.timeout)
        if "error" in g:
            print(f"gtsam: FAILED: {g['error']}")
        else:
            print(
                f"gtsam {g['gtsam']}: {g['iterations']} it, BAL cost {g['final_cost']:.8g} (own "
                f"cost {g['own_final_cost']:.8g}, behind-camera residuals zeroed), solve "
                f"{g['solve_s']:.2f} s; time ratio jaxnlls/GTSAM {j['solve_s'] / g['solve_s']:.2f}"
            )
            per_j = j["solve_s"] / max(j["iterations"], 1)
            per_g = g["solve_s"] / max(g["iterations"], 1)
            out["seconds_per_iteration"] = {"jaxnlls": per_j, "gtsam": per_g}
            print(f"seconds per iteration: jaxnlls {per_j:.3f}, GTSAM {per_g:.3f} "
                  f"(GTSAM/jaxnlls {per_g / per_j:.1f}x)")
    out["load_avg_end"] = os.getloadavg()
    if args.json_out:
        pathlib.Path(args.json_out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
