"""U-Net++ (Zhou et al., 2018) on any timm ``features_only`` encoder, with deep supervision.

Grid and naming
---------------
The encoder gives ``D = encoder_depth`` feature maps ``X(i, 0)``, ``i = 0 .. L`` with
``L = D - 1``, at the reductions timm reports (``feature_info.reduction()``: 2, 4, ... 32
for ResNet/EfficientNet, 4 .. 32 for ConvNeXt). Decoder node ``X(i, j)`` (``j >= 1``,
``i + j <= L``) is::

    X(i, j) = H([X(i, 0), X(i, 1), ..., X(i, j-1), Up(X(i+1, j-1))])

with ``H`` = (conv3x3-BN-ReLU) x 2 and ``Up`` a nearest/bilinear resize to level ``i``.
All nodes of level ``i`` have ``c_i`` channels, read from ``decoder_channels`` deepest
first (like segmentation_models_pytorch): ``decoder_channels = [c_{L-1}, ..., c_0, c_f]``.

The top row ``X(0, 1) .. X(0, L)`` holds the ``L`` nested outputs (4 for depth 5);
``X(0, L)`` is the full-depth one. Level 0 is at the encoder's first reduction (2 or 4),
so each head first brings its node to full resolution: ``Up`` to the input size, then
(conv3x3-BN-ReLU) x 2 with ``c_f`` channels, then a conv to ``out_channels`` logits.
"Head ``d``" means that head on ``X(0, d)``, ``d = 1 .. L``. That last conv is 3x3 by
default (``head_kernel``), like smp's segmentation head: with the paper's 1x1 on a narrow
``c_f`` the loss fell markedly slower in short CPU runs (tiny resnet10t run, 48 steps:
1.10 vs 0.66 mid-way; smp's UnetPlusPlus: 0.69), at ~1% of the head's cost.

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

import warnings
from pathlib import Path
from typing import Literal, Optional, Sequence

import timm
import torch
import torch.nn.functional as F
from torch import nn

from dsb.errors import CheckpointError, ConfigError

__all__ = ["DsbUNetPlusPlus", "build_model", "create_encoder", "load_encoder_weights"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Parameter-name prefixes of timm classifier heads, never used by a features_only encoder.
_CLASSIFIER_PREFIXES = ("fc.", "classifier.", "head.", "head_", "conv_head.", "bn2.", "last_linear.", "norm_pre.")


class ConvBNReLU(nn.Sequential):
    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )


class DecoderNode(nn.Sequential):
    """``H``: concatenated inputs -> (conv3x3-BN-ReLU) x 2."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(ConvBNReLU(in_ch, out_ch), ConvBNReLU(out_ch, out_ch))


class FullResHead(nn.Module):
    """Top node ``X(0, d)`` (already resized) -> logits: (conv-BN-ReLU) x 2, then a
    ``kernel`` x ``kernel`` conv to the output channels."""

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, kernel: int = 3):
        super().__init__()
        self.block = DecoderNode(in_ch, mid_ch)
        self.logits = nn.Conv2d(mid_ch, out_ch, kernel_size=kernel, padding=kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.block(x))


