"""U-Net++ (Zhou et al., 2018) on a timm encoder, with deep supervision.

The model composes three parts, like segmentation_models_pytorch:

* the **encoder** (:mod:`dsb.models.encoder`): timm's network, run through
  ``forward_intermediates``, giving ``D = encoder_depth`` maps ``X(i, 0)``, ``i = 0 .. L``
  (``L = D - 1``) at the reductions timm reports (2, 4, ... 32 for ResNet/EfficientNet,
  4 .. 32 for ConvNeXt);
* the **decoder** (:class:`~dsb.models.decoder.UNetPlusPlusDecoder`): the nested nodes
  ``X(i, j)``, whose top row ``X(0, 1) .. X(0, L)`` holds the ``L`` nested outputs (4 for
  depth 5); ``X(0, L)`` is the full-depth one;
* the **heads** (:class:`~dsb.models.heads.SegmentationHeads`): "head ``d``" brings
  ``X(0, d)`` to full resolution and to ``out_channels`` logits, ``d = 1 .. L``.

:class:`DsbUNetPlusPlus` itself only normalises and pads the input (one place:
:meth:`DsbUNetPlusPlus.prepare_input`), chooses which heads to run (the accurate/fast
modes) and crops the output back. Its submodules are registered as ``encoder``, ``nodes``
(the decoder) and ``heads``, so checkpoint keys read ``encoder.conv1.weight``,
``nodes.x_0_1.0.0.weight``, ``heads.4.logits.bias``.

Channels: ``decoder_channels = [c_{L-1}, ..., c_0, c_f]``, deepest first (like
segmentation_models_pytorch): node channels per level, then the heads' full-resolution
block.

Outputs (all logits, ``B x out_channels x H x W``, same H, W as the input)
----------------------------------------------------------------------------
* ``model.train()``: a **list** of tensors, one per head, shallowest first
  (``[head 1, ..., head L]`` with deep supervision, ``[head L]`` without).
  The mode (accurate/fast) does not affect training.
* ``model.eval()``, mode ``"accurate"``: one tensor, the mean of all heads' logits.
* ``model.eval()``, mode ``"fast"`` at depth ``d``: one tensor, head ``d`` alone; only the
  nodes ``X(i, j)`` with ``i + j <= d`` and the encoder stages up to level ``d`` are run.
  When H and W are multiples of the encoder's total stride it equals head ``d`` of the
  training list exactly.
* :meth:`DsbUNetPlusPlus.forward_heads` returns the list of heads in any mode.

Inputs are ``B x in_channels x H x W`` floats in ``[0, 1]`` of any size: the model
normalises with the encoder's mean/std, reflect-pads H and W up to a multiple of the
stride it needs (replicate padding when an image is too small to reflect) and crops the
output back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from dsb.errors import ConfigError
from dsb.models.decoder import UNetPlusPlusDecoder
from dsb.models.encoder import (
    create_encoder,
    encoder_features,
    feature_channels,
    feature_reductions,
    load_encoder_weights,
    normalisation_stats,
    upgrade_encoder_state,
)
from dsb.models.heads import SegmentationHeads

__all__ = ["DsbUNetPlusPlus", "build_model", "create_encoder", "load_encoder_weights", "pad_to_multiple"]


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad ``B x C x H x W`` at the bottom and right up to multiples of ``multiple``.

    Reflection, or edge replication when a side is too short to reflect (pad >= size).
    The original image is ``out[..., :H, :W]``.
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x
    pad_mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=pad_mode)


class DsbUNetPlusPlus(nn.Module):
    """U-Net++ with deep supervision over a timm encoder; see the module docstring.

    Parameters
    ----------
    encoder_name : str
        Any timm model (all have ``forward_intermediates``/``prune_intermediate_layers``
        in the timm versions pyproject.toml allows).
    out_channels : int
        Logit channels per head (the target channels, e.g. body/border/touching).
    in_channels : int
        Input image channels.
    encoder_depth : int
        Number of encoder feature levels used (``D``); ``L = D - 1`` nested outputs.
    decoder_channels : sequence of ``D`` ints
        ``[c_{L-1}, ..., c_0, c_f]``: node channels per level, deepest first, then the
        full-resolution head block.
    deep_supervision : bool
        One head per nested top output (``L`` heads) instead of only on ``X(0, L)``.
    upsample : ``"nearest"`` or ``"bilinear"``
    head_kernel : 1 or 3
        Kernel of each head's last conv (the paper's 1x1, or 3x3: default, learns faster).
    mode, fast_depth
        Inference mode, see :meth:`set_mode`.
    pretrained : bool
        Ask timm for pretrained encoder weights (needs network).
    """

    def __init__(
        self,
        encoder_name: str = "resnet18",
        *,
        out_channels: int = 3,
        in_channels: int = 3,
        encoder_depth: int = 5,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        deep_supervision: bool = True,
        upsample: Literal["nearest", "bilinear"] = "nearest",
        head_kernel: int = 3,
        mode: Literal["accurate", "fast"] = "accurate",
        fast_depth: int | None = None,
        pretrained: bool = False,
    ):
        super().__init__()
        if len(decoder_channels) != encoder_depth:
            raise ConfigError(f"model.decoder_channels: needs {encoder_depth} entries (model.encoder_depth)")
        if upsample not in ("nearest", "bilinear"):
            raise ConfigError(f"model.upsample: {upsample!r} is not one of ['nearest', 'bilinear']")
        if head_kernel not in (1, 3):
            raise ConfigError(f"model.head_kernel: must be 1 or 3, got {head_kernel!r}")
        self.encoder_name = encoder_name
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.deep_supervision = deep_supervision
        self.upsample = upsample
        self.depth = L = encoder_depth - 1  # nested levels; top outputs X(0,1)..X(0,L)
        self.head_depths = list(range(1, L + 1)) if deep_supervision else [L]

        self.encoder = create_encoder(encoder_name, in_channels, encoder_depth, pretrained)
        self.reductions = feature_reductions(self.encoder, encoder_depth)
        self.nodes = UNetPlusPlusDecoder(
            feature_channels(self.encoder, encoder_depth), list(decoder_channels)[:L], upsample
        )
        self.heads = SegmentationHeads(
            self.head_depths, self.nodes.level_channels[0], decoder_channels[-1], out_channels, head_kernel, upsample
        )

        mean, std = normalisation_stats(self.encoder, in_channels)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        self.mode = "accurate"
        self.fast_depth = L
        self.set_mode(mode, fast_depth if fast_depth is not None else L)

    @property
    def decoder(self) -> UNetPlusPlusDecoder:
        """The U-Net++ decoder (registered as ``nodes``, the name its checkpoint keys use)."""
        return self.nodes

    @property
    def total_stride(self) -> int:
        """Input sizes the full network needs (padding to it is done internally)."""
        return self.reductions[-1]

    def set_mode(self, mode: Literal["accurate", "fast"], depth: int | None = None) -> DsbUNetPlusPlus:
        """Choose what :meth:`forward` returns in eval mode.

        ``"accurate"``: mean of all heads' logits. ``"fast"``: head ``depth`` (1..L) only,
        computing just the encoder stages and nodes it needs. Returns ``self``.
        """
        if mode not in ("accurate", "fast"):
            raise ConfigError(f"model.mode: {mode!r} is not one of ['accurate', 'fast']")
        if depth is None:
            depth = self.fast_depth
        if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= self.depth:
            raise ConfigError(f"model.fast_depth: must be in 1..{self.depth}, got {depth!r}")
        if mode == "fast" and depth not in self.head_depths:
            raise ConfigError(
                f"model.fast_depth: this model has a head only at depth {self.head_depths} "
                "(deep_supervision is off); fast mode needs the head of the chosen depth"
            )
        self.mode = mode
        self.fast_depth = depth
        return self

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` is a ``B x in_channels x H x W`` float tensor."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input B x {self.in_channels} x H x W, got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"expected a float input in [0, 1], got dtype {x.dtype}")

    def prepare_input(self, x: torch.Tensor, multiple: int) -> torch.Tensor:
        """Normalise ``x`` (``B x in_channels x H x W`` in [0, 1]) with the encoder's mean/std,
        then pad it to multiples of ``multiple`` (:func:`pad_to_multiple`)."""
        return pad_to_multiple((x - self.mean) / self.std, multiple)

    def forward_heads(self, x: torch.Tensor, depths: Sequence[int] | None = None) -> list[torch.Tensor]:
        """Logits of the heads at ``depths`` (default: all heads), shallowest first.

        Only the encoder stages and decoder nodes those heads need are computed.
        Each tensor is ``B x out_channels x H x W`` for an input ``B x in_channels x H x W``.
        """
        self.check_input(x)
        depths = sorted(set(self.head_depths if depths is None else depths))
        bad = [d for d in depths if d not in self.head_depths]
        if bad or not depths:
            raise ValueError(f"no head at depth(s) {bad or depths}; heads: {self.head_depths}")
        top = depths[-1]
        h, w = x.shape[-2:]
        x = self.prepare_input(x, self.reductions[top])
        features = encoder_features(self.encoder, x, top + 1)  # X(0, 0) .. X(top, 0)
        top_row = self.nodes(features, top)  # X(0, 1) .. X(0, top)
        return [y[..., :h, :w] for y in self.heads(top_row, depths, x.shape[-2:])]

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Training: list of all heads' logits. Eval: one tensor (see :meth:`set_mode`)."""
        if self.training:
            return self.forward_heads(x)
        if self.mode == "fast":
            return self.forward_heads(x, [self.fast_depth])[0]
        heads = self.forward_heads(x)
        return heads[0] if len(heads) == 1 else torch.stack(heads).mean(0)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # PyTorch's hook for loading state dicts of an earlier layout: encoder weights saved
        # from timm's features_only wrappers (dsb before the encoder split) get today's keys.
        # ``state_dict`` is load_state_dict's own copy, so it is updated in place.
        own = [f"{prefix}encoder.{k}" for k in self.encoder.state_dict()]
        upgraded = upgrade_encoder_state(state_dict, own, prefix=f"{prefix}encoder.")
        if upgraded.keys() != state_dict.keys():
            state_dict.clear()
            state_dict.update(upgraded)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (
            f"encoder={self.encoder_name!r}, reductions={self.reductions}, depth={self.depth}, "
            f"heads={self.head_depths}, mode={self.mode!r}, fast_depth={self.fast_depth}"
        )


def build_model(cfg, *, load_weights: bool = True) -> DsbUNetPlusPlus:
    """Build the model described by ``cfg.model`` (a :class:`dsb.config.Config`).

    ``out_channels = len(cfg.targets.channels)``. ``model.weights`` (a local file) wins
    over ``model.pretrained``; ``load_weights=False`` skips both (used when a checkpoint
    supplies every weight, so rebuilding never downloads anything).

    Raises
    ------
    ConfigError
        Invalid model settings (unknown encoder, depth the encoder lacks ...).
    CheckpointError
        ``model.weights`` unreadable/mismatched, or pretrained weights not downloadable.
    """
    m = cfg.model
    model = DsbUNetPlusPlus(
        m.encoder,
        out_channels=len(cfg.targets.channels),
        in_channels=m.in_channels,
        encoder_depth=m.encoder_depth,
        decoder_channels=list(m.decoder_channels),
        deep_supervision=m.deep_supervision,
        upsample=m.upsample,
        head_kernel=m.head_kernel,
        mode=m.mode,
        fast_depth=m.fast_depth,
        pretrained=bool(load_weights and m.pretrained and not m.weights),
    )
    if load_weights and m.weights:
        load_encoder_weights(model.encoder, m.weights)
    return model
