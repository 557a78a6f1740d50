"""The 2018 Data Science Bowl metric: mean average precision over IoU thresholds.

This is the definition on the competition's Evaluation page
(https://www.kaggle.com/c/data-science-bowl-2018/overview/evaluation), as Kaggle scored
stage 1 and stage 2:

* For one image and a threshold ``t`` in ``0.50, 0.55, ..., 0.95``, a predicted nucleus
  is a hit (true positive) when its intersection over union with a true nucleus is
  **strictly greater** than ``t``. A true nucleus with no hit is a false negative, a
  predicted one with no hit a false positive; the image's precision at ``t`` is
  ``TP(t) / (TP(t) + FP(t) + FN(t))``.
* The image's score is the mean of those ten values; the dataset's score (the
  leaderboard number) is the mean of the image scores.
* An image with neither true nor predicted nuclei scores 1 at every threshold; an image
  with true nuclei and no prediction, or predictions and no true nucleus, scores 0.

Decisions are made in integers: with ``t = k / 20`` (``k = 10..19``),
``IoU > t`` exactly when ``20 * intersection > k * union``, so an IoU of exactly 0.8
(intersection 4, union 5) is *not* a hit at ``t = 0.8``. Float IoUs (used by other
implementations, e.g. stardist's float32) can misjudge such ties.

Why "TP = number of (true, predicted) pairs with IoU > t" is Kaggle's count: nuclei of a
label map are disjoint, and for ``t >= 0.5`` a pair with ``IoU > t`` has
``|a ∩ b| > |a ∪ b| / 2 >= |a| / 2`` and likewise ``> |b| / 2``. Two disjoint predictions
cannot each cover more than half of the same true nucleus (and vice versa), so every
nucleus is in at most one such pair: the pairs already form a matching, and any matching
rule (Kaggle's reference ``np.sum(iou > t, axis=1) == 1``, greedy, Hungarian) counts
exactly those pairs.

This module is NumPy on label maps only, as stardist's ``matching.py``: it reads no file.
Scoring a submission CSV against a solution CSV or held-out masks is
:func:`dsb.submission.score_submission`.

>>> import numpy as np
>>> true = np.zeros((4, 6), np.int32); true[:, :3] = 7; true[:, 4:] = 9
>>> pred = np.zeros((4, 6), np.int32); pred[:, :3] = 1; pred[:2, 4:] = 2
>>> s = image_score(true, pred)   # nucleus 7 matches exactly (IoU 1); 9 has IoU 0.5
>>> s.tp.tolist()                 # 0.5 is not > 0.5: one hit at every threshold
[1, 1, 1, 1, 1, 1, 1, 1, 1, 1]
>>> round(s.score, 4)             # 1 / (1 + 1 + 1) at every threshold
0.3333
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from types import MappingProxyType

import numpy as np

__all__ = [
    "THRESHOLDS",
    "ImageScore",
    "DatasetScore",
    "image_score",
    "score_label_maps",
]

#: Numerators of the thresholds over 20: t = k / 20 for k = 10..19.
_THRESHOLD_K = np.arange(10, 20, dtype=np.int64)
#: The competition's IoU thresholds 0.50, 0.55, ..., 0.95 (for display; decisions use k/20).
THRESHOLDS: np.ndarray = _THRESHOLD_K / 20.0
THRESHOLDS.flags.writeable = False
_THRESHOLD_K.flags.writeable = False

# A dense (true id x pred id) table above this many cells would waste memory and time
# (huge ids, or a noise prediction with 10^5 labels): ids are then relabelled, and if
# still too many, the table is built sparse with np.unique.
_MAX_DENSE_CELLS = 1 << 22


def _frozen(values, dtype) -> np.ndarray:
    array = np.array(values, dtype=dtype)
    array.flags.writeable = False
    return array


@dataclasses.dataclass(frozen=True, eq=False)
class ImageScore:
    """The metric for one image.

    Attributes
    ----------
    image_id : str or None
    score : float
        Mean over the ten thresholds of ``tp / (tp + fp + fn)``.
    tp, fp, fn : (10,) int64 arrays
        Counts per threshold, in the order of :data:`THRESHOLDS` (read-only).
    n_true, n_pred : int
        Number of true and predicted nuclei.
    """

    image_id: str | None
    score: float
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    n_true: int
    n_pred: int

    @property
    def precision(self) -> np.ndarray:
        """``(10,)`` float64: ``tp / (tp + fp + fn)`` per threshold (1 where all are 0)."""
        return _precision(self.tp, self.fp, self.fn)


@dataclasses.dataclass(frozen=True, eq=False)
class DatasetScore:
    """The metric over a set of images (the leaderboard number is :attr:`map`).

    Attributes
    ----------
    map : float
        Mean of the image scores (0.0 for an empty set).
    n_images : int
    per_image : Mapping[str, float]
        ImageId -> image score, in scoring order (read-only).
    per_threshold : (10,) float64 array
        Mean over images of the precision at each of :data:`THRESHOLDS`; its mean is ``map``.
    images : tuple of ImageScore
        The full per-image records.
    ignored_ids : tuple of str
        Images the solution marks ``Usage == "Ignored"`` (not scored).
    """

    map: float
    n_images: int
    per_image: Mapping[str, float]
    per_threshold: np.ndarray
    images: tuple[ImageScore, ...]
    ignored_ids: tuple[str, ...] = ()

    @classmethod
    def from_images(cls, images: Iterable[ImageScore], ignored_ids: Iterable[str] = ()) -> "DatasetScore":
        """Aggregate image records (ids must be unique)."""
        images = tuple(images)
        per_image = {s.image_id: s.score for s in images}
        if len(per_image) != len(images):
            raise ValueError("image ids must be unique")
        if images:
            per_threshold = np.mean([s.precision for s in images], axis=0)
            # Mean of the image scores, not of per_threshold (equal up to rounding).
            mean_ap = float(np.mean([s.score for s in images]))
        else:
            per_threshold, mean_ap = np.zeros(len(THRESHOLDS)), 0.0
        return cls(
            map=mean_ap,
            n_images=len(images),
            per_image=MappingProxyType(per_image),
            per_threshold=_frozen(per_threshold, np.float64),
            images=images,
            ignored_ids=tuple(ignored_ids),
        )

    def worst(self, n: int = 10) -> list[ImageScore]:
        """The ``n`` lowest-scoring images, worst first (ties by image id)."""
        return sorted(self.images, key=lambda s: (s.score, str(s.image_id)))[:n]

    def to_dict(self) -> dict:
        """A JSON-ready dict: ``map``, ``n_images``, ``per_image``, per-threshold figures."""
        # (3, 10): TP, FP, FN per threshold, summed over images.
        tp, fp, fn = np.array([(s.tp, s.fp, s.fn) for s in self.images], np.int64).reshape(-1, 3, 10).sum(axis=0)
        return {
            "map": self.map,
            "n_images": self.n_images,
            "per_image": dict(self.per_image),
            "thresholds": [round(float(t), 2) for t in THRESHOLDS],
            "per_threshold": [float(v) for v in self.per_threshold],
            "tp": [int(v) for v in tp],
            "fp": [int(v) for v in fp],
            "fn": [int(v) for v in fn],
            "n_true": int(sum(s.n_true for s in self.images)),
            "n_pred": int(sum(s.n_pred for s in self.images)),
            "ignored_ids": list(self.ignored_ids),
        }


def _precision(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    denominator = tp + fp + fn
    # 0/0 only when there is neither truth nor prediction: a perfect empty image.
    return np.divide(tp, denominator, out=np.ones(len(tp)), where=denominator > 0)


def _check_label_map(labels: np.ndarray, name: str) -> tuple[np.ndarray, int]:
    """Flattened labels (a view where possible) and their maximum; checks dtype and sign."""
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise ValueError(f"{name} must be an integer label map, got dtype {labels.dtype}")
    flat = labels.ravel()
    if not flat.size:
        return flat.astype(np.int64), 0
    if flat.min() < 0:
        raise ValueError(f"{name} has negative labels")
    return flat, int(flat.max())


def _relabel(flat: np.ndarray) -> tuple[np.ndarray, int]:
    """Map ids to ``0..n`` keeping order (0 stays background) via ``np.unique``'s inverse.

    Only for ids too large for a dense table (say 2**40); returns (relabelled, new max).
    """
    ids, inverse = np.unique(flat, return_inverse=True)
    if ids[0] != 0:  # no background pixel: shift so that nuclei stay 1..n
        inverse = inverse + 1
    inverse = inverse.astype(np.int64, copy=False).ravel()
    return inverse, int(inverse.max())


def _contingency(
    true_flat: np.ndarray, true_max: int, pred_flat: np.ndarray, pred_max: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pixel counts of every (true id, pred id) pair, background included.

    Returns ``(area_true, area_pred, ti, pi, inter)``: areas indexed by id (0 =
    background), and the nonzero cells between two nuclei (``ti, pi >= 1``). The cells
    come from ONE ``np.bincount`` over ``true * (pred_max + 1) + pred`` (never a loop
    over pairs); areas are its row and column sums. Ids need not be consecutive.
    """
    if (true_max + 1) * (pred_max + 1) > _MAX_DENSE_CELLS:
        true_flat, true_max = _relabel(true_flat)
        pred_flat, pred_max = _relabel(pred_flat)
    n_cols = pred_max + 1
    codes = true_flat.astype(np.int64) * n_cols + pred_flat.astype(np.int64)
    if (true_max + 1) * n_cols <= _MAX_DENSE_CELLS:
        table = np.bincount(codes, minlength=(true_max + 1) * n_cols).reshape(true_max + 1, n_cols)
        area_true, area_pred = table.sum(axis=1), table.sum(axis=0)
        ti, pi = np.nonzero(table[1:, 1:])
        ti, pi = ti + 1, pi + 1
        inter = table[ti, pi]
    else:  # many labels on both sides (e.g. noise): the same table, sparse
        cells, inter = np.unique(codes, return_counts=True)
        area_true = np.bincount(true_flat, minlength=true_max + 1)
        area_pred = np.bincount(pred_flat, minlength=pred_max + 1)
        ti, pi = cells // n_cols, cells % n_cols
        between = (ti > 0) & (pi > 0)
        ti, pi, inter = ti[between], pi[between], inter[between]
    return area_true, area_pred, ti, pi, inter.astype(np.int64)