def _is_network_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or its cause chain) looks like a failed download."""
    import urllib.error

    net_types: tuple[type, ...] = (urllib.error.URLError, ConnectionError, TimeoutError, OSError)
    try:
        from huggingface_hub import errors as hf_errors

        net_types += (hf_errors.LocalEntryNotFoundError, hf_errors.OfflineModeIsEnabled)
    except Exception:  # pragma: no cover - old/new huggingface_hub layouts
        pass
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, net_types) or type(exc).__module__.startswith(("requests", "httpx", "urllib3")):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def create_encoder(name: str, in_channels: int = 3, depth: int = 5, pretrained: bool = False) -> nn.Module:
    """``timm.create_model(name, features_only=True, out_indices=range(depth))``, with clear errors.

    Raises
    ------
    ConfigError
        Unknown encoder name, or the encoder has fewer than ``depth`` feature levels.
    CheckpointError
        ``pretrained=True`` but the weights could not be downloaded (offline).
    """
    if not timm.is_model(name):
        raise ConfigError(f"model.encoder: {name!r} is not a timm model (see timm.list_models())")
    if depth < 2:
        raise ConfigError(f"model.encoder_depth: must be at least 2, got {depth}")
    kwargs = dict(features_only=True, in_chans=in_channels, out_indices=tuple(range(depth)))
    if pretrained:
        # timm downloads before it checks out_indices: build once without weights so a
        # bad depth is reported as such, not as a download failure.
        create_encoder(name, in_channels, depth, pretrained=False)
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except Exception as exc:
        if pretrained:  # the architecture itself built fine above
            if _is_network_error(exc):
                raise _download_error(name, exc) from None
            raise CheckpointError(
                f"model.pretrained: timm could not load pretrained weights for {name!r} "
                f"({type(exc).__name__}: {exc}); set model.weights: PATH or model.pretrained: false"
            ) from None
        if not isinstance(exc, (IndexError, AssertionError, ValueError, RuntimeError)):
            raise
        try:  # find out how many levels it does have, for the message
            probe = timm.create_model(name, features_only=True, pretrained=False, in_chans=in_channels)
        except Exception:
            raise ConfigError(f"model.encoder: timm cannot build {name!r} as a feature extractor: {exc}") from None
        n = len(probe.feature_info.channels())
        if n < depth:
            raise ConfigError(
                f"model.encoder_depth: encoder {name!r} has {n} feature levels "
                f"(reductions {probe.feature_info.reduction()}), fewer than encoder_depth={depth}; "
                f"set model.encoder_depth: {n}, give {n} model.decoder_channels and keep "
                f"model.fast_depth <= {n - 1}"
            ) from None
        raise ConfigError(f"model.encoder: timm cannot build {name!r}: {exc}") from None


def _download_error(name: str, exc: BaseException) -> CheckpointError:
    return CheckpointError(
        f"model.pretrained: could not download pretrained weights for encoder {name!r} "
        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no network'}). "
        "This machine seems to be offline. Either point model.weights: PATH at a local "
        "encoder weights file (.pth/.pt/.safetensors, e.g. a timm checkpoint), or set "
        "model.pretrained: false to train from scratch."
    )


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: encoder weights file not found (model.weights)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read encoder weights ({type(exc).__name__}: {exc})") from None
    # Unwrap the usual containers: {"state_dict": ...}, {"model": ...}, dsb checkpoints.
    for key in ("state_dict", "model", "model_state_dict", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors (model.weights)")
    # DataParallel / torch.compile prefixes.
    for prefix in ("module.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def load_encoder_weights(encoder: nn.Module, path: str | Path) -> dict[str, list[str]]:
    """Load a local weights file into a timm ``features_only`` encoder.

    Accepts a timm/torchvision-style state dict (optionally under ``state_dict``/``model``)
    or a whole dsb checkpoint, whose ``encoder.*`` weights are used (fine-tuning from an
    earlier run). Classifier keys (``fc.*``, ``classifier.*``, ``head.*`` ...) are ignored; a first conv trained on 3 channels is adapted to the
    encoder's ``in_chans`` the way timm does. Returns ``{"ignored": [...], "unexpected":
    [...]}``; unexpected keys that are not classifier keys also raise a warning.

    Raises
    ------
    CheckpointError
        Missing/unreadable file, encoder weights missing from it, or shape mismatches.
    """
    path = Path(path)
    state = _read_state_dict(path)
    own = encoder.state_dict()
    if not own.keys() & state.keys() and any(k.startswith("encoder.") for k in state):
        # A whole segmentation model (a dsb checkpoint, smp, ...): take its encoder part.
        state = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
    ignored = [k for k in state if k not in own and k.startswith(_CLASSIFIER_PREFIXES)]
    unexpected = [k for k in state if k not in own and k not in ignored]
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    if missing:
        shown = ", ".join(missing[:8]) + (f" ... ({len(missing)} in all)" if len(missing) > 8 else "")
        raise CheckpointError(
            f"{path}: {len(missing)} encoder weights missing from the file: {shown}. "
            f"Is it a checkpoint of the same timm architecture as the encoder?"
        )
    load = {}
    mismatched = []
    for key, value in state.items():
        if key not in own:
            continue
        target = own[key]
        if value.shape != target.shape and value.ndim == 4 and value.shape[1] != target.shape[1]:
            from timm.models import adapt_input_conv

            value = adapt_input_conv(target.shape[1], value)
        if value.shape != target.shape:
            mismatched.append(f"{key}: file {tuple(value.shape)} vs model {tuple(target.shape)}")
        load[key] = value
    if mismatched:
        raise CheckpointError(f"{path}: weight shapes do not match the encoder: " + "; ".join(mismatched[:5]))
    encoder.load_state_dict(load, strict=False)
    if unexpected:
        warnings.warn(
            f"{path}: {len(unexpected)} weights not used by the encoder: "
            + ", ".join(unexpected[:8])
            + (" ..." if len(unexpected) > 8 else ""),
            stacklevel=2,
        )
    return {"ignored": ignored, "unexpected": unexpected}


def _staged_features(encoder: nn.Module, x: torch.Tensor, n_levels: int) -> list[torch.Tensor]:
    """The first ``n_levels`` encoder features, running only the stages they need.

    timm's feature wrappers run every stage; for the common ones (FeatureListNet /
    FeatureDictNet, EfficientNetFeatures, MobileNetV3Features) we walk the stages
    ourselves and stop early. Anything else runs whole and is truncated.
    """
    from timm.models._features import FeatureDictNet

    total = len(encoder.feature_info.channels())
    if n_levels >= total or getattr(encoder, "grad_checkpointing", False):
        return list(encoder(x))[:n_levels]
    if isinstance(encoder, FeatureDictNet):
        feats: list[torch.Tensor] = []
        for name, module in encoder.items():
            x = module(x)
            if name in encoder.return_layers:
                if isinstance(x, (list, tuple)):  # same rule as FeatureDictNet._collect
                    feats.append(torch.cat(x, 1) if encoder.concat else x[0])
                else:
                    feats.append(x)
                if len(feats) == n_levels:
                    return feats
    stage_idx = getattr(encoder, "_stage_out_idx", None)
    if stage_idx is not None and getattr(encoder, "feature_hooks", None) is None and hasattr(encoder, "blocks"):
        wanted = sorted(stage_idx)[:n_levels]
        x = encoder.conv_stem(x)
        x = encoder.bn1(x)
        if hasattr(encoder, "act1"):
            x = encoder.act1(x)
        feats = [x] if 0 in wanted else []
        for i, block in enumerate(encoder.blocks):
            if len(feats) == n_levels:
                break
            x = block(x)
            if i + 1 in wanted:
                feats.append(x)
        if len(feats) == n_levels:
            return feats
    return list(encoder(x))[:n_levels]


class DsbUNetPlusPlus(nn.Module):
    """U-Net++ with deep supervision over a timm encoder; see the module docstring.

    Parameters
    ----------
    encoder_name : str
        Any timm model that supports ``features_only=True``.
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
        fast_depth: Optional[int] = None,
        pretrained: bool = False,
    ):
        super().__init__()
        if len(decoder_channels) != encoder_depth:
            raise ConfigError(f"model.decoder_channels: needs {encoder_depth} entries (model.encoder_depth)")
        if upsample not in ("nearest", "bilinear"):
            raise ConfigError(f"model.upsample: {upsample!r} is not one of ['nearest', 'bilinear']")
        if head_kernel not in (1, 3):
            raise ConfigError(f"model.head_kernel: must be 1 or 3, got {head_kernel!r}")
        self.encoder = create_encoder(encoder_name, in_channels, encoder_depth, pretrained)
        self.encoder_name = encoder_name
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.deep_supervision = deep_supervision
        self.upsample = upsample
        enc_ch = list(self.encoder.feature_info.channels())
        self.reductions = list(self.encoder.feature_info.reduction())
        self.depth = L = encoder_depth - 1  # nested levels; top outputs X(0,1)..X(0,L)
        # decoder_channels is deepest first: [c_{L-1}, ..., c_0, c_final]
        level_ch = list(reversed(list(decoder_channels)[:L]))  # level_ch[i] = c_i
        final_ch = decoder_channels[-1]

        self.nodes = nn.ModuleDict()
        for j in range(1, L + 1):
            for i in range(0, L - j + 1):
                below = enc_ch[i + 1] if j == 1 else level_ch[i + 1]
                in_ch = enc_ch[i] + (j - 1) * level_ch[i] + below
                self.nodes[f"x_{i}_{j}"] = DecoderNode(in_ch, level_ch[i])
        self.head_depths = list(range(1, L + 1)) if deep_supervision else [L]
        self.heads = nn.ModuleDict(
            {str(d): FullResHead(level_ch[0], final_ch, out_channels, head_kernel) for d in self.head_depths}
        )

        mean, std = self._norm_stats(in_channels)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        self.mode = "accurate"
        self.fast_depth = L
        self.set_mode(mode, fast_depth if fast_depth is not None else L)

    def _norm_stats(self, in_channels: int) -> tuple[list[float], list[float]]:
        pcfg = getattr(self.encoder, "pretrained_cfg", None) or {}
        mean = list(pcfg.get("mean") or IMAGENET_MEAN)
        std = list(pcfg.get("std") or IMAGENET_STD)
        if len(mean) != in_channels:  # e.g. grey input on an RGB encoder: use the average
            mean = [sum(mean) / len(mean)] * in_channels
            std = [sum(std) / len(std)] * in_channels
        return mean, std

    @property
    def total_stride(self) -> int:
        """Input sizes the full network needs (padding to it is done internally)."""
        return self.reductions[-1]

    def set_mode(self, mode: Literal["accurate", "fast"], depth: Optional[int] = None) -> "DsbUNetPlusPlus":
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

    def _pad(self, x: torch.Tensor, multiple: int) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % multiple, (-w) % multiple
        if ph == 0 and pw == 0:
            return x
        # Reflection needs pad < size; tiny inputs fall back to edge replication.
        pad_mode = "reflect" if ph < h and pw < w else "replicate"
        return F.pad(x, (0, pw, 0, ph), mode=pad_mode)

    def _resize(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        if self.upsample == "bilinear":
            return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
        return F.interpolate(x, size=tuple(size), mode="nearest")

    def forward_heads(self, x: torch.Tensor, depths: Optional[Sequence[int]] = None) -> list[torch.Tensor]:
        """Logits of the heads at ``depths`` (default: all heads), shallowest first.

        Only the encoder stages and decoder nodes those heads need are computed.
        Each tensor is ``B x out_channels x H x W`` for an input ``B x in_channels x H x W``.
        """
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input B x {self.in_channels} x H x W, got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"expected a float input in [0, 1], got dtype {x.dtype}")
        depths = sorted(set(self.head_depths if depths is None else depths))
        bad = [d for d in depths if d not in self.head_depths]
        if bad or not depths:
            raise ValueError(f"no head at depth(s) {bad or depths}; heads: {self.head_depths}")
        top = depths[-1]
        h, w = x.shape[-2:]
        x = self._pad((x - self.mean) / self.std, self.reductions[top])
        full_size = x.shape[-2:]

        enc = _staged_features(self.encoder, x, top + 1)
        grid: dict[tuple[int, int], torch.Tensor] = {(i, 0): f for i, f in enumerate(enc)}
        for j in range(1, top + 1):
            for i in range(0, top - j + 1):
                skips = [grid[(i, k)] for k in range(j)]
                up = self._resize(grid[(i + 1, j - 1)], skips[0].shape[-2:])
                grid[(i, j)] = self.nodes[f"x_{i}_{j}"](torch.cat(skips + [up], dim=1))
        outs = []
        for d in depths:
            y = self.heads[str(d)](self._resize(grid[(0, d)], full_size))
            outs.append(y[..., :h, :w])
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Training: list of all heads' logits. Eval: one tensor (see :meth:`set_mode`)."""
        if self.training:
            return self.forward_heads(x)
        if self.mode == "fast":
            return self.forward_heads(x, [self.fast_depth])[0]
        heads = self.forward_heads(x)
        return heads[0] if len(heads) == 1 else torch.stack(heads).mean(0)

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
        # Not (yet) config keys: read when present so config.py can add them.
        upsample=m.upsample,
        head_kernel=m.head_kernel,
        mode=m.mode,
        fast_depth=m.fast_depth,
        pretrained=bool(load_weights and m.pretrained and not m.weights),
    )
    if load_weights and m.weights:
        load_encoder_weights(model.encoder, m.weights)
    return model
