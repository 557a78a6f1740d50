"""From checkpoints and a folder (or zip) of images to a validated submission CSV.

Images stream through one at a time: the model predicts probabilities (with TTA,
tiling, and the fold ensemble) in the main thread while a pool of workers turns earlier
images' probabilities into instances and RLE rows, so memory stays flat in the number of
images and postprocessing overlaps with the model.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from dsb.config import Config, PostprocessConfig, override_config
from dsb.data.dataset import prepare_image
from dsb.data.imagetypes import classify_image
from dsb.device import resolve_device
from dsb.infer.predict import Predictor, load_models
from dsb.infer.rescale import predict_rescaled
from dsb.postprocess.filter import InstanceFilter, filtered_labels, load_filter
from dsb.probmaps import quantise_probs
from dsb.rle import label_map_to_rows
from dsb.rundir import FILTER_FILE, is_run_dir, load_run_config, resolve_checkpoints
from dsb.submission import write_submission
from dsb.viz import overlay_instances, save_png


@dataclass
class Ensemble:
    """What a prediction needs from ``--checkpoint`` specs: the models, the config they
    predict with (a run folder's tuned postprocessing applied), their files, the instance
    filter shipped beside them (or None) and the device."""

    models: list
    cfg: Config
    paths: list[Path]
    instance_filter: Optional[InstanceFilter]
    device: str


def load_ensemble(
    specs: Sequence[str | Path], device: str = "auto", overrides: Sequence[str] = (), use_filter: bool = True,
) -> Ensemble:
    """Load the models of ``specs`` (files, run folders, set folders or shipped set names;
    :func:`dsb.rundir.resolve_checkpoints`) for prediction.

    The config is the first checkpoint's; a run folder among the specs contributes its
    tuned thresholds (``dsb tune``); ``overrides`` (``section.key=value``) apply last.
    """
    paths = resolve_checkpoints(specs)
    dev = resolve_device(device)
    models, cfg = load_models(paths, device=str(dev))
    for spec in specs:
        if is_run_dir(spec):
            cfg = dataclasses.replace(cfg, postprocess=load_run_config(spec).postprocess)
    if overrides:
        cfg = override_config(cfg, list(overrides))
    instance_filter = find_instance_filter(paths) if use_filter else None
    return Ensemble(models=models, cfg=cfg, paths=paths, instance_filter=instance_filter, device=str(dev))


@dataclass
class PredictionSummary:
    out_csv: Path
    n_images: int
    n_nuclei: int
    model_seconds: float
    postprocess_seconds: float
    wall_seconds: float
    overlays: list[Path] = field(default_factory=list)
    label_maps: dict[str, np.ndarray] = field(default_factory=dict)
    #: The scale each image was predicted at (1.0 unless ``infer.rescale_area_px`` is set).
    scales: dict[str, float] = field(default_factory=dict)


def find_instance_filter(checkpoints: Sequence[Path]):
    """The instance filter (:mod:`dsb.postprocess.filter`) shipped beside ``checkpoints``:
    ``instance_filter.pkl`` in a shipped set's folder or a run folder (above ``fold<k>/``);
    None if there is none."""
    for path in checkpoints:
        for folder in (Path(path).parent, Path(path).parent.parent):
            if (folder / FILTER_FILE).is_file():
                return load_filter(folder / FILTER_FILE)
    return None


def postprocess_for(post: PostprocessConfig, raw: np.ndarray) -> PostprocessConfig:
    """The postprocessing of the image ``raw`` (``H x W x 3`` uint8, as read): ``post`` with
    its image type's changes (``postprocess.by_type``; the type is classified only when some
    type has changes)."""
    return post.for_type(classify_image(raw.astype(np.float32) / 255.0) if post.by_type.changes() else None)


def _postprocess(image_id, probs, channels, post_cfg, keep_image, overlays_dir, want_overlay, instance_filter=None):

    t0 = time.perf_counter()
    label_map = filtered_labels(probs, channels, post_cfg, instance_filter)
    rows = label_map_to_rows(image_id, label_map)
    overlay_path = None
    if want_overlay and overlays_dir is not None:
        overlay_path = save_png(Path(overlays_dir) / f"{image_id}.png", overlay_instances(keep_image, label_map))
    return image_id, label_map, rows, overlay_path, time.perf_counter() - t0


def predict_stage(
    models: Sequence,
    cfg: Config,
    stage,
    out_csv: Path,
    *,
    device: str = "cpu",
    tta: Optional[str] = None,
    image_ids: Optional[Sequence[str]] = None,
    save_probs_dir: Optional[Path] = None,
    overlays_dir: Optional[Path] = None,
    max_overlays: Optional[int] = None,
    keep_label_maps: bool = False,
    workers: Optional[int] = None,
    on_image: Optional[Callable[[str, int], None]] = None,
    instance_filter=None,
) -> PredictionSummary:
    """Predict every image of ``stage`` and write a validated submission to ``out_csv``.

    ``cfg`` supplies the target channels, inference and postprocessing settings
    (usually the checkpoint's own config, possibly with tuned thresholds); ``tta``
    overrides ``cfg.infer.tta``; ``instance_filter`` (an
    :class:`~dsb.postprocess.filter.InstanceFilter`) drops instances it predicts false. Writing is atomic and the file is validated before it
    is written (every image gets a row, empty where nothing was found).
    """
    ids = list(image_ids) if image_ids is not None else list(stage.image_ids)
    predictor = Predictor(
        models, cfg.targets.channels, dataclasses.replace(cfg.infer, tta=tta or cfg.infer.tta), device=device
    )
    workers = workers or max(1, (os.cpu_count() or 1))
    rows: list[tuple[str, str]] = []
    shapes: dict[str, tuple[int, int]] = {}
    label_maps: dict[str, np.ndarray] = {}
    scales: dict[str, float] = {}
    overlays: list[Path] = []
    model_seconds = post_seconds = 0.0
    n_nuclei = 0
    t_start = time.perf_counter()
    pending: deque[Future] = deque()

    def drain(block_until: int) -> None:
        nonlocal post_seconds, n_nuclei
        while len(pending) > block_until:
            image_id, label_map, image_rows, overlay_path, seconds = pending.popleft().result()
            rows.extend(image_rows)
            n_nuclei += int(sum(1 for _, r in image_rows if r))
            post_seconds += seconds
            if overlay_path is not None:
                overlays.append(overlay_path)
            if keep_label_maps:
                label_maps[image_id] = label_map

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for index, image_id in enumerate(ids):
            raw = stage.read_image_uint8(image_id)
            shapes[image_id] = raw.shape[:2]
            post = postprocess_for(cfg.postprocess, raw)
            image = prepare_image(raw, cfg.augment.invert_brightfield).astype(np.float32) / 255.0
            t0 = time.perf_counter()
            probs, scale = predict_rescaled(predictor, image, cfg.targets.channels, post, predictor.infer_cfg)
            scales[image_id] = scale
            model_seconds += time.perf_counter() - t0
            if save_probs_dir is not None:
                Path(save_probs_dir).mkdir(parents=True, exist_ok=True)
                np.save(Path(save_probs_dir) / f"{image_id}.npy", quantise_probs(probs))
            want_overlay = max_overlays is None or index < max_overlays
            pending.append(pool.submit(
                _postprocess, image_id, probs, cfg.targets.channels, post,
                raw if want_overlay else None, overlays_dir, want_overlay, instance_filter,
            ))
            # Bound the queue so memory stays flat: at most 2 images per worker in flight.
            drain(2 * workers)
            if on_image is not None:
                on_image(image_id, index + 1)
        drain(0)
    order = {image_id: i for i, image_id in enumerate(ids)}
    rows.sort(key=lambda r: order[r[0]])  # stable: keeps each image's instance order
    write_submission(out_csv, rows, image_shapes=shapes)
    return PredictionSummary(
        out_csv=Path(out_csv), n_images=len(ids), n_nuclei=n_nuclei, model_seconds=model_seconds,
        postprocess_seconds=post_seconds, wall_seconds=time.perf_counter() - t_start,
        overlays=overlays, label_maps=label_maps, scales=scales,
    )
