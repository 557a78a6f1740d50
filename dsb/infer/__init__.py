"""Prediction: probability maps from trained models, with TTA, tiling and fold ensembles.

- :mod:`dsb.infer.tta`: the 8 dihedral transforms as data, and merging of aligned maps.
- :mod:`dsb.infer.tiling`: overlapping tiles blended with a smooth window.
- :mod:`dsb.infer.predict`: :class:`Predictor`, :func:`load_models`, :func:`iter_predictions`.
- :mod:`dsb.infer.rescale`: a second pass at the scale the image's nuclei want (``infer.rescale_area_px``).
"""

from dsb.infer.predict import Predictor, iter_predictions, load_models, predict_probs
from dsb.infer.tiling import predict_tiled, tile_grid
from dsb.infer.tta import TRANSFORMS, Transform, merge_probs, tta_predict, tta_transforms

__all__ = [
    "Predictor",
    "TRANSFORMS",
    "Transform",
    "iter_predictions",
    "load_models",
    "merge_probs",
    "predict_probs",
    "predict_tiled",
    "tile_grid",
    "tta_predict",
    "tta_transforms",
]
