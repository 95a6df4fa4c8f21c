"""``jaxnlls demo``: learn sensor calibration by backpropagating through 2,048 solves.

Each of ``n_problems`` robots localizes itself (x, y) from range measurements to six beacons
by nonlinear least squares. The beacons' ranges carry unknown systematic offsets and
different noise levels. The outer loop learns, with optax's Adam, one offset and one weight
per beacon so that the *solved* positions approach ground truth: the gradient of the
localization error flows through every inner solve by the implicit adjoint.
"""

from __future__ import annotations

import dataclasses
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

BEACONS = np.array([[0.0, 0.0], [10.0, 0.0], [10.0, 10.0], [0.0, 10.0], [5.0, -3.0], [-3.0, 5.0]])
TRUE_OFFSET = np.array([0.4, -0.3, 0.0, 0.25, -0.5, 0.1])
NOISE_SIGMA = np.array([0.02, 0.05, 0.3, 0.02, 0.1, 0.6])


@dataclasses.dataclass
class DemoResult:
    n_problems: int
    steps: int
    solve_per_s: float
    compile_s: float
    train_s: float
    loss_before: float
    loss_after: float
    test_before: float
    test_after: float
    offsets: np.ndarray
    weights: np.ndarray
    history: list


def make_data(n: int, seed: int):
    rng = np.random.default_rng(seed)
    pos = rng.uniform(1.0, 9.0, (n, 2))
    dist = np.linalg.norm(pos[:, None, :] - BEACONS[None], axis=-1)
    ranges = dist + TRUE_OFFSET + NOISE_SIGMA * rng.standard_normal(dist.shape)
    init = pos + rng.normal(0.0, 1.0, pos.shape)  # e.g. from odometry
    return (jnp.asarray(pos, jnp.float32), jnp.asarray(ranges, jnp.float32),
            jnp.asarray(init, jnp.float32))


def residual(xy, p):
    """Weighted range residuals of one robot: ``w_k (‖xy - b_k‖ - (z_k - o_k))``."""
    ranges, offset, log_w = p
    d = jnp.sqrt(jnp.sum(jnp.square(xy[None, :] - jnp.asarray(BEACONS, xy.dtype)), axis=-1))
    return jnp.exp(log_w) * (d - (ranges - offset))


