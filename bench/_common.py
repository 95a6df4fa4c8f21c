"""Shared bench utilities: timing, machine description, and running the peers' scripts.

Peers (jaxopt, optimistix, Theseus, GTSAM, ...) are never dependencies of jaxnlls: their
scripts live in ``../shared/peers`` and run under a separate interpreter given by
``--peers-python`` or ``$JAXNLLS_PEERS_PYTHON`` (a virtual environment with those packages).
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time

import jax

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
PEERS = SHARED / "peers"


def worker_result(cmd: list[str], timeout: float) -> dict:
    """Run a worker that prints ``RESULT {json}``: its last such line, or ``{"error": why}``."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f} s"}
    res = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if not res:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1][:200]}
    return json.loads(res[-1][len("RESULT ") :])


def peers_python(arg: str | None = None) -> str | None:
    cand = arg or os.environ.get("JAXNLLS_PEERS_PYTHON") or "/work/peers-venv/bin/python"
    return cand if cand and pathlib.Path(cand).exists() else None


def machine() -> str:
    return (f"{platform.node() or 'host'}: {os.cpu_count()} CPU cores, {platform.machine()}, "
            f"jax {jax.__version__} ({jax.devices()[0].platform}), python {platform.python_version()}")


def run_header() -> dict:
    """When and where a bench ran: the fields every JSON output starts with."""
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "device": str(jax.devices()[0]),
        "jax": jax.__version__,
        "cpus": os.cpu_count(),
        "load_avg_start": os.getloadavg(),
        "python": platform.python_version(),
    }


def timed_calls(fn, *args, repeats: int = 5, **kwargs):
    """``fn(*args, **kwargs)`` once (compile + run), then ``repeats`` times, each with
    block_until_ready: (last output, first-call seconds, steady-state seconds per call)."""
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args, **kwargs))
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn(*args, **kwargs))
        times.append(time.perf_counter() - t0)
    return out, first, times


def time_fn(fn, *args, repeats: int = 5):
    """(first-call seconds, median steady-state seconds) with block_until_ready."""
    _, first, times = timed_calls(fn, *args, repeats=repeats)
    return first, statistics.median(times)


def run_peer_script(script: str, args: list[str], python: str | None, timeout: int = 3000):
    """Run ``../shared/peers/<script>`` and return its JSON rows (or [] when unavailable)."""
    if python is None or not (PEERS / script).exists():
        return []
    out = REPO / "bench" / f".peer_{script}.json"
    cmd = [python, str(PEERS / script), *args, "--json-out", str(out)]
    print("  running peers:", " ".join(cmd[1:]), file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, cwd=SHARED, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or not out.exists():
        print(proc.stderr[-2000:], file=sys.stderr)
        return []
    rows = json.loads(out.read_text())
    out.unlink()
    return rows
