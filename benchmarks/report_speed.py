"""How fast `dsb report` draws a run's images, against drawing each with matplotlib.

N synthetic images (default 670, the stage-1 training set's size) with the training set's
image sizes (256x256 up to 1040x1388) and kinds (fluorescence, stained, brightfield), each
with a perturbed prediction (nuclei dropped, shifted, grown, merged; a few added), are
drawn as the report draws them (:func:`dsb.report.build.render_case`: fates, the image as
PNG at native size, the true and predicted outlines as transparent layers, a thumbnail),
on 1 and on ``--workers`` threads, then the per-image pages and the index are written.
The baseline draws the same three panels per image with matplotlib (imshow of the image,
the truth and the prediction overlays, savefig at native resolution), the usual way, on
as many images as fit in ``--baseline-budget-s`` (time extrapolated by pixels).

Generating the images is not timed (a pool of distinct images per size is reused).

Usage: ``python benchmarks/report_speed.py [--n 670] [--workers 2] [--baseline-budget-s 20]``
Prints a table; writes JSON to benchmarks/results/report_speed.json; bound: 670 images drawn
and their pages written in under a minute (exit 1 if missed).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import bound, finish, parser

#: Sizes (H, W) of the 670 stage-1 training images, with counts.
STAGE1_TRAIN_SIZES = (
    ((256, 256), 334), ((256, 320), 112), ((520, 696), 92), ((360, 360), 91), ((1024, 1024), 16),
    ((512, 640), 13), ((603, 1272), 6), ((260, 347), 5), ((1040, 1388), 1),
)
#: Kinds in about the training set's proportions.
KINDS = ("fluorescence",) * 16 + ("stained",) * 3 + ("brightfield",)
TARGET_S = 60.0
TARGET_N = 670
POOL_PER_SIZE = 3
SEED = 0


def make_prediction(rng: np.random.Generator, truth: np.ndarray) -> np.ndarray:
    """A plausible prediction: shifted, ~10% dropped, some grown, some merged, a few extra."""
    from scipy import ndimage
    from skimage.segmentation import expand_labels

    pred = np.roll(truth, tuple(rng.integers(-1, 2, size=2)), axis=(0, 1))
    ids = np.unique(pred)[1:]
    pred[np.isin(pred, rng.choice(ids, size=len(ids) // 10, replace=False))] = 0
    grow = rng.choice(ids, size=len(ids) // 10, replace=False)
    pred = np.where(np.isin(pred, grow) | (pred == 0), expand_labels(np.where(np.isin(pred, grow), pred, 0), 3), pred)
    pred = np.where(pred == 0, expand_labels(pred, 1) * (rng.random() < 0.3), pred)  # some touching pairs merge below
    for i in rng.choice(ids, size=len(ids) // 20, replace=False):
        touching = np.unique(pred[ndimage.binary_dilation(pred == i)])
        others = [j for j in touching if j and j != i]
        if others:
            pred[pred == others[0]] = i
    for _ in range(int(rng.integers(0, 4))):
        y, x = rng.integers(0, truth.shape[0] - 6), rng.integers(0, truth.shape[1] - 6)
        pred[y:y + 5, x:x + 5][pred[y:y + 5, x:x + 5] == 0] = int(pred.max()) + 1
    return pred


def make_cases(n: int):
    """``n`` report cases cycling through a pool of distinct synthetic images per size."""
    from dsb.data.synthetic import make_sample
    from dsb.report import Case

    rng = np.random.default_rng(SEED)
    sizes = [shape for shape, count in STAGE1_TRAIN_SIZES for _ in range(count)]
    sizes = [sizes[i % len(sizes)] for i in rng.permutation(max(n, len(sizes)))[:n]]
    pool: dict[tuple, list] = {}
    cases = []
    for index, shape in enumerate(sizes):
        options = pool.setdefault(shape, [])
        if len(options) < POOL_PER_SIZE:
            kind = KINDS[len(cases) % len(KINDS)]
            image, truth = make_sample(rng, kind=kind, shape=shape)
            options.append((kind, image, truth, make_prediction(rng, truth)))
        kind, image, truth, pred = options[index % len(options)]
        cases.append(Case(f"img{index:05d}", kind, image, truth, pred, group=f"g{index % 40}", fold=index % 4))
    return cases


def draw_report(cases, out: Path, workers: int) -> tuple[float, float, int]:
    """Seconds to draw every case and to write the pages; bytes written."""
    from dsb.report import build, html

    shutil.rmtree(out, ignore_errors=True)
    (out / html.IMAGES_DIR).mkdir(parents=True)
    (out / html.THUMBS_DIR).mkdir()
    slugs = build._slugs([c.image_id for c in cases])
    t0 = time.perf_counter()
    rows = list(build._bounded_map(lambda c: build.render_case(c, out, slugs[c.image_id]), cases, workers))
    drawn = time.perf_counter() - t0
    summary = build.summarise(rows)
    rows.sort(key=lambda r: (r["score"], r["image_id"]))
    for rank, row in enumerate(rows):
        page = html.image_page(row, row["_nuclei"], row["per_threshold"], rows[rank - 1] if rank else None,
                               rows[rank + 1] if rank + 1 < len(rows) else None, rank + 1, len(rows), "benchmark")
        (out / html.IMAGES_DIR / f"{row['slug']}.html").write_text(page, encoding="utf-8")
    public = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
    (out / "index.html").write_text(html.index_page("benchmark", "synthetic", summary, public, summary["totals"], False))
    total = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return drawn, total, size


def matplotlib_per_image(case, path: Path) -> None:
    """The baseline: image, truth and prediction overlays as three matplotlib panels at
    native resolution, saved as one PNG per image."""
    from dsb.viz import display_image, overlay_instances, pyplot

    plt = pyplot()
    h, w = case.truth.shape
    shown = display_image(case.image)
    fig, axes = plt.subplots(1, 3, figsize=(3 * w / 100, h / 100), dpi=100)
    for ax, picture in zip(axes, (shown, overlay_instances(shown, case.truth), overlay_instances(shown, case.pred))):
        ax.imshow(picture, interpolation="nearest")
        ax.axis("off")
    fig.subplots_adjust(0, 0, 1, 1, 0, 0)
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, "report_speed")
    p.add_argument("--n", type=int, default=TARGET_N, help="images to draw (default: %(default)s)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="threads (default: one per CPU)")
    p.add_argument("--baseline-budget-s", type=float, default=20.0, help="seconds of matplotlib drawing to measure")
    args = p.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    console = Console()
    t0 = time.perf_counter()
    cases = make_cases(args.n)
    pixels = sum(c.truth.size for c in cases)
    console.print(f"{len(cases)} synthetic images ({pixels / 1e6:.0f} Mpx) made in {time.perf_counter() - t0:.0f} s")
    tmp = Path(tempfile.mkdtemp(prefix="report-speed-"))
    try:
        draw_report(cases[:8], tmp / "warm", 1)  # imports, first-call costs
        runs = {}
        for workers in sorted({1, args.workers}):
            runs[workers] = draw_report(cases, tmp / f"report{workers}", workers)
            console.print(f"{workers} thread(s): drawn in {runs[workers][0]:.1f} s, pages written at {runs[workers][1]:.1f} s")
        baseline_s, baseline_px = 0.0, 0
        for i, case in enumerate(cases):
            if baseline_s >= args.baseline_budget_s:
                break
            t = time.perf_counter()
            matplotlib_per_image(case, tmp / f"mpl{i}.png")
            baseline_s += time.perf_counter() - t
            baseline_px += case.truth.size
        n_baseline = i if baseline_s >= args.baseline_budget_s else len(cases)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    baseline_all_s = baseline_s * pixels / baseline_px
    best = min(runs, key=lambda w: runs[w][1])
    total_s = runs[best][1]
    scaled = total_s * TARGET_N / len(cases)
    out = {
        "benchmark": "report_speed",
        "n_images": len(cases), "megapixels": pixels / 1e6,
        "threads": {str(w): {"draw_s": d, "total_s": t, "images_per_s": len(cases) / t, "report_mb": size / 1e6}
                    for w, (d, t, size) in runs.items()},
        "best_threads": best, "total_s": total_s, "images_per_s": len(cases) / total_s,
        "baseline_matplotlib_per_image": {"images_run": n_baseline, "seconds_on_those": baseline_s,
                                          "seconds_all_images_extrapolated": baseline_all_s,
                                          "ratio_vs_ours": baseline_all_s / total_s},
        f"seconds_for_{TARGET_N}": scaled,
    }
    table = Table(title=f"drawing the report of {len(cases)} images ({pixels / 1e6:.0f} Mpx)")
    for column in ("what", "seconds", "images/s", "ratio"):
        table.add_column(column, justify="left" if column == "what" else "right")
    for w, (d, t, size) in runs.items():
        table.add_row(f"dsb report, {w} thread(s): draw {d:.1f} s + pages ({size / 1e6:.0f} MB)", f"{t:.1f}",
                      f"{len(cases) / t:.1f}", f"{t / total_s:.2f}x")
    table.add_row(f"matplotlib per image ({n_baseline} run, rest extrapolated by pixels)", f"{baseline_all_s:.1f}",
                  f"{len(cases) / baseline_all_s:.1f}", f"{baseline_all_s / total_s:.1f}x slower")
    console.print(table)
    console.print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs while measuring")
    bounds = [bound(f"{TARGET_N} images drawn, pages written", scaled, TARGET_S, "s")]
    return finish(out, args.out, bounds)


if __name__ == "__main__":
    sys.exit(main())
