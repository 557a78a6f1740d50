"""The run folder's layout, defined once, and the one resolver of checkpoint specs.

A run folder (``runs/<name>`` by default) holds::

    config.yaml                  the resolved config (defaults filled in)
    folds.csv                    image_id, image_type, group, fold (made once, reused)
    run.json                     the commands that trained it (folds, resumptions, full)
    postprocess.yaml             thresholds tuned on the out-of-fold maps (dsb tune)
    instance_filter.pkl          the instance filter fitted out of fold (dsb tune)
    oof_scores.csv               per-image out-of-fold scores (dsb evaluate)
    fold<k>/last.pt              everything needed to resume, written every epoch
    fold<k>/best.pt              the weights of the best epoch by validation mAP
    fold<k>/metrics.jsonl        one JSON record per epoch
    fold<k>/oof/<image_id>.npy   out-of-fold probabilities of the best epoch, uint8 (K, H, W)
    full/                        the model trained on every image (``dsb train --full``)

A shipped set (``weights/<name>/``) holds ``fold<k>.pt`` files, ``manifest.json`` and
optionally ``instance_filter.pkl``. Nothing else in the project spells these names.

>>> run = RunDir("runs/demo")
>>> run.best(0).as_posix(), run.best(None).as_posix()
('runs/demo/fold0/best.pt', 'runs/demo/full/best.pt')
>>> run.oof_map(1, "abc").as_posix()
'runs/demo/fold1/oof/abc.npy'
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import yaml

from dsb.config import Config, config_from_dict, load_config
from dsb.errors import CheckpointError, DsbError

__all__ = ["RunDir", "WEIGHTS_DIR", "MANIFEST", "FILTER_FILE", "resolve_checkpoints", "is_run_dir", "load_run_config"]

#: Shipped checkpoint sets: ``weights/<name>/fold<k>.pt`` + ``manifest.json``.
WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
MANIFEST = "manifest.json"
#: The instance filter's file, in a run folder or beside a shipped set's checkpoints.
FILTER_FILE = "instance_filter.pkl"

_FOLD_DIR = re.compile(r"fold(\d+)$")


@dataclass(frozen=True)
class RunDir:
    """Paths inside one run folder; nothing is created or read by constructing it."""

    path: Path

    CONFIG = "config.yaml"
    FOLDS = "folds.csv"
    RUN = "run.json"
    TUNED = "postprocess.yaml"
    OOF_SCORES = "oof_scores.csv"
    FULL = "full"
    LAST = "last.pt"
    BEST = "best.pt"
    METRICS = "metrics.jsonl"
    OOF = "oof"

    def __init__(self, path: str | Path):
        object.__setattr__(self, "path", Path(path))

    def __str__(self) -> str:
        return str(self.path)

    # ------------------------------------------------------------------ run-level files
    @property
    def config(self) -> Path:
        return self.path / self.CONFIG

    @property
    def folds(self) -> Path:
        return self.path / self.FOLDS

    @property
    def run_record(self) -> Path:
        return self.path / self.RUN

    @property
    def tuned(self) -> Path:
        return self.path / self.TUNED

    @property
    def instance_filter(self) -> Path:
        return self.path / FILTER_FILE

    @property
    def oof_scores(self) -> Path:
        return self.path / self.OOF_SCORES

    # ------------------------------------------------------------------ per-model files
    def model_dir(self, fold: Optional[int]) -> Path:
        """``fold<k>/``, or ``full/`` for ``fold=None`` (the model trained on every image)."""
        return self.path / (self.FULL if fold is None else f"fold{int(fold)}")

    def last(self, fold: Optional[int]) -> Path:
        return self.model_dir(fold) / self.LAST

    def best(self, fold: Optional[int]) -> Path:
        return self.model_dir(fold) / self.BEST

    def metrics(self, fold: Optional[int]) -> Path:
        return self.model_dir(fold) / self.METRICS

    def oof_dir(self, fold: int) -> Path:
        return self.model_dir(fold) / self.OOF

    def oof_map(self, fold: int, image_id: str) -> Path:
        return self.oof_dir(fold) / f"{image_id}.npy"

    # ------------------------------------------------------------------ what is there
    def exists(self) -> bool:
        """A run folder is one with a ``config.yaml``."""
        return self.config.is_file()

    def fold_dirs(self) -> Iterator[tuple[int, Path]]:
        """``(k, fold<k>/)`` for every fold folder, in fold order."""
        found = []
        for child in self.path.glob("fold*"):
            match = _FOLD_DIR.match(child.name)
            if match and child.is_dir():
                found.append((int(match.group(1)), child))
        return iter(sorted(found))

    def trained_folds(self) -> dict[int, Path]:
        """``{k: fold<k>/best.pt}`` for the folds that have a best checkpoint."""
        return {k: d / self.BEST for k, d in self.fold_dirs() if (d / self.BEST).is_file()}

    def has_oof(self) -> bool:
        return self.folds.is_file() and any(self.oof_dir(k).glob("*.npy") for k, _ in self.fold_dirs())

    def checkpoints(self, folds: Optional[Sequence[int]] = None, full: bool = False) -> list[Path]:
        """The ``best.pt`` files of every trained fold, of the chosen ``folds``, or of
        ``full/`` (``full=True``); :class:`CheckpointError` naming what is missing."""
        if full:
            if folds is not None:
                raise CheckpointError("choose either the full-data model or folds, not both")
            if not self.best(None).is_file():
                raise CheckpointError(f"{self.path}: no {self.FULL}/{self.BEST}; run dsb train --full --run-dir {self.path} first")
            return [self.best(None)]
        trained = self.trained_folds()
        if not trained:
            raise CheckpointError(f"{self.path}: no fold*/{self.BEST}; train a fold first")
        if folds is None:
            return [trained[k] for k in sorted(trained)]
        missing = sorted(set(folds) - set(trained))
        if missing:
            raise CheckpointError(f"{self.path}: fold(s) {missing} have no {self.BEST} (trained: {sorted(trained)})")
        return [trained[k] for k in sorted(set(folds))]

    def histories(self) -> dict[str, list[dict]]:
        """``{"fold k": [epoch records]}`` for every fold with a ``metrics.jsonl``."""
        out = {}
        for k, _ in self.fold_dirs():
            path = self.metrics(k)
            if path.is_file():
                records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
                if records:
                    out[f"fold {k}"] = records
        return out

    def read_tuned(self) -> dict:
        """``postprocess.yaml`` as written by ``dsb tune`` (``{}`` when absent)."""
        return (yaml.safe_load(self.tuned.read_text()) or {}) if self.tuned.is_file() else {}

    def load_config(self) -> Config:
        """The run's resolved config with the tuned postprocessing (if any) applied."""
        cfg = load_config(self.config)
        tuned = self.read_tuned().get("postprocess")
        if tuned:
            data = cfg.to_dict()
            data["postprocess"].update(tuned)
            cfg = config_from_dict(data)
        return cfg

    def read_record(self) -> dict:
        """``run.json`` (``{}`` when absent); a damaged one is an error naming it."""
        path = self.run_record
        if not path.is_file():
            return {}
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DsbError(f"{path}: unreadable run record ({exc}); fix or delete it") from None
        if not isinstance(record, dict):
            raise DsbError(f"{path}: unreadable run record (not a JSON object); fix or delete it")
        return record