def _progress(i: int, total: int, loss: float, stream) -> None:
    interactive = getattr(stream, "isatty", lambda: False)()
    if not interactive:  # logs and CI: one line every 10%
        if (i + 1) % max(1, total // 10) == 0 or i + 1 == total:
            stream.write(f"  training {i + 1:4d}/{total}  loss {loss:.5f}\n")
        return
    width = 30
    done = int(width * (i + 1) / total)
    bar = "#" * done + "-" * (width - done)
    stream.write(f"\r  training [{bar}] {i + 1:4d}/{total}  loss {loss:.5f}")
    if i + 1 == total:
        stream.write("\n")
    stream.flush()


def run(n_problems: int = 2048, steps: int = 150, seed: int = 0, out: str | None = "demo.png",
        stream=sys.stdout) -> DemoResult:
    import optax

    import jaxnlls

    pos, ranges, init = make_data(n_problems, seed)
    pos_t, ranges_t, init_t = make_data(n_problems, seed + 1)
    solver = jaxnlls.LevenbergMarquardt(rtol=1e-6, atol=1e-6)

    def solve_all(theta, ranges, init):
        offset, log_w = theta

        def one(z, x0):
            sol = jaxnlls.solve(residual, x0, (z, offset, log_w), solver=solver, max_steps=50,
                                throw=False)
            return sol.value, sol.result

        return jax.vmap(one)(ranges, init)

    def loss_fn(theta, ranges, init, pos):
        xs, _ = solve_all(theta, ranges, init)
        return jnp.mean(jnp.sum(jnp.square(xs - pos), axis=-1))

    theta = (jnp.zeros(6, jnp.float32), jnp.zeros(6, jnp.float32))
    opt = optax.adam(0.05)
    opt_state = opt.init(theta)

    @jax.jit
    def train_step(theta, opt_state):
        loss, grad = jax.value_and_grad(loss_fn)(theta, ranges, init, pos)
        updates, opt_state = opt.update(grad, opt_state, theta)
        return optax.apply_updates(theta, updates), opt_state, loss

    eval_loss = jax.jit(loss_fn)
    solve_jit = jax.jit(solve_all)

    stream.write(f"jaxnlls demo: {n_problems} range-only localization problems "
                 f"(6 beacons with unknown offsets and noise levels), {jax.devices()[0].platform}\n")
    t0 = time.perf_counter()
    jax.block_until_ready(solve_jit(theta, ranges, init))
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        _, results = jax.block_until_ready(solve_jit(theta, ranges, init))
        times.append(time.perf_counter() - t0)
    solve_s = float(np.median(times))
    n_ok = int(jnp.sum(results == jaxnlls.RESULTS.successful))
    stream.write(f"  batched solve: {n_problems} problems in {solve_s * 1e3:.1f} ms "
                 f"({n_problems / solve_s:,.0f} problems/s), {n_ok}/{n_problems} converged\n")

    loss_before = float(eval_loss(theta, ranges, init, pos))
    test_before = float(eval_loss(theta, ranges_t, init_t, pos_t))
    history = []
    t0 = time.perf_counter()
    for i in range(steps):
        theta, opt_state, loss = train_step(theta, opt_state)
        history.append(float(loss))
        _progress(i, steps, history[-1], stream)
    train_s = time.perf_counter() - t0
    loss_after = float(eval_loss(theta, ranges, init, pos))
    test_after = float(eval_loss(theta, ranges_t, init_t, pos_t))
    offsets = np.asarray(theta[0])
    weights = np.exp(np.asarray(theta[1]))

    rows = [
        ("problems per second (batched solve)", f"{n_problems / solve_s:,.0f}"),
        ("compile time of the batched solve", f"{compile_s:.2f} s"),
        ("training (solve + implicit backward)", f"{train_s:.2f} s for {steps} steps"),
        ("mean squared position error, train", f"{loss_before:.4f} -> {loss_after:.4f}"),
        ("mean squared position error, held out", f"{test_before:.4f} -> {test_after:.4f}"),
    ]
    w = max(len(r[0]) for r in rows)
    stream.write("\n" + "\n".join(f"  {a:<{w}}  {b}" for a, b in rows) + "\n")
    stream.write("  beacon offsets: learned " + np.array2string(offsets, precision=2) +
                 "\n                  true    " + np.array2string(TRUE_OFFSET, precision=2) + "\n")
    stream.write("  learned weights (noisy beacons should get less): " +
                 np.array2string(weights / weights.max(), precision=2) + "\n")
    result = DemoResult(n_problems, steps, n_problems / solve_s, compile_s, train_s, loss_before,
                        loss_after, test_before, test_after, offsets, weights, history)
    if out:
        plot(result, out)
        stream.write(f"  wrote {out}\n")
    return result


def plot(result: DemoResult, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    axes[0].semilogy(result.history)
    axes[0].set_xlabel("outer step")
    axes[0].set_ylabel("mean squared position error")
    axes[0].set_title("learning through 2,048 solves")
    k = np.arange(len(TRUE_OFFSET))
    axes[1].bar(k - 0.2, TRUE_OFFSET, 0.4, label="true")
    axes[1].bar(k + 0.2, result.offsets, 0.4, label="learned")
    axes[1].set_xlabel("beacon")
    axes[1].set_title("range offsets")
    axes[1].legend()
    axes[2].bar(k - 0.2, 1 / NOISE_SIGMA / (1 / NOISE_SIGMA).max(), 0.4, label="1/σ (true)")
    axes[2].bar(k + 0.2, result.weights / result.weights.max(), 0.4, label="learned weight")
    axes[2].set_xlabel("beacon")
    axes[2].set_title("measurement weights (normalized)")
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
