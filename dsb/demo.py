"""The main job end to end, on the embedded synthetic default or on real Kaggle data.

Synthesise (or open) a training and a test set, train one fold briefly, predict the test
set with TTA, split nuclei with the watershed, write and validate the submission, and
score it: against the synthetic truth, or out-of-fold on real data (whose test labels
are held out). Thresholding alone is scored on the same probabilities for comparison.
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from dsb.config import Config
from dsb.data.kaggle import open_stage
from dsb.data.samples import load_samples
from dsb.data.synthetic import write_synthetic_dataset
from dsb.errors import DataError
from dsb.evaluate import load_oof, score_items
from dsb.infer.pipeline import predict_stage
from dsb.infer.predict import load_models
from dsb.metrics import DatasetScore, image_score
from dsb.postprocess import threshold_labels
from dsb.probmaps import dequantise_probs
from dsb.rundir import RunDir
from dsb.submission import score_submission
from dsb.train import train_fold


@dataclass
class DemoResult:
    submission: Path
    run_dir: Path
    n_test_images: int
    watershed_map: Optional[float]
    threshold_map: Optional[float]
    oof_map: float
    oof_threshold_map: float
    overlays: list[Path] = field(default_factory=list)
    model_seconds: float = 0.0
    postprocess_seconds: float = 0.0


def _find_stage(root: Path, name: str) -> Path:
    for cand in (root / f"{name}.zip", root / name):
        if cand.exists():
            return cand
    raise DataError(f"{root}: no {name}.zip or {name}/ folder (expected a Kaggle stage-1 layout)")


def _threshold_map(items, channels, post) -> float:
    """mAP of connected components of the body channel: the no-watershed baseline."""
    return DatasetScore.from_images(
        image_score(truth, threshold_labels(probs, list(channels), post.mask_threshold), image_id=image_id)
        for image_id, probs, truth in items
    ).map


def run_demo(
    cfg: Config,
    out_dir: Path,
    submission: Path,
    data: Optional[Path] = None,
    n_test: int = 12,
    n_overlays: int = 4,
    log: Callable[[str], None] = print,
    on_step=None,
    on_epoch=None,
) -> DemoResult:
    """Run the whole pipeline; see the module docstring. ``cfg`` is the training config."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    solution = None
    if data is None:
        test_dir = out_dir / "test"
        info = write_synthetic_dataset(test_dir, n=n_test, seed=cfg.data.synthetic_seed + 1000, overwrite=True)
        test_path, solution = Path(info.path), Path(info.solution_csv)
        log(f"synthetic data: {cfg.data.synthetic_n} training images (in memory), {n_test} test images in {test_path}")
    else:
        train_path, test_path = _find_stage(Path(data), "stage1_train"), _find_stage(Path(data), "stage1_test")
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=str(train_path)))
        log(f"real data: training {train_path}, test {test_path}")

    samples = load_samples(cfg.data, cfg.augment.invert_brightfield)
    run_dir = out_dir / "run"
    # The demo's run folder is its own scratch: a fresh run each time (another config or
    # data would not fit the old folds and checkpoints).
    shutil.rmtree(run_dir, ignore_errors=True)
    fold = train_fold(cfg, run_dir, 0, samples, on_step=on_step, on_epoch=on_epoch)
    log(f"trained fold 0: best validation mAP {fold.best_map:.4f} (epoch {fold.best_epoch})")

    oof_items = load_oof(run_dir, cfg, samples)
    oof_score, _ = score_items(oof_items, cfg.targets.channels, cfg.postprocess)
    oof_threshold = _threshold_map(
        [(i.image_id, dequantise_probs(i.probs), i.truth) for i in oof_items], cfg.targets.channels, cfg.postprocess
    )

    models, ckpt_cfg = load_models([RunDir(run_dir).best(0)])
    stage = open_stage(test_path, labels=None)
    probs_dir = out_dir / "probs"
    summary = predict_stage(
        models, ckpt_cfg, stage, submission, tta=cfg.infer.tta, save_probs_dir=probs_dir,
        overlays_dir=out_dir / "overlays", max_overlays=n_overlays,
    )
    log(f"wrote {summary.out_csv}: {summary.n_images} images, {summary.n_nuclei} nuclei "
        f"(model {summary.model_seconds:.1f}s, postprocess {summary.postprocess_seconds:.1f}s)")

    watershed_map = threshold_map = None
    if solution is not None:
        watershed_map = score_submission(submission, solution).map
        truth_stage = open_stage(test_path, labels="masks")
        threshold_map = _threshold_map(
            [
                (image_id, dequantise_probs(np.load(probs_dir / f"{image_id}.npy")), truth_stage.read_label_map(image_id))
                for image_id in truth_stage.image_ids
            ],
            cfg.targets.channels, cfg.postprocess,
        )
    return DemoResult(
        submission=Path(submission), run_dir=run_dir, n_test_images=summary.n_images,
        watershed_map=watershed_map, threshold_map=threshold_map,
        oof_map=oof_score.map, oof_threshold_map=oof_threshold, overlays=summary.overlays,
        model_seconds=summary.model_seconds, postprocess_seconds=summary.postprocess_seconds,
    )
