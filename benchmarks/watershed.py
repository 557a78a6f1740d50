"""How fast dsb.postprocess.watershed floods a full-size image, beside scikit-image's.

A seeded 1040x1388 scene (the largest DSB2018 size) of 300 nuclei: ellipses of random
size and orientation, allowed to touch and overlap, each a smooth bump, blurred. The
main case floods ``-intensity`` (float32) inside ``intensity > 0.2`` from one marker per
nucleus (its brightest pixel; ids 7, 10, 13, ... to exercise non-consecutive labels).
Other rows show the same scene as float64 and uint8, with 8-connectivity, and two
inputs full of tied marker values, which take the exact-heap path for longer (see
:mod:`dsb.postprocess._kernels`): the negative distance transform with 3x3 markers at
its peaks, and whole seed regions (``intensity > 0.8``) as markers.

Each row times ``dsb.postprocess.watershed`` and ``skimage.segmentation.watershed``
alternately in the same process (median of ``--repeats`` wall-clock runs, after a
warm-up) and checks that the labels are identical. Numba compile time is excluded from
those runs and reported separately: the first call in a fresh process with an empty
cache, and in a fresh process that loads the kernel from the cache.

The postprocessing that uses it, ``labels_from_probs`` (ideal body/border/touching maps of
a synthetic full-size image to labels), is timed too, with a bound of 500 ms (it was a unit
test's; about 80 ms here): a miss makes the script exit 1.

Usage: ``python benchmarks/watershed.py [--repeats 15] [--out benchmarks/results/watershed.json]``
Prints a table; writes JSON.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import numpy as np

from _common import Timing, bound, finish, fresh_process_seconds, machine, parser, timed

SHAPE = (1040, 1388)
N_NUCLEI = 300
SEED = 0
TARGET_SPEEDUP = 5.0
#: Ceiling on labels_from_probs for the full-size image (was tests/test_postprocess.py's).
POSTPROCESS_BOUND_MS = 500.0


def make_scene(shape=SHAPE, n_nuclei=N_NUCLEI, seed=SEED) -> tuple[np.ndarray, np.ndarray]:
    """``(intensity, markers)``: a float32 image in [0, 1] of blurred nuclei, one marker each.

    Markers are single pixels at each nucleus's brightest point, labelled 7, 10, 13, ...
    """
    from scipy import ndimage as ndi
    from skimage.draw import ellipse

    rng = np.random.default_rng(seed)
    intensity = np.zeros(shape, np.float32)
    owner = np.zeros(shape, np.int32)
    for k in range(1, n_nuclei + 1):
        r, c = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        ra, rb = rng.uniform(6, 20), rng.uniform(6, 20)
        rr, cc = ellipse(r, c, ra, rb, shape=shape, rotation=rng.uniform(0, np.pi))
        if rr.size == 0:
            continue
        # a bump: 1 at the centre, falling to 0.3 at the rim
        d = np.hypot((rr - r) / ra, (cc - c) / rb)
        bump = (1.0 - 0.7 * np.clip(d, 0, 1) ** 2) * rng.uniform(0.7, 1.0)
        brighter = bump > intensity[rr, cc]
        intensity[rr[brighter], cc[brighter]] = bump[brighter]
        owner[rr[brighter], cc[brighter]] = k
    intensity = ndi.gaussian_filter(intensity, 1.5)
    intensity /= intensity.max()
    markers = np.zeros(shape, np.int32)
    for k, box in enumerate(ndi.find_objects(owner), start=1):
        if box is None:
            continue
        local = np.where(owner[box] == k, intensity[box], -1)
        r, c = np.unravel_index(np.argmax(local), local.shape)
        markers[box][r, c] = 3 * k + 4
    return intensity, markers


def make_cases(intensity: np.ndarray, markers: np.ndarray) -> list[dict]:
    from scipy import ndimage as ndi

    mask = intensity > 0.2
    distance = ndi.distance_transform_edt(mask)
    peaks = (distance == ndi.maximum_filter(distance, size=9)) & mask & (distance > 2)
    peak_markers = ndi.label(ndi.binary_dilation(peaks))[0].astype(np.int32)
    seed_markers = ndi.label(intensity > 0.8)[0].astype(np.int32)
    neg = -intensity
    return [
        dict(name="blobs float32 (main)", image=neg, markers=markers, mask=mask, connectivity=1),
        dict(name="blobs float32, 8-conn", image=neg, markers=markers, mask=mask, connectivity=2),
        dict(name="blobs float64", image=neg.astype(np.float64), markers=markers, mask=mask, connectivity=1),
        dict(name="blobs uint8", image=np.round(255 * (1 - intensity)).astype(np.uint8), markers=markers,
             mask=mask, connectivity=1),
        dict(name="-distance float64, 3x3 peak markers (ties)", image=-distance, markers=peak_markers, mask=mask,
             connectivity=1),
        dict(name="blobs float32, seed-region markers (ties)", image=neg, markers=seed_markers, mask=mask,
             connectivity=1),
    ]


def postprocess_ms(repeats: int) -> dict:
    """Median time of ``labels_from_probs`` on ideal probabilities of a synthetic full-size image."""
    from scipy import ndimage as ndi

    from dsb.config import PostprocessConfig
    from dsb.data.synthetic import make_sample
    from dsb.data.targets import make_targets
    from dsb.postprocess import labels_from_probs

    _, truth = make_sample(SEED, shape=SHAPE)
    probs = np.stack([ndi.gaussian_filter(p, 0.8) for p in make_targets(truth)]).astype(np.float32)
    channels = ["body", "border", "touching"]
    labels = labels_from_probs(probs, channels, PostprocessConfig())  # warm-up
    timing = timed(lambda: labels_from_probs(probs, channels, PostprocessConfig()), repeats, warmup=0)
    return {**timing.ms(), "n_nuclei_true": int(truth.max()), "n_nuclei_found": int(labels.max())}


#: First-call time of a float32 watershed in a fresh process (run with a numba cache folder).
COMPILE_CODE = (
    "import time, numpy as np\n"
    "from dsb.postprocess import watershed\n"
    "img = np.random.default_rng(0).random((16, 16)).astype(np.float32)\n"
    "mk = np.zeros((16, 16), np.int32); mk[2, 2] = 1; mk[12, 12] = 2\n"
    "t0 = time.perf_counter(); watershed(img, mk); print(time.perf_counter() - t0)\n"
)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, "watershed")
    p.add_argument("--repeats", type=int, default=15, help="timed calls of each implementation per case")
    args = p.parse_args(argv)

    import numba
    import skimage
    from rich.console import Console
    from rich.table import Table
    from skimage.segmentation import watershed as sk_watershed

    from dsb.postprocess import watershed

    console = Console(width=max(Console().width, 120))
    with tempfile.TemporaryDirectory() as cache:
        cold_s = fresh_process_seconds(COMPILE_CODE, cache)  # empty cache: compiles and writes it
        warm_s = fresh_process_seconds(COMPILE_CODE, cache)  # same cache, new process: loads it

    intensity, markers = make_scene()
    rows = []
    for case in make_cases(intensity, markers):
        image, mk, mask, conn = case["image"], case["markers"], case["mask"], case["connectivity"]
        ours = watershed(image, mk, mask=mask, connectivity=conn)  # warm-up (compiles if needed)
        ref = sk_watershed(image, mk, mask=mask, connectivity=conn)
        identical = bool(np.array_equal(ours, ref))
        ours_t, sk_t = Timing(), Timing()  # alternately, so both see the same machine load
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            watershed(image, mk, mask=mask, connectivity=conn)
            ours_t.times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            sk_watershed(image, mk, mask=mask, connectivity=conn)
            sk_t.times.append(time.perf_counter() - t0)
        ours_ms, sk_ms = ours_t.median * 1e3, sk_t.median * 1e3
        rows.append({
            "case": case["name"],
            "dtype": str(image.dtype),
            "connectivity": conn,
            "n_markers": int(len(np.unique(mk[mask])) - (0 in mk[mask])),
            "n_marker_pixels": int(np.count_nonzero(mk[mask])),
            "mask_pixels": int(mask.sum()),
            "ours_ms": ours_t.ms(),
            "skimage_ms": sk_t.ms(),
            "speedup": sk_ms / ours_ms,
            "identical": identical,
        })

    post = postprocess_ms(args.repeats)
    main_row = rows[0]
    result = {
        "benchmark": "watershed",
        "shape": list(SHAPE),
        "n_nuclei": N_NUCLEI,
        "repeats": args.repeats,
        "cases": rows,
        "main_speedup": main_row["speedup"],
        "target_speedup": TARGET_SPEEDUP,
        "meets_target": main_row["speedup"] >= TARGET_SPEEDUP,
        "all_identical": all(r["identical"] for r in rows),
        "labels_from_probs_ms": post,
        "first_call_ms_cold_cache": cold_s * 1e3,
        "first_call_ms_warm_cache": warm_s * 1e3,
        "machine": {**machine(), "numba": numba.__version__, "scikit-image": skimage.__version__},
    }

    table = Table(title=f"watershed on {SHAPE[0]}x{SHAPE[1]}, {N_NUCLEI} nuclei (median of {args.repeats})")
    for column in ("case", "markers (px)", "mask px", "dsb ms", "skimage ms", "speed-up", "identical"):
        table.add_column(column, justify="left" if column == "case" else "right")
    for r in rows:
        table.add_row(r["case"], f"{r['n_markers']} ({r['n_marker_pixels']})", str(r["mask_pixels"]),
                      f"{r['ours_ms']['median']:.2f}", f"{r['skimage_ms']['median']:.2f}", f"{r['speedup']:.1f}x",
                      "yes" if r["identical"] else "[red]NO[/]")
    console.print(table)
    console.print(f"labels_from_probs (body/border/touching -> labels) on a synthetic {SHAPE[0]}x{SHAPE[1]} image: "
                  f"{post['median']:.1f} ms median")
    console.print(f"numba first call in a fresh process: {cold_s * 1e3:.0f} ms with an empty cache (compile), "
                  f"{warm_s * 1e3:.0f} ms with the cache filled (load)")
    verdict = "[green]meets[/]" if result["meets_target"] else "[red]misses[/]"
    console.print(f"target >= {TARGET_SPEEDUP:.0f}x on the main case: {verdict} ({main_row['speedup']:.1f}x); "
                  f"1-min load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    if not result["all_identical"]:
        console.print("[red]labels differ from scikit-image[/]")
    bounds = [bound(f"labels_from_probs on {SHAPE[0]}x{SHAPE[1]} (median)", post["median"], POSTPROCESS_BOUND_MS)]
    return finish(result, args.out, bounds)


if __name__ == "__main__":
    sys.exit(main())
