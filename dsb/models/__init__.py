"""U-Net++ on timm encoders and its checkpoints.

Layout, like segmentation_models_pytorch: :mod:`dsb.models.encoder` (timm networks through
timm's public feature API), :mod:`dsb.models.decoder` (the nested U-Net++ nodes),
:mod:`dsb.models.heads` (full-resolution segmentation heads), :mod:`dsb.models.unetpp`
(the model composing them: normalisation, padding, accurate/fast modes) and
:mod:`dsb.models.checkpoint` (self-contained checkpoints).
"""

from dsb.models.checkpoint import load_checkpoint, load_model, save_checkpoint
from dsb.models.decoder import UNetPlusPlusDecoder
from dsb.models.encoder import create_encoder, encoder_features, load_encoder_weights
from dsb.models.heads import SegmentationHeads
from dsb.models.unetpp import DsbUNetPlusPlus, build_model

__all__ = [
    "DsbUNetPlusPlus",
    "SegmentationHeads",
    "UNetPlusPlusDecoder",
    "build_model",
    "create_encoder",
    "encoder_features",
    "load_checkpoint",
    "load_encoder_weights",
    "load_model",
    "save_checkpoint",
]
