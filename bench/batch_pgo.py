"""4,096 small SE(2) pose graphs solved at once: ``jax.vmap(jaxnlls.solve)`` over SE2 variables.

Problem (reimplemented from the B2 anchor's ``make_pgo2d``: same distribution, same seed
semantics, float64): 10 poses on a circle of radius 5, 10 odometry edges (loop 9→0) + 2 chords
(0→5, 2→7), measurement noise σ_t = 0.05, σ_r = 0.02, unit-weight prior on pose 0, start from
dead-reckoned odometry. Residual ``Log(Z⁻¹ Xi⁻¹ Xj) / σ`` and ``Log(P⁻¹ X0)``.

Reported: problems/s = B / median solve time (jit, compile apart, ``block_until_ready``), steps
(max over the batch: a vmapped while_loop runs until the slowest member stops), mean final cost
``½‖r‖²``. Peers (Theseus GN/LM) run in the same invocation via
``<peers-python> ../shared/peers/b2_batched.py --problems pgo2d --solvers ...``.

``--chunk N`` (default 256) adds a row for GN with ``jac_sparsity`` under
``jax.lax.map(..., batch_size=N)`` instead of one ``vmap`` over the whole batch: chunks of N
problems, each vmapped and iterated to convergence while its working set stays in cache.

Rows ``*_analytic`` pass the Jacobian in closed form (``solve(jac=...)``, SE(2) ``Jr⁻¹`` and
adjoint) instead of autodiff; ``*_analytic_sparsity`` pass the pattern too, which forms ``JᵀJ``
from the colored columns as for the ``*_sparsity`` rows.

A last row solves the same problems as a ``jaxnlls.FactorGraph`` (``between`` and ``prior``
factors with analytic Jacobians, graph-default LM) under ``vmap``; ``--no-graph`` skips it.

Usage: python bench/batch_pgo.py [--batch 4096] [--repeats 5] [--peers theseus_gn,theseus_lm]
[--chunk 256] [--no-graph]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)  # bench script (not library code): float64 like peers

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import jaxnlls  # noqa: E402
from jaxnlls.lie import SE2  # noqa: E402

N_POSES = 10
SIG_T, SIG_R = 0.05, 0.02
PEERS_SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "shared" / "peers" / "b2_batched.py"


def _se2_compose(p, q):
    c, s = np.cos(p[..., 2]), np.sin(p[..., 2])
    th = p[..., 2] + q[..., 2]
    return np.stack([p[..., 0] + c * q[..., 0] - s * q[..., 1],
                     p[..., 1] + s * q[..., 0] + c * q[..., 1],
                     np.arctan2(np.sin(th), np.cos(th))], -1)


def _se2_between(p, q):
    c, s = np.cos(p[..., 2]), np.sin(p[..., 2])
    dx, dy, dth = q[..., 0] - p[..., 0], q[..., 1] - p[..., 1], q[..., 2] - p[..., 2]
    return np.stack([c * dx + s * dy, -s * dx + c * dy, np.arctan2(np.sin(dth), np.cos(dth))], -1)


def make_pgo2d(batch: int, seed: int = 1):
    """edges (E, 2), meas (B, E, 3) as (x, y, θ), init (B, N, 3), prior (B, 3)."""
    rng = np.random.default_rng(seed)
    k = np.arange(N_POSES)
    ang = 2 * np.pi * k / N_POSES
    gt = np.stack([5 * np.cos(ang), 5 * np.sin(ang), ang + np.pi / 2], -1)
    gt = np.broadcast_to(gt, (batch, N_POSES, 3)).copy()
    edges = np.array([(i, (i + 1) % N_POSES) for i in range(N_POSES)] + [(0, 5), (2, 7)])
    meas = _se2_between(gt[:, edges[:, 0]], gt[:, edges[:, 1]])
    meas = meas + rng.standard_normal(meas.shape) * np.array([SIG_T, SIG_T, SIG_R])
    init = np.zeros_like(gt)
    init[:, 0] = gt[:, 0]
    for i in range(N_POSES - 1):
        init[:, i + 1] = _se2_compose(init[:, i], meas[:, i])
    return edges, meas, init, gt[:, 0].copy()


def _xyt(a):
    a = jnp.asarray(a)
    return SE2.from_xy_theta(a[..., 0], a[..., 1], a[..., 2])


def make_residual(edges):
    ei, ej = jnp.asarray(edges[:, 0]), jnp.asarray(edges[:, 1])
    w = jnp.asarray([1 / SIG_T, 1 / SIG_T, 1 / SIG_R])

    def residual(x: SE2, data):
        z, prior = data
        between = (z.inverse() @ (x[ei].inverse() @ x[ej])).log() * w[None, :]
        return between, prior.local(x[0])

    return residual


def jacobian_pattern(edges) -> np.ndarray:
    """Rows: 12 between residuals × 3, then the prior's 3; columns: 10 poses × 3 tangents."""
    pat = np.zeros((3 * len(edges) + 3, 3 * N_POSES), bool)
    for k, (i, j) in enumerate(edges):
        pat[3 * k:3 * k + 3, 3 * i:3 * i + 3] = True
        pat[3 * k:3 * k + 3, 3 * j:3 * j + 3] = True
    pat[-3:, 0:3] = True
    return pat


