"""Checkpoints that are enough on their own to rebuild and run a model.

A checkpoint is a ``torch.save`` dict (read back with ``weights_only=True``, so loading
never runs pickled code)::

    {
        "format": "dsb-checkpoint",
        "format_version": 1,
        "dsb_version": "0.1.0",
        "torch_version": "2.x",
        "half": False,            # floating weights stored as fp16
        "config": {...},          # Config.to_dict(): the resolved config
        "model": {...},           # the model's state dict
        "extra": {...},           # epoch, metrics, optimizer state, ... (plain types)
    }

Example::

    save_checkpoint("runs/x/fold0/best.pt", model, cfg, epoch=12, val_map=0.41)
    model, cfg, meta = load_model("runs/x/fold0/best.pt")  # eval mode, cfg's inference mode
    meta["epoch"]  # 12
"""

from __future__ import annotations

import datetime
import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import dsb
from dsb.config import Config, config_from_dict
from dsb.errors import CheckpointError, ConfigError
from dsb.models.unetpp import build_model
from dsb.utils import atomic_write

__all__ = ["FORMAT_VERSION", "save_checkpoint", "load_checkpoint", "load_model"]

FORMAT = "dsb-checkpoint"
FORMAT_VERSION = 1
_RESERVED = {"format", "format_version", "dsb_version", "torch_version", "half", "created", "path"}


def _plain(value: Any) -> Any:
    """Make ``extra`` loadable with ``weights_only=True``: numpy -> Python/tensors, Paths -> str."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, Path) or (isinstance(value, str) and type(value) is not str):
        return str(value)  # e.g. torch.__version__ is a str subclass that weights_only refuses
    return value


def _skeleton(value: Any) -> Any:
    """``value`` with every tensor replaced by an empty one: same types, no bytes to copy."""
    if isinstance(value, torch.Tensor):
        return torch.empty(0, dtype=value.dtype)
    if isinstance(value, dict):
        return {k: _skeleton(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_skeleton(v) for v in value)
    return value


def _check_loadable(extra: dict[str, Any]) -> None:
    """Fail at save time, not months later at load time, on values weights_only refuses."""
    buffer = io.BytesIO()
    try:
        torch.save(_skeleton(extra), buffer)
        buffer.seek(0)
        torch.load(buffer, weights_only=True)
    except Exception as exc:
        raise ValueError(
            "save_checkpoint: extra values must be plain Python types, tensors or numpy values "
            f"(loadable with torch.load(weights_only=True)): {type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        ) from None


def _unwrap(model: nn.Module) -> nn.Module:
    # DistributedDataParallel/DataParallel (.module) and torch.compile (._orig_mod).
    for attr in ("module", "_orig_mod"):
        while isinstance(getattr(model, attr, None), nn.Module):
            model = getattr(model, attr)
    return model


def save_checkpoint(path: str | Path, model: nn.Module, cfg: Config, *, half: bool = False, **extra: Any) -> Path:
    """Write ``model``'s weights and ``cfg`` to ``path`` atomically; return the path.

    Parameters
    ----------
    path : file to write (parent folders are created). A crash mid-write leaves any
        previous file intact.
    model : the model (DDP/compiled wrappers are unwrapped).
    cfg : the resolved config the model was built from.
    half : store floating-point weights as fp16 (about half the size, for shipping);
        they are upcast to fp32 on load.
    **extra : anything else to keep (epoch, metrics, optimizer/scheduler state ...), as
        plain Python types, tensors or numpy values.
    """
    clash = _RESERVED & set(extra)
    if clash:
        raise ValueError(f"save_checkpoint: extra keys {sorted(clash)} are reserved")
    extra = _plain(extra)
    _check_loadable(extra)
    state = {
        k: (v.detach().to("cpu", torch.float16) if half and v.is_floating_point() else v.detach().to("cpu"))
        for k, v in _unwrap(model).state_dict().items()
    }
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "dsb_version": dsb.__version__,
        "torch_version": str(torch.__version__),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "half": bool(half),
        "config": cfg.to_dict(),
        "model": state,
        "extra": extra,
    }
    path = Path(path)
    with atomic_write(path, "wb") as fh:
        torch.save(payload, fh)
    return path


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Read and check a checkpoint written by :func:`save_checkpoint`; return its dict.

    Raises
    ------
    CheckpointError
        The file is missing, not a torch file, corrupt, not a dsb checkpoint, or written by
        a newer format version. The message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(
            f"{path}: not a readable checkpoint (corrupt, truncated or not a torch file): "
            f"{type(exc).__name__}: {first}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not a dsb checkpoint (no 'format: {FORMAT}' entry); "
            "for bare encoder weights use model.weights instead"
        )
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version!r} is newer than this dsb reads "
            f"({FORMAT_VERSION}); upgrade dsb"
        )
    missing = [k for k in ("config", "model") if not isinstance(payload.get(k), dict)]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {missing}")
    payload.setdefault("extra", {})
    return payload


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, Config, dict[str, Any]]:
    """Rebuild the model stored in a checkpoint; return ``(model, cfg, meta)``.

    The model is rebuilt from the config inside the file (no pretrained download, no
    ``model.weights`` file needed), gets its weights (fp16 ones upcast to fp32; encoder
    keys of checkpoints from before the encoder split are mapped by the model's
    ``load_state_dict``, see :func:`dsb.models.encoder.upgrade_encoder_state`), is moved
    to ``device`` and put in eval mode with the config's inference mode
    (``model.mode`` / ``model.fast_depth``). ``meta`` holds the ``extra`` entries given to
    :func:`save_checkpoint` plus ``format_version``, ``dsb_version``, ``torch_version``,
    ``created``, ``half`` and ``path``.

    Raises
    ------
    CheckpointError
        Unreadable/corrupt file, or a config/weights that do not fit this dsb's model.
    """
    payload = load_checkpoint(path)
    try:
        cfg = config_from_dict(payload["config"])
    except ConfigError as exc:
        raise CheckpointError(f"{path}: its stored config is not valid for this dsb: {exc}") from None
    try:
        model = build_model(cfg, load_weights=False)
    except ConfigError as exc:
        raise CheckpointError(f"{path}: cannot rebuild its model: {exc}") from None
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in payload["model"].items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:600]
        raise CheckpointError(f"{path}: weights do not match the model its config describes: {detail}") from None
    model.to(device).eval()
    meta = {k: payload.get(k) for k in ("format_version", "dsb_version", "torch_version", "created", "half")}
    meta["path"] = str(path)
    meta.update(payload["extra"])
    return model, cfg, meta
