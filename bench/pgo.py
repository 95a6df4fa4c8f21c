#!/usr/bin/env python
"""Pose-graph benchmark: jaxnlls vs GTSAM (and Theseus) in the same run, plus batched graphs.

Usage (from the repository root)::

    .venv/bin/python bench/pgo.py                          # all problems, GTSAM in the same run
    .venv/bin/python bench/pgo.py --problems intel,M3500 --theseus intel,M3500
    .venv/bin/python bench/pgo.py --batched-only           # 256 generated 128-pose graphs
    .venv/bin/python bench/pgo.py --json-out /tmp/pgo.json

jaxnlls side (this venv, float64, CPU unless JAX finds an accelerator): ``FactorGraph`` of
between factors built from ``jaxnlls.io``, default solver (LM, ``rtol=1e-7``, ``atol=1e-10``,
auto linear solver: sparse Cholesky for these sizes on CPU, whose host backend, CHOLMOD with the
``cholmod`` extra installed, qdldl or supernodal, is the ``linear solver`` column), at most
``--max-steps`` iterations.
Reported separately: read (file parsing), build (``FactorGraph.build``), first call (compile +
solve), steady-state solve (median of ``--repeats`` after the first call, ``block_until_ready``),
iterations and the final cost recomputed with the numpy residual of ``PoseGraph``.
``--gtsam-rule`` also times the default solver with ``stop_on_small_decrease=True``, which stops
by GTSAM's own rule (an accepted step that lowers the cost by at most ``rtol·cost``), for the
comparison with the GTSAM (tol) row under one stopping rule.

GTSAM side: ``/work/shared/peers/b1_pgo.py --solvers gtsam_lm`` run as a subprocess with the
peers' Python (GTSAM LM, *default* tolerances 1e-5, max 100 iterations, unit prior on pose 0),
the peers' own measurement. Because GTSAM's default tolerance stops earlier than jaxnlls's
(``rtol=1e-7``), a second GTSAM row runs in a worker under the peers' Python with relative and
absolute error tolerance ``--gtsam-tol`` (default 1e-7, the same graph as
``bench/gtsam_reference.py``): the time comparison at a matching stopping rule.
``--init chordal`` adds a second table, from the chordal initialization
(``jaxnlls.io.chordal_initial_values``: rotations by chordal relaxation, then translations, one
sparse linear solve each) against GTSAM's own initializer in the same run
(``InitializePose3.initialize`` in 3D, ``lago.initialize`` in 2D, which accepts only diagonal
noise models) followed by GTSAM LM at ``--gtsam-tol``. Times: initialization and solve apart
(steady state, medians), and jaxnlls's first solution (read + build + initialization + solve,
compilation included).
``--theseus`` adds ``theseus_gn`` (Theseus Gauss-Newton with CHOLMOD,
its fastest converging configuration in peers/BASELINE.md) the same way. The tight GTSAM optimum
of ``bench/reference_costs.json`` is the accuracy target (``rel`` column).

Batched: 256 random 2D pose graphs (128 poses: odometry chain + 64 loop closures, noisy
measurements) sharing one structure, solved by one ``jit(vmap(solve))``; forward time per graph,
and the backward time per graph of ``grad`` (implicit adjoint) of a loss on the solutions with
respect to every measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
from _common import run_header, timed_calls, worker_result  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
PEERS_PY = pathlib.Path("/work/peers-venv/bin/python")
B1 = REPO.parent / "shared" / "peers" / "b1_pgo.py"
REFERENCE = REPO / "bench" / "reference_costs.json"

PROBLEMS = {
    "intel": "pgo2d/intel.g2o",
    "M3500": "pgo2d/input_M3500_g2o.g2o",
    "city10000": "pgo2d/city10000.g2o",
    "sphere2500": "pgo3d/sphere2500.g2o",
    "parking-garage": "pgo3d/parking-garage.g2o",
    "sphere_bignoise": "pgo3d/sphere_bignoise_vertex3.g2o",
}


def _read_and_build(rel: str):
    """(pose graph, factor graph, file's initial values, pose type, read s, build s)."""
    from jaxnlls.io import pose_graph_to_factor_graph, read_pose_graph

    t0 = time.perf_counter()
    pg = read_pose_graph(DATA / rel)
    read_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    fg, init, pose_t = pose_graph_to_factor_graph(pg)
    return pg, fg, init, pose_t, read_s, time.perf_counter() - t0


def run_jaxnlls(rel: str, repeats: int, max_steps: int, gtsam_rule: bool = False) -> dict:
    from jaxnlls.io import group_to_poses

    pg, fg, init, pose_t, read_s, build_s = _read_and_build(rel)
    sol, first_s, times = timed_calls(fg.solve, init, repeats=repeats, max_steps=max_steps,
                                      throw=False)
    solve_s = statistics.median(times)
    cost = pg.cost(group_to_poses(sol.value.get(pose_t)))
    rule = _with_gtsam_rule(fg, pg, pose_t, init, repeats, max_steps) if gtsam_rule else {}
    return {
        **rule,
        "iterations": int(sol.stats.steps),
        "result": int(sol.result),
        "initial_cost": float(sol.stats.initial_cost),
        "final_cost": cost,
        "read_s": read_s,
        "build_s": build_s,
        "first_call_s": first_s,
        "compile_s": max(first_s - solve_s, 0.0),
        "solve_s": solve_s,
        "times": times,
        "first_solution_s": read_s + build_s + first_s,
        "linear_solver": _default_linear_solver(fg),
    }


def _with_gtsam_rule(fg, pg, pose_t, init, repeats: int, max_steps: int) -> dict:
    """The default solver with ``stop_on_small_decrease=True``: GTSAM's stopping rule (an
    accepted step that lowers the cost by at most ``rtol·cost``) at the same ``rtol``."""
    import dataclasses

    from jaxnlls.graph import default_solver
    from jaxnlls.io import group_to_poses

    solver = dataclasses.replace(default_solver(fg.structure), stop_on_small_decrease=True)
    sol, _, times = timed_calls(fg.solve, init, repeats=repeats, solver=solver,
                                max_steps=max_steps, throw=False)
    return {
        "rule_iterations": int(sol.stats.steps),
        "rule_final_cost": pg.cost(group_to_poses(sol.value.get(pose_t))),
        "rule_solve_s": statistics.median(times),
        "rule_times": times,
    }


def run_jaxnlls_chordal(rel: str, repeats: int, max_steps: int, timeout: float) -> dict:
    """:func:`jaxnlls_chordal_worker` in a fresh process, so that its first solution compiles
    everything itself (this process already compiled the same solve for the file's start)."""
    cmd = [sys.executable, __file__, "--jaxnlls-chordal-worker", rel, "--repeats", str(repeats),
           "--max-steps", str(max_steps)]
    return worker_result(cmd, timeout)


def jaxnlls_chordal_worker(rel: str, repeats: int, max_steps: int) -> None:
    """The default solve from :func:`jaxnlls.io.chordal_initial_values`; prints
    ``RESULT {json}``."""
    import jax

    from jaxnlls.io import chordal_initial_values, group_to_poses

    run_header()  # starts the backend, as in the main process before its first solution
    pg, fg, _, pose_t, read_s, build_s = _read_and_build(rel)
    init, init_first, init_times = timed_calls(
        lambda: jax.block_until_ready(chordal_initial_values(pg)), repeats=repeats)
    sol, first_s, times = timed_calls(fg.solve, init, repeats=repeats, max_steps=max_steps,
                                      throw=False)
    print("RESULT " + json.dumps({
        "iterations": int(sol.stats.steps),
        "result": int(sol.result),
        "initial_cost": pg.cost(group_to_poses(init.get(pose_t))),
        "final_cost": pg.cost(group_to_poses(sol.value.get(pose_t))),
        "init_first_s": init_first,
        "init_s": statistics.median(init_times),
        "solve_s": statistics.median(times),
        "first_solution_s": read_s + build_s + init_first + first_s,
        "read_s": read_s, "build_s": build_s, "solve_first_s": first_s,
    }))


def gtsam_init_worker(rel: str, tol: float, repeats: int) -> None:
    """Runs under the peers' Python: GTSAM's initializer (InitializePose3 / lago), then LM with
    error tolerances ``tol``; prints ``RESULT {json}``."""
    import gtsam
    from gtsam_reference import build, load_jaxnlls_io

    g = load_jaxnlls_io().read_pose_graph(DATA / rel)
    graph, _ = build(gtsam, g, with_prior=True)
    graph_np, _ = build(gtsam, g, with_prior=False)
    initialize = gtsam.InitializePose3.initialize if g.dim == 3 else gtsam.lago.initialize
    init_times, solve_times = [], []
    for _ in range(repeats + 1):  # the first run warms caches
        t0 = time.perf_counter()
        x0 = initialize(graph)
        init_times.append(time.perf_counter() - t0)
        result, iterations, seconds = _gtsam_lm(gtsam, graph, x0, tol)
        solve_times.append(seconds)
    print("RESULT " + json.dumps({
        "initializer": "InitializePose3" if g.dim == 3 else "lago",
        "initial_cost": float(graph_np.error(x0)), "iterations": iterations,
        "final_cost": float(graph_np.error(result)),
        "init_s": statistics.median(init_times[1:]), "solve_s": statistics.median(solve_times[1:]),
    }))


def run_gtsam_init(rel: str, tol: float, repeats: int, timeout: float) -> dict:
    return _run_gtsam_worker("--gtsam-init-worker", rel, tol, repeats, timeout)


def _default_linear_solver(fg) -> str:
    """The automatic step solver's name, with the host backend it took for a sparse solve."""
    from jaxnlls.graph import auto_linear_solver
    from jaxnlls.linear import SparseCholesky
    from jaxnlls.linear._sparse import host_factor

    ls = auto_linear_solver(fg.structure)
    name = type(ls).__name__
    if isinstance(ls, SparseCholesky):
        name += f" ({host_factor(fg.structure.layout, ls.backend).backend})"
    return name


def run_peer(rel: str, solver: str, repeats: int, timeout: float) -> dict:
    """One peer solver via ``b1_pgo.py --solver NAME`` (its per-solver subprocess mode)."""
    if not PEERS_PY.exists():
        return {"error": f"{PEERS_PY} missing"}
    cmd = [
        str(PEERS_PY),
        str(B1),
        "--solver",
        solver,
        "--problem",
        rel,
        "--data-dir",
        str(DATA),
        "--repeats",
        str(repeats),
    ]
    r = worker_result(cmd, timeout)
    if "error" in r:
        return r
    return {
        "iterations": int(r["iters"]),
        "final_cost": float(r["final_cost"]),
        "solve_s": float(r["solve_median_s"]),
        "times": r["times"],
        "compile_s": r.get("compile_s"),
        "build_s": r.get("build_s"),
        "peak_rss_mb": r.get("peak_rss_mb"),
    }


def _gtsam_lm(gtsam, graph, x0, tol: float):
    """GTSAM LM with relative/absolute error tolerance ``tol`` (at most 200 iterations):
    (result, iterations, seconds)."""
    params = gtsam.LevenbergMarquardtParams()
    params.setRelativeErrorTol(tol)
    params.setAbsoluteErrorTol(tol)
    params.setMaxIterations(200)
    t0 = time.perf_counter()
    opt = gtsam.LevenbergMarquardtOptimizer(graph, x0, params)
    result = opt.optimize()
    return result, int(opt.iterations()), time.perf_counter() - t0


def _run_gtsam_worker(flag: str, rel: str, tol: float, repeats: int, timeout: float) -> dict:
    if not PEERS_PY.exists():
        return {"error": f"{PEERS_PY} missing"}
    cmd = [str(PEERS_PY), __file__, flag, rel, "--gtsam-tol", str(tol), "--repeats", str(repeats)]
    return worker_result(cmd, timeout)


def gtsam_tol_worker(rel: str, tol: float, repeats: int) -> None:
    """Runs under the peers' Python: GTSAM LM with relative/absolute error tolerance ``tol``
    (``bench/gtsam_reference.py``'s graph: unit prior on pose 0); prints ``RESULT {json}``."""
    import gtsam
    from gtsam_reference import build, load_jaxnlls_io

    g = load_jaxnlls_io().read_pose_graph(DATA / rel)
    graph, init = build(gtsam, g, with_prior=True)
    graph_np, _ = build(gtsam, g, with_prior=False)
    times = []
    for _ in range(repeats + 1):  # the first run warms caches, like the peers' script
        result, iterations, seconds = _gtsam_lm(gtsam, graph, init, tol)
        times.append(seconds)
    print("RESULT " + json.dumps({"iterations": iterations, "tol": tol,
                                  "final_cost": float(graph_np.error(result)),
                                  "solve_s": statistics.median(times[1:]), "times": times[1:]}))


def run_gtsam_tol(rel: str, tol: float, repeats: int, timeout: float) -> dict:
    return _run_gtsam_worker("--gtsam-tol-worker", rel, tol, repeats, timeout)


# --------------------------------------------------------------------------------------------
# batched: 256 generated pose graphs of 128 poses
# --------------------------------------------------------------------------------------------


def _generated_batch(n_graphs: int, n_poses: int, n_loops: int, seed: int = 0):
    from jaxnlls.io._se_numpy import se2_compose, se2_inverse

    rng = np.random.default_rng(seed)
    odo = [(k, k + 1) for k in range(n_poses - 1)]
    loops = set()
    while len(loops) < n_loops:
        a, b = sorted(rng.integers(0, n_poses, 2).tolist())
        if b - a > 2:
            loops.add((a, b))
    edges = np.asarray(odo + sorted(loops), dtype=np.int64)
    steps = (
        np.column_stack(
            [
                rng.uniform(0.5, 1.5, (n_graphs, n_poses - 1)),
                rng.normal(0, 0.2, (n_graphs, n_poses - 1)),
                rng.normal(0, 0.3, (n_graphs, n_poses - 1)),
            ]
        )
        .reshape(n_graphs, 3, n_poses - 1)
        .transpose(0, 2, 1)
    )
    truth = np.zeros((n_graphs, n_poses, 3))
    for k in range(n_poses - 1):
        truth[:, k + 1] = se2_compose(truth[:, k], steps[:, k])
    sigma = np.array([0.05, 0.05, 0.02])
    z = se2_compose(se2_inverse(truth[:, edges[:, 0]]), truth[:, edges[:, 1]])
    z = z + rng.normal(size=z.shape) * sigma
    init = np.zeros_like(truth)  # dead reckoning from the noisy odometry
    for k in range(n_poses - 1):
        init[:, k + 1] = se2_compose(init[:, k], z[:, k])
    return edges, z, init, np.diag(1.0 / sigma)


def run_batched(n_graphs: int, n_poses: int, n_loops: int, repeats: int, max_steps: int) -> dict:
    """jaxnlls on the generated batch: ``bench/batched_graphs.py``'s ``jaxnlls_side`` (one code
    path for both benches; that script adds Theseus on the same data)."""
    from batched_graphs import jaxnlls_side

    edges, z, init, sqrt_info = _generated_batch(n_graphs, n_poses, n_loops)
    summary, _ = jaxnlls_side(edges, z, init, sqrt_info, repeats, max_steps)
    return summary


def _ratio(a, b) -> str:
    if a is None or b is None or not b:
        return "-"
    return f"{a / b:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--problems", default=",".join(PROBLEMS), help=f"subset of {','.join(PROBLEMS)}"
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-steps", type=int, default=100)
    ap.add_argument("--no-gtsam", action="store_true")
    ap.add_argument(
        "--gtsam-tol",
        type=float,
        default=1e-7,
        help="also run GTSAM LM with this relative/absolute error tolerance (0: skip). The "
        "peers' GTSAM row uses GTSAM's default 1e-5, which stops earlier than jaxnlls's default "
        "rtol 1e-7; this row stops by a matching rule",
    )
    ap.add_argument("--gtsam-tol-worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--gtsam-init-worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--jaxnlls-chordal-worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument(
        "--init",
        default="file",
        choices=["file", "chordal"],
        help="'chordal': also solve from the chordal initialization, against GTSAM's "
        "initializer + LM (second table)",
    )
    ap.add_argument(
        "--gtsam-rule",
        action="store_true",
        help="also time jaxnlls with GTSAM's stopping rule (stop_on_small_decrease=True), "
        "compared with the GTSAM (tol) row",
    )
    ap.add_argument(
        "--theseus",
        default="",
        help="comma-separated problems on which to also run theseus_gn (slow), or 'all'",
    )
    ap.add_argument("--peer-timeout", type=float, default=900.0)
    ap.add_argument("--batched-only", action="store_true")
    ap.add_argument("--no-batched", action="store_true")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--batch-poses", type=int, default=128)
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()
    if args.gtsam_tol_worker:
        gtsam_tol_worker(args.gtsam_tol_worker, args.gtsam_tol, args.repeats)
        return
    if args.gtsam_init_worker:
        gtsam_init_worker(args.gtsam_init_worker, args.gtsam_tol, args.repeats)
        return
    if args.jaxnlls_chordal_worker:
        jaxnlls_chordal_worker(args.jaxnlls_chordal_worker, args.repeats, args.max_steps)
        return

    refs = json.loads(REFERENCE.read_text())["problems"] if REFERENCE.exists() else {}
    out = {
        **run_header(),
        "problems": {},
    }
    names = [] if args.batched_only else [n for n in args.problems.split(",") if n]
    for name in names:
        rel = PROBLEMS[name]
        row = {"file": rel,
               "jaxnlls": run_jaxnlls(rel, args.repeats, args.max_steps, args.gtsam_rule)}
        if not args.no_gtsam:
            row["gtsam_lm"] = run_peer(rel, "gtsam_lm", args.repeats, args.peer_timeout)
            if args.gtsam_tol > 0:
                row["gtsam_lm_tol"] = run_gtsam_tol(rel, args.gtsam_tol, args.repeats,
                                                    args.peer_timeout)
        if args.theseus == "all" or name in args.theseus.split(","):
            row["theseus_gn"] = run_peer(rel, "theseus_gn", 1, args.peer_timeout)
        if args.init == "chordal":
            row["jaxnlls_chordal"] = run_jaxnlls_chordal(rel, args.repeats, args.max_steps,
                                                         args.peer_timeout)
            if not args.no_gtsam:
                row["gtsam_init"] = run_gtsam_init(rel, args.gtsam_tol or 1e-7, args.repeats,
                                                   args.peer_timeout)
        row["reference_cost"] = refs.get(rel, {}).get("reference_cost")
        out["problems"][name] = row
        j = row["jaxnlls"]
        print(
            f"{name}: jaxnlls {j['iterations']} it, cost {j['final_cost']:.10g}, solve "
            f"{j['solve_s']:.3f} s, compile {j['compile_s']:.1f} s, build {j['build_s']:.2f} s"
            + (
                f"; gtsam {row['gtsam_lm'].get('solve_s', float('nan')):.3f} s"
                if "gtsam_lm" in row
                else ""
            ),
            file=sys.stderr,
            flush=True,
        )
    if names:
        print(table(out["problems"]))
        if args.init == "chordal":
            print("\nFrom the chordal initialization (jaxnlls) and GTSAM's initializer:")
            print(table_chordal(out["problems"]))
    if not args.no_batched:
        b = run_batched(
            args.batch, args.batch_poses, args.batch_poses // 2, args.repeats, args.max_steps
        )
        out["batched"] = b
        print(
            f"\nbatched: {b['n_graphs']} graphs x {b['n_poses']} poses ({b['n_edges']} edges), "
            f"{b['linear_solver']}, converged {b['converged']}/{b['n_graphs']}, iterations max "
            f"{b['max_iterations']} (mean {b['mean_iterations']:.1f})\n"
            f"  forward  {b['fwd_s']:.3f} s total = {b['fwd_per_graph_ms']:.3f} ms/graph "
            f"(compile {b['fwd_compile_s']:.1f} s)\n"
            f"  backward {b['fwd_bwd_s'] - b['fwd_s']:.3f} s total = {b['bwd_per_graph_ms']:.3f} "
            f"ms/graph (fwd+bwd {b['fwd_bwd_s']:.3f} s, compile {b['fwd_bwd_compile_s']:.1f} s), "
            f"grad finite: {b['grad_finite']}"
        )
    out["load_avg_end"] = os.getloadavg()
    if args.json_out:
        pathlib.Path(args.json_out).write_text(json.dumps(out, indent=1) + "\n")


def _f(x, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def table(problems: dict) -> str:
    cols = [
        "problem",
        "linear solver",
        "jaxnlls it",
        "jaxnlls cost",
        "rel. to ref",
        "solve s",
        "compile s",
        "build s",
        "first solution s",
        "GTSAM it",
        "GTSAM cost",
        "GTSAM s",
        "jaxnlls/GTSAM time",
        "GTSAM (tol) it",
        "GTSAM (tol) s",
        "jaxnlls/GTSAM (tol) time",
        "Theseus GN s",
        "Theseus/jaxnlls time",
    ]
    rule = any("rule_solve_s" in row["jaxnlls"] for row in problems.values())
    if rule:
        cols += ["jaxnlls (GTSAM rule) it", "rel. to ref (GTSAM rule)", "solve s (GTSAM rule)",
                 "jaxnlls (GTSAM rule)/GTSAM (tol) time"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for name, row in problems.items():
        j, g, t = row["jaxnlls"], row.get("gtsam_lm", {}), row.get("theseus_gn", {})
        gt = row.get("gtsam_lm_tol", {})
        ref = row.get("reference_cost")
        cells = [
            name,
            j["linear_solver"],
            str(j["iterations"]),
            f"{j['final_cost']:.8g}",
            f"{(j['final_cost'] - ref) / ref:+.1e}" if ref else "-",
            f"{j['solve_s']:.3f}",
            f"{j['compile_s']:.1f}",
            f"{j['build_s']:.2f}",
            f"{j['first_solution_s']:.1f}",
            str(g.get("iterations", "-")),
            _f(g.get("final_cost"), ".8g") if "error" not in g else "FAILED: " + g["error"],
            _f(g.get("solve_s"), ".3f"),
            _ratio(j["solve_s"], g.get("solve_s")),
            str(gt.get("iterations", "-")),
            _f(gt.get("solve_s"), ".3f") if "error" not in gt else "FAILED: " + gt["error"],
            _ratio(j["solve_s"], gt.get("solve_s")),
            _f(t.get("solve_s"), ".3f") if "error" not in t else "FAILED: " + t["error"],
            _ratio(t.get("solve_s"), j["solve_s"]),
        ]
        if rule:
            rc = j.get("rule_final_cost")
            cells += [
                str(j.get("rule_iterations", "-")),
                f"{(rc - ref) / ref:+.1e}" if ref and rc is not None else "-",
                _f(j.get("rule_solve_s"), ".3f"),
                _ratio(j.get("rule_solve_s"), gt.get("solve_s")),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table_chordal(problems: dict) -> str:
    cols = ["problem", "jaxnlls it", "jaxnlls cost", "rel. to ref (file start)", "init s",
            "solve s", "first solution s", "GTSAM initializer", "GTSAM it", "GTSAM cost",
            "GTSAM init s", "GTSAM solve s", "jaxnlls/GTSAM time (init + solve)"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for name, row in problems.items():
        j, g = row.get("jaxnlls_chordal"), row.get("gtsam_init", {})
        if j is None:
            continue
        if "error" in j:
            lines.append(f"| {name} | FAILED: {j['error']} |" + " |" * (len(cols) - 2))
            continue
        ref = row.get("reference_cost")
        ok = "error" not in g and g
        cells = [
            name,
            str(j["iterations"]),
            f"{j['final_cost']:.10g}",
            f"{(j['final_cost'] - ref) / ref:+.1e}" if ref else "-",
            f"{j['init_s']:.3f}",
            f"{j['solve_s']:.3f}",
            f"{j['first_solution_s']:.1f}",
            g.get("initializer", "-") if ok else "FAILED: " + str(g.get("error", "not run")),
            str(g.get("iterations", "-")),
            _f(g.get("final_cost"), ".10g"),
            _f(g.get("init_s"), ".3f"),
            _f(g.get("solve_s"), ".3f"),
            _ratio(j["init_s"] + j["solve_s"],
                   g["init_s"] + g["solve_s"] if ok else None),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
