"""How fast `dsb score` scores a stage-1-sized submission from CSVs.

A seeded synthetic solution of 65 images with the stage-1 test set's sizes (24 of
256x256 up to 520x696; 3 to ~330 nuclei per image) and a prediction that is a perturbed
copy of it (shifted, grown or shrunk, some nuclei dropped, some added) are written as
CSVs. Then:

* ``dsb.submission.score_submission(submission.csv, solution.csv)`` end to end (read and
  validate the submission, read the solution, paint both, score), median of several runs;
* the metric alone (:func:`dsb.metrics.image_score` on in-memory label maps) against a
  naive per-pair loop (for every true nucleus, for every predicted one, IoU from two
  full-image boolean masks), side by side on the same images. The naive loop is run on
  as many images as fit in ``--naive-budget-s`` (it takes minutes for all 65); the ratio
  is measured on those images, and the naive time for all 65 is extrapolated from its
  cost per (pair x pixel). Both must give identical image scores.

Usage: ``python benchmarks/score_speed.py [--repeats 5] [--naive-budget-s 20] [--out benchmarks/results/score_speed.json]``
Prints a table; writes JSON.
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import finish, parser, timed

#: Sizes (H, W) of the 65 stage-1 test images, with counts.
STAGE1_TEST_SIZES = (
    ((256, 256), 24), ((512, 680), 8), ((512, 640), 8), ((519, 253), 4), ((524, 348), 4), ((520, 348), 4),
    ((260, 347), 4), ((520, 696), 4), ((519, 162), 2), ((519, 161), 2), ((390, 239), 1),
)
SEED = 0
TARGET_S = 1.0


def make_truth(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Non-overlapping ellipses; count and size vary per image like the real sets."""
    from skimage.draw import ellipse

    # Nuclei per image: log-normal around the training set's median of 27, within the
    # stage-1 test set's range of 3 to 329; their size follows from 5-30% coverage.
    n = int(np.clip(rng.lognormal(np.log(27), 0.9), 3, 329))
    radius = float(np.clip(np.sqrt(rng.uniform(0.05, 0.3) * shape[0] * shape[1] / (np.pi * n)), 3, 40))
    label_map = np.zeros(shape, np.int32)
    label = 0
    for _ in range(4 * n):
        if label == n:
            break
        rr, cc = ellipse(rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), radius * rng.uniform(0.6, 1.4),
                         radius * rng.uniform(0.6, 1.4), shape=shape, rotation=rng.uniform(0, np.pi))
        free = label_map[rr, cc] == 0
        if free.sum() >= max(8, 0.7 * rr.size):
            label += 1
            label_map[rr[free], cc[free]] = label
    return label_map


