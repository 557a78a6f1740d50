"""How fast a full-size label map becomes training targets (dsb.data.targets.make_targets).

A seeded 1040x1388 label map (the largest DSB2018 size) of 300 disks of radius 12, placed
at random so that some overlap and touch, becomes the body / border / touching targets:

* by ``make_targets`` (one pass of grey-scale morphology over the whole map), median of
  ``--repeats`` calls after a warm-up, with a bound of 500 ms (it was a unit test's: it
  catches a per-nucleus loop, not noise; a miss makes the script exit 1), and
* by the per-nucleus loop a first version would write (each nucleus's mask over the whole
  image: its inner contour by erosion, its neighbourhood by dilation), once: the cost the
  bound guards against (about 15 s here, 250x). Both must give the same targets (exit 1
  otherwise).

Usage: ``python benchmarks/targets_speed.py [--repeats 10] [--out benchmarks/results/targets_speed.json]``
Prints a table; writes JSON.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from _common import bound, finish, parser, timed

SHAPE = (1040, 1388)
N_NUCLEI = 300
SEED = 0
CHANNELS = ["body", "border", "touching"]
BOUND_MS = 500.0


def make_label_map(shape=SHAPE, n_nuclei=N_NUCLEI, seed=SEED) -> np.ndarray:
    """``n_nuclei`` disks of radius 12 at seeded random places; later ones on top."""
    rng = np.random.default_rng(seed)
    label_map = np.zeros(shape, np.int32)
    yy, xx = np.mgrid[-12:13, -12:13]
    disk = yy**2 + xx**2 <= 144
    for k in range(1, n_nuclei + 1):
        r, c = rng.integers(0, shape[0] - 25), rng.integers(0, shape[1] - 25)
        label_map[r: r + 25, c: c + 25][disk] = k
    return label_map


def per_nucleus_targets(label_map: np.ndarray, border_px: int = 2, touching_px: int = 2) -> np.ndarray:
    """The baseline: every nucleus over the full image, one at a time."""
    from scipy import ndimage as ndi

    body = label_map > 0
    border = np.zeros(label_map.shape, bool)
    near = np.zeros(label_map.shape, np.int32)  # how many nuclei each pixel is within touching_px of
    square = np.ones((3, 3), bool)
    for k in np.unique(label_map[body]):
        mask = label_map == k
        border |= mask & ~ndi.binary_erosion(mask, square, iterations=border_px, border_value=1)
        near += ndi.binary_dilation(mask, square, iterations=touching_px)
    return np.stack([body, border, near >= 2]).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, "targets_speed")
    p.add_argument("--repeats", type=int, default=10, help="timed calls of make_targets")
    args = p.parse_args(argv)

    from dsb.data.targets import make_targets

    label_map = make_label_map()
    timing = timed(lambda: make_targets(label_map, CHANNELS), args.repeats)
    ours = make_targets(label_map, CHANNELS)
    t0 = time.perf_counter()
    naive = per_nucleus_targets(label_map)
    naive_s = time.perf_counter() - t0
    same = {name: bool(np.array_equal(ours[i], naive[i])) for i, name in enumerate(CHANNELS)}

    print(f"make_targets on {SHAPE[0]}x{SHAPE[1]}, {N_NUCLEI} nuclei ({int(label_map.max())} labels, "
          f"{int((label_map > 0).sum())} px)")
    print(f"{'implementation':<34} {'ms':>9} {'x':>7}")
    print(f"{'make_targets (median)':<34} {timing.median * 1e3:9.1f} {1.0:7.1f}")
    print(f"{'per-nucleus loop (once)':<34} {naive_s * 1e3:9.1f} {naive_s / timing.median:7.1f}")
    print("same targets as the loop: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in same.items()))
    result = {
        "benchmark": "targets_speed",
        "shape": list(SHAPE),
        "n_nuclei": N_NUCLEI,
        "repeats": args.repeats,
        "make_targets_ms": timing.ms(),
        "per_nucleus_loop_ms": naive_s * 1e3,
        "speedup_vs_loop": naive_s / timing.median,
        "same_as_loop": same,
    }
    bounds = [bound(f"make_targets on {SHAPE[0]}x{SHAPE[1]} (median)", timing.median * 1e3, BOUND_MS)]
    status = finish(result, args.out, bounds)
    return status or (0 if all(same.values()) else 1)


if __name__ == "__main__":
    sys.exit(main())
