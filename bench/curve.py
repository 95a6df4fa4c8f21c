"""B2/B3 on the curve-fit batch: 4,096 fits of y = exp(a x + b) + noise (64 points each).

B2: problems per second in steady state (compile apart) for jaxnlls GN / LM / dogleg, and the
peers (jaxopt, optimistix) in the same run through ``../shared/peers/b2_batched.py``.
B3: forward and backward time per adjoint for the gradient of
``L = Σ ‖θ*(y) - θ_true‖²`` w.r.t. the data y, the gradient's error against central finite
differences, and the compiled working memory (XLA temp buffers) of unroll vs implicit as
``max_steps`` grows; peers through ``../shared/peers/b3_diff.py``.

    python bench/curve.py [--batch 4096] [--repeats 5] [--peers-python PATH] [--skip-peers]
"""

from __future__ import annotations

import argparse
import datetime

import jax

jax.config.update("jax_enable_x64", True)  # the peers' figures are float64

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _common import machine, peers_python, run_peer_script, time_fn  # noqa: E402

import jaxnlls  # noqa: E402

N_POINTS = 64


def make_curve(B: int, seed: int = 0):
    """The generator of ../shared/peers/b2_batched.py (same seed, same numbers)."""
    rng = np.random.default_rng(seed)
    a = rng.uniform(-1.0, 1.0, B)
    b = rng.uniform(-0.5, 0.5, B)
    x = np.sort(rng.uniform(0.0, 1.0, (B, N_POINTS)), axis=1)
    y = np.exp(a[:, None] * x + b[:, None]) + 0.05 * rng.standard_normal((B, N_POINTS))
    return jnp.asarray(x), jnp.asarray(y), jnp.asarray(np.stack([a, b], 1))


def residual(theta, data):
    x, y = data
    return jnp.exp(theta[0] * x + theta[1]) - y


def b2(B, repeats):
    x, y, _ = make_curve(B)
    rows = []
    for name, solver in [("jaxnlls_gn", jaxnlls.GaussNewton()),
                         ("jaxnlls_lm", jaxnlls.LevenbergMarquardt()),
                         ("jaxnlls_dogleg", jaxnlls.Dogleg())]:
        def run(x, y, solver=solver):
            def one(xi, yi):
                sol = jaxnlls.solve(residual, jnp.zeros(2), (xi, yi), solver=solver,
                                    max_steps=50, throw=False)
                return sol.stats.final_cost, sol.stats.steps, sol.result
            return jax.vmap(one)(x, y)

        f = jax.jit(run)
        first, med = time_fn(f, x, y, repeats=repeats)
        cost, steps, result = f(x, y)
        rows.append(dict(solver=name, iters=int(steps.max()), mean_iters=float(steps.mean()),
                         cost=float(cost.mean()), compile_s=first - med, solve_median_s=med,
                         problems_per_s=B / med,
                         converged=int(jnp.sum(result == jaxnlls.RESULTS.successful))))
    return rows


