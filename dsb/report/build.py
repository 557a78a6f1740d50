"""``dsb report``: the evaluation of a run (or of a submission) as a static HTML report.

:func:`build_report` gathers the images, true and predicted label maps and the scores,
draws every image once (:func:`render_case`: the image, its true and predicted outlines
coloured by fate as transparent layers, a thumbnail), and writes ``index.html``, one page
per image and ``report.json`` (the numbers) into a folder beside the target, which then
replaces the target as a whole.

Two sources:

* a run folder: its out-of-fold predictions, scored exactly as ``dsb evaluate`` scores
  them (:func:`dsb.evaluate.evaluate_run`, the run's tuned postprocessing), with its
  training curves;
* a submission CSV, scored against a solution (an RLE CSV, or a Kaggle folder/zip with
  ``masks/``) exactly as ``dsb score`` scores it (validated first; ``Usage == Ignored``
  images are not scored), with the images from ``--images``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
import zipfile
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

import numpy as np
from scipy import ndimage

from dsb.data.imagetypes import classify_image
from dsb.data.kaggle import open_stage
from dsb.data.samples import load_samples
from dsb.errors import DataError, DsbError
from dsb.evaluate import bootstrap_interval, evaluate_run, load_oof
from dsb.metrics import THRESHOLDS, DatasetScore, ImageScore, image_score
from dsb.report import html
from dsb.report.fates import FATE_NAMES, PALETTE, compact_labels, image_fates, palette_indices
from dsb.rle import runs_to_label_map
from dsb.rundir import RunDir, is_run_dir, load_run_config
from dsb.submission import read_submission, submission_runs
from dsb.utils import check_output_dir
from dsb.viz import display_image, encode_png, outline_layer, paint_outlines, plot_training_curves, \
    save_indexed_png, thumbnail

__all__ = ["Case", "ReportResult", "build_report", "render_case", "MARKER"]

#: ``report.json``'s ``generator``: a folder holding it is an earlier report, safe to replace.
MARKER = "dsb report"
REPORT_JSON = "report.json"
INDEX = "index.html"
THUMB_PX = 72
_KIND_KEYS = ("n_true", "n_pred", "missed", "merged", "split", "spurious")


@dataclass
class Case:
    """One image to draw: the stored image (uint8 ``(H, W, 3)``), its label maps, and the
    score when the source already computed it."""

    image_id: str
    image_type: str
    image: np.ndarray
    truth: np.ndarray
    pred: np.ndarray
    group: str = ""
    fold: Optional[int] = None
    score: Optional[ImageScore] = None


@dataclass
class ReportResult:
    out_dir: Path
    index: Path
    n_images: int
    map: float
    interval: tuple[float, float]
    #: Seconds spent drawing and writing the images (not gathering or scoring them).
    render_s: float
    summary: dict = field(repr=False, default_factory=dict)


@dataclass
class _Source:
    title: str
    description: str
    cases: Iterable[Case]
    #: The ids of the cases, in their order (known before any image is read).
    image_ids: list[str]
    #: The summary as ``dsb evaluate`` computes it; None: made here from the rendered images.
    summary: Optional[dict] = None
    histories: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- drawing


def _slugs(image_ids: list[str]) -> dict[str, str]:
    """File names for image ids: the id itself when it is a plain, unique (ignoring case)
    name, else ``img<index>``."""
    slugs, taken = {}, set()
    for index, image_id in enumerate(image_ids):
        plain = image_id.replace("-", "").replace("_", "").isalnum() and image_id.isascii() and len(image_id) <= 100
        slug = image_id if plain and image_id.lower() not in taken else f"img{index:05d}"
        while slug.lower() in taken:
            slug += "_"
        taken.add(slug.lower())
        slugs[image_id] = slug
    return slugs


def _nuclei(labels: np.ndarray, fates: np.ndarray, ious: np.ndarray, areas: np.ndarray) -> list[list]:
    """``[y0, x0, y1, x1, label, fate, best IoU, area]`` per nucleus (for the page's hover)."""
    out = []
    for label, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is not None and fates[label]:
            out.append([box[0].start, box[1].start, box[0].stop, box[1].stop, label, int(fates[label]),
                        round(float(ious[label]), 3), int(areas[label])])
    return out


def render_case(case: Case, out_dir: Path, slug: str) -> dict:
    """Draw one image into the report folder ``out_dir`` and return its table row.

    Writes ``images/<slug>.png`` (the image, contrast-stretched, native size; gray when
    its channels are equal), ``images/<slug>.truth.png`` and ``images/<slug>.pred.png``
    (transparent palette PNGs: the outlines coloured by fate) and ``thumbs/<slug>.png``
    (the predicted outlines on the image, at most :data:`THUMB_PX` pixels a side).
    """
    truth, pred = compact_labels(case.truth), compact_labels(case.pred)
    if case.image.shape[:2] != truth.shape or pred.shape != truth.shape:
        raise DataError(f"{case.image_id}: the image is {case.image.shape[0]}x{case.image.shape[1]} but its labels are "
                        f"{truth.shape[0]}x{truth.shape[1]} (true) and {pred.shape[0]}x{pred.shape[1]} (predicted)")
    score = case.score if case.score is not None else image_score(truth, pred, image_id=case.image_id)
    fates = image_fates(truth, pred)
    shown = display_image(case.image)
    images, thumbs = out_dir / html.IMAGES_DIR, out_dir / html.THUMBS_DIR
    (images / f"{slug}.png").write_bytes(encode_png(shown))
    truth_index = palette_indices(fates.truth, fates.truth_iou)
    pred_index = palette_indices(fates.pred, fates.pred_iou)
    save_indexed_png(images / f"{slug}.truth.png", outline_layer(truth, truth_index), PALETTE)
    save_indexed_png(images / f"{slug}.pred.png", outline_layer(pred, pred_index), PALETTE)
    small = thumbnail(paint_outlines(shown, pred, PALETTE[pred_index]), THUMB_PX)
    (thumbs / f"{slug}.png").write_bytes(encode_png(small, compress_level=6))
    counts = fates.counts()
    precision = score.precision
    return {
        "image_id": case.image_id, "slug": slug, "image_type": case.image_type, "group": case.group,
        "fold": case.fold, "height": int(truth.shape[0]), "width": int(truth.shape[1]),
        "n_true": score.n_true, "n_pred": score.n_pred, "score": float(score.score),
        "ap50": float(precision[0]), "ap75": float(precision[5]),
        **{k: counts[k] for k in ("missed", "merged", "split", "spurious", "loose")},
        "counts": counts,
        "fates": {side: {FATE_NAMES[c]: int(n) for c, n in enumerate(np.bincount(f, minlength=7)) if c and n}
                  for side, f in (("truth", fates.truth), ("pred", fates.pred))},
        "thumb_size": [int(small.shape[1]), int(small.shape[0])],
        "per_threshold": [{"t": round(float(t), 2), "tp": int(tp), "fp": int(fp), "fn": int(fn), "precision": float(p)}
                          for t, tp, fp, fn, p in zip(THRESHOLDS, score.tp, score.fp, score.fn, precision)],
        "_score": score, "_area_ratios": fates.area_ratios,
        "_nuclei": {"truth": _nuclei(truth, fates.truth, fates.truth_iou, fates.truth_area),
                    "pred": _nuclei(pred, fates.pred, fates.pred_iou, fates.pred_area)},
    }


def _bounded_map(fn: Callable, items: Iterable, workers: int) -> Iterator:
    """``map(fn, items)`` in order on ``workers`` threads, at most ``2 * workers`` items
    in flight (the source is read lazily: a submission's images are not all in memory)."""
    if workers <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


# --------------------------------------------------------------------------- sources


def _run_source(run_dir: Path) -> _Source:
    """A run's out-of-fold predictions, scored as ``dsb evaluate RUN_DIR`` scores them."""
    run = RunDir(run_dir)
    cfg = load_run_config(run_dir)
    # Images as stored (not inverted), which the label maps do not depend on: one read
    # serves both the scoring and the pictures.
    samples = load_samples(cfg.data, invert_light_background=False)
    items = load_oof(run_dir, cfg, samples=samples)
    report = evaluate_run(run_dir, cfg, items=items)
    images = {s.image_id: s.image for s in samples}
    scores = {s.image_id: s for s in report.score.images}
    summary = {
        "map": report.score.map, "n_images": report.score.n_images, "labels": cfg.data.labels,
        "interval": list(report.interval), "interval_unit": report.interval_unit, "n_groups": report.n_groups,
        "per_type": {r.image_type: {"n_images": int(r.n_images), "map": float(r.map)} for r in report.per_type.itertuples()},
        "per_fold": {str(r.fold): {"n_images": int(r.n_images), "map": float(r.map)} for r in report.per_fold.itertuples()},
        "per_threshold": dict(zip([f"{t:.2f}" for t in THRESHOLDS], map(float, report.score.per_threshold))),
        "error_kinds": report.error_kinds, "error_kinds_per_type": report.error_kinds_per_type,
        "totals": _totals(report.score),
    }
    has_groups = report.interval_unit == "groups"

    def cases() -> Iterator[Case]:
        for item in items:
            yield Case(item.image_id, item.image_type, images[item.image_id], report.truths[item.image_id],
                       report.preds[item.image_id], group=item.group if has_groups else "", fold=item.fold,
                       score=scores[item.image_id])

    folds = sorted({i.fold for i in items})
    labels = cfg.data.labels if cfg.data.path != "synthetic" else "synthetic"
    description = (f"out-of-fold predictions of the run {run.path} (fold{'s' if len(folds) > 1 else ''} "
                   f"{', '.join(map(str, folds))}; data {cfg.data.path}, labels {labels}), scored as dsb evaluate does")
    return _Source(f"dsb report: {cfg.name or run.path.name}", description, cases(), [i.image_id for i in items],
                   summary, run.histories())


def _submission_source(submission: Path, solution: Path, images: Optional[Path]) -> _Source:
    """A submission against a solution, scored as ``dsb score`` scores it."""
    solution = Path(solution)
    if not solution.exists():
        raise DataError(f"--solution {solution}: no such file, folder or zip")
    if solution.is_file() and not zipfile.is_zipfile(solution):
        if images is None:
            raise DsbError(f"--images: needed with a solution CSV ({solution}): the folder or zip of its images")
        stage = open_stage(images, labels=solution)
        table = stage.table
        truth_ids, ignored = list(table.image_ids), set(table.ignored_ids)
        truth_stage = image_stage = stage
    else:
        truth_stage = open_stage(solution, labels="masks")
        if not truth_stage.has_labels:
            raise DataError(f"--solution {solution}: no <ImageId>/masks/*.png; a solution folder or zip needs the masks")
        image_stage = open_stage(images, labels=None) if images is not None else truth_stage
        truth_ids, ignored = list(truth_stage.image_ids), set()
    absent = [i for i in truth_ids if i not in image_stage]
    if absent:
        raise DataError(f"--images {images or solution}: has no image for {len(absent)} of the {len(truth_ids)} "
                        f"solution images (e.g. {absent[0]}); give the images of the labelled set")
    shapes = {i: image_stage.image_shape(i) for i in truth_ids}
    # Validated exactly as `dsb score` and `dsb validate` do: every problem listed, exit 1.
    frame = read_submission(submission, extra_columns=True)
    runs = submission_runs(frame, image_shapes=shapes, image_ids=truth_ids, name=str(submission))
    scored = [i for i in truth_ids if i not in ignored]

    def cases() -> Iterator[Case]:
        for image_id in scored:
            image = image_stage.read_image_uint8(image_id)
            truth = truth_stage.read_label_map(image_id)
            pred, _ = runs_to_label_map(runs[image_id], shapes[image_id])
            image_type = classify_image(image.astype(np.float32) / 255.0)
            yield Case(image_id, image_type, image, truth, pred)

    skipped = f"; {len(ignored)} images marked Ignored are not scored" if ignored else ""
    description = (f"the submission {submission} against {solution} (images {images or solution}), "
                   f"scored as dsb score does{skipped}")
    return _Source(f"dsb report: {Path(submission).name}", description, cases(), scored)


def _totals(score: DatasetScore) -> dict:
    """TP, FP and FN summed over images, per threshold."""
    if not score.images:
        return {k: [0] * len(THRESHOLDS) for k in ("tp", "fp", "fn")}
    sums = np.array([(s.tp, s.fp, s.fn) for s in score.images], np.int64).sum(axis=0)
    return {"tp": sums[0].tolist(), "fp": sums[1].tolist(), "fn": sums[2].tolist()}


def _kinds(rows: list[dict]) -> dict:
    """Error kinds over ``rows`` as :func:`dsb.evaluate.error_kinds` reports them."""
    counts = {k: sum(r["counts"][k] for r in rows) for k in (*_KIND_KEYS, "small_true", "small_missed")}
    ratios = [r["_area_ratios"] for r in rows if len(r["_area_ratios"])]
    return {
        **{k: counts[k] for k in _KIND_KEYS}, "small_true": counts["small_true"],
        "small_missed_rate": counts["small_missed"] / counts["small_true"] if counts["small_true"] else 0.0,
        "area_ratio": float(np.median(np.concatenate(ratios))) if ratios else float("nan"),
    }


def summarise(rows: list[dict]) -> dict:
    """The summary of rendered rows (a submission's; a run's comes from ``dsb evaluate``):
    the same keys and definitions, the interval over images."""
    score = DatasetScore.from_images(r["_score"] for r in rows)
    types = sorted({r["image_type"] for r in rows})
    return {
        "map": score.map, "n_images": score.n_images, "labels": None,
        "interval": list(bootstrap_interval([r["score"] for r in rows], [r["image_id"] for r in rows])),
        "interval_unit": "images", "n_groups": len(rows),
        "per_type": {t: {"n_images": sum(r["image_type"] == t for r in rows),
                         "map": float(np.mean([r["score"] for r in rows if r["image_type"] == t]))} for t in types},
        "per_fold": {},
        "per_threshold": dict(zip([f"{t:.2f}" for t in THRESHOLDS], map(float, score.per_threshold))),
        "error_kinds": _kinds(rows),
        "error_kinds_per_type": {t: _kinds([r for r in rows if r["image_type"] == t]) for t in types},
        "totals": _totals(score),
    }


# --------------------------------------------------------------------------- the folder


def _is_report(folder: Path) -> bool:
    try:
        return json.loads((folder / REPORT_JSON).read_text(encoding="utf-8")).get("generator") == MARKER
    except (OSError, ValueError, AttributeError):
        return False


def _check_out(out: Path) -> None:
    """Refuse, before any work, an output that is a file, not writable, or a folder with
    other things in it (an earlier report is replaced; nothing else is deleted)."""
    check_output_dir(out, "report folder")
    if out.is_dir() and any(out.iterdir()) and not _is_report(out):
        raise DsbError(f"report folder {out}: exists and is not an earlier dsb report (no {REPORT_JSON} written by "
                       "dsb report); give a new or empty folder")


def _publish(staging: Path, out: Path) -> None:
    """Swap the finished ``staging`` folder in for ``out``."""
    if out.exists():
        old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(out, old)
        os.replace(staging, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, out)


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def build_report(
    source: Path, out: Path, solution: Optional[Path] = None, images: Optional[Path] = None,
    workers: Optional[int] = None, progress: Optional[Callable[[int, int], None]] = None,
) -> ReportResult:
    """Write the HTML report of ``source`` into the folder ``out``.

    ``source`` is a run folder (its out-of-fold predictions), or a submission CSV with
    ``solution`` (an RLE CSV with ``images``, or a Kaggle folder/zip with ``masks/``;
    ``images`` then defaults to it). ``out`` must be new, empty, or an earlier report
    (replaced as a whole once the new one is complete). ``workers`` threads draw the
    images (default: one per CPU); ``progress(done, total)`` is called per image.

    Raises :class:`~dsb.errors.DsbError` (bad input, with the file or image named) or
    :class:`~dsb.errors.InvalidSubmissionError` (the submission's problems, exit 1).
    """
    source, out = Path(source), Path(out)
    _check_out(out)
    if is_run_dir(source):
        if solution is not None or images is not None:
            raise DsbError(f"{source} is a run folder: --solution and --images are for a submission CSV")
        src = _run_source(source)
    elif source.is_file():
        if solution is None:
            raise DsbError(f"{source}: a submission CSV needs --solution (the labels to score it against)")
        src = _submission_source(source, solution, images)
    elif source.is_dir():
        raise DataError(f"{source}: not a run folder (no {RunDir.CONFIG}) and not a submission CSV")
    else:
        raise DataError(f"{source}: no such run folder or submission CSV")

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    staging.mkdir()
    try:
        (staging / html.IMAGES_DIR).mkdir()
        (staging / html.THUMBS_DIR).mkdir()
        t0 = time.perf_counter()
        slugs = _slugs(src.image_ids)
        rows: list[dict] = []
        for row in _bounded_map(lambda case: render_case(case, staging, slugs[case.image_id]), src.cases,
                                workers or os.cpu_count() or 1):
            rows.append(row)
            if progress is not None:
                progress(len(rows), len(src.image_ids))
        summary = src.summary if src.summary is not None else summarise(rows)
        has_curves = bool(src.histories)
        if has_curves:
            plot_training_curves(src.histories, staging / html.CURVES)
        rows.sort(key=lambda r: (r["score"], r["image_id"]))
        for rank, row in enumerate(rows):
            prev = rows[rank - 1] if rank > 0 else None
            nxt = rows[rank + 1] if rank + 1 < len(rows) else None
            page = html.image_page(row, row["_nuclei"], row["per_threshold"], prev, nxt, rank + 1, len(rows), src.title)
            (staging / html.IMAGES_DIR / f"{row['slug']}.html").write_text(page, encoding="utf-8")
        render_s = time.perf_counter() - t0
        public = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
        record = {"generator": MARKER, "title": src.title, "source": src.description, **summary, "images": public}
        (staging / REPORT_JSON).write_text(json.dumps(record, indent=1, default=_json_default), encoding="utf-8")
        (staging / INDEX).write_text(
            html.index_page(src.title, src.description, summary, public, summary["totals"], has_curves), encoding="utf-8")
        _publish(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ReportResult(out, out / INDEX, len(rows), float(summary["map"]), tuple(summary["interval"]), render_s, summary)
