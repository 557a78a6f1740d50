"""Where the research scripts get their held-out images: fold models and the images each
never trained on, from a training run or from a shipped checkpoint set.

SOURCE is a run folder (``folds.csv``, ``fold<k>/best.pt``, the run's tuned
postprocessing) or a shipped set (its name under ``weights/`` or its folder): then each
fold model gets the held-out ids its ``manifest.json`` lists and the set's own
postprocessing, and the training data are looked up in ``data_dir`` (a folder holding the
manifest's data files by name; default: the paths the manifest records, relative to the
repository). So a shipped set's held-out figures can be re-measured without the run folder
it came from.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

if str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for _common

from _common import REPO  # noqa: E402  (also puts the repository on sys.path)

from dsb.config import Config  # noqa: E402
from dsb.data.folds import load_folds  # noqa: E402
from dsb.data.imagetypes import classify_image  # noqa: E402
from dsb.data.kaggle import Stage, open_stage  # noqa: E402
from dsb.rundir import MANIFEST, WEIGHTS_DIR, RunDir, load_run_config  # noqa: E402
from dsb.models.checkpoint import load_model  # noqa: E402


@dataclass
class HeldOutFold:
    fold: int
    checkpoint: Path
    image_ids: list[str]  # sorted
    #: image type per id (from folds.csv; None for a shipped set: see :meth:`types`)
    image_types: Optional[dict[str, str]]
    epoch: Optional[int]
    #: experiment group per id (folds.csv of grouped folds; None for random folds or a shipped set)
    groups: Optional[dict[str, str]] = None

    def types(self, stage: Stage, ids: list[str]) -> dict[str, str]:
        if self.image_types is not None:
            return {i: self.image_types[i] for i in ids}
        return {i: classify_image(stage.read_image_uint8(i)) for i in ids}


def held_out_folds(source: str, folds: str = "0", data_dir: Optional[Path] = None) -> tuple[Config, Stage, list[HeldOutFold]]:
    """``(config, labelled training stage, folds)`` of a run folder or shipped set.

    ``folds`` is comma-separated fold numbers or ``all``. Exits with a message naming the
    source when it is neither, or lacks a fold asked for.
    """
    path = Path(source)
    if not path.exists() and (WEIGHTS_DIR / source).is_dir():
        path = WEIGHTS_DIR / source
    if (path / MANIFEST).is_file():
        return _shipped(path, folds, data_dir)
    if RunDir(path).folds.is_file():
        return _run(path, folds)
    sys.exit(f"{source}: neither a run folder ({RunDir.FOLDS}) nor a shipped set ({MANIFEST})")


def _chosen(available: list[int], folds: str, where: Path) -> list[int]:
    chosen = sorted(available) if folds == "all" else [int(f) for f in folds.split(",")]
    missing = sorted(set(chosen) - set(available))
    if missing:
        sys.exit(f"{where}: no fold {missing} (it has {sorted(available)})")
    return chosen


def _run(run_dir: Path, folds: str):
    cfg = load_run_config(run_dir)
    table = load_folds(RunDir(run_dir).folds)
    entries = []
    for fold in _chosen(sorted(set(table["fold"])), folds, run_dir):
        held = table[table["fold"] == fold].sort_values("image_id")
        groups = dict(zip(held["image_id"], held["group"])) if "group" in held and held["group"].notna().all() else None
        entries.append(HeldOutFold(fold, RunDir(run_dir).best(fold), held["image_id"].tolist(),
                                   dict(zip(held["image_id"], held["image_type"])), None, groups))
    return cfg, open_stage(cfg.data.path, labels=cfg.data.labels), entries


def _shipped(set_dir: Path, folds: str, data_dir: Optional[Path]):
    manifest = json.loads((set_dir / MANIFEST).read_text())
    by_fold = {int(e["fold"].removeprefix("fold")): e for e in manifest["folds"] if e["fold"].startswith("fold")}
    if not by_fold:
        sys.exit(f"{set_dir}: its model trained on every image (dsb train --full), so no image is held out from it; "
                 f"give the run folder of the fold models behind its estimate ({manifest.get('run')})")
    chosen = _chosen(sorted(by_fold), folds, set_dir / MANIFEST)
    _, cfg, _ = load_model(set_dir / by_fold[chosen[0]]["file"])
    data, labels = Path(cfg.data.path), Path(cfg.data.labels)
    if data_dir is not None:
        data, labels = Path(data_dir) / data.name, Path(data_dir) / labels.name
    elif not data.is_absolute():  # recorded relative to the repository it was exported from
        data, labels = REPO / data, REPO / labels
    entries = [HeldOutFold(k, set_dir / by_fold[k]["file"], sorted(by_fold[k]["held_out_ids"]), None,
                           by_fold[k].get("epoch")) for k in chosen]
    return cfg, open_stage(data, labels=labels), entries
