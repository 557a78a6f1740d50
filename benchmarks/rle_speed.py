"""How fast a full-size label map becomes submission rows (dsb.rle.label_map_to_rows).

A seeded 1040x1388 label map (the largest DSB2018 size) with 300 nuclei (ellipses of
random size and orientation) is encoded

* by ``label_map_to_rows`` (bounding boxes from one ``find_objects`` pass, runs from one
  numba kernel), after a warm-up call, and
* by the naive loop ``for k in labels: rle_encode(label_map == k)`` (every label over
  the whole image), side by side in the same process; both must give the same rows.

The compile time of the numba kernel is reported separately: measured in a fresh
process with an empty cache (what a first run pays), beside this process's first call
(which may load the kernel from ``NUMBA_CACHE_DIR``).

Usage: ``python benchmarks/rle_speed.py [--repeats 50] [--out benchmarks/results/rle_speed.json]``
Prints a table; writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHAPE = (1040, 1388)
N_NUCLEI = 300
SEED = 0
TARGET_MS = 10.0


def make_label_map(shape=SHAPE, n_nuclei=N_NUCLEI, seed=SEED) -> np.ndarray:
    """``n_nuclei`` non-overlapping ellipses (radii 5-22 px), ids 1..n, seeded."""
    from skimage.draw import ellipse

    rng = np.random.default_rng(seed)
    label_map = np.zeros(shape, np.int32)
    label = 0
    while label < n_nuclei:
        r, c = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        rr, cc = ellipse(r, c, rng.uniform(5, 22), rng.uniform(5, 22), shape=shape, rotation=rng.uniform(0, np.pi))
        free = label_map[rr, cc] == 0
        if free.sum() < 0.8 * rr.size or rr.size < 20:
            continue  # keep nuclei whole, as real ones mostly are
        label += 1
        label_map[rr[free], cc[free]] = label
    return label_map


def naive_rows(image_id: str, label_map: np.ndarray) -> list[tuple[str, str]]:
    """The baseline: each label over the full image."""
    from dsb.rle import rle_encode

    labels = np.unique(label_map)
    labels = labels[labels > 0]
    return [(image_id, rle_encode(label_map == k)) for k in labels] or [(image_id, "")]


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def cold_compile_seconds() -> float:
    """First-call time of label_map_to_rows in a fresh process with an empty numba cache."""
    code = (
        "import time, numpy as np\n"
        "from dsb.rle import label_map_to_rows\n"
        "lm = np.zeros((8, 8), np.int32); lm[2:4, 2:5] = 1\n"
        "t0 = time.perf_counter(); label_map_to_rows('x', lm); print(time.perf_counter() - t0)\n"
    )
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache, PYTHONPATH=str(REPO))
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=50, help="timed calls of label_map_to_rows")
    parser.add_argument("--naive-repeats", type=int, default=3, help="timed calls of the naive loop")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "rle_speed.json")
    args = parser.parse_args(argv)

    import numba
    from rich.console import Console
    from rich.table import Table

    from dsb.rle import _bbox_runs, label_map_to_rows
    from dsb.utils import atomic_write

    label_map = make_label_map()
    n_labels = int(len(np.unique(label_map)) - 1)

    t0 = time.perf_counter()
    fast = label_map_to_rows("bench", label_map)  # compiles, or loads the cached kernel
    first_call_s = time.perf_counter() - t0
    first_call_cached = bool(_bbox_runs.stats.cache_hits) and not _bbox_runs.stats.cache_misses
    compile_s = cold_compile_seconds()

    fast_times = timed(lambda: label_map_to_rows("bench", label_map), args.repeats)
    naive_times = timed(lambda: naive_rows("bench", label_map), args.naive_repeats)
    naive = naive_rows("bench", label_map)
    if fast != naive:
        raise SystemExit("label_map_to_rows and the naive loop disagree")

    fast_ms = statistics.median(fast_times) * 1e3
    naive_ms = statistics.median(naive_times) * 1e3
    result = {
        "benchmark": "rle_speed",
        "shape": list(SHAPE),
        "n_nuclei": n_labels,
        "n_runs": int(sum(len(rle.split()) // 2 for _, rle in fast)),
        "label_map_to_rows_ms": {"median": fast_ms, "min": min(fast_times) * 1e3, "repeats": args.repeats},
        "naive_ms": {"median": naive_ms, "min": min(naive_times) * 1e3, "repeats": args.naive_repeats},
        "speedup_vs_naive": naive_ms / fast_ms,
        "first_call_ms": first_call_s * 1e3,
        "first_call_loaded_from_cache": first_call_cached,
        "numba_compile_ms_cold_cache": compile_s * 1e3,
        "target_ms": TARGET_MS,
        "meets_target": fast_ms < TARGET_MS,
        "outputs_identical": True,
        "machine": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "numba": numba.__version__,
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
        },
    }

    table = Table(title=f"RLE encoding: {SHAPE[0]}x{SHAPE[1]} label map, {n_labels} nuclei")
    for column in ("method", "median ms", "min ms", "ratio"):
        table.add_column(column, justify="right" if column != "method" else "left")
    table.add_row("label_map_to_rows (numba, boxes)", f"{fast_ms:.2f}", f"{min(fast_times) * 1e3:.2f}", "1.0x")
    table.add_row("naive: rle_encode(label_map == k) per label", f"{naive_ms:.1f}", f"{min(naive_times) * 1e3:.1f}",
                  f"{naive_ms / fast_ms:.0f}x slower")
    console = Console()
    console.print(table)
    how = "kernel loaded from the numba cache" if first_call_cached else "kernel compiled"
    console.print(f"first call in this process: {first_call_s * 1e3:.0f} ms ({how}); "
                  f"numba compile with an empty cache (fresh process): {compile_s * 1e3:.0f} ms")
    verdict = "[green]meets[/]" if result["meets_target"] else "[red]misses[/]"
    console.print(f"target < {TARGET_MS:.0f} ms: {verdict} ({fast_ms:.2f} ms); outputs identical")

    with atomic_write(args.out, "w") as fh:
        json.dump(result, fh, indent=2)
    console.print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
