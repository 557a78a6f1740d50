"""U-Net++ models on timm encoders (:mod:`dsb.models.unetpp`) and checkpoints
(:mod:`dsb.models.checkpoint`)."""

from dsb.models.checkpoint import load_checkpoint, load_model, save_checkpoint
from dsb.models.unetpp import DsbUNetPlusPlus, build_model, load_encoder_weights

__all__ = [
    "DsbUNetPlusPlus",
    "build_model",
    "load_encoder_weights",
    "save_checkpoint",
    "load_checkpoint",
    "load_model",
]
