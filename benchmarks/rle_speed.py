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

import sys
import tempfile
import time

import numpy as np
from _common import finish, fresh_process_seconds, machine, parser, timed

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


#: First-call time of label_map_to_rows in a fresh process (run with an empty numba cache).
COMPILE_CODE = (
    "import time, numpy as np\n"
    "from dsb.rle import label_map_to_rows\n"
    "lm = np.zeros((8, 8), np.int32); lm[2:4, 2:5] = 1\n"
    "t0 = time.perf_counter(); label_map_to_rows('x', lm); print(time.perf_counter() - t0)\n"
)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, "rle_speed")
    p.add_argument("--repeats", type=int, default=50, help="timed calls of label_map_to_rows")
    p.add_argument("--naive-repeats", type=int, default=3, help="timed calls of the naive loop")
    args = p.parse_args(argv)

    import numba
    from rich.console import Console
    from rich.table import Table

    from dsb.rle import _bbox_runs, label_map_to_rows

    label_map = make_label_map()
    n_labels = int(len(np.unique(label_map)) - 1)

    t0 = time.perf_counter()
    fast = label_map_to_rows("bench", label_map)  # compiles, or loads the cached kernel
    first_call_s = time.perf_counter() - t0
    first_call_cached = bool(_bbox_runs.stats.cache_hits) and not _bbox_runs.stats.cache_misses
    with tempfile.TemporaryDirectory() as cache:
        compile_s = fresh_process_seconds(COMPILE_CODE, cache)  # empty cache: what a first run pays

    fast_times = timed(lambda: label_map_to_rows("bench", label_map), args.repeats, warmup=0)
    naive_times = timed(lambda: naive_rows("bench", label_map), args.naive_repeats, warmup=0)
    naive = naive_rows("bench", label_map)
    if fast != naive:
        raise SystemExit("label_map_to_rows and the naive loop disagree")

    fast_ms = fast_times.median * 1e3
    naive_ms = naive_times.median * 1e3
    result = {
        "benchmark": "rle_speed",
        "shape": list(SHAPE),
        "n_nuclei": n_labels,
        "n_runs": int(sum(len(rle.split()) // 2 for _, rle in fast)),
        "label_map_to_rows_ms": {**fast_times.ms(), "repeats": args.repeats},
        "naive_ms": {**naive_times.ms(), "repeats": args.naive_repeats},
        "speedup_vs_naive": naive_ms / fast_ms,
        "first_call_ms": first_call_s * 1e3,
        "first_call_loaded_from_cache": first_call_cached,
        "numba_compile_ms_cold_cache": compile_s * 1e3,
        "target_ms": TARGET_MS,
        "meets_target": fast_ms < TARGET_MS,
        "outputs_identical": True,
        "machine": {**machine(), "numba": numba.__version__},
    }

    table = Table(title=f"RLE encoding: {SHAPE[0]}x{SHAPE[1]} label map, {n_labels} nuclei")
    for column in ("method", "median ms", "min ms", "ratio"):
        table.add_column(column, justify="right" if column != "method" else "left")
    table.add_row("label_map_to_rows (numba, boxes)", f"{fast_ms:.2f}", f"{fast_times.min * 1e3:.2f}", "1.0x")
    table.add_row("naive: rle_encode(label_map == k) per label", f"{naive_ms:.1f}", f"{naive_times.min * 1e3:.1f}",
                  f"{naive_ms / fast_ms:.0f}x slower")
    console = Console()
    console.print(table)
    how = "kernel loaded from the numba cache" if first_call_cached else "kernel compiled"
    console.print(f"first call in this process: {first_call_s * 1e3:.0f} ms ({how}); "
                  f"numba compile with an empty cache (fresh process): {compile_s * 1e3:.0f} ms")
    verdict = "[green]meets[/]" if result["meets_target"] else "[red]misses[/]"
    console.print(f"target < {TARGET_MS:.0f} ms: {verdict} ({fast_ms:.2f} ms); outputs identical")
    return finish(result, args.out)


if __name__ == "__main__":
    sys.exit(main())
