"""``jaxnlls pgo`` and ``jaxnlls ba``: optimize a pose-graph or BAL file from the shell.

Registered by :mod:`jaxnlls.cli` through :func:`add_pgo_parser` and :func:`add_ba_parser`.
Both commands run in float64 (they set ``jax_enable_x64``: they own their process) unless
``--float32``, time the solve twice (the first call includes compilation; ``compile_seconds``
is the first call minus the steady-state ``solve_seconds``, the definition used by the peers'
baselines) and exit with 0 when the solver converged (also to a rank-deficient optimum, reported
as ``rank_deficient``), 1 when it did not (``max_steps`` reached or a numerical failure), 2 on
a bad input file (the reader's message, ``FILE:LINE: TAG: ...``), a bad option, an output path
that cannot be written (checked before the solve) or a graph the chosen start cannot handle.
Under ``--json`` an error is the object ``{"error": ...}``, and non-finite costs are ``null``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io as _stdio
import json
import math
import sys
import time
from typing import Any

_SOLVER_HELP = (
    "linear step solver: auto (default: dense up to 128 unknowns, Schur complement for bundle "
    "adjustment, sparse Cholesky otherwise), dense, sparse, pcg (block-Jacobi CG), schur (BA)"
)


#: The largest ``--max-steps``: under ``--float32`` the solver counts steps in an int32, and a
#: larger cap overflowed inside the jitted solve.
_MAX_STEPS = 2**31 - 1


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"needs a positive integer, got {text!r}")
    if value > _MAX_STEPS:
        raise argparse.ArgumentTypeError(f"needs an integer at most {_MAX_STEPS}, got {text!r}")
    return value


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plot", metavar="PNG", help="write a PNG plot of the result")
    p.add_argument(
        "--json",
        action="store_true",
        help="print ONE JSON object (initial_cost, final_cost, iterations, solve_seconds, "
        "compile_seconds, converged, ...) and nothing else on stdout",
    )
    p.add_argument(
        "--solver",
        default="auto",
        choices=["auto", "dense", "sparse", "pcg", "schur"],
        help=_SOLVER_HELP,
    )
    p.add_argument(
        "--method",
        default="lm",
        choices=["lm", "gn", "dogleg"],
        help="nonlinear method: Levenberg-Marquardt (default), Gauss-Newton or Powell's dogleg",
    )
    p.add_argument(
        "--max-steps",
        type=_positive_int,
        default=3000,
        metavar="N",
        help="iteration cap (3000; regular graphs converge in < 20, badly conditioned ones such "
        "as input_INTEL_g2o need ~2500)",
    )
    p.add_argument(
        "--stop",
        default=None,
        choices=["strict", "gtsam"],
        help="stopping rule: 'strict' needs both the step and the cost decrease below rtol, "
        "'gtsam' the cost decrease alone (GTSAM's rule, often one iteration sooner); default: "
        "'strict' for pose graphs, 'gtsam' for bundle adjustment (whose free gauge keeps the "
        "damped steps from getting small)",
    )
    p.add_argument("--float32", action="store_true", help="solve in float32 (default float64)")


def add_pgo_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Registers ``jaxnlls pgo FILE`` on an ``argparse`` sub-parser collection."""
    p = subparsers.add_parser(
        "pgo",
        help="optimize a pose graph (g2o VERTEX_SE2/EDGE_SE2, VERTEX_SE3:QUAT/EDGE_SE3:QUAT, "
        "or TORO VERTEX2/EDGE2)",
        description="Optimize a 2D/3D pose graph from a g2o or TORO file: between factors "
        "whitened by the full information matrix, first pose held fixed (gauge; --gauge prior "
        "for GTSAM's prior), cost "
        "0.5*sum||r||^2 (the GTSAM convention). Files without vertices are initialized by "
        "chaining odometry. Non-positive-definite information matrices are an error "
        "(exit code 2) unless --fix-information.",
    )
    p.add_argument("file", help="g2o or TORO pose-graph file")
    p.add_argument("-o", "--output", metavar="OUT.g2o", help="write the optimized graph (g2o)")
    p.add_argument(
        "--fix-information",
        action="store_true",
        help="project non-positive-definite / singular information matrices to the nearest "
        "positive-definite matrix (eigenvalue clipping) instead of stopping",
    )
    p.add_argument(
        "--gauge",
        default="auto",
        choices=["auto", "prior"],
        help="'auto' (default): hold the first pose fixed; 'prior': GTSAM's unit-weight prior on "
        "the first pose (LM then follows GTSAM's iterates step for step)",
    )
    p.add_argument(
        "--init",
        default="file",
        choices=["file", "chordal"],
        help="initial poses: 'file' (default: the file's vertices, or chained odometry) or "
        "'chordal' (rotations by chordal relaxation, then translations, from the measurements "
        "alone, as GTSAM's InitializePose3; first pose kept): avoids the poor local minima of "
        "large-noise graphs",
    )
    _add_common(p)
    p.set_defaults(func=run_pgo)
    return p


