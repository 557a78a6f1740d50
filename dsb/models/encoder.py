"""Encoders: timm backbones, built and run through timm's public feature API only.

The encoder is timm's own network (``timm.create_model(name)``), pruned after its
``depth``-th feature level with ``prune_intermediate_layers`` (the classifier head and
the stages past that level are removed) and run with ``forward_intermediates``::

    encoder = create_encoder("resnet18", in_channels=3, depth=5)
    feature_channels(encoder, 5)     # [64, 64, 128, 256, 512]
    feature_reductions(encoder, 5)   # [2, 4, 8, 16, 32]
    feats = encoder_features(encoder, x, 3)  # x: B x 3 x H x W -> 3 maps, the first three
    [f.shape for f in feats]         # B x 64 x H/2 x W/2, B x 64 x H/4 x W/4, B x 128 x H/8 x W/8

``encoder_features(..., n)`` stops after the stage of level ``n - 1``: the deeper stages
do not run (the fast inference mode relies on this). The level-``i`` feature is exactly
what ``timm.create_model(name, features_only=True, out_indices=range(depth))`` returns at
index ``i``. The network is used unwrapped, so its state-dict keys are timm's own
(``conv1.weight``, ``layer1.0.bn1.bias`` ...), the same keys the ``features_only`` wrappers
of earlier dsb versions had for ResNets and EfficientNets at full depth;
:func:`upgrade_encoder_state` maps the keys that differed (flattened ``stem_0``-style
names, never-used stages past the deepest level) so older checkpoints still load.
"""

from __future__ import annotations

import urllib.error
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file as load_safetensors
from timm.models import FeatureInfo, adapt_input_conv
from torch import nn

from dsb.errors import CheckpointError, ConfigError

try:  # old/new huggingface_hub layouts
    from huggingface_hub import errors as _hf_errors

    _HF_NETWORK_ERRORS: tuple[type, ...] = (_hf_errors.LocalEntryNotFoundError, _hf_errors.OfflineModeIsEnabled)
except (ImportError, AttributeError):  # pragma: no cover
    _HF_NETWORK_ERRORS = ()

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "create_encoder",
    "encoder_features",
    "feature_channels",
    "feature_reductions",
    "load_encoder_weights",
    "normalisation_stats",
    "upgrade_encoder_state",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Parameter-name prefixes of timm classifier heads, never used by the pruned encoder.
_CLASSIFIER_PREFIXES = ("fc.", "classifier.", "head.", "head_", "conv_head.", "bn2.", "last_linear.", "norm_pre.")


def _feature_info(encoder: nn.Module, depth: int) -> FeatureInfo:
    return FeatureInfo(encoder.feature_info, tuple(range(depth)))


def feature_channels(encoder: nn.Module, depth: int) -> list[int]:
    """Channels of the first ``depth`` feature levels (timm's ``feature_info``)."""
    return list(_feature_info(encoder, depth).channels())


def feature_reductions(encoder: nn.Module, depth: int) -> list[int]:
    """Strides of the first ``depth`` feature levels w.r.t. the input, e.g. ``[2, 4, 8, 16, 32]``."""
    return list(_feature_info(encoder, depth).reduction())


def encoder_features(encoder: nn.Module, x: torch.Tensor, n_levels: int) -> list[torch.Tensor]:
    """The first ``n_levels`` feature maps of ``x`` (``B x C x H x W``), shallowest first.

    Level ``i`` is ``B x feature_channels[i] x H / r_i x W / r_i`` with ``r_i`` its reduction
    (H and W must be multiples of ``r_{n_levels - 1}``). Stages past level ``n_levels - 1``
    are not run (``forward_intermediates(..., stop_early=True)``).
    """
    return encoder.forward_intermediates(x, indices=list(range(n_levels)), stop_early=True, intermediates_only=True)


def normalisation_stats(encoder: nn.Module, in_channels: int) -> tuple[list[float], list[float]]:
    """Per-channel input mean and std the encoder was (pre)trained with (ImageNet's if
    timm has none). Grey input on an RGB encoder gets the channel average."""
    pcfg = getattr(encoder, "pretrained_cfg", None) or {}
    mean = list(pcfg.get("mean") or IMAGENET_MEAN)
    std = list(pcfg.get("std") or IMAGENET_STD)
    if len(mean) != in_channels:
        mean = [sum(mean) / len(mean)] * in_channels
        std = [sum(std) / len(std)] * in_channels
    return mean, std


