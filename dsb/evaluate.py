"""Out-of-fold evaluation and postprocessing tuning of a training run.

Both work on the probability maps that training saved for each fold's held-out images
(``fold<k>/oof/<id>.npy``, the best epoch), so thresholds are chosen on images the model
never trained on, and re-running them needs no model at all.

The tuned thresholds are written to ``RUN_DIR/postprocess.yaml``; :func:`load_run_config`
applies them, so ``dsb predict --checkpoint RUN_DIR`` and ``dsb evaluate RUN_DIR`` use
them without further flags.
"""

from __future__ import annotations

import dataclasses
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import pandas as pd
import yaml
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.model_selection import GroupKFold

from dsb.config import TYPE_FIELDS, Config, PostprocessConfig, PostprocessOverrides, TypeOverrides, config_from_dict
from dsb.data.folds import load_folds
from dsb.data.samples import load_samples
from dsb.errors import ConfigError, DataError
from dsb.metrics import THRESHOLDS, DatasetScore, ImageScore, image_score
from dsb.postprocess import grow_labels, labels_from_probs
from dsb.postprocess.filter import InstanceFilter, drop_instances, instance_features, instance_ious
from dsb.probmaps import dequantise_probs
from dsb.rundir import RunDir, load_run_config
from dsb.utils import atomic_write


@dataclass
class OofItem:
    image_id: str
    image_type: str
    fold: int
    probs: np.ndarray  # uint8-quantised (K, H, W)
    truth: np.ndarray  # int32 (H, W)
    #: Experiment group (``folds.csv``'s ``group`` column; the image id for older runs).
    group: str = ""


def load_oof(run_dir: Path, cfg: Config, samples=None) -> list[OofItem]:
    """Out-of-fold probabilities with their true label maps, over every trained fold."""
    run = RunDir(run_dir)
    folds = load_folds(run.folds)
    if samples is None:
        samples = load_samples(cfg.data, cfg.augment.invert_brightfield)
    truth = {s.image_id: s.label_map for s in samples}
    items = []
    has_groups = "group" in folds.columns
    for row in folds.itertuples(index=False):
        path = run.oof_map(int(row.fold), row.image_id)
        if not path.is_file():
            continue
        if row.image_id not in truth:
            raise DataError(f"{run_dir}: out-of-fold image {row.image_id} is not in the training data {cfg.data.path}")
        items.append(OofItem(row.image_id, row.image_type, int(row.fold), np.load(path), truth[row.image_id],
                             group=str(row.group) if has_groups else row.image_id))
    if not items:
        raise DataError(f"{run_dir}: no out-of-fold probability maps (fold*/{RunDir.OOF}/*.npy); train a fold first")
    return items


def score_items(
    items: Sequence[OofItem], channels: Sequence[str], post: PostprocessConfig, workers: Optional[int] = None
) -> tuple[DatasetScore, dict[str, np.ndarray]]:
    """Postprocess every item with ``post`` (its image type's, :meth:`PostprocessConfig.for_type`)
    and score it; returns the score and labels."""

    def one(item: OofItem) -> tuple[ImageScore, np.ndarray]:
        pred = labels_from_probs(dequantise_probs(item.probs), list(channels), post.for_type(item.image_type))
        return image_score(item.truth, pred, image_id=item.image_id), pred

    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        results = list(pool.map(one, items))
    return DatasetScore.from_images(r[0] for r in results), {i.image_id: r[1] for i, r in zip(items, results)}


#: The search space of :func:`tune`: one grid per postprocessing field.
TUNE_GRID: dict[str, list] = {
    "seed_threshold": [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9],
    "mask_threshold": [0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8],
    "border_weight": [0.0, 0.5, 1.0, 1.5],
    "touching_weight": [0.0, 0.5, 1.0, 1.5, 2.0],
    "min_seed_area_px": [0, 2, 4, 8, 16, 24, 32, 48],
    "min_area_px": [0, 4, 8, 16, 32, 48, 64, 96],
    "expand_px": [0.0, 1.0, 2.0, 3.0],
}


@dataclass
class TuneResult:
    best: PostprocessConfig
    best_map: float
    start_map: float
    n_evaluations: int
    trace: list[dict]