def add_ba_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Registers ``jaxnlls ba FILE`` on an ``argparse`` sub-parser collection."""
    p = subparsers.add_parser(
        "ba",
        help="bundle adjustment of a BAL problem file",
        description="Bundle adjustment of a BAL ('Bundle Adjustment in the Large') file: "
        "cameras (Rodrigues rotation, translation, f, k1, k2) and points, reprojection "
        "residual f(1+k1|p|^2+k2|p|^4)p - uv with p = -P[:2]/P[2], cost 0.5*sum||r||^2 over ALL "
        "observations. Points behind a camera (P[2] >= 0) are not dropped or special-cased: "
        "their residuals count in the cost like any other (the convention of the reference "
        "costs); their number before and after is reported.",
    )
    p.add_argument("file", help="BAL problem file (uncompressed text)")
    p.add_argument("-o", "--output", metavar="OUT.txt", help="write the optimized problem (BAL)")
    _add_common(p)
    p.set_defaults(func=run_ba)
    return p


# --------------------------------------------------------------------------------------------
# shared machinery
# --------------------------------------------------------------------------------------------


def _make_solver(args, structure, *, verbose: bool):
    import jaxnlls
    from jaxnlls.graph import auto_linear_solver, default_solver
    from jaxnlls.linear._pcg import BlockJacobiPCG
    from jaxnlls.linear._schur import SchurComplement
    from jaxnlls.linear._sparse import SparseCholesky

    if args.solver == "auto":
        ls = auto_linear_solver(structure)
    elif args.solver == "dense":
        ls = jaxnlls.DenseCholesky()
    elif args.solver == "sparse":
        ls = SparseCholesky()
    elif args.solver == "pcg":
        ls = BlockJacobiPCG()
    else:
        from jaxnlls.factors import BalPoint

        if BalPoint not in structure.var_types:
            raise _UsageError("--solver schur applies to bundle adjustment only")
        ls = SchurComplement(BalPoint)
    lm = default_solver(structure, ls)
    small = lm.stop_on_small_decrease if args.stop is None else args.stop == "gtsam"
    common = {"verbose": verbose, "stop_on_small_decrease": small}
    if args.method == "lm":  # the graph default: GTSAM's schedule (+ restart on hard graphs)
        return dataclasses.replace(lm, **common)
    if args.method == "gn":
        return jaxnlls.GaussNewton(rtol=lm.rtol, atol=lm.atol, linear_solver=ls, **common)
    return jaxnlls.Dogleg(rtol=lm.rtol, atol=lm.atol, linear_solver=ls, **common)


class _UsageError(Exception):
    """An error reported with exit code 2 (and as ``{"error": ...}`` under ``--json``): a bad
    option, an output path that cannot be written, a graph the chosen start cannot handle."""


def _check_outputs(args) -> None:
    """Fail before the solve, not after it, on an output the command could not write."""
    import os

    for flag, path in (("-o", args.output), ("--plot", args.plot)):
        if path is None:
            continue
        if not path:  # -o "$UNSET": an error, not a request to write nothing
            raise _UsageError(f"{flag}: empty path")
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise _UsageError(f"{flag} {path}: directory {parent} does not exist")
        if not os.access(parent, os.W_OK):
            raise _UsageError(f"{flag} {path}: directory {parent} is not writable")
        if os.path.isdir(path):
            raise _UsageError(f"{flag} {path}: is a directory")
    if args.plot:
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        ext = os.path.splitext(args.plot)[1].lower().lstrip(".")
        # pgf is written through an external LaTeX program (xelatex), which the solve cannot
        # check for; its failure came after the solve, as a traceback
        formats = {k: v for k, v in FigureCanvasAgg.get_supported_filetypes().items()
                   if k != "pgf"}
        if ext not in formats:
            raise _UsageError(
                f"--plot {args.plot}: unknown image format {ext!r}; use one of "
                + ", ".join(sorted(formats))
            )


@contextlib.contextmanager
def _writing(flag: str, path: str):
    """Turn a failed write (disk full, a path removed meanwhile, a plot format matplotlib
    cannot write after all) into an exit-2 error."""
    try:
        yield
    except OSError as e:
        raise _UsageError(f"{flag} {path}: cannot write: {e.strerror or e}") from e
    except (RuntimeError, ValueError) as e:
        raise _UsageError(f"{flag} {path}: cannot write: {e}") from e


def _json_safe(report: dict[str, Any]) -> dict[str, Any]:
    """JSON has no inf or NaN: a diverged cost is written as null (strict parsers reject the
    ``Infinity`` that ``json.dumps`` would print)."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in report.items()}


