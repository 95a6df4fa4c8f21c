"""The ``jaxnlls`` command line: ``demo``, ``pgo``, ``ba``."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from typing import NoReturn


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors, when the command line asks for ``--json``, are also
    the one ``{"error": ...}`` object on stdout that ``--json`` promises."""

    def __init__(self, *args, json_errors: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.json_errors = json_errors

    def error(self, message: str) -> NoReturn:
        if self.json_errors:
            print(json.dumps({"error": message}))
        super().error(message)  # usage and message on stderr, exit code 2


def _demo(args) -> int:
    from . import _demo

    _demo.run(n_problems=args.problems, steps=args.steps, seed=args.seed, out=args.out)
    return 0


def build_parser(*, json_errors: bool = False) -> argparse.ArgumentParser:
    """The ``jaxnlls`` parser; with ``json_errors`` a bad option also prints
    ``{"error": ...}`` on stdout."""
    parser = _Parser(
        prog="jaxnlls",
        description="Differentiable nonlinear least squares in JAX.",
        json_errors=json_errors,
    )
    sub = parser.add_subparsers(
        dest="command",
        required=True,
        parser_class=functools.partial(_Parser, json_errors=json_errors),
    )
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
    argv = sys.argv[1:] if argv is None else argv
    # ("--j", "--js" and "--jso" are argparse's abbreviations of --json)
    json_errors = any(len(a) > 2 and "--json".startswith(a) for a in argv)
    parser = build_parser(json_errors=json_errors)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
