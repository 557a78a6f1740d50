"""Typed, validated configuration: one dataclass per section, loaded from YAML.

Every key is checked: an unknown key or a value of the wrong type raises
:class:`dsb.errors.ConfigError` naming the dotted key (``train.epochs``) and the file.
The resolved config (defaults filled in) is what gets saved beside checkpoints, so a
checkpoint alone is enough to rebuild its model.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

import yaml

from dsb.errors import ConfigError
from dsb.utils import atomic_write

TARGET_CHANNELS = ("body", "border", "touching")
#: Test-time augmentation modes, fewest views first (:mod:`dsb.infer.tta` gives their views).
TtaMode = Literal["none", "pair", "flips", "d4"]


@dataclass
class DataConfig:
    """Where the training data comes from."""

    #: Kaggle-layout folder or zip (``stage1_train``); ``"synthetic"`` generates data.
    path: str = "synthetic"
    #: Instance labels: ``"masks"`` (``masks/*.png``) or a path to an RLE CSV
    #: (``stage1_train_labels.csv`` or the ``_fixed`` variant).
    labels: str = "masks"
    synthetic_n: int = 40
    synthetic_seed: int = 0
    #: Keep decoded images/targets in memory between epochs (fast; costs RAM).
    cache: bool = True
    #: Self-training: images without labels (the test set, or your own) that join the training
    #: crops with predicted labels. ``pseudo_path`` is a Kaggle-layout folder or zip and
    #: ``pseudo_labels`` an RLE CSV of its nuclei, as ``dsb predict --expand 0`` writes it (the
    #: training labels' outlines); images without a row are left out. They train every model
    #: (a fold's and the full-data one) and are never validated on. Pseudo-labels of a fold's
    #: own held-out images (a simulation) must come from a model that never saw them.
    pseudo_path: Optional[str] = None
    pseudo_labels: Optional[str] = None
    #: Share of each epoch's crops drawn from the pseudo-labelled images (evenly among them);
    #: the labelled images keep their own sampling within the rest.
    pseudo_share: float = 0.25


@dataclass
class FoldsConfig:
    n_folds: int = 4
    seed: int = 0
    #: ``"grouped"``: each experiment group (:mod:`dsb.data.groups`) stays in one fold, so the
    #: out-of-fold score is measured on unseen experiments (the real-data configs use it);
    #: ``"stratified"``: images dealt over the folds by type only (optimistic on real data,
    #: where near-identical fields of one experiment land on both sides; kept as the default
    #: for synthetic data, where every image is its own experiment, and for older runs).
    method: Literal["grouped", "stratified"] = "stratified"
    #: Clustering distance of the experiment grouping (standardised image features).
    group_threshold: float = 3.0


@dataclass
class ModelConfig:
    """U-Net++ over a timm encoder."""

    encoder: str = "resnet18"
    #: ``True`` asks timm for pretrained weights (needs network access).
    pretrained: bool = False
    #: Local encoder weights file (``.pth``/``.safetensors``), used instead of timm's hub.
    weights: Optional[str] = None
    encoder_depth: int = 5
    decoder_channels: list[int] = field(default_factory=lambda: [256, 128, 64, 32, 16])
    in_channels: int = 3
    deep_supervision: bool = True
    #: ``"accurate"`` averages all nested heads; ``"fast"`` prunes to ``fast_depth``.
    mode: Literal["accurate", "fast"] = "accurate"
    fast_depth: int = 4
    #: Decoder upsampling: ``"nearest"`` or ``"bilinear"``.
    upsample: Literal["nearest", "bilinear"] = "nearest"
    #: Kernel of each head's last conv: 3 (default, learns faster from scratch) or 1.
    head_kernel: int = 3


@dataclass
class TargetsConfig:
    """Target channels built from instance labels (see :mod:`dsb.data.targets`)."""

    channels: list[str] = field(default_factory=lambda: list(TARGET_CHANNELS))
    #: Width of the nucleus contour (inner border), in pixels.
    border_px: int = 2
    #: Pixels within this distance of two different nuclei are "touching".
    touching_px: int = 2


@dataclass
class AugmentConfig:
    crop_px: int = 256
    scale_min: float = 0.75
    scale_max: float = 1.33
    flips: bool = True
    rotate90: bool = True
    rotate_deg: float = 15.0
    p_rotate: float = 0.3
    p_elastic: float = 0.2
    p_grid_distortion: float = 0.1
    p_clahe: float = 0.1
    p_gamma: float = 0.3
    p_brightness_contrast: float = 0.5
    p_hue_saturation: float = 0.3
    p_noise: float = 0.2
    #: Invert brightfield images (light background) so they look like fluorescence.
    invert_brightfield: bool = True
    #: Random colour inversion probability, for robustness to both polarities.
    p_invert: float = 0.0
    #: Photometric augmentation for unseen experiments and stains.
    p_channel_shuffle: float = 0.0
    p_gray: float = 0.0
    p_blur: float = 0.0
    p_color_jitter: float = 0.0
    #: Nucleus-size normalisation: each training image is first resized so that the median
    #: area of its nuclei becomes this many pixels (scale clipped to
    #: ``[infer.rescale_min, infer.rescale_max]``), then augmented. 0 turns it off. Prediction
    #: must then rescale the same way: ``infer.rescale_area_px`` with the same value.
    normalize_area_px: float = 0.0


@dataclass
class LossConfig:
    bce_weight: float = 1.0
    dice_weight: float = 1.0
    #: One weight per target channel.
    channel_weights: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])


@dataclass
class TrainConfig:
    epochs: int = 40
    batch_size: int = 8
    #: Optimiser steps per epoch; 0 means one pass over the training fold's images.
    steps_per_epoch: int = 0
    lr: float = 1e-3
    weight_decay: float = 1e-4
    schedule: Literal["cosine", "onecycle", "constant"] = "cosine"
    warmup_epochs: int = 1
    grad_clip: float = 1.0
    #: EMA decay of the weights (0 disables EMA).
    ema_decay: float = 0.0
    #: Start from other weights (a warm restart with this config's schedule). From a run
    #: folder, fold k starts from ``<init_from>/fold<k>/last.pt`` and ``--full`` from
    #: ``<init_from>/full/last.pt``; the run must have the same folds (they are copied from
    #: it), so out-of-fold maps stay out-of-fold. From one checkpoint (a ``.pt`` file, a
    #: shipped set's name or a folder holding one model) every model starts from it, except
    #: a fold's model on the data the checkpoint was trained on (refused: it saw the fold's
    #: held-out images). Relative paths are relative to the working directory.
    init_from: Optional[str] = None
    #: Distil a teacher: each training crop is also scored against the teacher's
    #: prediction of that crop under ``distill_tta`` (the mean of its views, as inference
    #: merges them), so one pass of the student learns what the teacher's test-time
    #: augmentation adds. The teacher is named like ``init_from``: a run folder (fold k's
    #: ``best.pt``, ``--full``'s ``full/best.pt``; the run must have the same folds) or one
    #: checkpoint (which may not teach a fold's model on the data it was trained on).
    distill_from: Optional[str] = None
    distill_tta: TtaMode = "d4"
    #: Where the teacher predicts: ``"crops"``, each training crop as it is drawn (the
    #: teacher's views cost a forward pass each, every step); ``"images"``, each training
    #: image once before the first epoch, whole, at its training scale (tiled as inference
    #: tiles), its maps then cropped and augmented with the image (flips, rotations and the
    #: size jitter; nearest-neighbour, like the label map). ``images`` trains at the plain
    #: speed (about 3x ``crops`` with a d4 teacher on a CPU) and the teacher sees each
    #: nucleus with its whole image around it; its maps take one byte a pixel a channel.
    #: On grouped fold 0 it taught less than ``crops`` (docs/results.md), hence the default.
    distill_maps: Literal["crops", "images"] = "crops"
    #: The teacher's head at this depth alone (its fast mode), or None: the teacher's own
    #: inference mode (its ``model.mode``/``model.fast_depth``).
    distill_head: Optional[int] = None
    #: Share of the loss that scores the teacher's maps (the labels' targets get the rest).
    distill_weight: float = 0.5
    #: ``"auto"``: CUDA autocast fp16 on GPU, bf16 on CPU when faster; or force one.
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    channels_last: bool = True
    num_workers: int = 0
    seed: int = 0
    device: str = "auto"
    #: ``"uniform"``: every training image equally often; ``"balanced"``: images drawn with
    #: weights 1/sqrt(size of their experiment group), then scaled so each image type's
    #: share is proportional to sqrt(its image count) (fewer near-duplicates, more rare types).
    sampling: Literal["uniform", "balanced"] = "uniform"
    #: Validate (predict, postprocess, score mAP) every this many epochs.
    val_every: int = 1
    val_tta: TtaMode = "none"


#: The image types that may have their own postprocessing (those of dsb.data.imagetypes).
TYPE_NAMES = ("fluorescence", "stained", "brightfield")
#: The postprocessing fields an image type may set apart from the others (by_type).
TYPE_FIELDS = ("seed_threshold", "mask_threshold", "border_weight", "touching_weight", "min_seed_area_px", "min_area_px")


@dataclass
class PostprocessOverrides:
    """The postprocessing of one image type where it differs from the common one: a field
    left ``None`` keeps the common value (see :data:`TYPE_FIELDS`)."""

    seed_threshold: Optional[float] = None
    mask_threshold: Optional[float] = None
    border_weight: Optional[float] = None
    touching_weight: Optional[float] = None
    min_seed_area_px: Optional[int] = None
    min_area_px: Optional[int] = None

    def changes(self) -> dict[str, Any]:
        """The fields this type sets (those not ``None``)."""
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class TypeOverrides:
    """Per image type (:mod:`dsb.data.imagetypes`), the postprocessing that differs (or None)."""

    fluorescence: Optional[PostprocessOverrides] = None
    stained: Optional[PostprocessOverrides] = None
    brightfield: Optional[PostprocessOverrides] = None

    def changes(self) -> dict[str, dict[str, Any]]:
        """``{image_type: {field: value}}`` for the types that change something."""
        out = {}
        for name in TYPE_NAMES:
            over = getattr(self, name)
            if over is not None and over.changes():
                out[name] = over.changes()
        return out


@dataclass
class PostprocessConfig:
    """Probabilities to instances: seeds, flood, cleanup (see :mod:`dsb.postprocess`)."""

    seed_threshold: float = 0.5
    mask_threshold: float = 0.5
    border_weight: float = 1.0
    touching_weight: float = 1.0
    min_seed_area_px: int = 4
    min_area_px: int = 8
    fill_holes: bool = True
    connectivity: int = 1
    #: Grow every instance by this many pixels into the background (never into another
    #: instance; :func:`skimage.segmentation.expand_labels`) after everything else. 0 = off;
    #: else at least 1 (the 4 neighbours); 1.5 adds the diagonal ones, 2 the next ring.
    #: For annotations drawn wider than the model's masks.
    expand_px: float = 0.0
    #: Per image type, seeds and thresholds that differ from the fields above (``dsb tune``
    #: sets them where that scores better on held-out experiment groups), e.g.
    #: ``by_type: {stained: {seed_threshold: 0.6}}``. Prediction classifies each image
    #: (:func:`dsb.data.imagetypes.classify_image`) and uses :meth:`for_type`.
    by_type: TypeOverrides = field(default_factory=TypeOverrides)

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain values; ``by_type`` only with the types and fields it sets."""
        return {**asdict(self), "by_type": self.by_type.changes()}

    def for_type(self, image_type: Optional[str]) -> "PostprocessConfig":
        """The postprocessing of an image of ``image_type``: the common fields with that
        type's changes applied, and no ``by_type`` left (None or a type without changes:
        the common fields)."""
        common = dataclasses.replace(self, by_type=TypeOverrides())
        over = getattr(self.by_type, image_type) if image_type in TYPE_NAMES else None
        return dataclasses.replace(common, **over.changes()) if over is not None else common