def tune(
    items: Sequence[OofItem], channels: Sequence[str], start: PostprocessConfig,
    grid: Optional[dict[str, list]] = None, rounds: int = 2,
    on_eval: Optional[Callable[[dict, float], None]] = None,
) -> TuneResult:
    """Coordinate search over ``grid`` maximising the out-of-fold mAP.

    Each round sweeps one field at a time over its grid with the others fixed at the
    best values so far; it stops early when a round changes nothing. Cheap enough for
    the full training set (each evaluation postprocesses every out-of-fold image once)
    and, unlike a full grid, linear in the number of values.
    """
    grid = dict(grid or TUNE_GRID)
    for name in list(grid):
        if "border" in name and "border" not in channels or "touching" in name and "touching" not in channels:
            grid.pop(name)
    cache: dict[tuple, float] = {}
    trace: list[dict] = []

    def evaluate(post: PostprocessConfig) -> float:
        key = json.dumps(post.to_dict(), sort_keys=True)
        if key not in cache:
            cache[key] = score_items(items, channels, post)[0].map
            trace.append({**post.to_dict(), "map": cache[key]})
            if on_eval is not None:
                on_eval(post.to_dict(), cache[key])
        return cache[key]

    best = start
    best_map = start_map = evaluate(start)
    for _ in range(rounds):
        changed = False
        for name, values in grid.items():
            for value in values:
                candidate = dataclasses.replace(best, **{name: value})
                score = evaluate(candidate)
                if score > best_map + 1e-12:
                    best, best_map, changed = candidate, score, True
        if not changed:
            break
    return TuneResult(best=best, best_map=best_map, start_map=start_map, n_evaluations=len(cache), trace=trace)


@dataclass
class TypeTuning:
    """What :func:`tune_by_type` found for one image type."""

    image_type: str
    n_images: int
    n_groups: int
    #: Held-out mAP of the type's images (each part of its groups scored by settings tuned on
    #: the other parts) with the common postprocessing, and with the type's own; None when
    #: the type has too few groups to tell.
    held_out_common: Optional[float]
    held_out_own: Optional[float]
    #: The fields kept for the type (empty: the common ones are as good).
    changes: dict


def tune_by_type(
    items: Sequence[OofItem], channels: Sequence[str], common: PostprocessConfig, rounds: int = 2,
    n_parts: int = 3, min_groups: int = 3, min_gain: float = 0.002, seed: int = 0,
    on_eval: Optional[Callable[[dict, float], None]] = None,
) -> tuple[PostprocessConfig, list[TypeTuning]]:
    """Per image type, seeds and thresholds (:data:`dsb.config.TYPE_FIELDS`) that differ from
    ``common``, kept only where they score better on held-out experiment groups.

    A type's experiment groups are split into ``n_parts`` parts; each part is scored with the
    settings tuned (:func:`tune`, from ``common``) on the other parts' images, and with
    ``common``. When the type's own settings beat the common ones there by more than
    ``min_gain`` (mAP of the type's images), the settings tuned on all its images are kept
    as ``by_type``. Types with fewer than ``min_groups`` groups, and a run of one type, keep
    the common settings. The common settings are tuned on every image, held-out parts
    included, so the comparison favours them. On grouped fold 0, stained images (27, in 12
    groups) gained 0.013-0.038 held out in four runs; fluorescence lost (docs/results.md).
    """
    common = common.for_type(None)
    grid = {k: v for k, v in TUNE_GRID.items() if k in TYPE_FIELDS}
    types = sorted({item.image_type for item in items})
    found: dict[str, PostprocessOverrides] = {}
    report: list[TypeTuning] = []
    for image_type in types if len(types) > 1 else []:
        mine = [item for item in items if item.image_type == image_type]
        group_of = [item.group or item.image_id for item in mine]
        groups = sorted(set(group_of))
        if len(groups) < min_groups:
            report.append(TypeTuning(image_type, len(mine), len(groups), None, None, {}))
            continue
        order = np.random.default_rng(seed).permutation(len(groups))
        n = min(n_parts, len(groups))
        parts = [{groups[i] for i in order[k::n]} for k in range(n)]
        own_scores = []
        for part in parts:
            fit = [item for item, g in zip(mine, group_of) if g not in part]
            held = [item for item, g in zip(mine, group_of) if g in part]
            tuned = tune(fit, channels, common, grid=grid, rounds=rounds, on_eval=on_eval)
            own_scores += [s.score for s in score_items(held, channels, tuned.best)[0].images]
        own, base = float(np.mean(own_scores)), score_items(mine, channels, common)[0].map  # every image once
        changes: dict = {}
        if own > base + min_gain:
            best = tune(mine, channels, common, grid=grid, rounds=rounds, on_eval=on_eval).best
            changes = {k: getattr(best, k) for k in TYPE_FIELDS if getattr(best, k) != getattr(common, k)}
            if changes:
                found[image_type] = PostprocessOverrides(**changes)
        report.append(TypeTuning(image_type, len(mine), len(groups), base, own, changes))
    return dataclasses.replace(common, by_type=TypeOverrides(**found)), report