def _timed_solve(fg, init, solver, max_steps: int, *, quiet_second: bool):
    """Solve twice: the first call compiles; the second gives the steady-state time."""
    import jax

    t0 = time.perf_counter()
    sol = fg.solve(init, solver=solver, max_steps=max_steps, throw=False)
    jax.block_until_ready(sol)
    jax.effects_barrier()
    first = time.perf_counter() - t0
    sink = _stdio.StringIO()
    with contextlib.redirect_stdout(sink) if quiet_second else contextlib.nullcontext():
        t0 = time.perf_counter()
        sol = fg.solve(init, solver=solver, max_steps=max_steps, throw=False)
        jax.block_until_ready(sol)
        second = time.perf_counter() - t0
        jax.effects_barrier()
    return sol, first, second


def _summary(sol, first: float, second: float) -> dict[str, Any]:
    import jaxnlls

    result = int(sol.result)
    return {
        "initial_cost": float(sol.stats.initial_cost),
        "final_cost": float(sol.stats.final_cost),
        "iterations": int(sol.stats.steps),
        "solve_seconds": second,
        "compile_seconds": max(first - second, 0.0),
        "first_call_seconds": first,
        # a rank-deficient optimum (a bundle adjustment's free gauge, found by the dense path of
        # small problems) is converged: the iterations stopped at a minimizer, not a unique one
        "converged": result in (jaxnlls.RESULTS.successful, jaxnlls.RESULTS.singular),
        "rank_deficient": bool(sol.stats.rank_deficient),
        "result": jaxnlls.RESULTS.message(result),
    }


def _x64(args):
    """float64 unless ``--float32``.

    This is a command-line entry point (its own process), so it sets the global flag: the
    thread-local ``jax.enable_x64`` context manager does not reach the host-callback threads
    of the sparse solvers, whose outputs then come back as float32.
    """
    import jax

    jax.config.update("jax_enable_x64", not args.float32)
    return contextlib.nullcontext()


def _emit(args, report: dict[str, Any], lines: list[str]) -> int:
    if args.json:
        print(json.dumps(_json_safe(report), allow_nan=False))
    else:
        for ln in lines:
            print(ln)
    return 0 if report["converged"] else 1


def _fail(args, command: str, message: str) -> int:
    if args.json:
        print(json.dumps({"error": message}))
    print(f"jaxnlls {command}: error: {message}", file=sys.stderr)
    return 2


def _fmt_cost(c: float) -> str:
    return f"{c:.10g}"


def _decrease(a: float, b: float) -> str:
    if a > 0 and math.isfinite(a) and math.isfinite(b):
        return f" ({100.0 * (b - a) / a:+.2f}%)"
    return ""


# --------------------------------------------------------------------------------------------
# pgo
# --------------------------------------------------------------------------------------------


def run_pgo(args) -> int:
    from jaxnlls.io import FormatError, read_pose_graph

    try:
        pg = read_pose_graph(args.file, fix_information=args.fix_information)
    except FormatError as e:
        return _fail(args, "pgo", str(e))
    try:
        _check_outputs(args)
        with _x64(args):
            return _run_pgo(args, pg)
    except _UsageError as e:
        return _fail(args, "pgo", str(e))


