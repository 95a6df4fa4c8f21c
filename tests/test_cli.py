"""The `jaxnlls demo` entry point, run small."""

from __future__ import annotations

import io
import json

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


@pytest.mark.parametrize(
    "argv",
    [
        ["pgo", "g.g2o", "--json", "--max-steps", "0"],
        ["pgo", "g.g2o", "--json", "--solver", "bogus"],
        ["pgo", "g.g2o", "--json", "--init", "nope"],
        ["pgo", "g.g2o", "--json", "--bogus"],
        ["pgo", "--json"],  # FILE missing
        ["ba", "p.txt", "--json", "--max-steps", "x"],
        ["ba", "p.txt", "--json", "--gauge", "prior"],  # a pgo-only option
    ],
)
def test_bad_option_under_json_prints_one_error_object(capsys, argv):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    out, err = capsys.readouterr()
    assert list(json.loads(out)) == ["error"]
    assert json.loads(out)["error"] in err and "usage:" in err


def test_bad_option_without_json_keeps_stdout_empty(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["pgo", "g.g2o", "--solver", "bogus"])
    out, err = capsys.readouterr()
    assert e.value.code == 2 and out == ""
    assert "usage: jaxnlls pgo" in err and "invalid choice: 'bogus'" in err


@pytest.mark.parametrize("flags", [[], ["--float32"]])
def test_max_steps_above_int32_is_a_usage_error(capsys, flags):
    """The solver counts steps in a 32-bit integer under float32; a larger cap used to crash the
    jitted solve with an OverflowError traceback."""
    parser = cli.build_parser()
    assert parser.parse_args(["pgo", "g.g2o", "--max-steps", "2147483647"]).max_steps == 2**31 - 1
    for n in ("2147483648", "9223372036854775808"):
        with pytest.raises(SystemExit) as e:
            cli.main(["pgo", "g.g2o", "--json", *flags, "--max-steps", n])
        out, err = capsys.readouterr()
        assert e.value.code == 2
        assert "at most 2147483647" in json.loads(out)["error"]
