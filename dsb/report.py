"""Figures for a training run: training curves and out-of-fold overlays per image type.

``dsb evaluate RUN_DIR --figures DIR`` writes

* ``training_curves.png``: loss and validation mAP per epoch, one line per fold
  (from ``fold<k>/metrics.jsonl``);
* ``overlays.png``: for each image type, a few out-of-fold images chosen by score
  (the quartiles of that type's per-image mAP, so the picture shows typical results,
  not the best ones), each as the true nuclei beside the predicted ones.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np
import pandas as pd

from dsb.viz import overlay_instances, plot_training_curves, pyplot, save_figure

if TYPE_CHECKING:
    from dsb.config import DataConfig


def read_histories(run_dir: Path) -> dict[str, list[dict]]:
    """``{"fold k": [epoch records]}`` for every fold with a metrics.jsonl."""
    histories = {}
    for path in sorted(Path(run_dir).glob("fold*/metrics.jsonl")):
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if records:
            histories[f"fold {path.parent.name[4:]}"] = records
    return histories


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


def _window(shape: tuple[int, int], truth: np.ndarray, size: int) -> tuple[slice, slice]:
    """A ``size`` square (or the whole image if smaller) centred on the nuclei's centroid."""
    h, w = shape
    ys, xs = np.nonzero(truth)
    cy, cx = (int(ys.mean()), int(xs.mean())) if len(ys) else (h // 2, w // 2)
    sh, sw = min(size, h), min(size, w)
    y0 = min(max(cy - sh // 2, 0), h - sh)
    x0 = min(max(cx - sw // 2, 0), w - sw)
    return slice(y0, y0 + sh), slice(x0, x0 + sw)


def _stretch(image: np.ndarray) -> np.ndarray:
    """Contrast stretch for display only (0.5-99.5 percentiles to 0-255): dim
    fluorescence images would otherwise show as black."""
    lo, hi = np.percentile(image, [0.5, 99.5])
    if hi <= lo:
        return image
    return np.clip((image.astype(np.float32) - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)


def plot_overlays(
    examples: dict[str, list[str]], images: dict[str, np.ndarray], truths: dict[str, np.ndarray],
    preds: dict[str, np.ndarray], scores: dict[str, float], path: Path, window_px: int = 256,
) -> Path:
    """One row per image type; for each chosen image, truth and prediction side by side."""
    n_rows = len(examples)
    n_cols = 2 * max((len(v) for v in examples.values()), default=1)
    fig, axes = pyplot().subplots(n_rows, n_cols, figsize=(2.3 * n_cols, 2.5 * n_rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for row, (image_type, ids) in enumerate(examples.items()):
        for i, image_id in enumerate(ids):
            win = _window(truths[image_id].shape, truths[image_id], window_px)
            image = _stretch(images[image_id][win])
            for j, (what, labels) in enumerate((("truth", truths[image_id]), ("predicted", preds[image_id]))):
                ax = axes[row, 2 * i + j]
                ax.imshow(overlay_instances(image, labels[win]))
                n = len(np.unique(labels[win])) - (1 if (labels[win] == 0).any() else 0)
                title = f"{image_type}: {what} ({n})" if j == 0 else f"{what} ({n}), mAP {scores[image_id]:.2f}"
                ax.set_title(title, fontsize=7)
                if j == 0:
                    ax.text(2, image.shape[0] - 4, image_id[:10], color="white", fontsize=6,
                            bbox={"facecolor": "black", "alpha": 0.5, "pad": 1, "linewidth": 0})
    return save_figure(fig, path)


def write_figures(
    run_dir: Path, out_dir: Path, per_image: pd.DataFrame, truths: dict[str, np.ndarray],
    preds: dict[str, np.ndarray], data: "DataConfig", per_type: int = 3,
    histories: Optional[dict[str, Sequence[dict]]] = None,
) -> list[Path]:
    """Write ``training_curves.png`` (if the run has metrics) and ``overlays.png`` into ``out_dir``."""
    from dsb.data.kaggle import open_stage

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    histories = histories if histories is not None else read_histories(run_dir)
    if histories:
        written.append(plot_training_curves(histories, out_dir / "training_curves.png"))
    examples = pick_examples(per_image, per_type)
    wanted = [i for ids in examples.values() for i in ids]
    if data.path == "synthetic":
        from dsb.data.synthetic import generate_samples

        images = {}
        for image_id, image, _labels in generate_samples(n=data.synthetic_n, seed=data.synthetic_seed):
            if image_id in wanted:
                images[image_id] = image
    else:
        stage = open_stage(data.path, labels=None)
        images = {i: stage.read_image_uint8(i) for i in wanted}
    scores = dict(zip(per_image["image_id"], per_image["score"]))
    written.append(plot_overlays(examples, images, truths, preds, scores, out_dir / "overlays.png"))
    return written