def load_run_config(run_dir: str | Path) -> Config:
    """The config of the run in ``run_dir`` with its tuned postprocessing applied."""
    return RunDir(run_dir).load_config()


def is_run_dir(path: str | Path) -> bool:
    """Whether ``path`` is a run folder (holds a ``config.yaml``)."""
    return Path(path).is_dir() and RunDir(path).exists()


def _checkpoints_in(path: Path) -> list[Path]:
    """A checkpoint file itself, a run folder's ``fold*/best.pt`` (else its ``best.pt``),
    or a folder of ``*.pt`` files (a shipped set)."""
    if path.is_file():
        return [path]
    if path.is_dir():
        found = list(RunDir(path).trained_folds().values())
        if not found and (path / RunDir.BEST).is_file():
            found = [path / RunDir.BEST]
        if not found:
            found = sorted(path.glob("*.pt"))
        if not found:
            raise CheckpointError(f"{path}: no fold*/{RunDir.BEST}, {RunDir.BEST} or *.pt checkpoints in this folder")
        return found
    raise CheckpointError(f"{path}: checkpoint or run folder not found")


def resolve_checkpoints(specs: str | Path | Sequence[str | Path], weights_dir: Path = WEIGHTS_DIR) -> list[Path]:
    """Checkpoint files from specs: a ``.pt`` file, a run folder, a folder of ``*.pt``, or
    the name of a shipped set under ``weights_dir``. An unknown name is a
    :class:`CheckpointError` listing the shipped sets."""
    if isinstance(specs, (str, Path)):
        specs = [specs]
    paths: list[Path] = []
    for spec in specs:
        path = Path(spec)
        if not path.exists() and (Path(weights_dir) / str(spec)).exists():
            path = Path(weights_dir) / str(spec)
        if not path.exists():
            shipped = sorted(p.name for p in Path(weights_dir).iterdir() if p.is_dir()) if Path(weights_dir).is_dir() else []
            hint = f" (shipped sets: {', '.join(shipped)})" if shipped else ""
            raise CheckpointError(f"{spec}: no such checkpoint file, run folder or shipped set{hint}")
        paths.extend(_checkpoints_in(path))
    return paths