@dataclass
class InferConfig:
    tta: TtaMode = "d4"
    merge: Literal["mean", "gmean"] = "mean"
    #: Images with more pixels than this are predicted in overlapping tiles; it also
    #: bounds the input pixels of every forward pass (TTA views are batched up to it).
    max_full_px: int = 1024 * 1024
    tile_px: int = 512
    tile_overlap_px: int = 64
    #: Size-adaptive rescaling (:mod:`dsb.infer.rescale`): predict each image again at the
    #: scale that brings its median nucleus area (from a first pass) to this many pixels;
    #: 0 turns it off. The scale is clipped to ``[rescale_min, rescale_max]``.
    rescale_area_px: float = 0.0
    rescale_min: float = 1.0
    rescale_max: float = 2.0
    #: How many times the scale is measured and the image re-predicted: 1 measures on the
    #: scale-1 pass only; 2 measures again on the rescaled prediction and re-predicts if the
    #: scale moved by more than 10% (a model trained on size-normalised nuclei sees nuclei far
    #: from its size badly at scale 1, so its first estimate is rough).
    rescale_passes: int = 1
    #: TTA of the passes that only measure the nuclei's size (the first pass, the shrunk one,
    #: all but the last rescaled one): ``"none"`` (one view; only the pass that is kept uses
    #: ``tta``) or ``"same"`` (``tta``, as before this setting: with d4 about twice the time).
    rescale_measure_tta: Literal["none", "same"] = "none"
    #: Autocast of the forward passes (:func:`dsb.device.amp_dtype`): ``"auto"`` is bf16 on
    #: CPUs with native bf16 (AVX512-BF16/AMX), fp32 on other CPUs, fp16 on CUDA; ``"off"``
    #: is fp32 everywhere.
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"


