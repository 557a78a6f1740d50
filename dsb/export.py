"""Ship a trained run as a named checkpoint set under ``weights/<name>/``.

Each fold's ``best.pt`` is re-saved with fp16 weights (half the size) and the run's
tuned postprocessing written into its config, so ``dsb predict --checkpoint <name>``
reproduces the run's out-of-fold settings. Beside the checkpoints, ``manifest.json``
records what a user needs to trust them: the resolved config, the training command, a
SHA-256 of the training data files, and the out-of-fold score.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path
from typing import Optional, Sequence

from dsb.errors import CheckpointError
from dsb.utils import atomic_write

MANIFEST = "manifest.json"


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def select_checkpoints(run_dir: Path, folds: Optional[Sequence[int]] = None, full: bool = False) -> list[Path]:
    """The ``best.pt`` files :func:`export_run` ships (every fold, the chosen folds, or
    ``full/best.pt``); :class:`CheckpointError` naming what is missing."""
    run_dir = Path(run_dir)
    bests = sorted(run_dir.glob("fold*/best.pt"))
    if full:
        if folds is not None:
            raise CheckpointError("export either the full-data model or folds, not both")
        bests = [run_dir / "full" / "best.pt"]
        if not bests[0].is_file():
            raise CheckpointError(f"{run_dir}: no full/best.pt to export; run dsb train --full --run-dir {run_dir} first")
    elif not bests:
        raise CheckpointError(f"{run_dir}: no fold*/best.pt to export; train a fold first")
    if folds is not None:
        trained = {int(b.parent.name[4:]): b for b in bests}
        missing = sorted(set(folds) - set(trained))
        if missing:
            raise CheckpointError(
                f"{run_dir}: fold(s) {missing} have no best.pt (trained: {sorted(trained)})"
            )
        bests = [trained[k] for k in sorted(set(folds))]
    return bests


def _first_stage(init_run: Path) -> dict:
    """What a warm-restarted run (``train.init_from``) started from: the first stage's
    command and config, so the manifest alone says how to train the shipped weights."""
    from dsb.config import load_config

    info = json.loads((init_run / "run.json").read_text()) if (init_run / "run.json").is_file() else {}
    config = load_config(init_run / "config.yaml").to_dict() if (init_run / "config.yaml").is_file() else None
    return {"run": str(init_run), "command": info.get("command"), "commands": info.get("commands"), "config": config}


def export_run(
    run_dir: Path, name: str, weights_dir: Path, max_total_mb: float = 40.0, oof_map: Optional[float] = None,
    folds: Optional[Sequence[int]] = None, held_out_map: Optional[dict[int, float]] = None, full: bool = False,
    overrides: Sequence[str] = (),
    oof_summary: Optional[dict] = None,
) -> Path:
    """Write ``weights_dir/name/fold<k>.pt`` (fp16) and ``manifest.json``; returns the folder.

    ``folds`` ships only those folds' models (default: every trained fold). ``oof_map``
    (default: the tuned score in ``postprocess.yaml``) is the run's out-of-fold mAP over
    all its folds; ``held_out_map`` maps a fold to its own held-out mAP, recorded beside
    that fold's file.

    ``full`` ships the model trained on every image (``full/best.pt``, from ``dsb train
    --full``) instead; the folds' out-of-fold mAP is then recorded as its estimate.

    ``oof_summary`` (the out-of-fold estimate: interval, what it resampled, per image type,
    how the folds were made) is recorded as the manifest's ``oof``.

    ``overrides`` (``infer.key=value`` or ``postprocess.key=value``) change how the shipped
    set predicts, e.g. ``infer.rescale_area_px=700``; they are recorded in the manifest.

    Raises :class:`CheckpointError` if the run has no ``fold*/best.pt``, a requested fold
    is missing, or the set would exceed ``max_total_mb``; nothing is left behind then.
    """
    from dsb.config import override_config
    from dsb.evaluate import TUNED_FILE, load_run_config
    from dsb.models.checkpoint import load_model, save_checkpoint
    from dsb.postprocess.filter import FILTER_FILE, load_filter

    run_dir = Path(run_dir)
    bests = select_checkpoints(run_dir, folds, full)
    run_cfg = override_config(load_run_config(run_dir), overrides, sections=("infer", "postprocess"))
    out = Path(weights_dir) / name
    staging = Path(weights_dir) / f".{name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        shipped = []
        for best in bests:
            model, cfg, meta = load_model(best)
            cfg = dataclasses.replace(cfg, postprocess=run_cfg.postprocess, infer=run_cfg.infer)
            target = staging / f"{best.parent.name}.pt"
            save_checkpoint(target, model, cfg, half=True, source=str(best))
            entry = {"file": target.name, "fold": best.parent.name, "bytes": target.stat().st_size,
                     "epoch": meta.get("epoch")}
            if not full:
                k = int(best.parent.name[4:])
                entry["validation_map"] = meta.get("val_map")
                entry["held_out_map"] = None if held_out_map is None else held_out_map.get(k)
            shipped.append(entry)
        if (run_dir / "folds.csv").is_file() and not full:
            # Which training images each shipped model never saw: lets anyone score it honestly.
            from dsb.data.folds import load_folds

            table = load_folds(run_dir / "folds.csv")
            for entry in shipped:
                k = int(entry["fold"][4:])
                entry["held_out_ids"] = sorted(table.loc[table["fold"] == k, "image_id"].tolist())
        instance_filter = None
        if (run_dir / FILTER_FILE).is_file():
            # The instance filter that `dsb tune` fitted on the run's out-of-fold predictions.
            kept = load_filter(run_dir / FILTER_FILE)
            shutil.copyfile(run_dir / FILTER_FILE, staging / FILTER_FILE)
            instance_filter = {"file": FILTER_FILE, "threshold": kept.threshold,
                               "bytes": (staging / FILTER_FILE).stat().st_size}
        total_mb = (sum(f["bytes"] for f in shipped) + (instance_filter or {}).get("bytes", 0)) / 2**20
        if total_mb > max_total_mb:
            raise CheckpointError(f"{run_dir}: the set is {total_mb:.1f} MB, over the {max_total_mb:.0f} MB limit")
        data_files = [Path(p) for p in (run_cfg.data.path, run_cfg.data.labels) if Path(p).is_file()]
        run_info = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").is_file() else {}
        tuned = run_dir / TUNED_FILE
        if oof_map is None and tuned.is_file():
            import yaml

            oof_map = (yaml.safe_load(tuned.read_text()) or {}).get("oof_map")
        manifest = {
            "name": name,
            "run": str(run_dir),
            "command": run_info.get("full", {}).get("command") if full else run_info.get("command"),
            **({"commands": run_info["commands"]} if "commands" in run_info and not full else {}),
            **({"cross_validation_command": run_info.get("command"),
                "oof_map_is": "the out-of-fold mAP of the same recipe's fold models (an estimate for this model, "
                              "which saw every image)"} if full else {}),
            "folds": shipped,
            "total_mb": round(total_mb, 2),
            "data_sha256": {str(p): file_sha256(p) for p in data_files},
            "oof_map": oof_map,
            "folds_method": run_cfg.folds.method,
            **({"instance_filter": instance_filter} if instance_filter else {}),
            **({"oof": oof_summary} if oof_summary else {}),
            "held_out_map_per_fold": None if held_out_map is None else {str(k): v for k, v in sorted(held_out_map.items())},
            "config": run_cfg.to_dict(),
            **({"export_overrides": list(overrides)} if overrides else {}),
            **({"starts_from": _first_stage(Path(run_cfg.train.init_from))} if run_cfg.train.init_from else {}),
        }
        with atomic_write(staging / MANIFEST) as fh:
            json.dump(manifest, fh, indent=2)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out
