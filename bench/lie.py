"""Throughput of Lie-group operations on 10^6 batched elements: jaxnlls vs jaxlie vs PyPose.

Ops on SO(3) and SE(3): exp, log, compose, act (one point per element), the right Jacobian of
exp (``jac_right``; PyPose ``Jr``) and the Jacobian of log (``log_jac`` = J_r⁻¹(Log x); jaxlie
``jlog``). JAX ops are ``jit``-compiled (compile time reported apart), timed as the median of
``--repeats`` runs after ``WARMUP`` warm-up calls with ``block_until_ready``. PyPose runs on CPU torch under
``no_grad``. Peers run in a subprocess with ``--peers-python`` (default
``/work/peers-venv/bin/python``), import-guarded: a missing peer is reported, not fatal.

Usage: python bench/lie.py [--n 1000000] [--repeats 7] [--dtype float32] [--json-out f.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

OPS = ["exp", "log", "compose", "act", "jac_right", "log_jac"]


def _data(n: int, group: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    dim = 3 if group == "SO3" else 6
    tangent = rng.normal(size=(n, dim)) * 0.8
    tangent2 = rng.normal(size=(n, dim)) * 0.8
    points = rng.normal(size=(n, 3))
    return tangent, tangent2, points


#: Calls before timing starts. At 10^6 elements the first few calls of every library (jax and
#: torch alike) page-fault fresh 12-16 MB output buffers (kernel time of 5-7 ms per call, seen
#: with ``os.times()``) until the allocator starts reusing them; one warm-up call was not enough.
WARMUP = 5


def _median_time(fn, repeats, sync):
    t0 = time.perf_counter()
    sync(fn())
    first = time.perf_counter() - t0
    for _ in range(WARMUP - 1):
        sync(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sync(fn())
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return max(first - med, 0.0), med


def bench_jax(lib: str, n: int, repeats: int, dtype: str) -> list[dict]:
    import jax

    if dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    if lib == "jaxnlls":
        from jaxnlls.lie import SE3, SO3

        groups = {"SO3": SO3, "SE3": SE3}

        def ops(G):
            return {
                "exp": lambda d, d2, p: G.exp(d).params,
                "log": lambda x, y, p: G(x).log(),
                "compose": lambda x, y, p: (G(x) @ G(y)).params,
                "act": lambda x, y, p: G(x) @ p,
                "jac_right": lambda d, d2, p: G.jac_right(d),
                "log_jac": lambda x, y, p: G(x).log_jac(),
            }

        def params_of(G, d):
            return G.exp(d).params
    else:
        import jaxlie

        groups = {"SO3": jaxlie.SO3, "SE3": jaxlie.SE3}

        def ops(G):
            return {
                "exp": lambda d, d2, p: G.exp(d).parameters(),
                "log": lambda x, y, p: G(x).log(),
                "compose": lambda x, y, p: (G(x) @ G(y)).parameters(),
                "act": lambda x, y, p: G(x) @ p,
                "jac_right": None,  # not provided by jaxlie
                "log_jac": lambda x, y, p: G(x).jlog(),
            }

        def params_of(G, d):
            return G.exp(d).parameters()

    rows = []
    for gname, G in groups.items():
        d, d2, pts = (jnp.asarray(a, dtype) for a in _data(n, gname))
        x, y = jax.jit(lambda a, G=G: params_of(G, a))(d), jax.jit(lambda a, G=G: params_of(G, a))(d2)
        for op, fn in ops(G).items():
            if fn is None:
                rows.append(dict(lib=lib, group=gname, op=op, seconds=None))
                continue
            args = (d, d2, pts) if op in ("exp", "jac_right") else (x, y, pts)
            f = jax.jit(fn)
            compile_s, med = _median_time(lambda f=f, a=args: f(*a), repeats, jax.block_until_ready)
            rows.append(dict(lib=lib, group=gname, op=op, seconds=med, compile_s=compile_s))
    return rows


def bench_pypose(n: int, repeats: int, dtype: str) -> list[dict]:
    import pypose as pp
    import torch

    torch.set_num_threads(int(os.environ.get("TORCH_THREADS", "2")))
    tdtype = torch.float64 if dtype == "float64" else torch.float32
    rows = []
    with torch.no_grad():
        for gname, alg, grp in (("SO3", pp.so3, pp.SO3), ("SE3", pp.se3, pp.SE3)):
            d, d2, pts = (torch.as_tensor(a, dtype=tdtype) for a in _data(n, gname))
            # PyPose se3 tangent order is (translation, rotation) as ours.
            x, y = alg(d).Exp(), alg(d2).Exp()
            xd = alg(d)
            ops = {
                "exp": lambda: alg(d).Exp(),
                "log": lambda: x.Log(),
                "compose": lambda: x @ y,
                "act": lambda: x.Act(pts),
                "jac_right": (lambda: xd.Jr()) if gname == "SO3" else None,  # no se3.Jr
                "log_jac": None,
            }
            for op, fn in ops.items():
                if fn is None:
                    rows.append(dict(lib="pypose", group=gname, op=op, seconds=None))
                    continue
                _, med = _median_time(fn, repeats, lambda r: r)
                rows.append(dict(lib="pypose", group=gname, op=op, seconds=med))
    return rows


def run_peer(python: str, lib: str, args) -> list[dict]:
    cmd = [python, __file__, "--only", lib, "--n", str(args.n), "--repeats", str(args.repeats),
           "--dtype", args.dtype]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3000)
    except Exception as exc:  # noqa: BLE001
        print(f"{lib}: failed to run ({exc})", file=sys.stderr)
        return []
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("ROWS ")]
    if not lines:
        print(f"{lib}: unavailable ({(proc.stderr.strip().splitlines() or ['?'])[-1]})",
              file=sys.stderr)
        return []
    return json.loads(lines[-1][5:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--peers-python", default=os.environ.get("JAXNLLS_PEERS_PYTHON",
                                                            "/work/peers-venv/bin/python"))
    ap.add_argument("--only", help=argparse.SUPPRESS)
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()

    if args.only:
        try:
            if args.only == "pypose":
                rows = bench_pypose(args.n, args.repeats, args.dtype)
            else:
                rows = bench_jax(args.only, args.n, args.repeats, args.dtype)
        except ImportError as exc:
            print(f"import failed: {exc}", file=sys.stderr)
            sys.exit(2)
        print("ROWS " + json.dumps(rows))
        return

    import jax

    rows = bench_jax("jaxnlls", args.n, args.repeats, args.dtype)
    for lib in ("jaxlie", "pypose"):
        if os.path.exists(args.peers_python):
            rows += run_peer(args.peers_python, lib, args)
        else:
            try:
                rows += (bench_pypose if lib == "pypose" else
                         lambda *a: bench_jax(lib, *a))(args.n, args.repeats, args.dtype)
            except ImportError:
                print(f"{lib}: not importable; skipped", file=sys.stderr)

    table = {(r["lib"], r["group"], r["op"]): r for r in rows}

    def cell(lib, g, op):
        r = table.get((lib, g, op))
        return r["seconds"] if r and r.get("seconds") else None

    print(f"\n{args.n} elements, {args.dtype}, median of {args.repeats} after warm-up; "
          f"jax {jax.__version__} ({jax.devices()[0].platform}), {os.cpu_count()} CPU cores")
    print(f"| group | op | jaxnlls ms | compile s | jaxlie ms | PyPose ms | vs jaxlie | vs PyPose |")
    print("|---|---|---|---|---|---|---|---|")
    for g in ("SO3", "SE3"):
        for op in OPS:
            ours = cell("jaxnlls", g, op)
            jl, pp_ = cell("jaxlie", g, op), cell("pypose", g, op)
            comp = table.get(("jaxnlls", g, op), {}).get("compile_s")
            fmt = lambda s: f"{1e3 * s:.1f}" if s else "n/a"  # noqa: E731
            ratio = lambda s: f"{s / ours:.2f}x" if (s and ours) else "n/a"  # noqa: E731
            print(f"| {g} | {op} | {fmt(ours)} | {comp:.2f} | {fmt(jl)} | {fmt(pp_)} | "
                  f"{ratio(jl)} | {ratio(pp_)} |")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
