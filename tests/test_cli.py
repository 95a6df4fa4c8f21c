"""The `jaxnlls demo` entry point, run small."""

from __future__ import annotations

import io

import pytest

from jaxnlls import _demo, cli


def test_demo_learns_and_writes_plot(tmp_path):
    out = tmp_path / "demo.png"
    stream = io.StringIO()
    result = _demo.run(n_problems=256, steps=60, out=str(out), stream=stream)
    text = stream.getvalue()
    assert out.exists() and out.stat().st_size > 10_000
    assert "problems/s" in text and "->" in text
    # learning through the solver must reduce the localization error a lot, on held-out data too
    assert result.loss_after < 0.2 * result.loss_before
    assert result.test_after < 0.3 * result.test_before
    # the well-measured beacons' offsets are recovered
    assert abs(result.offsets[0] - _demo.TRUE_OFFSET[0]) < 0.1
    assert abs(result.offsets[3] - _demo.TRUE_OFFSET[3]) < 0.1


def test_cli_parser_has_subcommands():
    parser = cli.build_parser()
    args = parser.parse_args(["demo", "--problems", "16", "--steps", "1", "--out", "x.png"])
    assert args.command == "demo" and args.problems == 16
    with pytest.raises(SystemExit):
        parser.parse_args([])