def save_tuned(run_dir: Path, result: TuneResult) -> Path:
    """Write the tuned postprocessing where :func:`dsb.rundir.load_run_config` finds it."""
    path = RunDir(run_dir).tuned
    with atomic_write(path) as fh:
        yaml.safe_dump(
            {
                "postprocess": result.best.to_dict(),
                "oof_map": round(result.best_map, 6),
                "oof_map_before": round(result.start_map, 6),
                "evaluations": result.n_evaluations,
            },
            fh, sort_keys=False,
        )
    return path


def bootstrap_interval(
    scores: Sequence[float], groups: Sequence[str], n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """A percentile bootstrap interval of the mean image score, resampling whole groups.

    Images of one experiment are not independent (a model that fails one field of an
    experiment fails its twins too), so the interval resamples groups with replacement and
    takes the mean over every image of the drawn groups; with one image per group this is
    the ordinary bootstrap over images.

    >>> lo, hi = bootstrap_interval([0.2, 0.3, 0.7, 0.8], ["a", "a", "b", "b"])
    >>> 0.25 <= lo < 0.5 < hi <= 0.75
    True
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0:
        return float("nan"), float("nan")
    names, index = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
    sums = np.bincount(index, weights=scores, minlength=len(names))
    counts = np.bincount(index, minlength=len(names)).astype(np.float64)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(names), size=(n_boot, len(names)))
    means = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
    tail = (1.0 - level) / 2.0
    return float(np.quantile(means, tail)), float(np.quantile(means, 1.0 - tail))


@dataclass
class EvaluationReport:
    score: DatasetScore
    per_type: pd.DataFrame      # image_type, n_images, map
    per_fold: pd.DataFrame      # fold, n_images, map
    per_image: pd.DataFrame     # image_id, image_type, fold, score, n_true, n_pred, ...
    error_kinds: dict[str, float]
    error_kinds_per_type: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    preds: dict[str, np.ndarray] = dataclasses.field(default_factory=dict, repr=False)
    truths: dict[str, np.ndarray] = dataclasses.field(default_factory=dict, repr=False)
    #: 95% bootstrap interval of the mAP, resampling experiment groups (or images).
    interval: tuple[float, float] = (float("nan"), float("nan"))
    #: What the bootstrap resampled: ``"groups"`` or ``"images"`` (runs without groups).
    interval_unit: str = "groups"
    n_groups: int = 0
    #: The labels scored against (``data.labels`` of the config used).
    labels: Optional[str] = None
    #: Where :func:`run_evaluation` wrote the per-image CSV.
    per_image_csv: Optional[Path] = None
    #: The estimate weighted to another image set's mix (``dsb evaluate --match``), or None.
    matched: Optional[object] = None
    #: Fates of the true nuclei per type and size bin (:func:`recall_by_size`).
    by_size: Optional[pd.DataFrame] = None

    def to_dict(self) -> dict:
        """The summary as plain JSON types (what ``dsb evaluate --json`` prints)."""
        return {
            "map": self.score.map, "n_images": self.score.n_images, "labels": self.labels,
            "interval": list(self.interval), "interval_unit": self.interval_unit, "n_groups": self.n_groups,
            "per_type": {r.image_type: {"n_images": int(r.n_images), "map": float(r.map)} for r in self.per_type.itertuples()},
            "per_fold": {str(r.fold): {"n_images": int(r.n_images), "map": float(r.map)} for r in self.per_fold.itertuples()},
            "per_threshold": dict(zip([f"{t:.2f}" for t in THRESHOLDS], map(float, self.score.per_threshold))),
            "error_kinds": self.error_kinds, "error_kinds_per_type": self.error_kinds_per_type,
            "per_image_csv": None if self.per_image_csv is None else str(self.per_image_csv),
            "matched": None if self.matched is None else self.matched.to_dict(),
            "by_size": None if self.by_size is None else self.by_size.to_dict(orient="records"),
        }

    def manifest_summary(self) -> dict:
        """The out-of-fold estimate a shipped set's manifest records (``oof``)."""
        ratio = self.error_kinds.get("area_ratio")
        return {
            "map": float(self.score.map), "interval_95": [round(v, 4) for v in self.interval],
            "interval_over": self.interval_unit, "n_images": int(self.score.n_images), "n_groups": self.n_groups,
            "per_type": {r.image_type: {"n_images": int(r.n_images), "map": round(float(r.map), 4)}
                         for r in self.per_type.itertuples()},
            "area_ratio": ratio if isinstance(ratio, float) and np.isfinite(ratio) else None,
        }


def error_kinds(items: Sequence[OofItem], preds: dict[str, np.ndarray]) -> dict[str, float]:
    """Counts of the main error kinds at IoU 0.5, over all items.

    * ``missed``: true nuclei with no predicted pixel covering half of them;
    * ``merged``: predicted nuclei that cover more than half of two or more true nuclei;
    * ``split``: true nuclei more than half covered by two or more predictions together
      but by none alone;
    * ``spurious``: predictions that overlap no true nucleus at all.
    Also reports the missed rate of small nuclei (under 100 px) and ``area_ratio``, the
    median of predicted / true area over matched pairs (IoU > 0.5): below 1, the masks are
    drawn tighter than the annotations.
    """
    missed = merged = split = spurious = n_true = n_pred = small = small_missed = 0
    ratios: list[np.ndarray] = []
    for item in items:
        truth, pred = item.truth.ravel().astype(np.int64), preds[item.image_id].ravel().astype(np.int64)
        nt, npred = int(truth.max(initial=0)), int(pred.max(initial=0))
        n_true += nt
        n_pred += npred
        if nt == 0:
            spurious += npred
            continue
        overlap = np.bincount(truth * (npred + 1) + pred, minlength=(nt + 1) * (npred + 1)).reshape(nt + 1, npred + 1)
        area_true = overlap.sum(axis=1)[1:]
        covered = overlap[1:, 1:]
        best_cover = covered.max(axis=1) if npred else np.zeros(nt)
        any_cover = covered.sum(axis=1)
        is_missed = any_cover * 2 <= area_true
        missed += int(is_missed.sum())
        split += int(((best_cover * 2 <= area_true) & (any_cover * 2 > area_true)).sum())
        if npred:
            majority = covered * 2 > area_true[:, None]
            merged += int((majority.sum(axis=0) >= 2).sum())
            spurious += int((overlap[1:, 1:].sum(axis=0) == 0).sum())
        if npred:
            area_pred = overlap.sum(axis=0)[1:]
            union = area_true[:, None] + area_pred[None, :] - covered
            t_idx, p_idx = np.nonzero(covered * 2 > union)  # IoU > 0.5: at most one match each
            ratios.append(area_pred[p_idx] / area_true[t_idx])
        is_small = area_true < 100
        small += int(is_small.sum())
        small_missed += int((is_small & is_missed).sum())
    return {
        "n_true": n_true, "n_pred": n_pred, "missed": missed, "merged": merged, "split": split,
        "spurious": spurious, "small_true": small,
        "small_missed_rate": small_missed / small if small else 0.0,
        "area_ratio": float(np.median(np.concatenate(ratios))) if ratios and sum(map(len, ratios)) else float("nan"),
    }


#: Bins of true nucleus area (pixels) for :func:`recall_by_size`.
NUCLEUS_SIZE_EDGES = (0, 50, 100, 200, 400, np.inf)
FATES = ("found", "missed", "merged", "split", "misdrawn")


def nucleus_fates(truth: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Area and fate of every true nucleus of one image, at IoU 0.5.

    Fates (indices into :data:`FATES`): ``found`` (a prediction with IoU > 0.5); else
    ``missed`` (predictions cover at most half of it), ``merged`` (the prediction covering
    most of it also covers more than half of another true nucleus), ``split`` (predictions
    cover more than half of it together but none alone does) or ``misdrawn`` (one prediction
    covers most of it, but their IoU is at most 0.5: drawn too large or too small).

    >>> truth = np.zeros((6, 12), np.int32); truth[1:5, 1:5] = 1; truth[1:5, 6:10] = 2
    >>> pred = np.zeros_like(truth); pred[1:5, 1:10] = 1          # one blob over both
    >>> [FATES[f] for f in nucleus_fates(truth, pred)[1]]
    ['merged', 'merged']
    """
    t, p = truth.ravel().astype(np.int64), pred.ravel().astype(np.int64)
    nt, npred = int(t.max(initial=0)), int(p.max(initial=0))
    overlap = np.bincount(t * (npred + 1) + p, minlength=(nt + 1) * (npred + 1)).reshape(nt + 1, npred + 1)
    area_true = overlap.sum(axis=1)[1:]
    present = area_true > 0
    fates = np.full(nt, FATES.index("missed"))
    if npred:
        covered = overlap[1:, 1:]
        area_pred = overlap.sum(axis=0)[1:]
        iou = covered / np.maximum(area_true[:, None] + area_pred[None, :] - covered, 1)
        best = covered.argmax(axis=1)
        best_cover = covered[np.arange(nt), best]
        any_cover = covered.sum(axis=1)
        majority = covered * 2 > area_true[:, None]
        merges = majority.sum(axis=0) >= 2
        fates = np.where(any_cover * 2 <= area_true, FATES.index("missed"),
                 np.where(best_cover * 2 <= area_true, FATES.index("split"),
                 np.where(merges[best], FATES.index("merged"), FATES.index("misdrawn"))))
        fates = np.where(iou.max(axis=1) > 0.5, FATES.index("found"), fates)
    return area_true[present], fates[present]


def recall_by_size(items: Sequence[OofItem], preds: dict[str, np.ndarray],
                   edges: Sequence[float] = NUCLEUS_SIZE_EDGES) -> pd.DataFrame:
    """Where nuclei are lost: per image type and true nucleus size bin, how many true nuclei
    there are and the share of each fate (:func:`nucleus_fates`); ``found`` is the recall at
    IoU 0.5. Rows for every type together have ``image_type == "all"``."""
    records = []
    for item in items:
        areas, fates = nucleus_fates(item.truth, preds[item.image_id])
        records.append(pd.DataFrame({"image_type": item.image_type, "area": areas, "fate": fates}))
    frame = pd.concat(records, ignore_index=True) if records else pd.DataFrame(columns=["image_type", "area", "fate"])
    labels = [f"<{hi:g}" if lo == 0 else (f">{lo:g}" if not np.isfinite(hi) else f"{lo:g}-{hi:g}")
              for lo, hi in zip(edges[:-1], edges[1:])]
    frame["size"] = pd.cut(frame["area"].astype(float), list(edges), right=False, labels=labels)
    rows = []
    for image_type, part in [*frame.groupby("image_type"), ("all", frame)]:
        for size, cell in [*part.groupby("size", observed=False), ("all", part)]:
            n = len(cell)
            row = {"image_type": image_type, "size": str(size), "n_true": n}
            counts = np.bincount(cell["fate"].to_numpy(np.int64), minlength=len(FATES))
            row.update({f: (float(c) / n if n else float("nan")) for f, c in zip(FATES, counts)})
            rows.append(row)
    return pd.DataFrame(rows)


def with_labels(cfg: Config, labels: Optional[str], run_dir: Path) -> Config:
    """``cfg`` scoring against other labels (``masks`` or an RLE CSV); ``None`` keeps them."""
    if labels is None:
        return cfg
    if cfg.data.path == "synthetic":
        raise ConfigError(f"--labels: {run_dir} trained on generated synthetic data, which has no other labels")
    data = cfg.to_dict()
    data["data"]["labels"] = labels
    return config_from_dict(data)


def evaluate_run(run_dir: Path, cfg: Optional[Config] = None, items=None) -> EvaluationReport:
    """Score the out-of-fold predictions of a run with its (tuned) postprocessing."""
    cfg = cfg or load_run_config(run_dir)
    items = items if items is not None else load_oof(run_dir, cfg)
    score, preds = score_items(items, cfg.targets.channels, cfg.postprocess)
    by_id = {s.image_id: s for s in score.images}
    rows = []
    for item in items:
        s = by_id[item.image_id]
        row = {"image_id": item.image_id, "image_type": item.image_type, "fold": item.fold,
               "score": s.score, "n_true": s.n_true, "n_pred": s.n_pred}
        row.update({f"ap@{t:.2f}": float(p) for t, p in zip(THRESHOLDS, s.precision)})
        rows.append(row)
    per_image = pd.DataFrame(rows).sort_values("score", kind="stable").reset_index(drop=True)
    per_type = per_image.groupby("image_type")["score"].agg(n_images="size", map="mean").reset_index()
    per_fold = per_image.groupby("fold")["score"].agg(n_images="size", map="mean").reset_index()
    per_type_errors = {
        t: error_kinds([i for i in items if i.image_type == t], preds) for t in sorted({i.image_type for i in items})
    }
    group_of = {i.image_id: i.group or i.image_id for i in items}
    per_image["group"] = per_image["image_id"].map(group_of)
    unit = "groups" if any(i.group and i.group != i.image_id for i in items) else "images"
    interval = bootstrap_interval(per_image["score"].to_numpy(), per_image["group"].to_numpy())
    return EvaluationReport(
        score, per_type, per_fold, per_image, error_kinds(items, preds), per_type_errors,
        preds=preds, truths={i.image_id: i.truth for i in items},
        interval=interval, interval_unit=unit, n_groups=int(per_image["group"].nunique()), labels=cfg.data.labels,
        by_size=recall_by_size(items, preds),
    )


def run_evaluation(
    run_dir: Path, out_csv: Optional[Path] = None, labels: Optional[str] = None,
    match: Optional[Path] = None, match_predictions: Optional[Path] = None, progress=None,
) -> EvaluationReport:
    """``dsb evaluate``: score the run's out-of-fold maps (against other ``labels`` if
    given) and write the per-image CSV (default ``RUN_DIR/oof_scores.csv``). With ``match``
    (a folder or zip of images), also the estimate weighted to those images' mix
    (:func:`match_images`; ``report.matched``)."""
    cfg = with_labels(load_run_config(run_dir), labels, run_dir)
    # bad input is named before the run's maps are read
    target_stage, sizes = open_match(match, match_predictions) if match is not None else (None, None)
    samples = load_samples(cfg.data, cfg.augment.invert_brightfield)
    report = evaluate_run(run_dir, cfg, load_oof(run_dir, cfg, samples))
    report.per_image_csv = write_per_image_csv(report, out_csv or RunDir(run_dir).oof_scores)
    if target_stage is not None:
        report.matched = match_images(run_dir, cfg, report, samples, target_stage, sizes, progress)
    return report


def open_match(match: Path, predictions: Optional[Path] = None):
    """``(stage, table)``: the ``--match`` images (a folder or zip) as a stage, checked to have
    images, and ``predictions`` (a submission CSV) read as a table, checked to have rows for
    every one of them (None without ``predictions``)."""
    from dsb.data.kaggle import open_stage

    stage = open_stage(match, labels=None)
    if not stage.image_ids:
        raise DataError(f"--match {match}: no images")
    table = None
    if predictions is not None:
        from dsb.data.kaggle import read_rle_csv

        table = read_rle_csv(predictions)
        missing = [i for i in stage.image_ids if i not in table]
        if missing:
            raise DataError(f"--match-predictions {predictions}: no rows for image {missing[0]} of {match} "
                            f"({len(missing)} of {len(stage.image_ids)} images missing)")
    return stage, table


def _median_predicted_area(runs: list) -> float:
    areas = [int(r[:, 1].sum()) for r in runs if len(r)]
    return float(np.median(areas)) if areas else 0.0


def match_images(run_dir: Path, cfg: Config, report: EvaluationReport, samples, stage,
                 predictions=None, progress=None):
    """The out-of-fold estimate weighted to the mix of the images of ``stage`` (type, nucleus
    size, novelty; :mod:`dsb.shift`), as a :class:`dsb.shift.MatchedEstimate`.

    The target images' nucleus sizes come from ``predictions`` (a submission table for those
    images, :func:`open_match`) or else from the run's first fold model, predicting each image without TTA as
    ``dsb predict`` does (size-adaptive rescaling, the run's tuned postprocessing).
    """
    from dsb.shift import matched_estimate, median_areas

    folds = load_folds(RunDir(run_dir).folds)
    fold_of = dict(zip(folds["image_id"], folds["fold"].astype(int)))
    reference = NoveltyReference(samples)
    areas = {image_id: median_areas(pred) for image_id, pred in report.preds.items()}
    source = held_out_profile(report.per_image, areas, fold_of, reference)
    checkpoint = None
    if predictions is None:
        checkpoints = RunDir(run_dir).checkpoints()
        if not checkpoints:
            raise DataError(f"{run_dir}: no fold checkpoint to measure the --match images' nuclei with; "
                            "give --match-predictions SUBMISSION.csv")
        checkpoint = checkpoints[0]
    target = target_profile(stage, cfg, reference, predictions=predictions, checkpoint=checkpoint, progress=progress)
    return matched_estimate(source, target, novelty_threshold=cfg.folds.group_threshold)


class NoveltyReference:
    """The training images' appearance features (:func:`dsb.data.groups.image_features`,
    standardised over them) and types: what novelty (:mod:`dsb.shift`) is measured against."""

    def __init__(self, samples) -> None:
        from dsb.data.groups import image_features

        self.ids = [s.image_id for s in samples]
        self.index = {image_id: i for i, image_id in enumerate(self.ids)}
        self.features = np.stack([image_features(s.image) for s in samples])
        self.types = np.array([s.image_type for s in samples])
        self.mean = self.features.mean(axis=0)
        scale = self.features.std(axis=0)
        self.scale = np.where(scale > 1e-9, scale, 1.0)

    def distance(self, feature: np.ndarray, image_type: str, among: Optional[np.ndarray] = None) -> float:
        """Distance to the nearest training image of ``image_type`` (``among``: a mask of the
        training images to consider; default all)."""
        feats, types = (self.features, self.types) if among is None else (self.features[among], self.types[among])
        return _nearest(feature, image_type, feats, types, self.mean, self.scale)


def held_out_profile(per_image: pd.DataFrame, areas: dict, fold_of: dict, reference: NoveltyReference) -> pd.DataFrame:
    """The held-out images' side of :func:`dsb.shift.matched_estimate`.

    ``per_image`` has ``image_id``, ``image_type``, ``fold``, ``score`` and ``group``;
    ``areas`` the median predicted nucleus area of each (:func:`dsb.shift.median_areas`);
    ``fold_of`` the fold of every training image (an image whose fold differs was trained
    on by the held-out image's fold model). Novelty is the distance to the nearest image
    that fold model trained on.
    """
    rows = per_image.set_index("image_id")
    folds = np.array([fold_of.get(t, -1) for t in reference.ids])
    source = []
    for image_id, area in areas.items():
        i = reference.index[image_id]
        trained = folds != int(rows.at[image_id, "fold"])
        trained[i] = False
        source.append({"image_id": image_id, "image_type": rows.at[image_id, "image_type"],
                       "median_area_px": float(area),
                       "novelty": reference.distance(reference.features[i], reference.types[i], trained),
                       "score": float(rows.at[image_id, "score"]), "group": rows.at[image_id, "group"]})
    return pd.DataFrame(source)


def target_profile(stage, cfg: Config, reference: NoveltyReference, predictions=None,
                   checkpoint: Optional[Path] = None, progress=None) -> pd.DataFrame:
    """The target images' side of :func:`dsb.shift.matched_estimate`: type, novelty against
    every training image, and the median nucleus area, read from ``predictions`` (the
    submission table of the images that :func:`open_match` read) or predicted by
    ``checkpoint`` without TTA, as ``dsb predict`` does (size-adaptive rescaling, ``cfg``'s
    postprocessing)."""
    from dsb.data.dataset import prepare_image
    from dsb.data.groups import image_features
    from dsb.data.imagetypes import classify_image
    from dsb.shift import median_areas

    table, predictor = predictions, None
    if table is None:
        from dsb.infer.predict import Predictor, load_models

        models, model_cfg = load_models([checkpoint])
        predictor = Predictor(models, cfg.targets.channels, dataclasses.replace(model_cfg.infer, tta="none"))
    target = []
    for done, image_id in enumerate(stage.image_ids, 1):
        raw = stage.read_image_uint8(image_id)
        image_type = classify_image(raw.astype(np.float32) / 255.0)
        prepared = prepare_image(raw, cfg.augment.invert_brightfield)
        d = reference.distance(image_features(prepared), image_type)
        if table is not None:
            area = _median_predicted_area(table.runs(image_id))
        else:
            from dsb.infer.rescale import predict_rescaled

            probs, _ = predict_rescaled(predictor, prepared.astype(np.float32) / 255.0, cfg.targets.channels,
                                        cfg.postprocess, predictor.infer_cfg)
            area = median_areas(labels_from_probs(probs, cfg.targets.channels, cfg.postprocess))
        target.append({"image_id": image_id, "image_type": image_type, "median_area_px": area, "novelty": d})
        if progress is not None:
            progress(done, len(stage.image_ids))
    return pd.DataFrame(target)


def _nearest(feature, image_type, reference, reference_types, mean, scale) -> float:
    from dsb.shift import novelty_distances

    return float(novelty_distances(feature[None], [image_type], reference, reference_types, mean, scale)[0])


def write_per_image_csv(report: EvaluationReport, path: Path) -> Path:
    with atomic_write(path) as fh:
        report.per_image.to_csv(fh, index=False, float_format="%.6f")
    return Path(path)


@dataclass
class FilterResult:
    filter: "InstanceFilter"
    #: Out-of-fold mAP without and with the filter (each image's instances judged by a
    #: regressor that never saw that image's experiment group).
    map_before: float
    map_after: float
    n_instances: int
    trace: list[dict]


#: Thresholds on the predicted IoU tried by :func:`fit_instance_filter` (0: keep everything).
FILTER_THRESHOLDS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4)


def fit_instance_filter(
    items: Sequence[OofItem], channels: Sequence[str], post: PostprocessConfig, n_splits: int = 5, seed: int = 0,
) -> FilterResult:
    """Fit an :class:`~dsb.postprocess.filter.InstanceFilter` on out-of-fold predictions.

    Every item is postprocessed with ``post`` (but for ``expand_px``, which the filter's
    output gets: it is scored grown); each predicted instance gets its features and its best
    IoU with a true nucleus. A :class:`~sklearn.model_selection.GroupKFold` over the
    items' experiment groups predicts every instance's IoU with a regressor fitted on other
    groups only; the threshold that maximises the mAP of those honest predictions is kept
    (0 if none helps), and the final regressor is fitted on every instance.
    """
    # Features and IoU targets of the instances before ``post.expand_px`` grows them: the
    # filter runs before the growth (dsb.postprocess.filter.filtered_labels); scores after it.
    grow = post.expand_px
    base = dataclasses.replace(post, expand_px=0.0)

    def prepare(item: OofItem):
        probs = dequantise_probs(item.probs)
        pred = labels_from_probs(probs, list(channels), base.for_type(item.image_type))
        return pred, instance_features(pred, probs, channels), instance_ious(item.truth, pred)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        prepared = list(pool.map(prepare, items))
    preds = [p[0] for p in prepared]
    feats = [p[1] for p in prepared]
    ious = [p[2] for p in prepared]
    groups = np.array([item.group or item.image_id for item in items])

    def regressor():
        return HistGradientBoostingRegressor(max_iter=200, learning_rate=0.1, max_leaf_nodes=31,
                                             l2_regularization=1.0, random_state=seed)

    honest = [np.zeros(len(f)) for f in feats]
    splits = min(n_splits, len(set(groups)))
    if splits < 2:
        raise DataError("the instance filter needs out-of-fold images from at least 2 experiment groups")
    for train_idx, test_idx in GroupKFold(n_splits=splits).split(np.zeros(len(items)), groups=groups):
        x = np.concatenate([feats[i] for i in train_idx if len(feats[i])])
        y = np.concatenate([ious[i] for i in train_idx if len(feats[i])])
        model = regressor().fit(x, y)
        for i in test_idx:
            if len(feats[i]):
                honest[i] = model.predict(feats[i])

    def score_with(threshold: float) -> float:
        scores = []
        for item, pred, predicted in zip(items, preds, honest):
            scores.append(image_score(item.truth, grow_labels(drop_instances(pred, predicted, threshold), grow)).score)
        return float(np.mean(scores))

    trace = [{"threshold": t, "map": score_with(t)} for t in FILTER_THRESHOLDS]
    best = max(trace, key=lambda r: (r["map"], -r["threshold"]))
    x_all = np.concatenate([f for f in feats if len(f)])
    y_all = np.concatenate([v for f, v in zip(feats, ious) if len(f)])
    final = InstanceFilter(regressor().fit(x_all, y_all), float(best["threshold"]), tuple(channels))
    return FilterResult(final, trace[0]["map"], best["map"], int(len(x_all)), trace)


@dataclass
class TuneRunResult:
    tuned: TuneResult
    tuned_path: Path
    before: PostprocessConfig
    #: The instance filter fitted out of fold (None when not asked for).
    instance_filter: Optional[FilterResult] = None
    #: What happened to ``RUN_DIR/instance_filter.pkl``: "written", "removed" or "".
    filter_action: str = ""
    filter_path: Optional[Path] = None
    #: Per image type, what :func:`tune_by_type` found (empty when not asked for).
    by_type: list = dataclasses.field(default_factory=list)
    #: The out-of-fold mAP with the common settings alone (``tuned.best_map`` adds the types' own).
    common_map: Optional[float] = None


def tune_run(
    run_dir: Path, rounds: int = 2, fit_filter: bool = True, on_eval: Optional[Callable[[dict, float], None]] = None,
    per_type: bool = True,
) -> TuneRunResult:
    """``dsb tune``: search the postprocessing on the run's out-of-fold maps, then (``per_type``)
    each image type's own where it scores better held out (:func:`tune_by_type`), and save
    it; then (``fit_filter``) fit the instance filter, kept only if some threshold helps."""
    run = RunDir(run_dir)
    cfg = load_run_config(run_dir)
    items = load_oof(run_dir, cfg)
    # The common settings are searched afresh (a type's settings from an earlier tune would
    # otherwise stay in force for its images), then each type's own (by_type).
    tuned = tune(items, cfg.targets.channels, cfg.postprocess.for_type(None), rounds=rounds, on_eval=on_eval)
    by_type: list[TypeTuning] = []
    common_map = tuned.best_map
    if per_type:
        typed, by_type = tune_by_type(items, cfg.targets.channels, tuned.best, rounds=rounds, on_eval=on_eval)
        if typed.by_type.changes():
            score = score_items(items, cfg.targets.channels, typed)[0].map
            tuned = dataclasses.replace(tuned, best=typed, best_map=score)
    result = TuneRunResult(tuned=tuned, tuned_path=save_tuned(run_dir, tuned), before=cfg.postprocess,
                           by_type=by_type, common_map=common_map)
    if fit_filter:
        fitted = fit_instance_filter(items, cfg.targets.channels, tuned.best)
        result.instance_filter, result.filter_path = fitted, run.instance_filter
        if fitted.filter.threshold > 0:
            fitted.filter.save(run.instance_filter)
            result.filter_action = "written"
        elif run.instance_filter.is_file():
            run.instance_filter.unlink()
            result.filter_action = "removed"
    return result
