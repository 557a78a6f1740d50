"""How fast `dsb validate` checks a large submission (dsb.submission.check_submission).

A seeded, valid submission of 30,000 rows is written as a CSV: 1,000 images of 520x696
(stage-1 sizes) with 30 non-overlapping nuclei each, every nucleus 15 columns of 12-pixel
runs, like real ones. Then, median of ``--repeats`` runs:

* ``read_submission`` alone (parse the CSV into rows), and
* ``check_submission(path, shapes)`` end to end (read, then every check: pairs sorted and
  inside the image, no pixel claimed twice, every image present), which must find no
  problem, with a bound of 3 s (it was a unit test's, tests/test_submission.py; about a
  second on a 2-core CPU): a miss, or a problem found, makes the script exit 1.

Usage: ``python benchmarks/validate_speed.py [--repeats 3] [--out benchmarks/results/validate_speed.json]``
Prints a table; writes JSON.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

from _common import bound, finish, parser, timed

N_IMAGES = 1000
ROWS_PER_IMAGE = 30
SHAPE = (520, 696)
SEED = 0
BOUND_S = 3.0


def write_submission(path: Path, n_images=N_IMAGES, rows_per_image=ROWS_PER_IMAGE, shape=SHAPE,
                     seed=SEED) -> dict[str, tuple[int, int]]:
    """Write the valid submission; returns ``{ImageId: shape}``."""
    rng = np.random.default_rng(seed)
    lines = ["ImageId,EncodedPixels"]
    shapes = {}
    for i in range(n_images):
        image_id = f"{i:064x}"
        shapes[image_id] = shape
        for k in range(rows_per_image):  # side by side in columns, each at a random height
            col0, row0 = 20 * k + 5, int(rng.integers(0, shape[0] - 20))
            starts = (np.arange(col0, col0 + 15) * shape[0] + row0 + 1).tolist()
            lines.append(image_id + "," + " ".join(f"{s} 12" for s in starts))
    path.write_text("\n".join(lines) + "\n")
    return shapes


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, "validate_speed")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)

    from dsb.submission import check_submission, read_submission

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "submission.csv"
        shapes = write_submission(path)
        n_rows = N_IMAGES * ROWS_PER_IMAGE
        size_mb = path.stat().st_size / 2**20
        read = timed(lambda: read_submission(path), args.repeats)
        problems = check_submission(path, shapes)
        check = timed(lambda: check_submission(path, shapes), args.repeats, warmup=0)

    print(f"{n_rows:,} rows, {N_IMAGES} images of {SHAPE[0]}x{SHAPE[1]} ({size_mb:.1f} MB); "
          f"problems found: {len(problems)} (expected 0)")
    print(f"{'step':<34} {'s (median)':>11} {'rows/s':>11}")
    for name, t in (("read_submission", read), ("check_submission (end to end)", check)):
        print(f"{name:<34} {t.median:11.3f} {n_rows / t.median:11,.0f}")
    result = {
        "benchmark": "validate_speed",
        "n_images": N_IMAGES,
        "n_rows": n_rows,
        "shape": list(SHAPE),
        "file_mb": size_mb,
        "repeats": args.repeats,
        "read_s": {"median": read.median, "min": read.min},
        "check_s": {"median": check.median, "min": check.min},
        "problems": [str(problem) for problem in problems[:10]],
    }
    bounds = [bound(f"check_submission of {n_rows:,} rows (median)", check.median, BOUND_S, unit="s")]
    status = finish(result, args.out, bounds)
    return status or (1 if problems else 0)


if __name__ == "__main__":
    sys.exit(main())
