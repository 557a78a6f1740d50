"""An out-of-fold estimate that travels: the held-out images weighted to another image set.

The grouped out-of-fold mAP averages over the training images' own mix: their image types,
their nucleus sizes, and how far each held-out experiment lies from the experiments its fold
model trained on. A test set differs in all three (the stage-1 test images have smaller
nuclei than the training images, and about half come from experiments unlike any training
one), and the model's score moves with each (small nuclei and unseen stains score lower),
so the plain out-of-fold mean is optimistic for it. This module reweights the held-out
images so that their mix matches a target set's, measured without its labels:

* **image type** (:func:`dsb.data.imagetypes.classify_image`);
* **nucleus size**: the median area of the nuclei a model predicts in the image (for the
  held-out images, the out-of-fold predictions; for the target images, a prediction without
  TTA, or a submission CSV's instances), binned by :data:`SIZE_EDGES`;
* **novelty**: the distance from the image's appearance features
  (:func:`dsb.data.groups.image_features`, standardised over the training images) to the
  nearest image of the same type that its model trained on (a held-out image: the other
  folds' images; a target image: all training images); ``new`` beyond ``novelty_threshold``
  (default: the folds' grouping threshold, the distance at which experiment groups part).

Each target image picks the held-out images that share its type, size bin and novelty (or,
where fewer than ``min_matches`` do, its type and size bin; then its type; then all) and
spreads its weight evenly over them; the estimate is the weighted mean of the held-out image
scores, with a bootstrap interval that resamples experiment groups.

>>> import pandas as pd
>>> source = pd.DataFrame({"image_type": ["a", "a", "b"], "size_bin": ["<100", ">800", "<100"],
...                        "novel": [False, False, True]})
>>> target = pd.DataFrame({"image_type": ["a", "b", "b"], "size_bin": [">800", "<100", "<100"],
...                        "novel": [False, True, True]})
>>> match_weights(source, target, min_matches=1)[0].round(3).tolist()
[0.0, 0.333, 0.667]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import pandas as pd

__all__ = ["SIZE_EDGES", "size_bin", "median_areas", "novelty_distances", "match_weights", "weighted_interval",
           "MatchedEstimate", "matched_estimate"]

#: Bins of an image's median predicted nucleus area, in pixels.
SIZE_EDGES = (0.0, 100.0, 200.0, 400.0, 800.0, float("inf"))
#: The cells a target image looks for among the held-out images, finest first.
MATCH_LEVELS = (("image_type", "size_bin", "novel"), ("image_type", "size_bin"), ("image_type",), ())


def size_bin(area_px: float) -> str:
    """The :data:`SIZE_EDGES` bin of a median nucleus area, as a label.

    >>> size_bin(50.0), size_bin(250.0), size_bin(5000.0), size_bin(0.0)
    ('<100', '200-400', '>800', 'none')
    """
    if not np.isfinite(area_px) or area_px <= 0:
        return "none"
    for lo, hi in zip(SIZE_EDGES[:-1], SIZE_EDGES[1:]):
        if lo <= area_px < hi:
            return f"<{hi:g}" if lo == 0 else (f">{lo:g}" if not np.isfinite(hi) else f"{lo:g}-{hi:g}")
    raise AssertionError(area_px)


def median_areas(label_map: np.ndarray) -> float:
    """Median instance area of a label map in pixels (0.0 without instances)."""
    counts = np.bincount(np.asarray(label_map).ravel())[1:]
    counts = counts[counts > 0]
    return float(np.median(counts)) if counts.size else 0.0


def novelty_distances(
    query: np.ndarray, query_types: Sequence[str], reference: np.ndarray, reference_types: Sequence[str],
    mean: np.ndarray, scale: np.ndarray, exclude_self: bool = False,
) -> np.ndarray:
    """Distance from each query image's features to the nearest reference image of its type.

    Features are standardised by ``mean`` and ``scale`` (the training images'); an image
    type absent from the reference gives ``inf``. With ``exclude_self`` query ``i`` is
    reference ``i`` and is skipped.
    """
    q = (np.asarray(query, np.float64) - mean) / scale
    r = (np.asarray(reference, np.float64) - mean) / scale
    q_types, r_types = np.asarray(query_types), np.asarray(reference_types)
    out = np.full(len(q), np.inf)
    for kind in np.unique(q_types):
        qi, ri = np.flatnonzero(q_types == kind), np.flatnonzero(r_types == kind)
        if ri.size == 0:
            continue
        d = np.sqrt(((q[qi, None, :] - r[None, ri, :]) ** 2).sum(-1))
        if exclude_self:
            d[qi[:, None] == ri[None, :]] = np.inf
        out[qi] = d.min(axis=1)
    return out


def match_weights(source: pd.DataFrame, target: pd.DataFrame, min_matches: int = 3) -> tuple[np.ndarray, pd.DataFrame]:
    """Weights of the ``source`` (held-out) images that give them ``target``'s mix.

    Both frames have ``image_type``, ``size_bin`` and ``novel`` columns. Each target image
    takes the finest cell of :data:`MATCH_LEVELS` that holds at least ``min_matches`` source
    images (or any, at the last level) and gives each of them ``1 / (n_target * n_cell)``.

    Returns the weights (summing to 1, in ``source``'s order) and one row per target cell:
    its key, the level it was matched at, the target and source image counts.
    """
    if len(source) == 0 or len(target) == 0:
        raise ValueError("match_weights needs held-out and target images")
    weights = np.zeros(len(source))
    rows = []
    keys = list(MATCH_LEVELS[0])
    for cell, members in target.groupby(keys, sort=True, dropna=False):
        cell_key = dict(zip(keys, cell if isinstance(cell, tuple) else (cell,)))
        for level in MATCH_LEVELS:
            mask = np.ones(len(source), bool)
            for k in level:
                mask &= source[k].to_numpy() == cell_key[k]
            if mask.sum() >= min_matches or (not level and mask.any()):
                break
        weights[mask] += len(members) / len(target) / mask.sum()
        rows.append({**cell_key, "matched_on": "+".join(level) or "all", "n_target": len(members),
                     "n_source": int(mask.sum())})
    return weights, pd.DataFrame(rows)


def weighted_interval(
    scores: Sequence[float], weights: Sequence[float], groups: Sequence[str], n_boot: int = 2000,
    level: float = 0.95, seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of a weighted mean score, resampling whole groups (as
    :func:`dsb.evaluate.bootstrap_interval` does for the plain mean)."""
    scores, weights = np.asarray(scores, np.float64), np.asarray(weights, np.float64)
    names, index = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
    wsum = np.bincount(index, weights=weights * scores, minlength=len(names))
    wtot = np.bincount(index, weights=weights, minlength=len(names))
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(names), size=(n_boot, len(names)))
    den = wtot[draws].sum(axis=1)
    means = wsum[draws].sum(axis=1)[den > 0] / den[den > 0]
    tail = (1.0 - level) / 2.0
    return float(np.quantile(means, tail)), float(np.quantile(means, 1.0 - tail))


@dataclass
class MatchedEstimate:
    """The held-out images' mAP weighted to a target set's mix."""

    map: float
    interval: tuple[float, float]
    #: The plain (unweighted) mean of the same held-out images.
    plain_map: float
    #: ``(sum w)^2 / sum w^2``: how many held-out images the weighted mean rests on.
    effective_n: float
    n_target: int
    #: Per held-out image: image_id, image_type, size_bin, novel, novelty, median_area_px, score, weight.
    source: pd.DataFrame = field(repr=False)
    #: Per target image: image_id, image_type, size_bin, novel, novelty, median_area_px.
    target: pd.DataFrame = field(repr=False)
    #: Per target cell: its key, how it was matched, target and held-out counts.
    cells: pd.DataFrame = field(repr=False)
    novelty_threshold: float = 0.0

    def mix(self) -> pd.DataFrame:
        """Shares of target and held-out images, and the held-out mAP, per type, size bin and novelty."""
        parts = []
        order = {size_bin(lo) if lo > 0 else size_bin(1.0): i for i, lo in enumerate(SIZE_EDGES[:-1])}
        for key in ("image_type", "size_bin", "novel"):
            src = self.source.groupby(key).agg(held_out=("score", "size"), held_out_map=("score", "mean"))
            tgt = self.target.groupby(key).size().rename("target")
            frame = src.join(tgt, how="outer").fillna(0).reset_index().rename(columns={key: "value"})
            if key == "size_bin":
                frame = frame.sort_values("value", key=lambda v: v.map(lambda b: order.get(b, -1)), kind="stable")
            frame.insert(0, "by", key)
            frame["value"] = frame["value"].astype(str)
            frame["held_out_share"] = frame["held_out"] / max(1, len(self.source))
            frame["target_share"] = frame["target"] / max(1, len(self.target))
            parts.append(frame)
        return pd.concat(parts, ignore_index=True)

    def to_dict(self) -> dict:
        return {
            "map": self.map, "interval": list(self.interval), "plain_map": self.plain_map,
            "effective_n": self.effective_n, "n_target": self.n_target, "n_held_out": int(len(self.source)),
            "novelty_threshold": self.novelty_threshold,
            "target_median_area_px": float(self.target["median_area_px"].median()),
            "held_out_median_area_px": float(self.source["median_area_px"].median()),
            "target_new_share": float(self.target["novel"].mean()),
            "held_out_new_share": float(self.source["novel"].mean()),
            "mix": self.mix().to_dict(orient="records"),
        }


def matched_estimate(
    source: pd.DataFrame, target: pd.DataFrame, novelty_threshold: float, min_matches: int = 3,
) -> MatchedEstimate:
    """The weighted estimate from per-image profiles.

    ``source`` (held-out images) has ``image_id``, ``image_type``, ``median_area_px``,
    ``novelty``, ``score`` and ``group``; ``target`` has ``image_id``, ``image_type``,
    ``median_area_px`` and ``novelty``. Images with ``novelty >= novelty_threshold`` are new.
    """
    source, target = source.copy(), target.copy()
    for frame in (source, target):
        frame["size_bin"] = [size_bin(a) for a in frame["median_area_px"]]
        frame["novel"] = frame["novelty"].to_numpy() >= novelty_threshold
    weights, cells = match_weights(source, target, min_matches)
    source["weight"] = weights
    scores = source["score"].to_numpy(np.float64)
    interval = weighted_interval(scores, weights, source["group"].to_numpy())
    return MatchedEstimate(
        map=float(np.dot(weights, scores)), interval=interval, plain_map=float(scores.mean()),
        effective_n=float(weights.sum() ** 2 / max((weights**2).sum(), 1e-300)), n_target=len(target),
        source=source, target=target, cells=cells, novelty_threshold=float(novelty_threshold),
    )
