#!/usr/bin/env python
"""Theseus side of ``bench/batched_graphs.py`` (run with the peers' Python, as a subprocess).

Reads a batch of same-structure SE(2) pose graphs from an ``.npz`` written by
``batched_graphs.py`` (``edges (E, 2)``, ``z (B, E, 3)`` and ``init (B, N, 3)`` as
``(x, y, theta)``, ``sigma (3,)``) and solves it with Theseus's native batch dimension:

* one ``th.SE2`` optimization variable per pose with batch size ``B``;
* one ``th.Between(x_i, x_j, z_ij, th.DiagonalCostWeight(1 / sigma))`` per edge (error
  ``Log(z^-1 x_i^-1 x_j)``, tangent ``(x, y, theta)``: the same residual as jaxnlls's ``between``);
* gauge: jaxnlls (``gauge="auto"``) holds pose 0 fixed at its initial value with no prior
  residual. Theseus cannot freeze one optimization variable, so pose 0 gets a
  ``th.Difference`` prior to its initial value with a stiff ``ScaleCostWeight(--prior-weight)``.
  At the optimum that residual is ~0 (the between cost is gauge invariant), so the costs are
  comparable; the between-only cost is reported separately (``cost_between``) anyway;
* ``th.GaussNewton`` / ``th.LevenbergMarquardt`` (Theseus's LM: fixed damping 1e-3, no step
  rejection; CHOLMOD only takes a scalar damping, so no adaptive damping), linear solver
  ``th.CholmodSparseSolver`` (``--linear dense`` for ``th.CholeskyDenseSolver``),
  ``vectorize=True``, wrapped in ``th.TheseusLayer``.

Timings: forward = ``layer.forward`` under ``torch.no_grad``; forward+backward = forward with the
measurement tensors requiring grad, then ``loss.backward()`` with loss = mean over graphs and
poses of the squared translation of the solution. Each is the median of ``--repeats`` after one
warm-up call. Prints one line ``RESULT {json}``; per-graph costs, final poses and gradients go to
``--arrays-out`` (``.npz``) for the correctness cross-check.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np


def build(data, method: str, linear: str, max_iters: int, tol: float, prior_weight: float):
    import theseus as th
    import torch

    edges, sigma = data["edges"], data["sigma"]
    init = torch.tensor(data["init"])
    n_graphs, n_poses, _ = init.shape
    objective = th.Objective(dtype=torch.float64)
    poses = [th.SE2(x_y_theta=init[:, k].clone(), name=f"x{k}") for k in range(n_poses)]
    meas = [
        th.SE2(x_y_theta=torch.zeros(n_graphs, 3, dtype=torch.float64), name=f"m{e}")
        for e in range(len(edges))
    ]
    w = th.DiagonalCostWeight(torch.tensor(1.0 / sigma, dtype=torch.float64)[None], name="w")
    for e, (i, j) in enumerate(edges):
        objective.add(th.Between(poses[i], poses[j], meas[e], w, name=f"e{e}"))
    target = th.SE2(x_y_theta=init[:, 0].clone(), name="prior_target")
    objective.add(
        th.Difference(
            poses[0],
            target,
            th.ScaleCostWeight(torch.tensor(prior_weight, dtype=torch.float64)),
            name="prior",
        )
    )
    cls = th.LevenbergMarquardt if method == "lm" else th.GaussNewton
    lin = th.CholmodSparseSolver if linear == "cholmod" else th.CholeskyDenseSolver
    opt = cls(
        objective,
        lin,
        vectorize=True,
        max_iterations=max_iters,
        abs_err_tolerance=tol,
        rel_err_tolerance=tol,
    )
    layer = th.TheseusLayer(opt)
    x0 = {f"x{k}": th.SE2(x_y_theta=init[:, k].clone()).tensor for k in range(n_poses)}
    z = torch.tensor(data["z"])  # (B, E, 3) x, y, theta
    z_tensor = torch.stack(
        [z[..., 0], z[..., 1], torch.cos(z[..., 2]), torch.sin(z[..., 2])], dim=-1
    )  # (B, E, 4): Theseus SE2 layout (x, y, cos, sin)
    return objective, layer, x0, z_tensor, n_poses, len(edges)


def run(args) -> dict:
    import torch

    torch.set_default_dtype(torch.float64)
    data = dict(np.load(args.npz))
    out: dict = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    try:
        import theseus as th

        out["theseus"] = th.__version__
    except Exception as exc:  # pragma: no cover
        return {"error": f"import theseus: {exc}"}
    arrays = {}
    for method in args.methods.split(","):
        t0 = time.perf_counter()
        objective, layer, x0, z_tensor, n_poses, n_edges = build(
            data, method, args.linear, args.max_iters, args.tol, args.prior_weight
        )
        build_s = time.perf_counter() - t0

        def inputs(z, x0=x0, n_edges=n_edges):
            d = {k: v.clone() for k, v in x0.items()}
            d.update({f"m{e}": z[:, e] for e in range(n_edges)})
            return d

        def fwd(layer=layer, z_tensor=z_tensor, inputs=inputs):
            with torch.no_grad():
                return layer.forward(
                    inputs(z_tensor),
                    optimizer_kwargs={"track_err_history": True, "verbose": False},
                )

        def loss_of(sol, n_poses=n_poses):
            xs = torch.stack([sol[f"x{k}"] for k in range(n_poses)], dim=1)  # (B, N, 4)
            return torch.mean(torch.sum(xs[..., :2] ** 2, dim=-1)), xs

        def fwd_bwd(mode, layer=layer, z_tensor=z_tensor, inputs=inputs, loss_of=loss_of):
            z = z_tensor.clone().requires_grad_(True)
            sol, info = layer.forward(
                inputs(z), optimizer_kwargs={"backward_mode": mode, "verbose": False}
            )
            loss, _ = loss_of(sol)
            loss.backward()
            return loss.detach(), z.grad

        def timed(fn, *a):
            t0 = time.perf_counter()
            res = fn(*a)
            first = time.perf_counter() - t0
            ts = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                res = fn(*a)
                ts.append(time.perf_counter() - t0)
            return res, first, ts

        (sol, info), fwd_first, fwd_ts = timed(fwd)
        loss, xs = loss_of(sol)
        cost_all = objective.error_metric().detach().numpy()  # 0.5 * sum err^2 incl. prior
        prior = objective.get_cost_function("prior").weighted_error().detach()
        cost_prior = 0.5 * (prior**2).sum(dim=1).numpy()
        conv = info.converged_iter.numpy()
        hist = info.err_history
        iters = int((~torch.isinf(hist[:, 1:]) & (hist[:, 1:] > 0)).any(dim=0).sum())
        row = {
            "method": method,
            "linear": args.linear,
            "build_s": build_s,
            "iterations": iters,
            "converged": int((conv >= 0).sum()),
            "n_graphs": int(xs.shape[0]),
            "mean_final_cost": float(cost_all.mean()),
            "mean_cost_between": float((cost_all - cost_prior).mean()),
            "max_cost_prior": float(cost_prior.max()),
            "loss": float(loss),
            "fwd_first_s": fwd_first,
            "fwd_times": fwd_ts,
            "fwd_s": statistics.median(fwd_ts),
            "bwd": {},
        }
        arrays[f"{method}_cost"] = cost_all
        arrays[f"{method}_cost_between"] = cost_all - cost_prior
        arrays[f"{method}_poses"] = xs.detach().numpy()  # (B, N, 4): x, y, cos, sin
        for mode in args.backward.split(","):
            if not mode:
                continue
            try:
                (fb_loss, g), fb_first, fb_ts = timed(fwd_bwd, mode)
            except Exception as exc:
                row["bwd"][mode] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
                continue
            row["bwd"][mode] = {
                "fwd_bwd_first_s": fb_first,
                "fwd_bwd_times": fb_ts,
                "fwd_bwd_s": statistics.median(fb_ts),
                "loss": float(fb_loss),
                "grad_finite": bool(torch.isfinite(g).all()),
            }
            arrays[f"{method}_{mode}_grad"] = g.numpy()  # (B, E, 4): x, y, cos, sin
        out[method] = row
    if args.arrays_out:
        np.savez(args.arrays_out, **arrays)
    import resource

    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--npz", required=True)
    ap.add_argument("--methods", default="gn,lm")
    ap.add_argument("--linear", choices=["cholmod", "dense"], default="cholmod")
    ap.add_argument("--backward", default="implicit,unroll")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-iters", type=int, default=100)
    ap.add_argument("--tol", type=float, default=1e-10)
    ap.add_argument("--prior-weight", type=float, default=1e3)
    ap.add_argument("--arrays-out", default=None)
    args = ap.parse_args()
    print("RESULT " + json.dumps(run(args)), flush=True)


if __name__ == "__main__":
    main()