@dataclass
class Config:
    name: str = "run"
    data: DataConfig = field(default_factory=DataConfig)
    folds: FoldsConfig = field(default_factory=FoldsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    targets: TargetsConfig = field(default_factory=TargetsConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    infer: InferConfig = field(default_factory=InferConfig)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["postprocess"] = self.postprocess.to_dict()
        return data

    def validate(self) -> "Config":
        """Range and cross-field checks that types alone cannot express.

        Every numeric value is checked against its allowed range (:data:`RANGES`); the
        message names the dotted key, the value and the range.
        """
        _check_ranges(self)
        unknown = [c for c in self.targets.channels if c not in TARGET_CHANNELS]
        if unknown:
            raise ConfigError(f"targets.channels: unknown channel(s) {unknown}; choose from {list(TARGET_CHANNELS)}")
        if not self.targets.channels:
            raise ConfigError("targets.channels: at least one channel is needed")
        if len(self.loss.channel_weights) != len(self.targets.channels):
            raise ConfigError(
                f"loss.channel_weights: {len(self.loss.channel_weights)} weights for "
                f"{len(self.targets.channels)} target channels {self.targets.channels}"
            )
        if len(self.model.decoder_channels) != self.model.encoder_depth:
            raise ConfigError(
                f"model.decoder_channels: {len(self.model.decoder_channels)} entries; needs "
                f"{self.model.encoder_depth} (model.encoder_depth)"
            )
        if not 1 <= self.model.fast_depth <= self.model.encoder_depth - 1:
            raise ConfigError(
                f"model.fast_depth: {self.model.fast_depth} is out of range; must be in "
                f"1..{self.model.encoder_depth - 1} (model.encoder_depth - 1)"
            )
        if self.model.head_kernel not in (1, 3):
            raise ConfigError(f"model.head_kernel: {self.model.head_kernel} is not allowed; must be 1 or 3")
        if self.folds.n_folds < 2:
            raise ConfigError(f"folds.n_folds: {self.folds.n_folds} is out of range; must be >= 2")
        if self.postprocess.expand_px < 0:
            raise ConfigError(f"postprocess.expand_px: must be >= 0 (0 = off), got {self.postprocess.expand_px}")
        if 0 < self.postprocess.expand_px < 1:
            raise ConfigError(
                f"postprocess.expand_px: {self.postprocess.expand_px:g} would grow nothing (a pixel joins a nucleus "
                "within that distance, and the nearest are 1 px away); use 0 (off) or at least 1"
            )
        if self.postprocess.connectivity not in (1, 2):
            raise ConfigError(f"postprocess.connectivity: {self.postprocess.connectivity} is not allowed; must be 1 or 2")
        if self.infer.rescale_area_px < 0 or not 0 < self.infer.rescale_min <= 1.0 <= self.infer.rescale_max:
            raise ConfigError(
                "infer.rescale_*: rescale_area_px must be >= 0 (0 = off) and rescale_min <= 1 <= rescale_max, "
                f"both positive; got {self.infer.rescale_area_px}, {self.infer.rescale_min}, {self.infer.rescale_max}"
            )
        if self.augment.normalize_area_px < 0:
            raise ConfigError(f"augment.normalize_area_px: must be >= 0 (0 = off), got {self.augment.normalize_area_px}")
        if self.augment.normalize_area_px > 0 and self.infer.rescale_area_px <= 0:
            raise ConfigError(
                "augment.normalize_area_px: a model trained on size-normalised images needs "
                "infer.rescale_area_px > 0 (the same target) to see test images the same way"
            )
        if self.folds.group_threshold <= 0:
            raise ConfigError(f"folds.group_threshold: must be > 0, got {self.folds.group_threshold}")
        if self.infer.tile_overlap_px * 2 >= self.infer.tile_px:
            raise ConfigError(
                f"infer.tile_overlap_px: {self.infer.tile_overlap_px} is out of range; must be less than half "
                f"of infer.tile_px ({self.infer.tile_px})"
            )
        if bool(self.data.pseudo_path) != bool(self.data.pseudo_labels):
            given, missing = (("data.pseudo_path", "data.pseudo_labels") if self.data.pseudo_path
                              else ("data.pseudo_labels", "data.pseudo_path"))
            raise ConfigError(f"{given} is given without {missing}: pseudo-labelled images need both the "
                              "images and their labels' RLE CSV")
        return self

# --------------------------------------------------------------------------- ranges

_INF = math.inf
#: Seeds beyond 32 bits overflow some generators.
_SEED_MAX = 2**32 - 1

#: Allowed range of every numeric key: ``(low, high, low_open, high_open)``; a list
#: field's range applies to each entry. Checked by :meth:`Config.validate`; NaN and
#: infinities are outside every range.
RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "data.synthetic_n": (1, _INF, False, True),
    "data.synthetic_seed": (0, _SEED_MAX, False, False),
    "folds.n_folds": (2, _INF, False, True),
    "folds.seed": (0, _SEED_MAX, False, False),
    "folds.group_threshold": (0, _INF, True, True),
    "model.encoder_depth": (2, 5, False, False),
    "model.decoder_channels": (1, _INF, False, True),
    "model.in_channels": (1, _INF, False, True),
    "targets.border_px": (1, _INF, False, True),
    "targets.touching_px": (1, _INF, False, True),
    "augment.crop_px": (32, 4096, False, False),
    "augment.scale_min": (0, _INF, True, True),
    "augment.scale_max": (0, _INF, True, True),
    "augment.rotate_deg": (0, 180, False, False),
    "augment.normalize_area_px": (0, _INF, False, True),
    "loss.bce_weight": (0, _INF, False, True),
    "loss.dice_weight": (0, _INF, False, True),
    "loss.channel_weights": (0, _INF, False, True),
    "data.pseudo_share": (0, 1, True, True),
    "train.epochs": (1, _INF, False, True),
    "train.batch_size": (1, _INF, False, True),
    "train.steps_per_epoch": (0, _INF, False, True),
    "train.lr": (0, _INF, False, True),  # 0 freezes the weights (a warm restart that only re-validates)
    "train.weight_decay": (0, _INF, False, True),
    "train.warmup_epochs": (0, _INF, False, True),
    "train.grad_clip": (0, _INF, False, True),
    "train.ema_decay": (0, 1, False, True),
    "train.distill_weight": (0, 1, False, False),
    "train.num_workers": (0, _INF, False, True),
    "train.seed": (0, _SEED_MAX, False, False),
    "train.val_every": (1, _INF, False, True),
    "postprocess.seed_threshold": (0, 1, False, False),
    "postprocess.mask_threshold": (0, 1, False, False),
    "postprocess.border_weight": (0, _INF, False, True),
    "postprocess.touching_weight": (0, _INF, False, True),
    "postprocess.min_seed_area_px": (0, _INF, False, True),
    "postprocess.min_area_px": (0, _INF, False, True),
    "postprocess.expand_px": (0, _INF, False, True),
    "infer.max_full_px": (1, _INF, False, True),
    "infer.tile_px": (32, 16384, False, False),
    "infer.tile_overlap_px": (0, _INF, False, True),
    "infer.rescale_area_px": (0, _INF, False, True),
    "infer.rescale_min": (0, 1, True, False),
    "infer.rescale_max": (1, _INF, False, True),
    "infer.rescale_passes": (1, 5, False, False),
}
#: Every ``augment.p_*`` probability is in [0, 1] (added below from the dataclass).
RANGES.update({f"augment.{f.name}": (0, 1, False, False)
               for f in dataclasses.fields(AugmentConfig) if f.name.startswith("p_")})



def _range_text(low: float, high: float, low_open: bool, high_open: bool) -> str:
    def fmt(v: float) -> str:
        return f"{v:g}" if isinstance(v, float) else str(v)

    if high == _INF:
        return f"{'>' if low_open else '>='} {fmt(low)}"
    left, right = "(" if low_open else "[", ")" if high_open else "]"
    return f"in {left}{fmt(low)}, {fmt(high)}{right}"


def _in_range(value: float, low: float, high: float, low_open: bool, high_open: bool) -> bool:
    if isinstance(value, float) and not math.isfinite(value):
        return False
    above = value > low if low_open else value >= low
    below = value < high if high_open else value <= high
    return above and below


def _check_ranges(cfg: "Config") -> None:
    """Raise :class:`ConfigError` for the first value outside its range (in :data:`RANGES`)."""
    for key, (low, high, low_open, high_open) in RANGES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        values = value if isinstance(value, list) else [value]
        for i, v in enumerate(values):
            if not _in_range(v, low, high, low_open, high_open):
                where = f"{key}[{i}]" if isinstance(value, list) else key
                raise ConfigError(f"{where}: {v!r} is out of range; must be {_range_text(low, high, low_open, high_open)}")
    for image_type in cfg.postprocess.by_type.changes():
        typed = cfg.postprocess.for_type(image_type)
        for key, (low, high, low_open, high_open) in RANGES.items():
            section, name = key.split(".")
            if section == "postprocess" and name in TYPE_FIELDS:
                v = getattr(typed, name)
                if not _in_range(v, low, high, low_open, high_open):
                    raise ConfigError(f"postprocess.by_type.{image_type}.{name}: {v!r} is out of range; "
                                      f"must be {_range_text(low, high, low_open, high_open)}")
    aug = cfg.augment
    if aug.scale_min > aug.scale_max:
        raise ConfigError(
            f"augment.scale_min: {aug.scale_min:g} is larger than augment.scale_max {aug.scale_max:g}; "
            "need 0 < scale_min <= scale_max"
        )
    if cfg.loss.bce_weight == 0 and cfg.loss.dice_weight == 0:
        raise ConfigError("loss.bce_weight, loss.dice_weight: both are 0 (nothing to learn); at least one must be > 0")


# --------------------------------------------------------------------------- parsing

#: A number in any usual notation: ``1e-3``, ``-2.5E+4``, ``.5``, ``5.``, ``1_000``
#: (YAML 1.1, which PyYAML follows, reads ``1e-3`` as a string, and ``--set`` values too).
_NUMBER = re.compile(r"[+-]?(?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)(?:[eE][+-]?\d+)?|[+-]?(?:inf|infinity|nan)", re.IGNORECASE)


def _as_number(value: Any) -> int | float | None:
    """``value`` as an int or float (numbers, and strings that spell one), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        text = value.strip()
        for parse in (int, float):
            try:
                return parse(text)
            except ValueError:
                continue
    return None


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (ints widen to float)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if origin is Literal:
        if isinstance(value, bool) and ("off" if not value else "on") in args:
            # YAML 1.1 reads a bare off/on (also no/yes) as false/true: `amp: off`, `infer.amp=off`
            value = "on" if value else "off"
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return _from_dict(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        number = _as_number(value)
        if number is None or (isinstance(number, float) and not (math.isfinite(number) and number.is_integer())):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(number)
    if tp is float:
        number = _as_number(value)
        if number is None:
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(number)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")  # pragma: no cover


def _from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            where = f"{prefix}.{key}" if prefix else str(key)
            raise ConfigError(f"{where}: unknown key (known: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build and validate a :class:`Config` from a plain dict (e.g. from a checkpoint)."""
    return _from_dict(Config, data).validate()


def load_config(path: str | Path, overrides: Optional[list[str]] = None) -> Config:
    """Load a YAML config; ``overrides`` are ``section.key=value`` strings (YAML values).

    Raises
    ------
    ConfigError
        The file is missing or unreadable, not UTF-8, not YAML, not a mapping of
        sections; an override is malformed; a key is unknown, a value of the wrong type
        or out of its range. The message names the file and the dotted key.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found" if not path.exists() else f"{path}: not a file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line}); save the config as UTF-8"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    except (ValueError, TypeError, RecursionError) as exc:  # e.g. a value PyYAML cannot construct
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: the top level must be a mapping of sections (train:, model:, ...), "
            f"got a {_yaml_kind(data)}"
        )
    try:
        _apply_overrides(data, overrides or [])
        return config_from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _yaml_kind(value: Any) -> str:
    if isinstance(value, list):
        return "list"
    if isinstance(value, str):
        return f"string {_short(value)!r}"
    return f"{type(value).__name__} {_short(repr(value))}"


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _apply_overrides(data: dict, overrides: Sequence[str], sections: Optional[Sequence[str]] = None) -> dict:
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r}: expected section.key=value")
        *parents, leaf = key.strip().split(".")
        if not leaf or not all(parents):
            raise ConfigError(f"override {item!r}: {key.strip()!r} is not a dotted key like train.lr")
        if sections is not None and (not parents or parents[0] not in sections) and key.strip() not in sections:
            allowed = ", ".join(s if "." in s else s + ".*" for s in sections)
            raise ConfigError(f"override {item!r}: only {allowed} may be changed here")
        node = data
        for depth, part in enumerate(parents):
            child = node.setdefault(part, {})
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(parents[: depth + 1])
                raise ConfigError(f"override {item!r}: {where} is a value ({_short(repr(child))}), not a section with keys")
            node = child
        try:
            node[leaf] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            detail = " ".join(str(exc).split())
            raise ConfigError(f"override {item!r}: the value {raw!r} is not valid YAML ({detail})") from None
        except (ValueError, TypeError, RecursionError) as exc:
            raise ConfigError(f"override {item!r}: the value {raw!r} is not valid YAML ({exc})") from None
    return data


def override_config(cfg: Config, overrides: Sequence[str], sections: Optional[Sequence[str]] = None) -> Config:
    """``cfg`` with ``section.key=value`` overrides applied (and validated); with
    ``sections`` (section names, or dotted keys like ``model.mode``), an override outside
    them is an error."""
    return config_from_dict(_apply_overrides(cfg.to_dict(), overrides, sections))


def save_config(cfg: Config, path: str | Path) -> None:
    with atomic_write(path) as fh:
        yaml.safe_dump(cfg.to_dict(), fh, sort_keys=False)
