"""Figures for a training run: training curves and out-of-fold overlays per image type.

``dsb evaluate RUN_DIR --figures DIR`` writes

* ``training_curves.png``: loss and validation mAP per epoch, one line per fold
  (:meth:`dsb.rundir.RunDir.histories`; the HTML report shows the same figure);
* ``overlays.png``: for each image type, a few out-of-fold images chosen by score
  (the quartiles of that type's per-image mAP, so the picture shows typical results,
  not the best ones), each as the true nuclei beside the predicted ones, outlined in the
  colours of their fates (:mod:`dsb.report.fates`, as in the HTML report).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from dsb.config import DataConfig
from dsb.data.kaggle import open_stage
from dsb.data.synthetic import iter_samples
from dsb.report.fates import fate_colours, image_fates, legend
from dsb.rundir import RunDir
from dsb.viz import display_image, paint_outlines, plot_training_curves, pyplot, save_figure


def pick_examples(per_image: pd.DataFrame, per_type: int = 3) -> dict[str, list[str]]:
    """Image ids per image type at evenly spaced quantiles of that type's scores.

    With ``per_type=3`` these are the 25th, 50th and 75th percentile images: what a
    user should expect, neither the best nor the worst case. Deterministic.
    """
    chosen: dict[str, list[str]] = {}
    for image_type, group in per_image.groupby("image_type", sort=True):
        ordered = group.sort_values(["score", "image_id"], kind="stable").reset_index(drop=True)
        n = min(per_type, len(ordered))
        quantiles = np.arange(1, n + 1) / (n + 1)
        rows = sorted({int(round(q * (len(ordered) - 1))) for q in quantiles})
        chosen[str(image_type)] = [ordered.loc[r, "image_id"] for r in rows]
    return chosen


def read_images(data: DataConfig, image_ids: Sequence[str]) -> dict[str, np.ndarray]:
    """The stored uint8 images of ``image_ids`` (not inverted: as a person sees them)."""
    wanted = set(image_ids)
    if data.path == "synthetic":
        return {s.image_id: s.image for s in iter_samples(n=data.synthetic_n, seed=data.synthetic_seed)
                if s.image_id in wanted}
    with open_stage(data.path, labels=None) as stage:
        return {i: stage.read_image_uint8(i) for i in image_ids}


def _window(shape: tuple[int, int], truth: np.ndarray, size: int) -> tuple[slice, slice]:
    """A ``size`` square (or the whole image if smaller) centred on the nuclei's centroid."""
    h, w = shape
    ys, xs = np.nonzero(truth)
    cy, cx = (int(ys.mean()), int(xs.mean())) if len(ys) else (h // 2, w // 2)
    sh, sw = min(size, h), min(size, w)
    y0 = min(max(cy - sh // 2, 0), h - sh)
    x0 = min(max(cx - sw // 2, 0), w - sw)
    return slice(y0, y0 + sh), slice(x0, x0 + sw)


def plot_overlays(
    examples: dict[str, list[str]], images: dict[str, np.ndarray], truths: dict[str, np.ndarray],
    preds: dict[str, np.ndarray], scores: dict[str, float], path: Path, window_px: int = 256,
) -> Path:
    """One row per image type; for each chosen image, truth and prediction side by side,
    every nucleus outlined in the colour of its fate."""
    from matplotlib.patches import Patch

    n_rows = len(examples)
    n_cols = 2 * max((len(v) for v in examples.values()), default=1)
    fig, axes = pyplot().subplots(n_rows, n_cols, figsize=(2.3 * n_cols, 2.5 * n_rows + 0.4), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for row, (image_type, ids) in enumerate(examples.items()):
        for i, image_id in enumerate(ids):
            truth, pred = truths[image_id], preds[image_id]
            fates = image_fates(truth, pred)
            win = _window(truth.shape, truth, window_px)
            image = display_image(images[image_id])[win]
            sides = (("truth", truth, fate_colours(fates.truth, fates.truth_iou)),
                     ("predicted", pred, fate_colours(fates.pred, fates.pred_iou)))
            for j, (what, labels, colours) in enumerate(sides):
                ax = axes[row, 2 * i + j]
                ax.imshow(paint_outlines(image, labels[win], colours))
                n = len(np.unique(labels[win])) - (1 if (labels[win] == 0).any() else 0)
                title = f"{image_type}: {what} ({n})" if j == 0 else f"{what} ({n}), mAP {scores[image_id]:.2f}"
                ax.set_title(title, fontsize=7)
                if j == 0:
                    ax.text(2, image.shape[0] - 4, image_id[:10], color="white", fontsize=6,
                            bbox={"facecolor": "black", "alpha": 0.5, "pad": 1, "linewidth": 0})
    handles = [Patch(facecolor=colour, label=name) for name, colour, _, _ in legend()]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7, frameon=False,
               title="outlines at IoU 0.5 (matched: pale to deep green as IoU rises)", title_fontsize=7)
    return save_figure(fig, path, rect=(0, 0.35 / (2.5 * n_rows + 0.4) + 0.02, 1, 1))


def write_figures(
    run_dir: Path, out_dir: Path, per_image: pd.DataFrame, truths: dict[str, np.ndarray],
    preds: dict[str, np.ndarray], data: DataConfig, per_type: int = 3,
    histories: Optional[dict[str, Sequence[dict]]] = None,
) -> list[Path]:
    """Write ``training_curves.png`` (if the run has metrics) and ``overlays.png`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    histories = histories if histories is not None else RunDir(run_dir).histories()
    if histories:
        written.append(plot_training_curves(histories, out_dir / "training_curves.png"))
    examples = pick_examples(per_image, per_type)
    images = read_images(data, [i for ids in examples.values() for i in ids])
    scores = dict(zip(per_image["image_id"], per_image["score"]))
    written.append(plot_overlays(examples, images, truths, preds, scores, out_dir / "overlays.png"))
    return written