def _timed(f, args, repeats: int):
    """``(last output, first call s, median of the next `repeats` calls s)``."""
    t0 = time.perf_counter()
    jax.block_until_ready(f(*args))
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - t0)
    return out, first, statistics.median(times)


def make_jacobian(edges):
    """The residual's Jacobian in closed form, for ``solve(jac=...)``: rows as
    :func:`jacobian_pattern`, columns 3 per pose (right perturbations, tangent (x, y, θ)).
    Between rows: ``w·Jr⁻¹(e)`` for pose j and ``-w·Jr⁻¹(e) Ad(T⁻¹)`` for pose i, ``T = Xi⁻¹Xj``;
    the prior rows ``Jr⁻¹(Log(P⁻¹ X0))``."""
    ei, ej = jnp.asarray(edges[:, 0]), jnp.asarray(edges[:, 1])
    w = jnp.asarray([1 / SIG_T, 1 / SIG_T, 1 / SIG_R])
    # one-hot pose selectors (static): blocks land in their columns by a small dense product
    onehot_i = np.eye(N_POSES)[edges[:, 0]]
    onehot_j = np.eye(N_POSES)[edges[:, 1]]

    def jac(x: SE2, data):
        z, prior = data
        T = x[ei].inverse() @ x[ej]
        jb = w[None, :, None] * SE2.jac_right_inv((z.inverse() @ T).log())
        ja = -jb @ T.inverse().adjoint()
        rows = (jnp.einsum("kab,kn->kanb", ja, onehot_i.astype(ja.dtype))
                + jnp.einsum("kab,kn->kanb", jb, onehot_j.astype(jb.dtype)))
        top = rows.reshape(3 * len(edges), 3 * N_POSES)
        jp = SE2.jac_right_inv(prior.local(x[0]))
        bottom = jnp.concatenate([jp, jnp.zeros((3, 3 * N_POSES - 3), jp.dtype)], axis=1)
        return jnp.concatenate([top, bottom], axis=0)

    return jac


def run_jaxnlls(method: str, batch: int, repeats: int, jac: str = "autodiff",
                chunk: int = 0) -> dict:
    """``jaxnlls.solve`` under ``vmap``; ``jac``: "autodiff" (30 JVPs), "sparsity"
    (``jac_sparsity``, 6 JVPs), "analytic" (``jac=`` the closed form above) or
    "analytic_sparsity" (both)."""
    edges, meas, init, prior = make_pgo2d(batch)
    residual = make_residual(edges)
    options = {}
    if jac == "sparsity":
        options["jac_sparsity"] = jaxnlls.JacobianSparsity(jacobian_pattern(edges))
    elif jac == "analytic":
        options["jac"] = make_jacobian(edges)
    elif jac == "analytic_sparsity":
        options["jac"] = make_jacobian(edges)
        options["jac_sparsity"] = jaxnlls.JacobianSparsity(jacobian_pattern(edges))
    solver = (jaxnlls.GaussNewton(rtol=1e-8, atol=1e-8) if method == "gn"
              else jaxnlls.LevenbergMarquardt(rtol=1e-8, atol=1e-8))

    def one(x0, z, p):
        sol = jaxnlls.solve(residual, x0, (z, p), solver=solver, max_steps=50, throw=False,
                            **options)
        r = residual(sol.value, (z, p))
        cost = 0.5 * sum(jnp.sum(ri**2) for ri in r)
        return cost, sol.stats.steps, sol.result

    if chunk:
        # lax.map over chunks of `chunk` problems, vmapped inside: each chunk's working set
        # (its Jacobians and 30 × 30 systems) stays in cache for all of its iterations
        f = jax.jit(lambda *a: jax.lax.map(lambda b: one(*b), a, batch_size=chunk))
    else:
        f = jax.jit(jax.vmap(one))
    args = (_xyt(init), _xyt(meas), _xyt(prior))
    (cost, steps, result), first, med = _timed(f, args, repeats)
    ok = float(jnp.mean(result == jaxnlls.RESULTS.successful))
    name = (f"jaxnlls_{method}" + ("" if jac == "autodiff" else f"_{jac}")
            + (f"_lax.map(batch_size={chunk})" if chunk else ""))
    return dict(solver=name, iters=int(jnp.max(steps)), cost=float(jnp.mean(cost)),
                compile_s=max(first - med, 0.0), seconds=med, problems_per_s=batch / med,
                success=ok)