def b3(B, repeats, fd_problems=8):
    x, y, theta_true = make_curve(B)
    solver = jaxnlls.GaussNewton(rtol=1e-12, atol=1e-12)
    variants = [("implicit (exact)", jaxnlls.ImplicitAdjoint()),
                ("implicit (gauss_newton)", jaxnlls.ImplicitAdjoint(hessian="gauss_newton")),
                ("one-step", jaxnlls.OneStepAdjoint()),
                ("truncated (5)", jaxnlls.TruncatedAdjoint(5)),
                ("direct loss", jaxnlls.DirectLossAdjoint(eps=1e-4)),
                ("unroll (checkpointed)", jaxnlls.UnrollAdjoint())]
    rows = []
    rng = np.random.default_rng(1)
    direction = np.zeros((B, N_POINTS))
    direction[:fd_problems] = rng.standard_normal((fd_problems, N_POINTS))
    direction = jnp.asarray(direction)
    for name, adjoint in variants:
        def loss(y, adjoint=adjoint, max_steps=30):
            def one(xi, yi):
                return jaxnlls.solve(residual, jnp.zeros(2), (xi, yi), solver=solver,
                                     adjoint=adjoint, max_steps=max_steps, throw=False).value
            th = jax.vmap(one)(x, y)
            return jnp.sum((th - theta_true) ** 2)

        fwd = jax.jit(loss)
        both = jax.jit(jax.value_and_grad(loss))
        _, t_fwd = time_fn(fwd, y, repeats=repeats)
        first, t_both = time_fn(both, y, repeats=repeats)
        g = both(y)[1]
        eps = 1e-4
        fd = (float(fwd(y + eps * direction)) - float(fwd(y - eps * direction))) / (2 * eps)
        ad = float(jnp.sum(g * direction))
        mem = jax.jit(jax.grad(loss)).lower(y).compile().memory_analysis()
        rows.append(dict(variant=name, compile_s=first - t_both, fwd_s=t_fwd, fwd_bwd_s=t_both,
                         bwd_s=max(t_both - t_fwd, 0.0), fd_rel_err=abs(ad - fd) / abs(fd),
                         temp_mb=(mem.temp_size_in_bytes / 2**20) if mem else float("nan")))
    # working memory vs max_steps: implicit stays flat, unroll grows
    mem_rows = []
    for steps in (10, 30, 100):
        row = {"max_steps": steps}
        for name, adjoint in [("implicit", jaxnlls.ImplicitAdjoint()),
                              ("unroll", jaxnlls.UnrollAdjoint())]:
            def loss(y, adjoint=adjoint, steps=steps):
                def one(xi, yi):
                    return jaxnlls.solve(residual, jnp.zeros(2), (xi, yi), solver=solver,
                                         adjoint=adjoint, max_steps=steps, throw=False).value
                return jnp.sum((jax.vmap(one)(x, y) - theta_true) ** 2)
            mem = jax.jit(jax.grad(loss)).lower(y).compile().memory_analysis()
            row[name] = mem.temp_size_in_bytes / 2**20 if mem else float("nan")
        mem_rows.append(row)
    return rows, mem_rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--peers-python", default=None)
    ap.add_argument("--skip-peers", action="store_true")
    ap.add_argument("--skip-b3", action="store_true")
    args = ap.parse_args()
    py = None if args.skip_peers else peers_python(args.peers_python)
    print(f"# bench/curve.py — {datetime.date.today()} — {machine()}")
    print(f"# batch {args.batch}, float64, median of {args.repeats} after a warm-up\n")

    ours = b2(args.batch, args.repeats)
    peers = run_peer_script("b2_batched.py", ["--problems", "curve", "--solvers",
                            "jaxopt_gn,jaxopt_lm,optx_gn,optx_lm", "--batch", str(args.batch),
                            "--repeats", str(args.repeats)], py)
    ref = {r["solver"]: r for r in peers if "error" not in r}
    print("## B2 curve fits: throughput")
    print("| solver | iters (max / mean) | mean cost | compile s | solve s (median) | problems/s | vs jaxopt_gn |")
    print("|---|---|---|---|---|---|---|")
    jgn = ref.get("jaxopt_gn", {}).get("problems_per_s")
    for r in ours:
        ratio = f"{r['problems_per_s'] / jgn:.2f}x" if jgn else "-"
        print(f"| {r['solver']} | {r['iters']} / {r['mean_iters']:.1f} | {r['cost']:.6f} | "
              f"{r['compile_s']:.2f} | {r['solve_median_s']:.4f} | {r['problems_per_s']:,.0f} | {ratio} |")
    for name, r in ref.items():
        ratio = f"{r['problems_per_s'] / jgn:.2f}x" if jgn else "-"
        comp = f"{r['compile_s']:.2f}" if r.get("compile_s") is not None else "-"
        print(f"| {name} (peer) | {r['iters']} | {r['cost']:.6f} | {comp} | "
              f"{r['solve_median_s']:.4f} | {r['problems_per_s']:,.0f} | {ratio} |")
    if args.skip_b3:
        return
    rows, mem_rows = b3(args.batch, args.repeats)
    peers3 = run_peer_script("b3_diff.py", ["--variants", "jaxopt_implicit,optx_implicit",
                             "--batch", str(args.batch), "--repeats", str(args.repeats)], py)
    print("\n## B3 gradient of Σ‖θ*(y) − θ_true‖² w.r.t. y (GN inner solve, tol 1e-12, ≤ 30 steps)")
    print("| variant | compile s | fwd s | fwd+bwd s | bwd s | bwd/fwd | FD rel err | XLA temp MB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| jaxnlls {r['variant']} | {r['compile_s']:.2f} | {r['fwd_s']:.4f} | "
              f"{r['fwd_bwd_s']:.4f} | {r['bwd_s']:.4f} | {r['bwd_s'] / r['fwd_s']:.2f} | "
              f"{r['fd_rel_err']:.1e} | {r['temp_mb']:.0f} |")
    for r in peers3:
        if "error" in r:
            print(f"| {r.get('variant')} (peer) | FAILED: {r['error']} |")
            continue
        keys = {k: r.get(k) for k in ("compile_s", "fwd_s", "both_s", "bwd_s", "fd_rel_err")}
        print(f"| {r.get('variant')} (peer) | " + " | ".join(
            "-" if v is None else (f"{v:.1e}" if k == "fd_rel_err" else f"{v:.4f}")
            for k, v in keys.items()) + " | | |")
    print("\n### Working memory (XLA temp buffers of jit(grad(L))) vs max_steps")
    print("| max_steps | implicit MB | unroll MB |")
    print("|---|---|---|")
    for r in mem_rows:
        print(f"| {r['max_steps']} | {r['implicit']:.1f} | {r['unroll']:.1f} |")


if __name__ == "__main__":
    main()
