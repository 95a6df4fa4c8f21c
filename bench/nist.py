"""NIST StRD nonlinear regression benchmark: accuracy (LRE) and solve time of jaxnlls LM.

Runs every NIST StRD nonlinear-regression problem from both starting points with
``jaxnlls.LevenbergMarquardt`` in float64 and prints a table: problem, start, minimum log
relative error over the parameters, LRE of the residual sum of squares, LM steps, compile time
and median solve time after compilation.

Usage::

    python bench/nist.py [--data ../shared/data/nist_strd] [--repeats 5] [--markdown]

The reader and models are shared with the tests (``tests/nist.py``); solver settings per problem
come from ``tests/nist.py`` too so the benchmark measures exactly what the tests check.
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import statistics
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)  # a script, not the library: NIST needs float64

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import jaxnlls  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "nist_strd"


def _load_module(name: str, path: pathlib.Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def run_one(problem, start: int, settings: dict, repeats: int) -> dict:
    data = problem.data(jnp.float64)
    b0 = jnp.asarray(problem.start(start), dtype=jnp.float64)
    solver = jaxnlls.LevenbergMarquardt(rtol=1e-15, atol=1e-15, scaled=settings["scaled"])

    @jax.jit
    def solve(b0, data):
        sol = jaxnlls.solve(
            problem.residual, b0, data, solver=solver, max_steps=settings["max_steps"], throw=False
        )
        return sol.value, sol.stats.final_cost, sol.stats.steps, sol.result

    t0 = time.perf_counter()
    out = jax.block_until_ready(solve(b0, data))
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(solve(b0, data))
        times.append(time.perf_counter() - t0)
    b, cost, steps, result = out
    rss = 2 * float(cost)
    nist = sys.modules["_bench_nist"]
    lre_b = float(nist.log_relative_error(np.asarray(b), problem.certified).min())
    if problem.certified_rss < 1e-20:
        lre_rss = float("inf") if rss < 1e-20 else 0.0  # "inf" = pass by the RSS < 1e-20 rule
    else:
        lre_rss = float(nist.log_relative_error(rss, problem.certified_rss))
    return dict(
        name=problem.name,
        start=start,
        lre_b=lre_b,
        lre_rss=lre_rss,
        rss=rss,
        steps=int(steps),
        result=int(result),
        compile_s=compile_s,
        solve_s=statistics.median(times),
        scaled=settings["scaled"],
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=pathlib.Path, default=DEFAULT_DATA)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    parser.add_argument("names", nargs="*", help="subset of problems (default: all)")
    args = parser.parse_args(argv)

    nist = _load_module("_bench_nist", REPO / "tests" / "nist.py")
    names = args.names or list(nist.NAMES)
    rows = []
    for name in names:
        problem = nist.load(args.data / f"{name}.dat")
        for start in (1, 2):
            settings = nist.solver_settings(name, start)
            rows.append(run_one(problem, start, settings, args.repeats))

    header = (
        "problem", "start", "LRE b (min)", "LRE RSS", "steps", "scaled", "compile s", "solve ms"
    )
    lines = []
    for r in rows:
        lre_rss = "RSS<1e-20" if r["lre_rss"] == float("inf") else f"{r['lre_rss']:.1f}"
        lines.append(
            (
                r["name"],
                str(r["start"]),
                f"{r['lre_b']:.1f}",
                lre_rss,
                str(r["steps"]),
                "yes" if r["scaled"] else "no",
                f"{r['compile_s']:.2f}",
                f"{1e3 * r['solve_s']:.2f}",
            )
        )
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join("---" for _ in header) + "|")
        for ln in lines:
            print("| " + " | ".join(ln) + " |")
    else:
        widths = [max(len(h), *(len(ln[i]) for ln in lines)) for i, h in enumerate(header)]
        print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
        for ln in lines:
            print("  ".join(c.ljust(w) for c, w in zip(ln, widths, strict=True)))
    n_pass = sum(r["lre_b"] >= 6 and r["lre_rss"] >= 6 for r in rows)
    print(f"\n{n_pass}/{len(rows)} (problem, start) pairs reach LRE >= 6 in parameters and RSS")
    print(f"jax {jax.__version__}, device {jax.devices()[0].device_kind}")
    return 0 if n_pass == len(rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