def run_jaxnlls_graph(batch: int, repeats: int) -> dict:
    """The same problems as a :class:`jaxnlls.FactorGraph` (``between`` with analytic SE(2)
    Jacobians, ``prior`` on pose 0), solved by ``vmap(graph.solve)`` with the graph defaults
    (GTSAM-style LM, dense Cholesky for 30 unknowns); the batch enters as factor data."""
    from jaxnlls.factors import between, prior
    from jaxnlls.graph import FactorGraph, VarValues
    from jaxnlls.io import PoseSE2

    edges, meas, init, prior0 = make_pgo2d(batch)
    w = jnp.broadcast_to(jnp.asarray([1 / SIG_T, 1 / SIG_T, 1 / SIG_R]), (len(edges), 3))
    graph = FactorGraph.build(
        [between(PoseSE2(edges[:, 0]), PoseSE2(edges[:, 1]), _xyt(meas[0]), w),
         prior(PoseSE2(0), _xyt(prior0[0]), jnp.eye(3))],
        gauge=None,  # the problem's own prior fixes the gauge
    )
    ((b_args, b_loss), (p_args, p_loss)) = graph.data
    ids = PoseSE2(np.arange(N_POSES))

    def one(x0, z, p):
        data = (((b_args[0], b_args[1], z, b_args[3]), b_loss),
                ((p_args[0], SE2(p.params[None]), p_args[2]), p_loss))
        sol = graph.solve(VarValues.make({ids: x0}), data, max_steps=50, throw=False)
        return sol.stats.final_cost, sol.stats.steps, sol.result

    f = jax.jit(jax.vmap(one))
    args = (_xyt(init), _xyt(meas), _xyt(prior0))
    (cost, steps, result), first, med = _timed(f, args, repeats)
    return dict(solver="jaxnlls_FactorGraph_lm", iters=int(jnp.max(steps)),
                cost=float(jnp.mean(cost)), compile_s=max(first - med, 0.0), seconds=med,
                problems_per_s=batch / med,
                success=float(jnp.mean(result == jaxnlls.RESULTS.successful)))


def run_peers(python: str, solvers: str, batch: int, repeats: int) -> list[dict]:
    if not (os.path.exists(python) and PEERS_SCRIPT.exists()):
        print("peers unavailable (no interpreter or script)", file=sys.stderr)
        return []
    out = pathlib.Path(__file__).resolve().parent / ".peer_b2_pgo2d.json"
    cmd = [python, str(PEERS_SCRIPT), "--problems", "pgo2d", "--solvers", solvers,
           "--batch", str(batch), "--repeats", str(repeats), "--json-out", str(out)]
    print("running peers:", " ".join(cmd), file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0 or not out.exists():
        print(proc.stderr[-2000:], file=sys.stderr)
        return []
    rows = json.loads(out.read_text())
    out.unlink()
    res = []
    for r in rows:
        if "times" not in r:
            res.append(dict(solver=r.get("solver"), error=r.get("error")))
            continue
        med = statistics.median(r["times"])
        res.append(dict(solver=r["solver"], iters=r.get("iters"), cost=r.get("cost"),
                        compile_s=r.get("compile_s"), seconds=med, problems_per_s=batch / med))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--peers", default="theseus_gn,theseus_lm")
    ap.add_argument("--peers-python", default=os.environ.get("JAXNLLS_PEERS_PYTHON",
                                                            "/work/peers-venv/bin/python"))
    ap.add_argument("--chunk", type=int, default=256,
                    help="also time GN with jac_sparsity under lax.map(batch_size=CHUNK) "
                    "(0: skip)")
    ap.add_argument("--no-graph", action="store_true",
                    help="skip the FactorGraph row (vmap(graph.solve), analytic Jacobians)")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()
    rows = [run_jaxnlls(m, args.batch, args.repeats, jac)
            for jac in ("autodiff", "sparsity", "analytic", "analytic_sparsity")
            for m in ("gn", "lm")]
    if args.chunk:
        rows.append(run_jaxnlls("gn", args.batch, args.repeats, "sparsity", args.chunk))
    if not args.no_graph:
        rows.append(run_jaxnlls_graph(args.batch, args.repeats))
    if args.peers:
        rows += run_peers(args.peers_python, args.peers, args.batch, args.repeats)
    print(f"\npgo2d: batch = {args.batch} SE(2) pose graphs (10 poses, 12 edges + prior), float64, "
          f"median of {args.repeats}; jax {jax.__version__} ({jax.devices()[0].platform}), "
          f"{os.cpu_count()} CPU cores")
    print("| solver | steps | mean cost | compile s | solve s | problems/s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['solver']} | FAILED: {r['error']} | | | | |")
            continue
        comp = f"{r['compile_s']:.2f}" if r.get("compile_s") is not None else "-"
        print(f"| {r['solver']} | {r['iters']} | {r['cost']:.6g} | {comp} | {r['seconds']:.3f} | "
              f"{r['problems_per_s']:.0f} |")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
