"""An instance filter: drop predicted nuclei that are probably false, as the 1st place did.

A gradient-boosted regressor (:class:`sklearn.ensemble.HistGradientBoostingRegressor`)
predicts, for every predicted instance, its IoU with the best-matching true nucleus from
the instance's shape and the probabilities under it (:func:`instance_features`). Instances
predicted below ``threshold`` are removed. It is fitted and its threshold chosen on
out-of-fold predictions (:func:`dsb.evaluate.fit_instance_filter`), so it learns what the
model's mistakes look like on images the model never saw.

>>> import numpy as np
>>> labels = np.zeros((20, 20), np.int32); labels[2:8, 2:8] = 1; labels[12:14, 12:14] = 2
>>> probs = np.zeros((1, 20, 20), np.float32); probs[0][labels > 0] = 0.9
>>> instance_features(labels, probs, ["body"]).shape
(2, 16)
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import ndimage as ndi
from skimage.measure import regionprops_table

from dsb.errors import CheckpointError
from dsb.postprocess.instances import grow_labels, labels_from_probs
from dsb.utils import atomic_write

__all__ = ["FEATURES", "InstanceFilter", "drop_instances", "filtered_labels", "instance_features", "instance_ious",
           "load_filter"]

FEATURES = (
    "log_area", "perimeter_ratio", "solidity", "eccentricity", "extent", "axis_ratio",
    "body_mean", "body_min", "body_max", "border_mean", "touching_mean", "at_edge",
    "log_n_instances", "log_median_area", "relative_area", "neighbour_distance",
)


def instance_features(label_map: np.ndarray, probs: np.ndarray, channels: Sequence[str]) -> np.ndarray:
    """One row of :data:`FEATURES` per instance ``1..n`` of ``label_map`` (float64, (n, 16))."""
    label_map = np.asarray(label_map)
    n = int(label_map.max(initial=0))
    if n == 0:
        return np.zeros((0, len(FEATURES)))
    maps = {name: np.asarray(probs[i], dtype=np.float32) for i, name in enumerate(channels)}
    body = maps["body"]
    props = regionprops_table(label_map, properties=(
        "label", "area", "perimeter", "solidity", "eccentricity", "extent",
        "axis_major_length", "axis_minor_length", "bbox", "centroid"))
    index = props["label"]
    area = props["area"].astype(np.float64)
    zero = np.zeros(n)

    def mean_of(name: str) -> np.ndarray:
        return np.asarray(ndi.mean(maps[name], label_map, index)) if name in maps else zero

    h, w = label_map.shape
    at_edge = ((props["bbox-0"] == 0) | (props["bbox-1"] == 0) | (props["bbox-2"] == h) | (props["bbox-3"] == w))
    centres = np.stack([props["centroid-0"], props["centroid-1"]], axis=1)
    if n > 1:
        from scipy.spatial import cKDTree

        distance = cKDTree(centres).query(centres, k=2)[0][:, 1]
    else:
        distance = np.full(n, float(max(h, w)))
    median_area = float(np.median(area))
    return np.column_stack([
        np.log1p(area), props["perimeter"] / np.sqrt(area), props["solidity"], props["eccentricity"],
        props["extent"], props["axis_minor_length"] / np.maximum(props["axis_major_length"], 1e-6),
        mean_of("body"), np.asarray(ndi.minimum(body, label_map, index)), np.asarray(ndi.maximum(body, label_map, index)),
        mean_of("border"), mean_of("touching"), at_edge.astype(np.float64),
        np.full(n, np.log1p(n)), np.full(n, np.log1p(median_area)), area / median_area,
        distance / np.sqrt(median_area),
    ]).astype(np.float64)


def instance_ious(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """For each predicted instance ``1..n`` of ``pred``, its best IoU with an instance of ``truth``."""
    truth = np.asarray(truth).ravel().astype(np.int64)
    pred = np.asarray(pred).ravel().astype(np.int64)
    nt, npred = int(truth.max(initial=0)), int(pred.max(initial=0))
    if npred == 0:
        return np.zeros(0)
    if nt == 0:
        return np.zeros(npred)
    overlap = np.bincount(truth * (npred + 1) + pred, minlength=(nt + 1) * (npred + 1)).reshape(nt + 1, npred + 1)
    area_t, area_p = overlap.sum(axis=1)[1:], overlap.sum(axis=0)[1:]
    inter = overlap[1:, 1:]
    union = area_t[:, None] + area_p[None, :] - inter
    return (inter / np.maximum(union, 1)).max(axis=0)


@dataclass
class InstanceFilter:
    """A fitted regressor of instance IoU and the threshold below which instances go."""

    model: Any
    threshold: float
    channels: tuple[str, ...]

    def predict_iou(self, label_map: np.ndarray, probs: np.ndarray) -> np.ndarray:
        feats = instance_features(label_map, probs, self.channels)
        return self.model.predict(feats) if len(feats) else np.zeros(0)

    def apply(self, label_map: np.ndarray, probs: np.ndarray) -> np.ndarray:
        """``label_map`` without the instances predicted below ``threshold``, renumbered 1..m
        (:func:`drop_instances`: an image is never emptied)."""
        if self.threshold <= 0 or not label_map.any():
            return label_map
        return drop_instances(label_map, self.predict_iou(label_map, probs), self.threshold)

    def save(self, path: str | Path) -> Path:
        with atomic_write(path, "wb") as fh:
            pickle.dump({"format": "dsb-instance-filter-1", "model": self.model, "threshold": self.threshold,
                         "channels": list(self.channels), "features": list(FEATURES)}, fh)
        return Path(path)


def drop_instances(label_map: np.ndarray, predicted_iou: np.ndarray, threshold: float) -> np.ndarray:
    """``label_map`` (instances ``1..n``) without those whose ``predicted_iou`` is below
    ``threshold``, renumbered ``1..m``. An image is never emptied: where every instance falls
    below the threshold, all of them stay. Every image of this task holds nuclei, and an
    empty prediction scores 0 on it whatever is true, so a filter that would reject every
    instance of an image is one whose features do not describe that image: it abstains.

    >>> labels = np.array([[1, 0, 2, 2, 0, 3]], np.int32)
    >>> drop_instances(labels, np.array([0.8, 0.1, 0.6]), 0.5)
    array([[1, 0, 0, 0, 0, 2]], dtype=int32)
    >>> drop_instances(labels, np.array([0.2, 0.1, 0.3]), 0.5)  # all below: all stay
    array([[1, 0, 2, 2, 0, 3]], dtype=int32)
    """
    keep = np.asarray(predicted_iou) >= threshold
    if threshold <= 0 or not keep.any():
        return label_map
    new_ids = np.concatenate([[0], np.cumsum(keep) * keep]).astype(np.int32)
    return new_ids[label_map]


def filtered_labels(probs: np.ndarray, channels: Sequence[str], post, instance_filter: "InstanceFilter | None") -> np.ndarray:
    """The label map that prediction writes: :func:`labels_from_probs` with ``post`` (a
    :class:`~dsb.config.PostprocessConfig`), the instance filter (if any) applied *before*
    ``post.expand_px`` grows the kept instances, as the filter was fitted on ungrown ones
    (:func:`dsb.evaluate.fit_instance_filter`): growing first would shift its features (a
    wider rim of low probability) and drop nuclei it would keep.

    >>> probs = np.zeros((1, 20, 20), np.float32); probs[0, 5:12, 5:12] = 0.9
    >>> from dsb.config import PostprocessConfig
    >>> post = PostprocessConfig(min_seed_area_px=1, min_area_px=1, expand_px=1.0)
    >>> int((filtered_labels(probs, ["body"], post, None) > 0).sum())  # 7 x 7 and 4 x 7 px of rim
    77
    """
    if instance_filter is None:
        return labels_from_probs(probs, channels, post)
    labels = labels_from_probs(probs, channels, replace(post, expand_px=0.0))
    return grow_labels(instance_filter.apply(labels, probs), post.expand_px)


def load_filter(path: str | Path) -> InstanceFilter:
    """Read a filter written by :meth:`InstanceFilter.save`; :class:`CheckpointError` if it is not one."""
    try:
        with open(path, "rb") as fh:
            data = pickle.load(fh)
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError) as exc:
        raise CheckpointError(f"{path}: cannot read the instance filter: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != "dsb-instance-filter-1" or data.get("features") != list(FEATURES):
        raise CheckpointError(f"{path}: not an instance filter of this dsb version")
    return InstanceFilter(data["model"], float(data["threshold"]), tuple(data["channels"]))
