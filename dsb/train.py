"""Training U-Net++ on one cross-validation fold, with validation by the competition mAP.

A run folder (its layout: :class:`dsb.rundir.RunDir`) holds the resolved config, the
folds, and per fold the resumable ``last`` checkpoint, the ``best`` one by validation mAP
(EMA weights if enabled), the epoch history and the best epoch's out-of-fold
probabilities (uint8, :mod:`dsb.probmaps`).

"Best" means best mAP of the real pipeline (predict, postprocess to instances, score
with :mod:`dsb.metrics`), not best loss. A run killed at any point resumes from
``last.pt`` and loses at most the epoch in progress; since every sample is a pure
function of ``(seed, epoch, index)`` the resumed run sees the same data.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dsb.config import Config, load_config, save_config
from dsb.data.dataset import EpochDataset, Sample, balanced_weights, normalise_sample_size, with_pseudo_weights
from dsb.data.folds import load_folds, load_or_make_folds, make_folds
from dsb.data.samples import sample_groups
from dsb.device import DistInfo, amp_dtype, autocast, resolve_device
from dsb.errors import CheckpointError, ConfigError, DsbError
from dsb.infer.predict import Predictor
from dsb.infer.rescale import choose_scale, predict_rescaled
from dsb.infer.tta import tta_predict, tta_transforms
from dsb.metrics import image_score
from dsb.models import build_model
from dsb.models.checkpoint import load_checkpoint, load_model, save_checkpoint
from dsb.models.fuse import fold_batch_norms
from dsb.postprocess import labels_from_probs
from dsb.probmaps import quantise_probs, write_prob_folder
from dsb.rundir import MANIFEST, RunDir, is_run_dir, resolve_checkpoints
from dsb.utils import atomic_write, file_sha256


# ----------------------------------------------------------------------------- set-up
def record_run(run_dir: Path, folds: Sequence[Optional[int]], command: str, resumed: bool) -> dict:
    """Add a training command to the run's record (``run.json``) and return the record.

    The first command is the run's ``command``; more folds of the same run add up (every
    command that trained some of them is kept in ``commands``, the latest as ``command``);
    resumptions are listed under ``resumed``; the full-data model (``folds == [None]``)
    has its own entry, ``full``, beside the folds'.
    """
    run = RunDir(run_dir)
    before = run.read_record()
    if list(folds) == [None]:
        entry = before.get("full", {})
        entry = {**entry, "resumed": [*entry.get("resumed", []), command]} if resumed and entry else {"command": command}
        record = {**before, "full": entry}
    elif resumed and before:
        record = {**before, "folds": list(folds), "resumed": [*before.get("resumed", []), command]}
    elif before:
        folds_so_far = sorted(set(before.get("folds", [])) | set(folds))
        history = before.get("commands", [before["command"]] if "command" in before else [])
        record = {**before, "folds": folds_so_far, "command": command, "commands": [*history, command]}
    else:
        record = {"folds": list(folds), "command": command}
    run.path.mkdir(parents=True, exist_ok=True)
    with atomic_write(run.run_record) as fh:
        json.dump(record, fh)
    return record


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------- loss
class SegLoss(nn.Module):
    """BCE + soft Dice per target channel, weighted per channel, averaged over heads."""

    def __init__(self, channel_weights: Sequence[float], bce_weight: float = 1.0, dice_weight: float = 1.0):
        super().__init__()
        weights = torch.as_tensor(list(channel_weights), dtype=torch.float32)
        self.register_buffer("channel_weights", weights / weights.sum())
        self.bce_weight = bce_weight
        self.dice_weight = dice_weight

    def single(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(dim=(0, 2, 3))
        probs = torch.sigmoid(logits)
        inter = (probs * targets).sum(dim=(0, 2, 3))
        denom = probs.sum(dim=(0, 2, 3)) + targets.sum(dim=(0, 2, 3))
        dice = 1.0 - (2.0 * inter + 1.0) / (denom + 1.0)
        per_channel = self.bce_weight * bce + self.dice_weight * dice
        return (per_channel * self.channel_weights).sum()

    def forward(self, outputs, targets: torch.Tensor) -> torch.Tensor:
        heads = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        return sum(self.single(h, targets) for h in heads) / len(heads)


def make_scheduler(optimizer, cfg: Config, steps_per_epoch: int):
    total = max(1, cfg.train.epochs * steps_per_epoch)
    if cfg.train.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.train.lr, total_steps=total)
    warmup = min(cfg.train.warmup_epochs * steps_per_epoch, total - 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if cfg.train.schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ----------------------------------------------------------------------------- validation
def evaluate_samples(
    model: nn.Module, samples: Sequence[Sample], cfg: Config, device: torch.device,
    keep_probs: bool = False,
) -> tuple[float, dict[str, float], dict[str, np.ndarray]]:
    """Validation mAP of ``model`` on ``samples`` with the real pipeline.

    Returns ``(map, per_image_score, probs)``; ``probs`` (uint8-quantised, (K, H, W))
    only with ``keep_probs``.
    """
    was_training = model.training  # read before the Predictor puts the model in eval mode
    per_image: dict[str, float] = {}
    kept: dict[str, np.ndarray] = {}
    try:
        predictor = Predictor(
            [model], cfg.targets.channels, dataclasses.replace(cfg.infer, tta=cfg.train.val_tta), device=device
        )
        for sample in samples:
            post = cfg.postprocess.for_type(sample.image_type)
            probs, _ = predict_rescaled(predictor, sample.image.astype(np.float32) / 255.0,
                                        cfg.targets.channels, post, predictor.infer_cfg)
            pred = labels_from_probs(probs, cfg.targets.channels, post)
            per_image[sample.image_id] = float(image_score(sample.label_map, pred).score)
            if keep_probs:
                kept[sample.image_id] = quantise_probs(probs)
    finally:
        model.train(was_training)
    score = float(np.mean(list(per_image.values()))) if per_image else 0.0
    return score, per_image, kept


def update_ema(ema: torch.optim.swa_utils.AveragedModel, model: nn.Module) -> None:
    """One EMA step of the weights, and the live model's BatchNorm statistics copied over.

    ``AveragedModel`` averages parameters only: its buffers stay as they were when it was
    made, which for a model trained from scratch are BatchNorm's initial statistics (mean 0,
    variance 1), and the EMA model then predicts nothing in eval mode. Copying the running
    statistics (as timm's EMA does for buffers) keeps them those of the current weights.
    """
    ema.update_parameters(model)
    with torch.no_grad():
        for averaged, live in zip(ema.module.buffers(), model.buffers()):
            averaged.copy_(live)


# ----------------------------------------------------------------------------- training
@dataclass
class Optimisation:
    """What a training step needs beside the model and its batch: the optimiser and its
    schedule, the loss scaler (fp16), the EMA of the weights and the loss, made from the
    config by :meth:`for_model`; :meth:`step` is one optimiser step (``dsb train``'s, and
    what ``benchmarks/malloc_reuse.py --train`` times)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    ema: Optional[torch.optim.swa_utils.AveragedModel]
    loss_fn: nn.Module
    device: torch.device
    precision: Optional[torch.dtype]
    grad_clip: float
    #: Share of the loss that scores a teacher's maps (``train.distill_weight``; 0: no teacher).
    distill_weight: float = 0.0

    @classmethod
    def for_model(cls, cfg: Config, model: nn.Module, device: torch.device, precision: Optional[torch.dtype],
                  steps_per_epoch: int) -> "Optimisation":
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        ema = None
        if cfg.train.ema_decay > 0:
            ema = torch.optim.swa_utils.AveragedModel(
                model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(cfg.train.ema_decay)
            )
        return cls(
            model=model, optimizer=optimizer, scheduler=make_scheduler(optimizer, cfg, steps_per_epoch),
            scaler=torch.amp.GradScaler(device.type, enabled=(precision == torch.float16)), ema=ema,
            loss_fn=SegLoss(cfg.loss.channel_weights, cfg.loss.bce_weight, cfg.loss.dice_weight).to(device),
            device=device, precision=precision, grad_clip=cfg.train.grad_clip,
            distill_weight=cfg.train.distill_weight if cfg.train.distill_from else 0.0,
        )

    def step(self, net: nn.Module, images: torch.Tensor, targets: torch.Tensor,
             taught: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Forward ``images`` through ``net`` (the model, or its DistributedDataParallel
        wrapper), backward, clip, step the optimiser, the schedule and the EMA; the loss.
        ``taught`` (a teacher's probabilities for the batch, :class:`Teacher`) takes
        ``distill_weight`` of the loss, the labels' ``targets`` the rest."""
        with autocast(self.device, self.precision):
            outputs = net(images)
        loss = self.loss_fn(outputs, targets)
        if taught is not None:
            loss = (1.0 - self.distill_weight) * loss + self.distill_weight * self.loss_fn(outputs, taught)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            update_ema(self.ema, self.model)
        return loss.detach()


@dataclass
class EpochRecord:
    epoch: int
    loss: float
    lr: float
    images_per_s: float
    val_map: Optional[float]
    best_map: float
    seconds: float

    def to_json(self) -> str:
        return json.dumps(self.__dict__)


@dataclass
class FoldResult:
    fold: Optional[int]  # None: the model trained on every image
    fold_dir: Path
    best_map: float
    best_epoch: int
    history: list[EpochRecord] = field(default_factory=list)
    #: The trained model (last epoch's weights) of this process.
    model: Optional[nn.Module] = None


StepCallback = Callable[[int, int, int, float, float], None]  # epoch, step, n_steps, loss, img/s
EpochCallback = Callable[[EpochRecord], None]


def _write_history(path: Path, history: Sequence[EpochRecord]) -> None:
    with atomic_write(path) as fh:
        for rec in history:
            fh.write(rec.to_json() + "\n")


def _read_history(path: Path) -> list[EpochRecord]:
    if not path.is_file():
        return []
    return [EpochRecord(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def check_run_start(cfg: Config, run_dir: Path, samples: Sequence[Sample], folds: Sequence[Optional[int]] = ()) -> None:
    """Refuse, before anything is written to ``run_dir``, what would otherwise fail only after
    ``config.yaml`` is there (leaving a folder that then refuses the corrected config): a run
    folder that is a file or under one, a warm restart from something that is neither a run
    nor one checkpoint, or from weights that saw the held-out images of one of ``folds``
    (the folds to train; ``None`` is the full-data model), and folds that cannot be made
    from these images (or groups)."""
    run = RunDir(run_dir)
    run_dir = run.path
    if run_dir.exists() and not run_dir.is_dir():
        raise DsbError(f"--run-dir {run_dir}: exists and is not a folder")
    for parent in run_dir.parents:
        if parent.exists() and not parent.is_dir():
            raise DsbError(f"--run-dir {run_dir}: {parent} is a file, not a folder")
    check_init_start(cfg, folds)
    if folds_source(cfg) is not None:
        return  # the folds come from the run started from (or the teacher's run)
    if run.folds.is_file():
        return  # the folds exist already
    groups = sample_groups(samples, cfg.folds.group_threshold) if cfg.folds.method == "grouped" else None
    try:
        make_folds([s.image_id for s in samples], [s.image_type for s in samples], cfg.folds.n_folds,
                   cfg.folds.seed, groups=groups)
    except ValueError as exc:
        raise ConfigError(f"folds: cannot split {len(samples)} images into folds.n_folds={cfg.folds.n_folds} "
                          f"folds ({exc})") from None


def prepare_run(cfg: Config, run_dir: Path, samples: Sequence[Sample], folds: Sequence[Optional[int]] = ()):
    """Write the resolved config and the folds of a run (reusing existing folds), after
    :func:`check_run_start` (``folds``: those about to be trained, ``None`` the full model).

    A run folder holds one config: training into a folder whose ``config.yaml`` says
    something else is an error naming the keys that differ (its folds, out-of-fold maps
    and tuned thresholds belong to that config).
    """
    run = RunDir(run_dir)
    check_run_config(cfg, run_dir)
    check_run_start(cfg, run_dir, samples, folds)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run.config)
    source_run = folds_source(cfg)
    if source_run is not None and not run.folds.is_file():
        # A warm restart (or a teacher's run) gives its folds: fold k's model has never
        # seen fold k's images, and must not start from, or learn from, weights that did.
        with atomic_write(run.folds, "wb") as fh:
            fh.write(RunDir(source_run).folds.read_bytes())  # checked by check_run_start
    groups = sample_groups(samples, cfg.folds.group_threshold) if cfg.folds.method == "grouped" else None
    return load_or_make_folds(
        run.folds, [s.image_id for s in samples], [s.image_type for s in samples], cfg.folds.n_folds, cfg.folds.seed,
        groups=groups,
    )


@dataclass(frozen=True)
class InitSource:
    """Where a warm restart (``train.init_from``) takes its weights: a run folder (fold k
    from its ``fold<k>/last.pt``, the full-data model from ``full/last.pt``; its folds are
    copied) or one checkpoint (a ``.pt`` file, or a shipped set or folder holding one)."""

    spec: str
    run: Optional[Path] = None
    weights: Optional[Path] = None

    def checkpoint(self, fold: Optional[int]) -> Path:
        return RunDir(self.run).last(fold) if self.run is not None else self.weights


def resolve_init(init_from: str, key: str = "train.init_from") -> InitSource:
    """Read ``train.init_from`` (or ``key``, e.g. ``train.distill_from``): a run folder (it
    has ``folds.csv``), else a checkpoint file, a shipped set's name or a folder with exactly
    one ``*.pt``. Anything else, or a set of several models (which one?), is a
    :class:`ConfigError` naming it."""
    path = Path(init_from)
    if RunDir(path).folds.is_file():
        return InitSource(init_from, run=path)
    if is_run_dir(path):
        raise ConfigError(f"{key}: {RunDir(path).folds} not found (a run folder without its folds)")
    try:
        files = resolve_checkpoints(init_from)
    except CheckpointError:
        raise ConfigError(f"{key}: {init_from}: not found (give a dsb run folder, a checkpoint file "
                          "or a shipped set)") from None
    if len(files) != 1:
        names = ", ".join(f.name for f in files[:6])
        raise ConfigError(f"{key}: {init_from} holds {len(files)} models ({names}); give one .pt file")
    return InitSource(init_from, weights=files[0])


def folds_source(cfg: Config) -> Optional[Path]:
    """The run folder whose folds a new run takes: ``train.init_from``'s if it is a run,
    else ``train.distill_from``'s if that is a run, else None (the run makes its own)."""
    for key, spec in (("train.init_from", cfg.train.init_from), ("train.distill_from", cfg.train.distill_from)):
        if spec:
            source = resolve_init(spec, key)
            if source.run is not None:
                return source.run
    return None


def _same_data(theirs: dict, cfg: Config, manifest: Optional[dict]) -> Optional[str]:
    """The data file (or synthetic set) that the checkpoint's config ``theirs`` shares with
    ``cfg``, or None: the same resolved path, or a file whose SHA-256 the set's manifest
    recorded."""
    data = theirs.get("data", {})
    if cfg.data.path == "synthetic":
        same = data.get("path") == "synthetic" and (data.get("synthetic_n"), data.get("synthetic_seed")) == (
            cfg.data.synthetic_n, cfg.data.synthetic_seed)
        return "synthetic" if same else None
    ours = Path(cfg.data.path)
    if data.get("path") not in (None, "synthetic") and Path(data["path"]).resolve() == ours.resolve():
        return str(ours)
    if manifest and ours.is_file():
        recorded = set((manifest.get("data_sha256") or {}).values())
        if recorded and file_sha256(ours) in recorded:
            return str(ours)
    return None


def check_init_folds(source: InitSource, cfg: Config, folds: Sequence[Optional[int]],
                     key: str = "train.init_from") -> None:
    """Refuse to start a fold's model (any of ``folds`` but ``None``, the full-data model)
    from a checkpoint that was trained on the same data (or, ``key="train.distill_from"``, to
    let it teach one): it saw the fold's held-out images, so the fold's score would be no
    estimate. The full-data model may start from (learn from) any weights; a run folder's
    folds are checked against this run's in :func:`check_same_folds`. The checkpoint (and the
    data's SHA-256) is read once, whatever the number of folds."""
    fold_runs = [k for k in folds if k is not None]
    if not fold_runs or source.weights is None:
        return
    payload = load_checkpoint(source.weights)
    manifest_file = source.weights.parent / MANIFEST
    try:
        manifest = json.loads(manifest_file.read_text()) if manifest_file.is_file() else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        manifest = None  # the checkpoint's own config still names its data
    shared = _same_data(payload["config"], cfg, manifest)
    if shared is not None:
        verb = ("learn from a teacher" if key == "train.distill_from" else "start from weights")
        use = "teach" if key == "train.distill_from" else "start"
        raise ConfigError(
            f"{key}: {source.weights} was trained on the same data ({shared}), so fold {fold_runs[0]}'s "
            f"model would {verb} that saw its held-out images; {use} --full from it, or give a run "
            "folder with the same folds"
        )


def check_init_start(cfg: Config, folds: Sequence[Optional[int]]) -> None:
    """Check ``train.init_from`` and ``train.distill_from`` for training ``folds`` (``None``:
    the full-data model) before any data is read: each must name a run folder or one
    checkpoint, and a checkpoint of the same data may start (teach) only the full-data model."""
    runs = []
    for key, spec in (("train.init_from", cfg.train.init_from), ("train.distill_from", cfg.train.distill_from)):
        if spec:
            source = resolve_init(spec, key)
            check_init_folds(source, cfg, folds, key)
            runs += [source.run] if source.run is not None else []
    fold_of = [dict(zip(f["image_id"], f["fold"])) for f in (load_folds(RunDir(r).folds) for r in runs)]
    if len(runs) == 2 and fold_of[0] != fold_of[1]:
        raise ConfigError(f"train.distill_from: {runs[1]} has other folds than train.init_from's {runs[0]}; "
                          "a fold's teacher and starting weights need the same folds")


def check_same_folds(run: Path, folds, fold: Optional[int], key: str) -> None:
    """Refuse weights of run folder ``run`` for fold ``fold``'s model unless the two runs put
    every image in the same fold (else fold ``fold``'s model would start from, or learn from,
    weights that saw its held-out images)."""
    if fold is None:
        return
    theirs = load_folds(RunDir(run).folds)
    their_fold = dict(zip(theirs["image_id"], theirs["fold"]))
    differ = [i for i, k in zip(folds["image_id"], folds["fold"]) if their_fold.get(i) != k]
    if differ:
        raise ConfigError(
            f"{key}: {run} has other folds ({len(differ)} image(s) differ, e.g. {differ[0]}); "
            "it needs the same folds"
        )


class Teacher:
    """The model behind ``train.distill_from``, in eval mode with its batch norms folded, in
    its own inference mode or with head ``train.distill_head`` alone: :meth:`targets` is its
    prediction of a batch of crops under ``train.distill_tta``, each view brought back and
    merged as inference merges them (``infer.merge``)."""

    def __init__(self, model: nn.Module, cfg: Config, device: torch.device, precision: Optional[torch.dtype],
                 path: Path):
        self.model, self.device, self.precision, self.path = model, device, precision, path
        self.transforms = tta_transforms(cfg.train.distill_tta)
        self.merge = cfg.infer.merge
        self.infer_cfg = dataclasses.replace(cfg.infer, tta=cfg.train.distill_tta)

    @classmethod
    def load(cls, cfg: Config, fold: Optional[int], folds, device: torch.device,
             precision: Optional[torch.dtype]) -> "Teacher":
        """Fold ``fold``'s teacher (``None``: the full-data model's): a run folder's
        ``best.pt`` of that fold (refused unless the folds are this run's), or the one
        checkpoint (whether it saw the fold's held-out images :func:`check_run_start` has
        checked); refused when it predicts other target channels."""
        key = "train.distill_from"
        source = resolve_init(cfg.train.distill_from, key)
        if source.run is not None:
            check_same_folds(source.run, folds, fold, key)
            path = RunDir(source.run).best(fold)
        else:  # a checkpoint of the same data was refused for a fold by check_run_start (prepare_run)
            path = source.weights
        if not path.is_file():
            raise CheckpointError(f"{key}: {path} not found (the teacher of "
                                  f"{'the full-data model' if fold is None else f'fold {fold}'})")
        model, theirs, _ = load_model(path, device)
        if list(theirs.targets.channels) != list(cfg.targets.channels):
            raise ConfigError(f"{key}: {path} predicts {list(theirs.targets.channels)}; this config trains "
                              f"{list(cfg.targets.channels)}")
        if cfg.train.distill_head is not None:
            try:
                model.set_mode("fast", cfg.train.distill_head)
            except ConfigError as exc:
                raise ConfigError(f"train.distill_head: {path}: {exc}") from None
        model = fold_batch_norms(model).to(memory_format=torch.channels_last)
        model.requires_grad_(False)
        return cls(model, cfg, device, precision, path)

    def targets(self, images: torch.Tensor) -> torch.Tensor:
        """The teacher's merged probabilities for ``images`` (``B x C x H x W``): ``B x K x H x W``."""
        with torch.no_grad(), autocast(self.device, self.precision):
            return tta_predict(lambda v: torch.sigmoid(self.model(v).float()), images, self.transforms, self.merge)

    def image_maps(self, samples: Sequence[Sample]) -> list[np.ndarray]:
        """``train.distill_maps: images``: the teacher's merged probabilities for each whole
        sample image as inference predicts it (TTA views batched, tiles above
        ``infer.max_full_px``), uint8 ``H x W x K`` (:func:`dsb.probmaps.quantise_probs`)."""
        amp = {None: "off", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.precision]
        predictor = Predictor([self.model], None, self.infer_cfg, device=self.device, amp=amp)
        return [np.ascontiguousarray(quantise_probs(predictor.predict(s.image)).transpose(1, 2, 0)) for s in samples]


def init_weights(model: nn.Module, init_from: str | Path, fold: Optional[int], folds, device: torch.device,
                 cfg: Optional[Config] = None) -> Path:
    """Load the warm restart's weights into ``model``: fold ``fold``'s last weights of a
    run folder, or one checkpoint (:func:`resolve_init`).

    From a run, the two runs must put every image in the same fold, or fold ``fold``'s
    model would start from weights that saw its held-out images; from a checkpoint of the
    same data, only the full-data model may start (:func:`check_init_folds`, given ``cfg``).
    Both are errors, as is a checkpoint of another architecture. Returns the checkpoint used.
    """
    source = resolve_init(str(init_from))
    if source.run is not None:
        check_same_folds(source.run, folds, fold, "train.init_from")
    elif cfg is not None:
        check_init_folds(source, cfg, [fold])
    path = source.checkpoint(fold)
    state = load_checkpoint(path, map_location=device)
    weights = {k: (v.float() if v.is_floating_point() else v) for k, v in state["model"].items()}  # shipped sets are fp16
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: does not fit this config's model: {str(exc).splitlines()[0]}") from None
    return path


#: Config keys that change how a run executes, not what it computes: may differ on --resume.
_HOW_TO_RUN = {"train.num_workers", "train.device"}


def check_run_config(cfg: Config, run_dir: Path) -> None:
    """Raise :class:`ConfigError` if ``run_dir`` already holds a run with another config."""
    existing = RunDir(run_dir).config
    if not existing.is_file():
        return
    before, after = _flatten(load_config(existing).to_dict()), _flatten(cfg.to_dict())
    differ = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k) and k not in _HOW_TO_RUN)
    if differ:
        shown = ", ".join(f"{k}: {before.get(k)!r} -> {after.get(k)!r}" for k in differ[:5])
        raise ConfigError(f"{run_dir} holds a run with another config ({shown}); use another --run-dir")


def _flatten(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def train_fold(
    cfg: Config,
    run_dir: Path,
    fold: Optional[int],
    samples: Sequence[Sample],
    resume: bool = False,
    dist: DistInfo = DistInfo(),
    on_step: Optional[StepCallback] = None,
    on_epoch: Optional[EpochCallback] = None,
    max_epochs: Optional[int] = None,
    on_note: Optional[Callable[[str], None]] = None,
    pseudo: Sequence[Sample] = (),
) -> FoldResult:
    """Train one fold; returns the best validation mAP and where the checkpoints are.

    ``samples`` are all labelled images; the fold's images (from ``run_dir/folds.csv``)
    are held out for validation. ``fold=None`` trains on every image instead, with the
    same recipe and no validation, into ``run_dir/full/``; its ``best.pt`` is the last
    epoch's model (the fold models' out-of-fold score is its estimate). ``max_epochs``
    stops early (the schedule still spans ``cfg.train.epochs``), which tests use to
    simulate an interruption. ``on_note`` receives a line about work before the first
    epoch that takes a while (the teacher's maps of ``train.distill_maps: images``).
    ``pseudo`` (:func:`dsb.data.samples.load_pseudo_samples`) are pseudo-labelled images:
    they give ``data.pseudo_share`` of every epoch's crops and are never validated on.
    """
    run = RunDir(run_dir)
    if fold is not None and not 0 <= fold < cfg.folds.n_folds:
        raise ConfigError(f"fold {fold} is out of range for folds.n_folds={cfg.folds.n_folds}")
    folds = prepare_run(cfg, run_dir, samples, [fold]) if dist.is_main else None
    if dist.enabled:
        torch.distributed.barrier()
    if folds is None:
        folds = load_folds(run.folds)
    fold_of = dict(zip(folds["image_id"], folds["fold"]))
    train_samples = [s for s in samples if fold is None or fold_of[s.image_id] != fold]
    val_samples = [s for s in samples if fold is not None and fold_of[s.image_id] == fold]
    fold_dir = run.model_dir(fold)
    fold_dir.mkdir(parents=True, exist_ok=True)

    seed_everything(cfg.train.seed)
    device = resolve_device(cfg.train.device, dist.local_rank if dist.enabled else None)
    precision = amp_dtype(cfg.train.amp, device, training=True)
    model = build_model(cfg).to(device)
    if cfg.train.init_from and not (resume and run.last(fold).is_file()):
        init_weights(model, cfg.train.init_from, fold, folds, device)  # its data checked in prepare_run
    memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    teacher = Teacher.load(cfg, fold, folds, device, precision) if cfg.train.distill_from else None

    batch = cfg.train.batch_size
    steps = cfg.train.steps_per_epoch or max(1, math.ceil(len(train_samples) / batch))
    weights = None
    if cfg.train.sampling == "balanced":
        group_of = dict(zip(folds["image_id"], folds["group"])) if "group" in folds.columns else {}
        groups = [group_of.get(s.image_id) or s.image_type for s in train_samples]
        weights = balanced_weights(groups, [s.image_type for s in train_samples])
    if pseudo:  # after the labelled images, with their share of the draws
        weights = with_pseudo_weights(weights, len(train_samples), len(pseudo), cfg.data.pseudo_share)
        train_samples = [*train_samples, *pseudo]
    if cfg.augment.normalize_area_px > 0:
        train_samples = [
            normalise_sample_size(s, choose_scale(s.label_map, cfg.augment.normalize_area_px,
                                                  cfg.infer.rescale_min, cfg.infer.rescale_max))
            for s in train_samples
        ]
    teacher_maps = None
    if teacher is not None and cfg.train.distill_maps == "images":
        t0 = time.perf_counter()
        if on_note is not None and dist.is_main:
            on_note(f"teacher {teacher.path}: predicting the {len(train_samples)} training images once "
                    f"({cfg.train.distill_tta}, train.distill_maps: images)")
        teacher_maps, teacher = teacher.image_maps(train_samples), None  # each image once, before the first step
        if on_note is not None and dist.is_main:
            megabytes = sum(m.nbytes for m in teacher_maps) / 1e6
            on_note(f"teacher maps: {len(teacher_maps)} images, {megabytes:.0f} MB, {time.perf_counter() - t0:.0f} s")
    # Each process draws its share of the epoch's crops (DistributedSampler below).
    dataset = EpochDataset(train_samples, cfg.augment, cfg.targets, length=steps * batch * dist.world_size,
                           seed=cfg.train.seed, weights=weights, teacher_maps=teacher_maps)
    sampler = None
    if dist.enabled:
        sampler = torch.utils.data.distributed.DistributedSampler(
            dataset, num_replicas=dist.world_size, rank=dist.rank, shuffle=False, drop_last=True
        )
    loader_kwargs = dict(batch_size=batch, shuffle=False, sampler=sampler, drop_last=True,
                         num_workers=cfg.train.num_workers, persistent_workers=False)
    opt = Optimisation.for_model(cfg, model, device, precision, steps)
    optimizer, scheduler, scaler, ema = opt.optimizer, opt.scheduler, opt.scaler, opt.ema

    start_epoch, best_map, best_epoch = 0, -1.0, -1
    history: list[EpochRecord] = []
    last_path, best_path = run.last(fold), run.best(fold)
    if resume and last_path.is_file():
        state = load_checkpoint(last_path, map_location=device)
        extra = state["extra"]
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(extra["optimizer"])
        scheduler.load_state_dict(extra["scheduler"])
        scaler.load_state_dict(extra["scaler"])
        if ema is not None and extra.get("ema") is not None:
            ema.load_state_dict(extra["ema"])
        start_epoch = int(extra["epoch"]) + 1
        best_map, best_epoch = float(extra["best_map"]), int(extra["best_epoch"])
        history = [r for r in _read_history(run.metrics(fold)) if r.epoch < start_epoch]
    elif resume:
        raise CheckpointError(f"{last_path}: nothing to resume (no {last_path.name} in {fold_dir})")

    net: nn.Module = model
    if dist.enabled:
        if device.type == "cuda":
            # Batch statistics over all GPUs (per-GPU batches are small). SyncBatchNorm
            # is GPU-only; on CPU, DDP broadcasts rank 0's buffers at each forward and
            # we broadcast them once more after each epoch (below).
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    end_epoch = cfg.train.epochs if max_epochs is None else min(cfg.train.epochs, max_epochs)
    for epoch in range(start_epoch, end_epoch):
        t0 = time.perf_counter()
        dataset.set_epoch(epoch)
        if sampler is not None:
            sampler.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(dataset, **loader_kwargs)
        net.train()
        loss_sum, seen = 0.0, 0
        for step, (images, targets, *taught) in enumerate(loader):
            images = images.to(device, non_blocking=True).to(memory_format=memory_format)
            targets = targets.to(device, non_blocking=True)
            if taught:  # the teacher's maps of the whole images, cropped with them
                taught = taught[0].to(device, non_blocking=True)
            else:
                taught = teacher.targets(images) if teacher is not None else None
            loss = opt.step(net, images, targets, taught)
            loss_sum += float(loss) * images.shape[0]
            seen += images.shape[0]
            if on_step is not None and dist.is_main:
                on_step(epoch, step + 1, steps, loss_sum / seen, seen * dist.world_size / (time.perf_counter() - t0))
        train_seconds = time.perf_counter() - t0
        if dist.enabled:
            # Every rank ends the epoch with rank 0's BatchNorm statistics, so all ranks
            # hold identical models (parameters already agree through gradient averaging).
            for buffer in model.buffers():
                torch.distributed.broadcast(buffer, src=0)
        eval_model = ema.module if ema is not None else model
        val_map = None
        if fold is None and dist.is_main and epoch + 1 == cfg.train.epochs:
            best_epoch = epoch  # no validation: the finished model is the one to use
            save_checkpoint(best_path, eval_model, cfg, epoch=epoch, val_map=None, fold=None)
        if fold is not None and dist.is_main and ((epoch + 1) % cfg.train.val_every == 0 or epoch + 1 == cfg.train.epochs):
            val_map, _, probs = evaluate_samples(eval_model, val_samples, cfg, device, keep_probs=True)
            if val_map > best_map:
                best_map, best_epoch = val_map, epoch
                save_checkpoint(best_path, eval_model, cfg, epoch=epoch, val_map=val_map, fold=fold)
                write_prob_folder(run.oof_dir(fold), probs)
        record = EpochRecord(
            epoch=epoch, loss=loss_sum / max(seen, 1), lr=optimizer.param_groups[0]["lr"],
            images_per_s=seen * dist.world_size / max(train_seconds, 1e-9), val_map=val_map,
            best_map=best_map, seconds=time.perf_counter() - t0,
        )
        if dist.is_main:
            history.append(record)
            _write_history(run.metrics(fold), history)
            save_checkpoint(
                last_path, model, cfg, epoch=epoch, fold=fold, best_map=best_map, best_epoch=best_epoch,
                optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), scaler=scaler.state_dict(),
                ema=ema.state_dict() if ema is not None else None,
            )
            if on_epoch is not None:
                on_epoch(record)
        if dist.enabled:
            torch.distributed.barrier()
    return FoldResult(fold=fold, fold_dir=fold_dir, best_map=best_map, best_epoch=best_epoch, history=history, model=model)