def _run_pgo(args, pg) -> int:
    import numpy as np

    from jaxnlls.io import (
        chordal_initial_values,
        group_to_poses,
        pose_graph_to_factor_graph,
        write_g2o,
    )

    lines: list[str] = []
    if not args.json:
        how = "initialized by chaining odometry (no vertices in the file)" if pg.chained else ""
        print(
            f"{args.file}: {pg.dim}D pose graph, {pg.n_poses} poses, {pg.n_edges} edges"
            + (f", {how}" if how else "")
            + (f"; {pg.repaired.size} information matrices repaired" if pg.repaired.size else "")
            + (f"; {pg.equivalences.shape[0]} EQUIV lines ignored" if len(pg.equivalences) else ""),
            flush=True,
        )
    _note_fix_lines(args, pg)
    t0 = time.perf_counter()
    fg, init, pose_t = pose_graph_to_factor_graph(pg, gauge=args.gauge)
    build_s = time.perf_counter() - t0
    init_s = 0.0
    if args.init == "chordal":
        import jax

        t0 = time.perf_counter()
        try:
            init = jax.block_until_ready(chordal_initial_values(pg))
        except ValueError as e:  # disconnected graph, or a failed linear solve
            raise _UsageError(f"{args.file}: --init chordal: {e}") from e
        init_s = time.perf_counter() - t0
        if not args.json:
            print(f"chordal initialization: cost {_fmt_cost(float(fg.cost(init)))} (file's "
                  f"poses: {_fmt_cost(float(pg.cost(pg.poses)))}), {init_s:.2f} s", flush=True)
    solver = _make_solver(args, fg.structure, verbose=not args.json)
    if not args.json:
        print(
            f"solver: {type(solver).__name__} + {type(solver.linear_solver).__name__}, "
            f"max {args.max_steps} steps, {'float32' if args.float32 else 'float64'}",
            flush=True,
        )
    sol, first, second = _timed_solve(fg, init, solver, args.max_steps, quiet_second=not args.json)
    report = _summary(sol, first, second)
    report.update(
        file=str(args.file),
        dim=int(pg.dim),
        n_poses=pg.n_poses,
        n_edges=pg.n_edges,
        build_seconds=build_s,
        init=args.init,
        init_seconds=init_s,
        repaired_information=int(pg.repaired.size),
    )
    poses = group_to_poses(sol.value.get(pose_t))
    if not np.all(np.isfinite(poses)):
        report["converged"] = False
    if args.output:
        with _writing("-o", args.output):
            write_g2o(args.output, pg, poses)
        report["output"] = str(args.output)
    if args.plot:
        start = group_to_poses(init.get(pose_t))  # the file's poses or the chordal start
        with _writing("--plot", args.plot):
            _plot_pgo(args.plot, pg, start, poses, report)
        report["plot"] = str(args.plot)
    lines += _report_lines(report)
    if args.init == "file" and (report["iterations"] > _SLOW_START or not report["converged"]):
        lines.append(f"hint: more than {_SLOW_START} iterations from the file's poses; large-noise "
                     "graphs often reach a much lower cost from --init chordal")
    return _emit(args, report, lines)


def _note_fix_lines(args, pg) -> None:
    """FIX lines are read but not enforced: say so (on stderr, which --json leaves free) when
    they name vertices other than the first pose, which the gauge holds anyway."""
    free = pg.fixed[pg.fixed != 0]
    if not free.size:
        return
    ids = ", ".join(str(int(v)) for v in pg.ids[free[:5]]) + (", ..." if free.size > 5 else "")
    many = free.size > 1
    print(
        f"jaxnlls pgo: notice: {free.size} FIX {'vertices' if many else 'vertex'} not enforced "
        f"({'ids' if many else 'id'} {ids}): only the first pose (vertex {int(pg.ids[0])}) is "
        f"held, by the gauge{' prior' if args.gauge == 'prior' else ''}",
        file=sys.stderr,
        flush=True,
    )


#: Iterations after which ``jaxnlls pgo`` suggests ``--init chordal`` (well-posed shared graphs
#: converge in 2-10; the default solver restarts with diagonal damping after 25).
_SLOW_START = 25


def _report_lines(r: dict[str, Any]) -> list[str]:
    out = [
        f"initial cost {_fmt_cost(r['initial_cost'])}  final cost {_fmt_cost(r['final_cost'])}"
        + _decrease(r["initial_cost"], r["final_cost"]),
        f"iterations {r['iterations']}, "
        + ("NOT converged: " + r["result"] if not r["converged"] else
           "converged to a rank-deficient optimum (not unique: a free gauge or an unobserved "
           "direction)" if r.get("rank_deficient") else "converged"),
        f"time: solve {r['solve_seconds']:.3f} s (steady state, with the progress printing; "
        "--json times it without), compile "
        f"{r['compile_seconds']:.2f} s (first call {r['first_call_seconds']:.2f} s), build "
        f"{r['build_seconds']:.2f} s"
        + (f", {r['init']} initialization {r['init_seconds']:.2f} s" if r.get("init_seconds")
           else ""),
    ]
    if "output" in r:
        out.append(f"wrote {r['output']}")
    if "plot" in r:
        out.append(f"wrote {r['plot']}")
    return out


