"""Probability maps from trained models: TTA, tiling and fold ensembles.

A :class:`Predictor` holds one or more models (the folds of a run) and turns one image
``H x W x 3`` into probabilities ``K x H x W`` (float32, one map per target channel, in
the order of ``channels``)::

    models, cfg = load_models("runs/demo")          # fold*/best.pt
    predictor = Predictor(models, cfg.targets.channels, cfg.infer)
    for image_id, image, probs in iter_predictions(stage, stage.image_ids, predictor):
        labels = labels_from_probs(probs, predictor.channels, cfg.postprocess)

How an image is predicted:

- Every model sees the image under every TTA transform (:mod:`dsb.infer.tta`); logits
  go through a sigmoid, are brought back to the image grid and merged (mean, or
  geometric mean) per model; the fold ensemble is the arithmetic mean of the models'
  merged probabilities.
- Memory is bounded by a pixel budget, ``max_batch_px`` (default ``infer.max_full_px``, at
  most :data:`CPU_BATCH_PX` on CPU, where larger batches are slower per pixel):
  one forward pass never holds more than that many input pixels. TTA views of one image
  (or tile) are batched together up to the budget (a 256 x 256 image under ``"d4"`` is
  one batch of 8); images with more than ``infer.max_full_px`` pixels are predicted in
  overlapping tiles (:mod:`dsb.infer.tiling`), so peak memory is that of one budget-sized
  forward pass plus the ``K x H x W`` float32 output, whatever the image size.
- Everything runs under :func:`torch.inference_mode`, optionally with autocast (fp16 on
  CUDA, bf16 on CPU); the sigmoid and all merging are in float32.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from dsb.config import InferConfig
from dsb.device import AmpMode, amp_dtype, autocast, resolve_device
from dsb.errors import CheckpointError
from dsb.models.checkpoint import load_model
from dsb.models.fuse import fold_batch_norms
from dsb.rundir import resolve_checkpoints
from dsb.infer.tiling import predict_tiled
from dsb.infer.tta import MergeMode, TtaMode, tta_predict, tta_transforms

if TYPE_CHECKING:  # pragma: no cover
    from dsb.config import Config

#: On CPU a forward pass holds at most this many input pixels (one 724 x 724 view, or the
#: eight d4 views of a 256 x 256 image): larger batches run slower per pixel there (the
#: U-Net++'s full-resolution activations leave the caches; on 2 cores with AMX, a 520 x 696
#: view takes 0.25 s alone and 0.35 s each in a batch of four, in bf16; 0.61 and 0.86 s in
#: fp32), while a batch of eight 256 x 256 views is no slower per view than one.
CPU_BATCH_PX = 1 << 19


class Predictor:
    """Fold ensemble + TTA + tiling: image ``H x W x C`` -> probabilities ``K x H x W``.

    Parameters
    ----------
    models : sequence of ``nn.Module``
        Each maps ``B x C x H x W`` float32 in [0, 1] to ``B x K x H x W`` logits in eval
        mode, for any ``H, W``. They are moved to ``device`` and put in eval mode.
    channels : sequence of str or None
        Names of the K output channels (``cfg.targets.channels``), checked against the
        models' output; ``None`` skips the check.
    infer_cfg : :class:`~dsb.config.InferConfig`, optional
        TTA mode, merge, tiling threshold and tile geometry (defaults if omitted).
    device : str or torch.device
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
    amp : ``"auto"``, ``"off"``, ``"bf16"``, ``"fp16"`` or None
        Autocast for the forward passes (see :func:`dsb.device.amp_dtype`: ``auto`` is bf16 on
        CPUs with native bf16, fp32 on other CPUs); None: ``infer_cfg.amp``.
    max_batch_px : int, optional
        Input pixels per forward pass; defaults to ``infer_cfg.max_full_px``, and on CPU to
        at most :data:`CPU_BATCH_PX`.
    channels_last : bool
        Run the models in channels-last memory format (the models are converted): the
        same numbers, and on CPU (oneDNN) about 2x faster for the U-Net++.

    The models are put in eval mode and predicted with their batch norms folded into the
    convolutions before them (:func:`dsb.models.fuse.fold_batch_norms`, on a copy).
    """

    def __init__(
        self,
        models: Sequence[nn.Module],
        channels: Sequence[str] | None,
        infer_cfg: InferConfig | None = None,
        *,
        device: str | torch.device = "cpu",
        amp: AmpMode | None = None,
        max_batch_px: int | None = None,
        channels_last: bool = True,
    ) -> None:
        if isinstance(models, nn.Module):
            models = [models]
        if not models:
            raise ValueError("at least one model is needed")
        self.infer_cfg = infer_cfg if infer_cfg is not None else InferConfig()
        cfg = self.infer_cfg
        if cfg.tile_px < 1 or cfg.tile_overlap_px < 0 or 2 * cfg.tile_overlap_px >= cfg.tile_px:
            raise ValueError(
                f"infer.tile_overlap_px ({cfg.tile_overlap_px}) must be >= 0 and less than half "
                f"of infer.tile_px ({cfg.tile_px})"
            )
        if cfg.max_full_px < 1:
            raise ValueError(f"infer.max_full_px must be positive, got {cfg.max_full_px}")
        self.device = resolve_device(device)
        self.amp_dtype = amp_dtype(amp if amp is not None else cfg.amp, self.device, training=False)
        self.channels_last = channels_last
        # Batch norms folded into their convolutions (on an eval copy; the given models are
        # not changed): the same numbers up to rounding, 0.93x the network time on a 2-core
        # CPU in bf16 (dsb.models.fuse).
        self.models = [fold_batch_norms(m.to(self.device).eval()) for m in models]
        if channels_last:
            self.models = [m.to(memory_format=torch.channels_last) for m in self.models]
        self.channels = list(channels) if channels is not None else None
        self.transforms = tta_transforms(cfg.tta)
        self.merge: MergeMode = cfg.merge
        if max_batch_px is None:
            max_batch_px = cfg.max_full_px if self.device.type != "cpu" else min(cfg.max_full_px, CPU_BATCH_PX)
        self.max_batch_px = int(max_batch_px)
        if self.max_batch_px < 1:
            raise ValueError(f"max_batch_px must be positive, got {self.max_batch_px}")
        self._scout: Predictor | None = None
        self._rest: Predictor | None = None

    def scout(self) -> "Predictor":
        """This predictor without TTA (one view a pass), sharing its models and settings:
        for passes that only measure the image (:func:`dsb.infer.rescale.predict_rescaled`).
        ``self`` when it has no TTA."""
        if len(self.transforms) == 1:
            return self
        if self._scout is None:
            twin = copy.copy(self)
            twin.infer_cfg = dataclasses.replace(self.infer_cfg, tta="none")
            twin.transforms = tta_transforms("none")
            twin._scout, twin._rest = twin, None
            self._scout = twin
        return self._scout

    def rest(self) -> "Predictor | None":
        """This predictor's TTA without the identity view, sharing its models and settings,
        for a pass whose identity view the :meth:`scout` has already made: with the mean
        merge, ``(scout + (n - 1) * rest) / n`` is this predictor's result (``n`` views;
        every step from views to probabilities is linear: the merge, the fold mean, the
        tiles' blend and a bilinear resize). None where that does not hold (no TTA, or the
        geometric mean)."""
        if len(self.transforms) == 1 or self.merge != "mean" or self.transforms[0].name != "identity":
            return None
        if self._rest is None:
            twin = copy.copy(self)
            twin.transforms = self.transforms[1:]
            twin._scout = twin._rest = None
            self._rest = twin
        return self._rest

    @classmethod
    def from_checkpoints(
        cls,
        checkpoints: str | Path | Sequence[str | Path],
        infer_cfg: InferConfig | None = None,
        *,
        device: str | torch.device = "auto",
        amp: AmpMode | None = None,
        max_batch_px: int | None = None,
        channels_last: bool = True,
    ) -> "Predictor":
        """Load checkpoints (see :func:`load_models`); ``infer_cfg`` defaults to theirs."""
        dev = resolve_device(device)
        models, cfg = load_models(checkpoints, dev)
        return cls(
            models,
            cfg.targets.channels,
            infer_cfg if infer_cfg is not None else cfg.infer,
            device=dev,
            amp=amp,
            max_batch_px=max_batch_px,
            channels_last=channels_last,
        )

    # -- the work -------------------------------------------------------------------

    def is_tiled(self, height: int, width: int) -> bool:
        """Whether an image of this size is predicted in tiles."""
        return height * width > self.infer_cfg.max_full_px

    def _forward_probs(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Sigmoid of the model's logits, float32, for a batch ``n x C x h x w``."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.amp_dtype):
            logits = model(x)
        if not isinstance(logits, torch.Tensor) or logits.ndim != 4 or logits.shape[-2:] != x.shape[-2:]:
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ValueError(f"model returned {shape} for input {tuple(x.shape)}; expected B x K x H x W logits")
        if self.channels is not None and logits.shape[1] != len(self.channels):
            raise ValueError(
                f"model returned {logits.shape[1]} channels but {len(self.channels)} are named: {self.channels}"
            )
        return torch.sigmoid(logits.float())

    def _predict_batch(self, crops: torch.Tensor, items_per_pass: int) -> torch.Tensor:
        """Ensemble of TTA-merged probabilities for ``n x C x h x w`` crops (any dtype)."""
        x = crops.to(self.device, non_blocking=True)
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        total: torch.Tensor | None = None
        for model in self.models:
            probs = tta_predict(
                lambda batch, m=model: self._forward_probs(m, batch),
                x,
                self.transforms,
                self.merge,
                max_batch=items_per_pass,
            )
            total = probs if total is None else total.add_(probs)
            del probs
        assert total is not None
        if len(self.models) > 1:
            total /= len(self.models)
        return total.cpu()

    @torch.inference_mode()
    def predict(self, image: np.ndarray | torch.Tensor) -> np.ndarray:
        """Probabilities for one image.

        Parameters
        ----------
        image : array ``H x W x C``
            float in [0, 1] (as :func:`dsb.data.kaggle` reads them) or uint8 (scaled by
            1/255). Not modified.

        Returns
        -------
        ndarray ``K x H x W``, float32 in [0, 1], channels in the order of ``channels``.
        """
        if image.ndim != 3:
            raise ValueError(f"image must be H x W x C, got shape {tuple(image.shape)}")
        tensor = image if isinstance(image, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(image))
        if not (tensor.dtype == torch.uint8 or tensor.is_floating_point()):
            raise ValueError(f"image must be float or uint8, got {tensor.dtype}")
        chw = tensor.permute(2, 0, 1)  # a view: tiles are copied one batch at a time
        height, width = chw.shape[-2:]
        cfg = self.infer_cfg
        n_tta = len(self.transforms)
        if self.is_tiled(height, width):
            tile_px, overlap_px = cfg.tile_px, cfg.tile_overlap_px
            tile_area = min(tile_px, height) * min(tile_px, width)
        else:
            tile_px, overlap_px = max(height, width), 0
            tile_area = height * width
        items_per_pass = max(1, self.max_batch_px // tile_area)
        tiles_per_batch = max(1, items_per_pass // n_tta)
        probs = predict_tiled(
            lambda crops: self._predict_batch(crops, items_per_pass),
            chw,
            tile_px,
            overlap_px,
            tiles_per_batch,
        )
        return probs.numpy()

    __call__ = predict

    def __repr__(self) -> str:
        return (
            f"Predictor({len(self.models)} model(s), channels={self.channels}, tta={self.infer_cfg.tta}, "
            f"merge={self.merge}, device={self.device}, amp={self.amp_dtype})"
        )


def predict_probs(
    models: nn.Module | Sequence[nn.Module],
    image: np.ndarray,
    infer_cfg: InferConfig | None = None,
    *,
    device: str | torch.device = "cpu",
    tta: TtaMode | None = None,
    merge: MergeMode | None = None,
    amp: AmpMode | None = None,
    channels: Sequence[str] | None = None,
    max_batch_px: int | None = None,
    channels_last: bool = True,
) -> np.ndarray:
    """One-call form of :meth:`Predictor.predict`: ``H x W x C`` -> ``K x H x W`` float32.

    ``infer_cfg`` (default :class:`~dsb.config.InferConfig`) gives TTA, merge and tiling;
    ``tta`` and ``merge``, when given, override it. ``channels`` (names of the K
    outputs) is checked against the models when given. Models are moved to ``device``
    and left in eval mode. For many images, build one :class:`Predictor` and reuse it.
    """
    cfg = infer_cfg if infer_cfg is not None else InferConfig()
    changes = {k: v for k, v in (("tta", tta), ("merge", merge)) if v is not None}
    if changes:
        cfg = dataclasses.replace(cfg, **changes)
    predictor = Predictor(
        models, channels, cfg, device=device, amp=amp, max_batch_px=max_batch_px, channels_last=channels_last
    )
    return predictor.predict(image)


def load_models(
    checkpoints: str | Path | Sequence[str | Path],
    device: str | torch.device = "cpu",
) -> tuple[list[nn.Module], "Config"]:
    """Load the models of an ensemble.

    Parameters
    ----------
    checkpoints : path or sequence of paths
        Checkpoint files, run folders (their ``fold*/best.pt``, in fold order), shipped
        set folders or names (:func:`dsb.rundir.resolve_checkpoints`).
    device : where to put the models.

    Returns
    -------
    (models, cfg) : the models in eval mode, and the config of the first checkpoint.

    Raises
    ------
    CheckpointError
        No checkpoint found, or checkpoints that predict different target channels (the
        message names the odd one out).
    """
    paths_in = [checkpoints] if isinstance(checkpoints, (str, Path)) else list(checkpoints)
    if not paths_in:
        raise CheckpointError("no checkpoints given")
    paths = resolve_checkpoints(paths_in)
    dev = resolve_device(device)
    models: list[nn.Module] = []
    first_cfg = None
    for path in paths:
        model, cfg, _meta = load_model(path, dev)
        if first_cfg is None:
            first_cfg = cfg
        elif list(cfg.targets.channels) != list(first_cfg.targets.channels):
            raise CheckpointError(
                f"{path}: predicts channels {list(cfg.targets.channels)} but {paths[0]} predicts "
                f"{list(first_cfg.targets.channels)}; an ensemble needs the same target channels"
            )
        models.append(model.eval())
    assert first_cfg is not None
    return models, first_cfg


def iter_predictions(
    stage: Any,
    image_ids: Iterable[str] | None,
    predictor: Predictor,
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """Predict images one at a time: yields ``(image_id, image, probs)``.

    ``stage`` is anything with ``read_image(image_id) -> H x W x 3 float32`` (and
    ``image_ids`` when ``image_ids`` is ``None``), e.g. :func:`dsb.data.kaggle.open_stage`.
    Nothing is kept between images, so memory does not grow with their number.
    """
    ids = stage.image_ids if image_ids is None else image_ids
    for image_id in ids:
        image = stage.read_image(image_id)
        probs = predictor.predict(image)
        yield image_id, image, probs
        del image, probs