def make_prediction(rng: np.random.Generator, truth: np.ndarray) -> np.ndarray:
    """A plausible prediction: shifted, grown or shrunk, ~10% dropped, a few extra."""
    from scipy import ndimage
    from skimage.segmentation import expand_labels

    pred = np.roll(truth, tuple(rng.integers(-1, 2, size=2)), axis=(0, 1))
    if rng.random() < 0.5:
        pred = expand_labels(pred, distance=1)
    else:
        pred = np.where(ndimage.grey_erosion(pred, size=(3, 3)) == pred, pred, 0)
    ids = np.unique(pred)[1:]
    pred[np.isin(pred, rng.choice(ids, size=len(ids) // 10, replace=False))] = 0
    extra = make_truth(rng, truth.shape)
    extra[extra > max(1, len(ids) // 20)] = 0
    return np.where((pred == 0) & (extra > 0), extra + int(truth.max()) + 1, pred)


def naive_image_score(true: np.ndarray, pred: np.ndarray) -> float:
    """The baseline: IoU of every (true, predicted) pair from full-image boolean masks."""
    true_masks = [true == i for i in np.unique(true) if i]
    pred_masks = [pred == j for j in np.unique(pred) if j]
    if not true_masks and not pred_masks:
        return 1.0
    iou = np.zeros((len(true_masks), len(pred_masks)))
    for a, t in enumerate(true_masks):
        for b, p in enumerate(pred_masks):
            iou[a, b] = np.logical_and(t, p).sum() / np.logical_or(t, p).sum()
    precisions = []
    for k in range(10, 20):
        matches = iou > k / 20
        tp = int((matches.sum(axis=1) == 1).sum())
        fp, fn = len(pred_masks) - tp, len(true_masks) - tp
        precisions.append(tp / (tp + fp + fn))
    return float(np.mean(precisions))


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, "score_speed")
    p.add_argument("--repeats", type=int, default=5, help="timed calls of score_submission")
    p.add_argument("--naive-budget-s", type=float, default=20.0, help="seconds of the naive loop to measure")
    args = p.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    from dsb.metrics import image_score
    from dsb.rle import label_map_to_rows
    from dsb.submission import score_submission, write_submission_from_label_maps

    console = Console()
    rng = np.random.default_rng(SEED)
    shapes = [shape for shape, count in STAGE1_TEST_SIZES for _ in range(count)]
    shapes = [shapes[i] for i in rng.permutation(len(shapes))]
    ids = [hashlib.sha256(f"score-speed/{SEED}/{i}".encode()).hexdigest() for i in range(len(shapes))]
    truths = {image_id: make_truth(rng, shape) for image_id, shape in zip(ids, shapes)}
    preds = {image_id: make_prediction(rng, truth) for image_id, truth in truths.items()}

    with tempfile.TemporaryDirectory() as tmp:
        solution = Path(tmp) / "solution.csv"
        with open(solution, "w") as fh:
            fh.write("ImageId,EncodedPixels,Height,Width,Usage\n")
            for image_id, truth in truths.items():
                h, w = truth.shape
                fh.writelines(f"{i},{rle},{h},{w},Public\n" for i, rle in label_map_to_rows(image_id, truth))
        submission = write_submission_from_label_maps(
            Path(tmp) / "submission.csv", preds.items(), {i: t.shape for i, t in truths.items()}
        )
        n_rows = sum(1 for _ in open(submission)) - 1
        result = score_submission(submission, solution)  # warm-up (imports, numba)
        end_to_end = timed(lambda: score_submission(submission, solution), args.repeats, warmup=0)

    # The metric alone vs the naive per-pair loop, on the same images.
    # The naive loop runs on the cheapest images first (cost ~ pairs x pixels) until the
    # budget is spent; that is where our fixed per-image overhead weighs most, so the
    # measured ratio is on the conservative side.
    metric_times, naive_times, pair_pixels, scores = {}, {}, {}, {}
    for image_id in ids:
        t0 = time.perf_counter()
        scores[image_id] = image_score(truths[image_id], preds[image_id]).score
        metric_times[image_id] = time.perf_counter() - t0
        n_t, n_p = int(truths[image_id].max()), len(np.unique(preds[image_id])) - 1
        pair_pixels[image_id] = n_t * n_p * truths[image_id].size
    for image_id in sorted(ids, key=pair_pixels.get):
        if sum(naive_times.values()) >= args.naive_budget_s:
            break
        t0 = time.perf_counter()
        naive = naive_image_score(truths[image_id], preds[image_id])
        naive_times[image_id] = time.perf_counter() - t0
        if not naive == scores[image_id] == result.per_image[image_id]:
            raise SystemExit(f"{image_id}: naive {naive} != ours {scores[image_id]}")
    naive_ids = list(naive_times)

    naive_s = sum(naive_times.values())
    metric_on_naive_s = sum(metric_times[i] for i in naive_ids)
    naive_per_pair_pixel = naive_s / sum(pair_pixels[i] for i in naive_ids)
    naive_all_s = naive_per_pair_pixel * sum(pair_pixels.values())

    e2e_s = end_to_end.median
    out = {
        "benchmark": "score_speed",
        "n_images": result.n_images,
        "n_true": int(sum(int(t.max()) for t in truths.values())),
        "n_submission_rows": n_rows,
        "map": result.map,
        "score_submission_s": {"median": e2e_s, "min": end_to_end.min, "repeats": args.repeats},
        "metric_only_s_all_images": sum(metric_times.values()),
        "naive": {
            "images_run": len(naive_ids),
            "seconds_on_those": naive_s,
            "ours_metric_seconds_on_those": metric_on_naive_s,
            "speedup_metric_vs_naive": naive_s / metric_on_naive_s,
            "seconds_all_images": naive_all_s,
            "all_images_measured": len(naive_ids) == len(ids),  # else extrapolated per pair x pixel
            "speedup_end_to_end_vs_naive_metric_extrapolated": naive_all_s / e2e_s,
            "scores_identical": True,
        },
        "target_s": TARGET_S,
        "meets_target": e2e_s < TARGET_S,
    }

    table = Table(title=f"scoring {result.n_images} images ({n_rows} submission rows, {out['n_true']} true nuclei)")
    for column in ("what", "seconds", "ratio"):
        table.add_column(column, justify="left" if column == "what" else "right")
    table.add_row("score_submission from CSVs (read, validate, paint, score)", f"{e2e_s:.3f}", "")
    table.add_row("metric only, all images (image_score)", f"{sum(metric_times.values()):.3f}", "")
    table.add_row(f"metric only, {len(naive_ids)} images", f"{metric_on_naive_s:.4f}", "1.0x")
    table.add_row(f"naive per-pair IoU loop, same {len(naive_ids)} images", f"{naive_s:.2f}",
                  f"{naive_s / metric_on_naive_s:.0f}x slower")
    how = "measured" if len(naive_ids) == len(ids) else "extrapolated"
    table.add_row(f"naive metric, all {result.n_images} images ({how})", f"{naive_all_s:.1f}",
                  f"{naive_all_s / e2e_s:.0f}x our end-to-end time")
    console.print(table)
    verdict = "[green]meets[/]" if out["meets_target"] else "[red]misses[/]"
    console.print(f"target < {TARGET_S:.0f} s end to end: {verdict} ({e2e_s:.3f} s); mAP of the perturbed "
                  f"prediction {result.map:.4f}; naive and vectorised scores identical")
    return finish(out, args.out)


if __name__ == "__main__":
    sys.exit(main())