def image_score(
    true_labels: np.ndarray, pred_labels: np.ndarray, image_id: str | None = None
) -> ImageScore:
    """Score one predicted label map against the true one (see the module docstring).

    Parameters
    ----------
    true_labels, pred_labels : (H, W) integer arrays
        Instance label maps, 0 = background; ids need not be consecutive or match.
        Not modified.
    image_id : str, optional
        Carried into the result.

    Returns
    -------
    ImageScore
    """
    true_labels, pred_labels = np.asarray(true_labels), np.asarray(pred_labels)
    if true_labels.shape != pred_labels.shape:
        raise ValueError(f"shapes differ: true {true_labels.shape}, pred {pred_labels.shape}")
    true_flat, true_max = _check_label_map(true_labels, "true_labels")
    pred_flat, pred_max = _check_label_map(pred_labels, "pred_labels")

    area_true, area_pred, ti, pi, inter = _contingency(true_flat, true_max, pred_flat, pred_max)
    n_true, n_pred = int(np.count_nonzero(area_true[1:])), int(np.count_nonzero(area_pred[1:]))
    union = area_true[ti] + area_pred[pi] - inter
    # IoU > k/20  <=>  20 * inter > k * union, for all ten thresholds at once.
    hits = 20 * inter[None, :] > _THRESHOLD_K[:, None] * union[None, :]
    tp = hits.sum(axis=1).astype(np.int64)
    fp, fn = n_pred - tp, n_true - tp
    return ImageScore(
        image_id=image_id,
        score=float(_precision(tp, fp, fn).mean()),
        tp=_frozen(tp, np.int64),
        fp=_frozen(fp, np.int64),
        fn=_frozen(fn, np.int64),
        n_true=n_true,
        n_pred=n_pred,
    )


def score_label_maps(pairs: Iterable) -> DatasetScore:
    """Score a stream of images.

    Parameters
    ----------
    pairs : iterable of ``(image_id, true_labels, pred_labels)`` or ``(true_labels, pred_labels)``
        Label maps as for :func:`image_score`; without ids, images are named ``"0"``,
        ``"1"``, ... in order. Consumed lazily, one image at a time.
    """
    records = []
    for index, item in enumerate(pairs):
        if len(item) == 3:
            image_id, true_labels, pred_labels = item
        elif len(item) == 2:
            (true_labels, pred_labels), image_id = item, str(index)
        else:
            raise ValueError("expected (image_id, true, pred) or (true, pred) items")
        records.append(image_score(true_labels, pred_labels, image_id=str(image_id)))
    return DatasetScore.from_images(records)
