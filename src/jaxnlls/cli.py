"""The ``jaxnlls`` command line: ``demo``, ``pgo``, ``ba``."""

from __future__ import annotations

import argparse
import sys


def _demo(args) -> int:
    from . import _demo

    _demo.run(n_problems=args.problems, steps=args.steps, seed=args.seed, out=args.out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxnlls", description="Differentiable nonlinear least squares in JAX."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="end-to-end differentiable example (about a minute on CPU)")
    demo.add_argument("--problems", type=int, default=2048, help="batch size (default 2048)")
    demo.add_argument("--steps", type=int, default=150, help="outer training steps")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out", default="demo.png", help="PNG plot path (default ./demo.png)")
    demo.set_defaults(func=_demo)
    try:
        from ._cli_graph import add_ba_parser, add_pgo_parser
    except ImportError:  # the factor-graph commands are optional at import time
        pass
    else:
        add_pgo_parser(sub)
        add_ba_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