def _plot_pgo(path: str, pg, start, poses, report: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 7), dpi=120)
    ax.plot(start[:, 0], start[:, 1], "-", color="0.75", lw=0.6, label="initial")
    ax.plot(poses[:, 0], poses[:, 1], "-", color="tab:blue", lw=0.8, label="optimized")
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    proj = "" if pg.dim == 2 else " (3D, projected to x-y)"
    ax.set_title(
        f"{pg.source.split('/')[-1]}{proj}\ncost {report['initial_cost']:.6g} -> "
        f"{report['final_cost']:.6g} in {report['iterations']} iterations",
        fontsize=9,
    )
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# ba
# --------------------------------------------------------------------------------------------


def run_ba(args) -> int:
    from jaxnlls.io import FormatError, read_bal

    try:
        problem = read_bal(args.file)
    except FormatError as e:
        return _fail(args, "ba", str(e))
    try:
        _check_outputs(args)
        with _x64(args):
            return _run_ba(args, problem)
    except _UsageError as e:
        return _fail(args, "ba", str(e))


def _run_ba(args, problem) -> int:
    import numpy as np

    from jaxnlls.factors import BalCamera, BalPoint
    from jaxnlls.io import bal_to_factor_graph, write_bal

    behind0 = int(problem.behind_camera().sum())
    if not args.json:
        print(
            f"{args.file}: BAL problem, {problem.n_cameras} cameras, {problem.n_points} points, "
            f"{problem.n_observations} observations ({behind0} behind their camera, counted)",
            flush=True,
        )
    t0 = time.perf_counter()
    fg, init = bal_to_factor_graph(problem)
    build_s = time.perf_counter() - t0
    solver = _make_solver(args, fg.structure, verbose=not args.json)
    if not args.json:
        print(
            f"solver: {type(solver).__name__} + {type(solver.linear_solver).__name__}, "
            f"max {args.max_steps} steps, {'float32' if args.float32 else 'float64'}",
            flush=True,
        )
    sol, first, second = _timed_solve(fg, init, solver, args.max_steps, quiet_second=not args.json)
    report = _summary(sol, first, second)
    cams = np.asarray(sol.value.get(BalCamera), dtype=np.float64)
    pts = np.asarray(sol.value.get(BalPoint), dtype=np.float64)
    report.update(
        file=str(args.file),
        n_cameras=problem.n_cameras,
        n_points=problem.n_points,
        n_observations=problem.n_observations,
        build_seconds=build_s,
        behind_camera_initial=behind0,
        behind_camera_final=int(problem.behind_camera(cams, pts).sum()),
    )
    if not (np.all(np.isfinite(cams)) and np.all(np.isfinite(pts))):
        report["converged"] = False
    if args.output:
        with _writing("-o", args.output):
            write_bal(args.output, problem, cams, pts)
        report["output"] = str(args.output)
    if args.plot:
        with _writing("--plot", args.plot):
            _plot_ba(args.plot, problem, cams, pts, report)
        report["plot"] = str(args.plot)
    lines = _report_lines(report)
    lines.insert(2, f"points behind their camera: {behind0} -> {report['behind_camera_final']}")
    return _emit(args, report, lines)


def _plot_ba(path: str, problem, cams, pts, report: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from jaxnlls.io import rodrigues_rotate

    centers = -rodrigues_rotate(-cams[:, :3], cams[:, 3:6])  # c = -R^T t
    lo, hi = np.percentile(pts, [1, 99], axis=0)
    keep = np.all((pts >= lo) & (pts <= hi), axis=1)
    fig, ax = plt.subplots(figsize=(7, 7), dpi=120)
    ax.scatter(pts[keep, 0], pts[keep, 1], s=0.3, color="tab:blue", alpha=0.5, label="points")
    ax.scatter(centers[:, 0], centers[:, 1], s=12, color="tab:red", marker="^", label="cameras")
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_title(
        f"{problem.source.split('/')[-1]} (x-y, central 98% of points)\ncost "
        f"{report['initial_cost']:.6g} -> {report['final_cost']:.6g} in {report['iterations']} "
        "iterations",
        fontsize=9,
    )
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