def _is_network_error(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or its cause chain) looks like a failed download."""
    net_types = (urllib.error.URLError, ConnectionError, TimeoutError, OSError) + _HF_NETWORK_ERRORS
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, net_types) or type(exc).__module__.startswith(("requests", "httpx", "urllib3")):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _download_error(name: str, exc: BaseException) -> CheckpointError:
    return CheckpointError(
        f"model.pretrained: could not download pretrained weights for encoder {name!r} "
        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no network'}). "
        "This machine seems to be offline. Either point model.weights: PATH at a local "
        "encoder weights file (.pth/.pt/.safetensors, e.g. a timm checkpoint), or set "
        "model.pretrained: false to train from scratch."
    )


def _create_network(name: str, in_channels: int, depth: int, pretrained: bool) -> nn.Module:
    try:
        net = timm.create_model(name, pretrained=pretrained, in_chans=in_channels)
    except Exception as exc:
        if pretrained:  # the architecture itself was built without weights first
            if _is_network_error(exc):
                raise _download_error(name, exc) from None
            raise CheckpointError(
                f"model.pretrained: timm could not load pretrained weights for {name!r} "
                f"({type(exc).__name__}: {exc}); set model.weights: PATH or model.pretrained: false"
            ) from None
        raise ConfigError(f"model.encoder: timm cannot build {name!r}: {exc}") from None
    if not hasattr(net, "forward_intermediates") or not hasattr(net, "prune_intermediate_layers"):
        raise ConfigError(
            f"model.encoder: timm's {name!r} has no forward_intermediates/prune_intermediate_layers "
            f"(timm {timm.__version__}); choose another encoder"
        )
    levels = len(net.feature_info)
    if levels < depth:
        info = FeatureInfo(net.feature_info, tuple(range(levels)))
        raise ConfigError(
            f"model.encoder_depth: encoder {name!r} has {levels} feature levels "
            f"(reductions {info.reduction()}), fewer than encoder_depth={depth}; "
            f"set model.encoder_depth: {levels}, give {levels} model.decoder_channels and keep "
            f"model.fast_depth <= {levels - 1}"
        )
    net.prune_intermediate_layers(list(range(depth)), prune_norm=True, prune_head=True)
    return net


def create_encoder(name: str, in_channels: int = 3, depth: int = 5, pretrained: bool = False) -> nn.Module:
    """timm's ``name`` network with ``in_channels`` inputs, pruned after feature level ``depth - 1``.

    Run it with :func:`encoder_features`; its levels are described by
    :func:`feature_channels` and :func:`feature_reductions`.

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
    net = _create_network(name, in_channels, depth, pretrained=False)
    if pretrained:  # checked without weights first, so a bad depth is not reported as a download failure
        net = _create_network(name, in_channels, depth, pretrained=True)
    return net


def upgrade_encoder_state(
    state: Mapping[str, torch.Tensor], own_keys: Iterable[str], prefix: str = ""
) -> dict[str, torch.Tensor]:
    """Map encoder weights saved by earlier dsb versions onto the current encoder's keys.

    Earlier versions used timm's ``features_only`` wrappers, whose keys differ from the
    network's own in two ways: nested ``nn.Sequential`` children were flattened
    (``stem_0.weight`` for ``stem.0.weight``; ConvNeXt, ...), and some wrappers kept
    stages past the deepest feature level that never ran into an output
    (EfficientNet/MobileNet below full depth). Renames apply when the new name is one of
    ``own_keys``; the unused extra keys are dropped only when every one of ``own_keys``
    is then present (otherwise they are left for a strict load to report). Keys outside
    ``prefix`` are returned unchanged. Returns a new dict.
    """
    own = set(own_keys)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith(prefix) and key not in own:
            rel = key[len(prefix) :]
            first, _, rest = rel.partition(".")
            for i, ch in enumerate(first):
                if ch == "_" and f"{prefix}{first[:i]}.{first[i + 1:]}.{rest}" in own:
                    key = f"{prefix}{first[:i]}.{first[i + 1:]}.{rest}"
                    break
        out[key] = value
    extra = [k for k in out if k.startswith(prefix) and k not in own]
    if extra and all(k in out for k in own if not k.endswith("num_batches_tracked")):
        for key in extra:
            del out[key]
    return out


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: encoder weights file not found (model.weights)")
    try:
        if path.suffix == ".safetensors":
            state = load_safetensors(str(path), device="cpu")
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
    """Load a local weights file into an encoder made by :func:`create_encoder`.

    Accepts a timm/torchvision-style state dict (optionally under ``state_dict``/``model``)
    or a whole dsb checkpoint, whose ``encoder.*`` weights are used (fine-tuning from an
    earlier run). Classifier keys (``fc.*``, ``classifier.*``, ``head.*`` ...) are ignored; a
    first conv trained on 3 channels is adapted to the encoder's ``in_chans`` the way timm
    does. Returns ``{"ignored": [...], "unexpected": [...]}``; unexpected keys that are not
    classifier keys also raise a warning.

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
        state = upgrade_encoder_state(state, own.keys())
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
