"""What happened to each nucleus of an image, at IoU 0.5: the fates the report colours.

Every true and every predicted nucleus gets exactly one fate, decided from the pixel
overlap of the two label maps. "Covers more than half of a nucleus" means more than half
of that nucleus's pixels; IoU > 0.5 is the competition's first threshold (strictly
greater, as in :mod:`dsb.metrics`: a pair with IoU > 0.5 is a hit at t = 0.5, and each
nucleus is in at most one such pair).

True nuclei (the first rule that applies):

* **matched**: a prediction has IoU > 0.5 with it (its IoU is kept);
* **missed**: the predictions together cover at most half of it;
* **split**: the predictions together cover more than half of it, but none alone does;
* **merged**: it is more than half covered by a *merged* prediction (below);
* **loose**: one prediction covers more than half of it, but their IoU is at most 0.5 (a
  prediction drawn far too large or shifted: a loose boundary).

Predicted nuclei (the first rule that applies):

* **merged**: it covers more than half of two or more true nuclei (whether or not it also
  matches one of them: it swallowed a neighbour);
* **matched**: IoU > 0.5 with a true nucleus;
* **spurious**: it overlaps no true nucleus at all;
* **split**: its largest overlap is with a true nucleus whose fate is split (a fragment);
* **loose**: the rest (it overlaps true nuclei, with IoU at most 0.5 with each).

The error counts are those of :func:`dsb.evaluate.error_kinds`, nucleus by nucleus:
*missed* and *split* count true nuclei, *merged* and *spurious* count predictions, and
their sums over images are its totals (for label maps numbered without gaps, which every
reader and postprocessor of the project makes). Matched true nuclei are the hits at 0.5
(``tp[0]`` of :func:`dsb.metrics.image_score`); matched predictions are those hits minus
the merged predictions that also match.

>>> truth = np.array([[1, 1, 0, 2, 2, 0, 3, 3, 3, 3]])
>>> pred = np.array([[1, 1, 0, 2, 2, 2, 2, 0, 0, 0]])   # 1 exact; 2 too wide, spills onto 3
>>> f = image_fates(truth, pred)
>>> [FATE_NAMES[c] for c in f.truth[1:]], [FATE_NAMES[c] for c in f.pred[1:]]
(['matched', 'loose', 'missed'], ['matched', 'loose'])
>>> round(float(f.truth_iou[2]), 2), f.counts()["missed"]
(0.5, 1)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "MATCHED", "MISSED", "SPLIT", "MERGED", "LOOSE", "SPURIOUS", "FATE_NAMES", "FATE_HELP",
    "ImageFates", "image_fates", "MATCHED_BINS", "PALETTE", "palette_indices", "fate_colours", "legend",
    "SMALL_PX", "compact_labels",
]

#: Fate codes (0: no nucleus with that label).
MATCHED, MISSED, SPLIT, MERGED, LOOSE, SPURIOUS = 1, 2, 3, 4, 5, 6
FATE_NAMES = {0: "", MATCHED: "matched", MISSED: "missed", SPLIT: "split", MERGED: "merged", LOOSE: "loose",
              SPURIOUS: "spurious"}
#: One line per fate, for legends: (true nucleus, predicted nucleus).
FATE_HELP = {
    MATCHED: ("a prediction has IoU > 0.5 with it", "IoU > 0.5 with a true nucleus"),
    MISSED: ("predictions cover at most half of it", ""),
    SPLIT: ("predictions cover more than half of it together, none alone", "a fragment of a split nucleus"),
    MERGED: ("lost in a merged prediction", "covers more than half of two or more true nuclei"),
    LOOSE: ("found, but IoU at most 0.5 (loose boundary)", "overlaps true nuclei, IoU at most 0.5"),
    SPURIOUS: ("", "overlaps no true nucleus"),
}
#: True nuclei below this many pixels are "small" (as in :func:`dsb.evaluate.error_kinds`).
SMALL_PX = 100

#: Matched nuclei are shaded by IoU: (0.5, 0.6], (0.6, 0.7], ..., (0.9, 1].
MATCHED_BINS = 5
_MATCHED_BASE = 10
#: Palette of the outline layers: index 0 transparent, then one colour per fate and the
#: shades of matched (pale green at IoU 0.5 to deep green at 1.0).
PALETTE = np.zeros((_MATCHED_BASE + MATCHED_BINS, 3), np.uint8)
PALETTE[MISSED] = (255, 48, 48)       # red
PALETTE[SPLIT] = (40, 150, 255)       # blue
PALETTE[MERGED] = (255, 64, 255)      # magenta
PALETTE[LOOSE] = (255, 225, 0)        # yellow
PALETTE[SPURIOUS] = (255, 140, 0)     # orange
PALETTE[MATCHED] = (0, 200, 80)       # green (IoU unknown)
PALETTE[_MATCHED_BASE:] = np.round(np.linspace((190, 255, 170), (0, 190, 70), MATCHED_BINS)).astype(np.uint8)


@dataclass(frozen=True)
class ImageFates:
    """Fates of one image's nuclei, indexed by label (index 0 and absent labels: 0).

    ``truth_iou`` / ``pred_iou`` hold each nucleus's best IoU with any nucleus of the
    other map (0 when it overlaps none); for a matched nucleus, the IoU of its match.
    ``truth_area`` / ``pred_area`` are pixel counts; ``area_ratios`` are predicted / true
    areas of the matched pairs.
    """

    truth: np.ndarray
    pred: np.ndarray
    truth_iou: np.ndarray
    pred_iou: np.ndarray
    truth_area: np.ndarray
    pred_area: np.ndarray
    area_ratios: np.ndarray

    def counts(self) -> dict[str, int]:
        """Per-image counts: ``n_true``, ``n_pred``, ``matched`` (hits at IoU 0.5), the
        error kinds as :func:`dsb.evaluate.error_kinds` counts them (``missed``,
        ``split``: true nuclei; ``merged``, ``spurious``: predictions), ``loose`` (true
        nuclei), ``merged_true`` (true nuclei lost in merges), ``small_true`` and
        ``small_missed`` (true nuclei under :data:`SMALL_PX` pixels)."""
        t, p = self.truth, self.pred
        small = (self.truth_area < SMALL_PX) & (t > 0)
        return {
            "n_true": int((t > 0).sum()), "n_pred": int((p > 0).sum()), "matched": int((t == MATCHED).sum()),
            "missed": int((t == MISSED).sum()), "merged": int((p == MERGED).sum()), "split": int((t == SPLIT).sum()),
            "spurious": int((p == SPURIOUS).sum()), "loose": int((t == LOOSE).sum()),
            "merged_true": int((t == MERGED).sum()),
            "small_true": int(small.sum()), "small_missed": int((small & (t == MISSED)).sum()),
        }


def compact_labels(labels: np.ndarray, limit: int = 1 << 20) -> np.ndarray:
    """``labels`` itself, or, when its ids go above ``limit``, the same nuclei numbered
    ``1..n`` in id order (per-label tables stay small)."""
    labels = np.asarray(labels)
    if not labels.size or int(labels.max()) <= limit:
        return labels
    ids, inverse = np.unique(labels, return_inverse=True)
    return (inverse + (1 if ids[0] != 0 else 0)).astype(np.int32).reshape(labels.shape)


def _pairs(t: np.ndarray, nt: int, p: np.ndarray, npred: int):
    """Areas by label and the overlapping (true, pred) pairs with their pixel counts."""
    n_cols = npred + 1
    codes = t * n_cols + p
    if (nt + 1) * n_cols <= 1 << 22:
        table = np.bincount(codes, minlength=(nt + 1) * n_cols).reshape(nt + 1, n_cols)
        area_t, area_p = table.sum(axis=1), table.sum(axis=0)
        ti, pi = np.nonzero(table[1:, 1:])
        ti, pi = ti + 1, pi + 1
        return area_t, area_p, ti, pi, table[ti, pi]
    cells, inter = np.unique(codes, return_counts=True)
    area_t, area_p = np.bincount(t, minlength=nt + 1), np.bincount(p, minlength=npred + 1)
    ti, pi = cells // n_cols, cells % n_cols
    between = (ti > 0) & (pi > 0)
    return area_t, area_p, ti[between], pi[between], inter[between]


def image_fates(truth: np.ndarray, pred: np.ndarray) -> ImageFates:
    """The fate of every nucleus of ``truth`` and ``pred`` (integer ``(H, W)`` label maps
    of one image, 0 = background); see the module docstring for the rules."""
    truth, pred = np.asarray(truth), np.asarray(pred)
    if truth.shape != pred.shape:
        raise ValueError(f"shapes differ: true {truth.shape}, pred {pred.shape}")
    t, p = truth.ravel().astype(np.int64), pred.ravel().astype(np.int64)
    if max(int(t.max(initial=0)), int(p.max(initial=0))) > 1 << 24:
        raise ValueError("labels above 2**24: number them first (compact_labels)")
    nt, npred = int(t.max(initial=0)), int(p.max(initial=0))
    area_t, area_p, ti, pi, inter = _pairs(t, nt, p, npred)
    union = area_t[ti] + area_p[pi] - inter
    iou = inter / np.maximum(union, 1)
    hit = 2 * inter > union                      # IoU > 0.5: at most one pair per nucleus
    truth_iou, pred_iou = np.zeros(nt + 1), np.zeros(npred + 1)
    np.maximum.at(truth_iou, ti, iou)
    np.maximum.at(pred_iou, pi, iou)
    any_cover = np.bincount(ti, weights=inter, minlength=nt + 1)
    best_cover = np.zeros(nt + 1, np.int64)
    np.maximum.at(best_cover, ti, inter)
    majority = 2 * inter > area_t[ti]            # the prediction covers more than half of the true nucleus
    merging = np.bincount(pi[majority], minlength=npred + 1) >= 2

    present_t = area_t > 0
    present_t[0] = False
    fate_t = np.where(present_t, LOOSE, 0).astype(np.uint8)
    in_merge = np.zeros(nt + 1, bool)
    in_merge[ti[majority & merging[pi]]] = True
    fate_t[present_t & in_merge] = MERGED
    fate_t[present_t & (2 * best_cover <= area_t) & (2 * any_cover > area_t)] = SPLIT
    fate_t[present_t & (2 * any_cover <= area_t)] = MISSED
    fate_t[ti[hit]] = MATCHED

    present_p = area_p > 0
    present_p[0] = False
    fate_p = np.where(present_p, LOOSE, 0).astype(np.uint8)
    main_truth = np.zeros(npred + 1, np.int64)   # the true nucleus each prediction overlaps most
    if len(pi):
        order = np.lexsort((inter, pi))
        last = order[np.r_[pi[order][1:] != pi[order][:-1], True]]
        main_truth[pi[last]] = ti[last]
    fate_p[present_p & (main_truth > 0) & (fate_t[main_truth] == SPLIT)] = SPLIT
    fate_p[present_p & (np.bincount(pi, minlength=npred + 1) == 0)] = SPURIOUS
    fate_p[pi[hit]] = MATCHED
    fate_p[present_p & merging] = MERGED
    ratios = area_p[pi[hit]] / area_t[ti[hit]]
    return ImageFates(fate_t, fate_p, truth_iou, pred_iou, area_t, area_p, ratios)


def palette_indices(fates: np.ndarray, ious: np.ndarray) -> np.ndarray:
    """uint8 :data:`PALETTE` index per label: the fate's colour, matched shaded by IoU."""
    index = fates.astype(np.uint8).copy()
    matched = fates == MATCHED
    shade = np.clip(((ious[matched] - 0.5) * 2 * MATCHED_BINS).astype(np.int64), 0, MATCHED_BINS - 1)
    index[matched] = _MATCHED_BASE + shade
    return index


def fate_colours(fates: np.ndarray, ious: np.ndarray) -> np.ndarray:
    """uint8 ``(n labels, 3)`` RGB colour per label (for :func:`dsb.viz.paint_outlines`)."""
    return PALETTE[palette_indices(fates, ious)]


def legend() -> list[tuple[str, str, str, str]]:
    """``(name, CSS colour, true-nucleus meaning, predicted-nucleus meaning)`` per fate;
    matched in its IoU 0.75 shade."""
    rows = []
    for code in (MATCHED, MISSED, SPLIT, MERGED, LOOSE, SPURIOUS):
        rgb = PALETTE[_MATCHED_BASE + MATCHED_BINS // 2] if code == MATCHED else PALETTE[code]
        rows.append((FATE_NAMES[code], "#%02x%02x%02x" % tuple(int(v) for v in rgb), *FATE_HELP[code]))
    return rows
