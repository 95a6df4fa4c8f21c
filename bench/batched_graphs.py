#!/usr/bin/env python
"""Batched pose graphs: jaxnlls ``vmap(FactorGraph.solve)`` vs Theseus's batched solve (issue 4).

Usage (from the repository root)::

    .venv/bin/python bench/batched_graphs.py                       # 256 graphs x 128 poses
    .venv/bin/python bench/batched_graphs.py --n-graphs 16 --n-poses 32 --repeats 3
    .venv/bin/python bench/batched_graphs.py --theseus-methods gn,lm \\
        --theseus-backward implicit,unroll
    .venv/bin/python bench/batched_graphs.py --no-theseus --json-out /tmp/batched_out.json

Problem: ``bench/pgo.py``'s ``_generated_batch`` (seed 0): ``--n-graphs`` random SE(2) pose
graphs of ``--n-poses`` poses sharing one structure (odometry chain + ``n_poses // 2`` random loop
closures, sigma = (0.05, 0.05, 0.02)), started from dead reckoning; the same defaults as
``pgo.py --batched-only`` (``n_loops = n_poses // 2``, ``--max-steps 100``).

jaxnlls (this venv, float64; ``jaxnlls_side``, also what ``bench/pgo.py --batched-only`` runs):
one ``jit(vmap(solve))`` of
``FactorGraph.solve`` (default LM, pose 0 held fixed by ``gauge="auto"``), and
``jit(value_and_grad)`` of loss = mean squared translation of the solutions with respect to the
measurements (implicit adjoint; ``--hessian``: the exact Hessian, jaxnlls's default, and the
Gauss-Newton ``JᵀJ`` that Theseus's implicit backward solves with; the Theseus fwd+bwd ratio
column lists one ratio per jaxnlls row, in that order). Compile time = first call minus the
steady-state median of ``--repeats`` calls.

Theseus (``/work/peers-venv/bin/python bench/peer_theseus_batched.py`` in a subprocess, on the
same batch saved to ``/tmp/batched_*.npz``): ``th.SE2`` variables with batch dimension
``n_graphs``, ``th.Between`` + ``DiagonalCostWeight(1/sigma)``, a stiff ``th.Difference`` prior
holding pose 0 at its initial value (jaxnlls's gauge, see that script), ``GaussNewton`` / LM,
``CholmodSparseSolver``, ``vectorize=True``, ``TheseusLayer``; backward modes implicit/unroll.
Theseus has no compile step (``compile s`` is ``-``; its first call minus median is shown in the
JSON as ``fwd_first_s``).

Cost convention (both): mean over graphs of 0.5 * sum ||whitened residual||^2. jaxnlls's
``final_cost`` has no prior term (the fixed pose contributes a zero residual); Theseus's
``error_metric`` includes the prior, reported separately (``max_cost_prior``, ~0). The check also
recomputes every graph's between cost from both solvers' final poses with the same numpy
residual (``PoseGraph.residuals``). Peers are optional: without the peers' venv the Theseus row
reads FAILED. The CPU may be shared: compare the ratio column, measured in one invocation.
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

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import run_header, timed_calls, worker_result  # noqa: E402
from pgo import _generated_batch  # noqa: E402

PEERS_PY = pathlib.Path("/work/peers-venv/bin/python")
PEER = HERE / "peer_theseus_batched.py"


def jaxnlls_side(edges, z, init, sqrt_info, repeats: int, max_steps: int,
                 hessians: tuple[str, ...] = ("exact",)) -> dict:
    """The jaxnlls side (``bench/pgo.py --batched-only`` calls it too): one ``jit(vmap(solve))``
    and one ``jit(value_and_grad)`` per implicit-adjoint Hessian in ``hessians`` (the first fills
    the summary's ``fwd_bwd_*``; all are under ``by_hessian``); returns ``(summary, per-graph
    arrays)`` (final costs, poses and gradients, for the check against Theseus)."""
    import jax.numpy as jnp

    import jaxnlls
    from jaxnlls.io import PoseGraph, pose_graph_to_factor_graph
    from jaxnlls.lie import SE2
    from pgo import _default_linear_solver

    n_graphs, n_poses = init.shape[:2]
    info = np.broadcast_to(sqrt_info.T @ sqrt_info, (len(edges), 3, 3)).copy()
    template = PoseGraph(
        dim=2, ids=np.arange(n_poses), poses=init[0], edges=edges, measurements=z[0],
        information=info,
    )  # fmt: skip
    t0 = time.perf_counter()
    fg, init0, pose_t = pose_graph_to_factor_graph(template)
    build_s = time.perf_counter() - t0
    ((args0, loss0),) = fg.data
    sqrt_l = args0[3]

    def to_params(p):
        return SE2.from_xy_theta(p[..., 0], p[..., 1], p[..., 2]).params

    z_params, x0_params = to_params(jnp.asarray(z)), to_params(jnp.asarray(init))

    def solve_one(zp, xp, hessian="exact"):
        data = (((None, None, SE2(zp), sqrt_l), loss0),)
        sol = fg.solve(init0.replace(pose_t, SE2(xp)), data, max_steps=max_steps, throw=False,
                       adjoint=jaxnlls.ImplicitAdjoint(hessian=hessian))
        return sol.value.get(pose_t).params, sol.result, sol.stats.steps, sol.stats.final_cost

    fwd = jax.jit(jax.vmap(solve_one))

    def fwd_bwd_of(hessian):
        def loss(zp, xp):
            params = jax.vmap(lambda a, b: solve_one(a, b, hessian))(zp, xp)[0]
            return jnp.mean(jnp.sum(params[..., 2:] ** 2, axis=-1))

        return jax.jit(jax.value_and_grad(loss))

    def timed(fn, *a):
        return timed_calls(fn, *a, repeats=repeats)

    (xs, res, steps, costs), fwd_first, fwd_ts = timed(fwd, z_params, x0_params)
    fwd_s = statistics.median(fwd_ts)
    by_hessian, grads = {}, {}
    for h in hessians:
        (_, grads[h]), h_first, h_ts = timed(fwd_bwd_of(h), z_params, x0_params)
        h_s = statistics.median(h_ts)
        by_hessian[h] = {
            "fwd_bwd_compile_s": max(h_first - h_s, 0.0), "fwd_bwd_times": h_ts, "fwd_bwd_s": h_s,
            "bwd_per_graph_ms": 1e3 * max(h_s - fwd_s, 0.0) / n_graphs,
        }  # fmt: skip
    g = grads[hessians[0]]
    fb_first = by_hessian[hessians[0]]["fwd_bwd_compile_s"]
    fb_ts, fb_s = by_hessian[hessians[0]]["fwd_bwd_times"], by_hessian[hessians[0]]["fwd_bwd_s"]
    ok = np.asarray(res) == jaxnlls.RESULTS.successful
    summary = {
        "n_graphs": n_graphs,
        "n_poses": n_poses,
        "n_edges": int(len(edges)),
        "build_s": build_s,
        "linear_solver": type(_default_linear_solver(fg)).__name__,
        "converged": int(ok.sum()),
        "max_iterations": int(np.max(steps)),
        "mean_iterations": float(np.mean(steps)),
        "mean_final_cost": float(np.mean(costs)),
        "fwd_compile_s": max(fwd_first - fwd_s, 0.0),
        "fwd_times": fwd_ts,
        "fwd_s": fwd_s,
        "fwd_per_graph_ms": 1e3 * fwd_s / n_graphs,
        "hessian": hessians[0],
        "fwd_bwd_compile_s": fb_first,
        "fwd_bwd_times": fb_ts,
        "fwd_bwd_s": fb_s,
        "bwd_per_graph_ms": 1e3 * max(fb_s - fwd_s, 0.0) / n_graphs,
        "grad_finite": bool(all(np.all(np.isfinite(np.asarray(v))) for v in grads.values())),
        "by_hessian": by_hessian,
    }
    arrays = {
        "poses": np.asarray(xs),  # (B, N, 4): cos, sin, x, y
        "cost": np.asarray(costs),
        "steps": np.asarray(steps),
        "grad": np.asarray(g),  # (B, E, 4): cos, sin, x, y
        **{f"grad_{h}": np.asarray(v) for h, v in grads.items()},
    }
    return summary, arrays


def numpy_costs(edges, z, sqrt_info, poses_xyt) -> np.ndarray:
    """0.5 * sum ||L Log(z^-1 x_i^-1 x_j)||^2 per graph (``PoseGraph.residuals``'s formula)."""
    from jaxnlls.io._se_numpy import se2_compose, se2_inverse, se2_log

    xi, xj = poses_xyt[:, edges[:, 0]], poses_xyt[:, edges[:, 1]]
    err = se2_log(se2_compose(se2_inverse(z), se2_compose(se2_inverse(xi), xj)))
    r = err @ sqrt_info.T
    return 0.5 * np.sum(r * r, axis=(1, 2))


def run_theseus(npz: str, arrays_out: str, args) -> dict:
    if not PEERS_PY.exists():
        return {"error": f"{PEERS_PY} missing"}
    cmd = [
        str(PEERS_PY), str(PEER), "--npz", npz, "--arrays-out", arrays_out,
        "--methods", args.theseus_methods, "--backward", args.theseus_backward,
        "--linear", args.theseus_linear, "--repeats", str(args.repeats),
        "--max-iters", str(args.max_steps),
    ]  # fmt: skip
    return worker_result(cmd, args.peer_timeout)


def _f(x, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def table(rows: list[dict]) -> str:
    cols = [
        "solver", "iterations", "mean final cost", "fwd s", "fwd per graph ms", "fwd+bwd s",
        "bwd per graph ms", "compile s (fwd / fwd+bwd)", "Theseus/jaxnlls fwd",
        "Theseus/jaxnlls fwd+bwd",
    ]  # fmt: skip
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['solver']} | FAILED: {r['error']} |" + " |" * (len(cols) - 2))
            continue
        comp = r.get("compile")
        cells = [
            r["solver"],
            str(r["iterations"]),
            f"{r['cost']:.10g}",
            _f(r["fwd_s"], ".3f"),
            _f(r["fwd_s"] and 1e3 * r["fwd_s"] / r["n"], ".2f"),
            _f(r.get("fb_s"), ".3f"),
            _f(r.get("fb_s") and 1e3 * max(r["fb_s"] - r["fwd_s"], 0.0) / r["n"], ".2f"),
            "-" if comp is None else f"{comp[0]:.1f} / {comp[1]:.1f}",
            r.get("ratio_fwd", "-"),
            r.get("ratio_fb", "-"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n-graphs", type=int, default=256)
    ap.add_argument("--n-poses", type=int, default=128)
    ap.add_argument("--n-loops", type=int, default=None, help="default: n_poses // 2 (pgo.py)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-steps", type=int, default=100, help="pgo.py's default")
    ap.add_argument("--no-theseus", action="store_true")
    ap.add_argument("--theseus-methods", default="gn", help="gn,lm")
    ap.add_argument("--theseus-backward", default="implicit", help="implicit,unroll")
    ap.add_argument("--theseus-linear", default="cholmod", choices=["cholmod", "dense"])
    ap.add_argument("--hessian", default="exact,gauss_newton",
                    help="jaxnlls implicit-adjoint Hessians to time (Theseus's implicit "
                         "backward solves with the Gauss-Newton JᵀJ)")
    ap.add_argument("--peer-timeout", type=float, default=3600.0)
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()
    n_loops = args.n_poses // 2 if args.n_loops is None else args.n_loops
    tag = f"/tmp/batched_{args.n_graphs}x{args.n_poses}_{os.getpid()}"

    out = {
        **run_header(),
        "n_graphs": args.n_graphs,
        "n_poses": args.n_poses,
        "n_loops": n_loops,
        "max_steps": args.max_steps,
        "repeats": args.repeats,
    }
    edges, z, init, sqrt_info = _generated_batch(args.n_graphs, args.n_poses, n_loops)
    out["n_edges"] = int(len(edges))
    npz = tag + ".npz"
    np.savez(npz, edges=edges, z=z, init=init, sigma=1.0 / np.diag(sqrt_info))

    print(f"jaxnlls: {args.n_graphs} x {args.n_poses} ...", file=sys.stderr, flush=True)
    hessians = tuple(args.hessian.split(","))
    j, ja = jaxnlls_side(edges, z, init, sqrt_info, args.repeats, args.max_steps, hessians)
    out["jaxnlls"] = j

    rows = [
        {
            "solver": f"jaxnlls LM ({j['linear_solver']}, implicit adjoint, {h} Hessian)",
            "iterations": f"{j['max_iterations']} (mean {j['mean_iterations']:.1f})",
            "cost": j["mean_final_cost"],
            "fwd_s": j["fwd_s"],
            "fb_s": jh["fwd_bwd_s"],
            "compile": (j["fwd_compile_s"], jh["fwd_bwd_compile_s"]),
            "n": args.n_graphs,
        }
        for h, jh in j["by_hessian"].items()
    ]
    check: dict = {}
    ja_np = numpy_costs(
        edges, z, sqrt_info,
        np.stack([ja["poses"][..., 2], ja["poses"][..., 3],
                  np.arctan2(ja["poses"][..., 1], ja["poses"][..., 0])], -1),
    )  # fmt: skip
    check["jaxnlls_final_cost_vs_numpy_max_rel"] = float(np.max(np.abs(ja["cost"] - ja_np) / ja_np))

    if not args.no_theseus:
        print("theseus: subprocess ...", file=sys.stderr, flush=True)
        arrays_out = tag + "_theseus.npz"
        t = run_theseus(npz, arrays_out, args)
        out["theseus"] = t
        if "error" in t:
            rows.append({"solver": "Theseus", "error": t["error"]})
        else:
            ta = dict(np.load(arrays_out))
            for m in args.theseus_methods.split(","):
                tm = t[m]
                name = {"gn": "GaussNewton", "lm": "LevenbergMarquardt"}[m]
                # Theseus poses (x, y, cos, sin) -> (x, y, theta); same numpy cost as jaxnlls
                tp = ta[f"{m}_poses"]
                t_np = numpy_costs(
                    edges, z, sqrt_info,
                    np.stack([tp[..., 0], tp[..., 1], np.arctan2(tp[..., 3], tp[..., 2])], -1),
                )
                c = {
                    "theseus_objective_vs_jaxnlls_final_cost_max_rel": float(
                        np.max(np.abs(ta[f"{m}_cost"] - ja["cost"]) / ja["cost"])
                    ),
                    "numpy_cost_theseus_vs_jaxnlls_max_rel": float(
                        np.max(np.abs(t_np - ja_np) / ja_np)
                    ),
                    "theseus_minus_jaxnlls_numpy_cost_min_max": [
                        float(np.min(t_np - ja_np)), float(np.max(t_np - ja_np))
                    ],
                    "max_cost_prior": tm["max_cost_prior"],
                    "pose_translation_max_abs_diff": float(
                        np.max(np.abs(tp[..., :2] - ja["poses"][..., 2:]))
                    ),
                    "converged": f"{tm['converged']}/{tm['n_graphs']}",
                }
                for mode, b in tm["bwd"].items():
                    if "error" in b:
                        continue
                    # gradient w.r.t. the measured translations (x, y): the same coordinates
                    # in both layouts (the cos/sin parts depend on how each library reads them)
                    for h in hessians:
                        gt, gj = ta[f"{m}_{mode}_grad"][..., :2], ja[f"grad_{h}"][..., 2:]
                        c[f"grad_xy_{mode}_vs_{h}_rel_l2"] = float(
                            np.linalg.norm(gt - gj) / np.linalg.norm(gj)
                        )
                check[f"theseus_{m}"] = c
                base = {
                    "solver": f"Theseus {name} ({tm['linear']}), no_grad fwd",
                    "iterations": str(tm["iterations"]),
                    "cost": tm["mean_final_cost"],
                    "fwd_s": tm["fwd_s"],
                    "compile": None,
                    "n": args.n_graphs,
                    "ratio_fwd": f"{tm['fwd_s'] / j['fwd_s']:.1f}",
                }
                if not tm["bwd"]:
                    rows.append(base)
                for mode, b in tm["bwd"].items():
                    r = dict(base, solver=f"Theseus {name} ({tm['linear']}), {mode} backward")
                    if "error" in b:
                        r["fb_s"] = None
                        r["ratio_fb"] = "FAILED: " + b["error"][:80]
                    else:
                        r["fb_s"] = b["fwd_bwd_s"]
                        r["ratio_fb"] = " / ".join(
                            f"{b['fwd_bwd_s'] / jh['fwd_bwd_s']:.1f}"
                            for jh in j["by_hessian"].values()
                        )
                    rows.append(r)
    out["check"] = check
    out["load_avg_end"] = os.getloadavg()

    print(
        f"\n{args.n_graphs} graphs x {args.n_poses} poses ({len(edges)} edges: "
        f"{args.n_poses - 1} odometry + {n_loops} loop closures), float64, CPU "
        f"({os.cpu_count()} cores), median of {args.repeats} after a warm-up; "
        f"jaxnlls converged {j['converged']}/{j['n_graphs']}, grad finite {j['grad_finite']}; "
        f"load avg {out['load_avg_start'][0]:.1f} -> {out['load_avg_end'][0]:.1f}\n"
    )
    print(table(rows))
    print("\ncorrectness check (same batch):")
    for k, v in check.items():
        print(f"  {k}: {v}")
    if args.json_out:
        pathlib.Path(args.json_out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
