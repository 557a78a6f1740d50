"""What every benchmark shares: paths, timing, memory, machine facts, the result file.

A script in ``benchmarks/`` starts with::

    from _common import REPO, parser, timed, bound, finish   # also puts REPO on sys.path

(``python benchmarks/x.py`` puts ``benchmarks/`` on ``sys.path``, so ``_common`` imports as
is; a script in ``benchmarks/research/`` adds its parent folder first.) Then:

- ``parser(__doc__, "x")``: an ``argparse`` parser described by the docstring's first
  paragraph, with ``--out`` defaulting to ``benchmarks/results/x.json``;
- ``timed(fn, repeats)``: wall-clock times of ``fn()`` after one warm-up call, as a
  :class:`Timing` (``.median``, ``.min`` in seconds, ``.ms()`` for the JSON);
- ``bound(what, value, limit)``: a ceiling the benchmark enforces (what unit tests used to
  assert about speed lives here now); prints the verdict, returns a JSON-ready record;
- ``finish(result, out)``: adds the machine (:func:`machine`) and the bounds' verdict,
  writes the JSON atomically, prints where; returns the exit status (1 if a bound was
  missed), so ``sys.exit(finish(...))`` makes ``make bench`` report it;
- ``skip(name, reason, out)``: for a benchmark whose inputs are absent (the real data):
  says why, writes ``{"skipped": reason}`` and exits 0;
- ``real_data_dir()``, ``fresh_process_seconds(code)``, ``run_worker(cmd)``,
  ``peak_rss_mb()``: the real data folder (as the tests find it), the first-call time of
  ``code`` in a new Python process (numba compile vs cache load), a child process that
  prints one JSON line, and this process's peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run from a checkout, installed or not
RESULTS = REPO / "benchmarks" / "results"

__all__ = [
    "REPO", "RESULTS", "Timing", "bound", "finish", "fresh_process_seconds", "machine", "parser",
    "peak_rss_mb", "real_data_dir", "run_worker", "skip", "timed",
]


def parser(doc: Optional[str], name: str, **kwargs) -> argparse.ArgumentParser:
    """An argument parser described by ``doc``'s first paragraph, with ``--out`` (default
    ``benchmarks/results/<name>.json``)."""
    description = (doc or name).strip().split("\n\n")[0]
    p = argparse.ArgumentParser(description=description, **kwargs)
    p.add_argument("--out", type=Path, default=RESULTS / f"{name}.json", help="result JSON (default: %(default)s)")
    return p


@dataclass
class Timing:
    """Wall-clock seconds of repeated calls."""

    times: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def min(self) -> float:
        return min(self.times)

    def ms(self) -> dict:
        """``{"median": ms, "min": ms}`` for the JSON."""
        return {"median": self.median * 1e3, "min": self.min * 1e3}


def timed(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> Timing:
    """Time ``repeats`` calls of ``fn()`` after ``warmup`` untimed ones (numba compile or
    cache load, allocator, oneDNN primitives)."""
    for _ in range(warmup):
        fn()
    timing = Timing()
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        timing.times.append(time.perf_counter() - t0)
    return timing


def bound(what: str, value: float, limit: float, unit: str = "ms") -> dict:
    """A ceiling this benchmark enforces: ``value < limit``. The bounds are generous (they
    catch a regression such as a per-nucleus Python loop, not noise); :func:`finish` turns
    a miss into exit status 1."""
    ok = bool(value < limit)
    print(f"bound: {what} {value:.3g} {unit} < {limit:g} {unit}: {'ok' if ok else 'MISSED'}", flush=True)
    return {"what": what, "value": value, "limit": limit, "unit": unit, "ok": ok}


def machine() -> dict:
    """What the figures depend on: Python, NumPy, the CPU, its cores and their load."""
    import numpy as np

    facts = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "load_average_1min": os.getloadavg()[0],
    }
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        facts.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
    return facts


def finish(result: dict, out: Path, bounds: Optional[list[dict]] = None) -> int:
    """Write ``result`` (plus ``machine`` and ``bounds``) to ``out`` atomically and print
    where. Returns 0, or 1 when a bound was missed."""
    from dsb.utils import atomic_write

    result = dict(result)
    result.setdefault("machine", machine())
    if bounds is not None:
        result["bounds"] = bounds
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out, "w") as fh:
        json.dump(result, fh, indent=2)
    print(f"wrote {out}", flush=True)
    missed = [b["what"] for b in bounds or [] if not b["ok"]]
    if missed:
        print(f"missed bound(s): {', '.join(missed)}", file=sys.stderr)
    return 1 if missed else 0


def skip(name: str, reason: str, out: Path) -> None:
    """Say why this benchmark cannot run here, record it in its JSON, exit 0."""
    print(f"{name}: skipped: {reason}", flush=True)
    finish({"benchmark": name, "skipped": reason}, out)
    sys.exit(0)


def real_data_dir(explicit: Optional[os.PathLike] = None) -> Optional[Path]:
    """Where the real DSB2018 files are: ``explicit`` when given (a folder or a file), else
    ``$DSB_DATA``, else ``../shared/dsb2018`` beside the repository (as the tests look);
    None when that path does not exist."""
    candidates = [explicit] if explicit else [os.environ.get("DSB_DATA"), REPO.parent / "shared" / "dsb2018"]
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            return Path(candidate)
    return None


def fresh_process_seconds(code: str, numba_cache: Optional[str] = None) -> float:
    """Run ``code`` in a new Python process (with the repository importable and, if given,
    ``NUMBA_CACHE_DIR=numba_cache``); ``code`` prints a number of seconds last, returned."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    if numba_cache is not None:
        env["NUMBA_CACHE_DIR"] = numba_cache
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def run_worker(cmd: list[str], timeout_s: Optional[float] = None) -> dict:
    """Run a child process (its own peak memory) that prints one JSON object as its last
    line; that object, or ``{"error": ...}`` with the last line of its stderr."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s"}
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        return {"error": lines[-1] if lines else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB (``ru_maxrss``, KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
