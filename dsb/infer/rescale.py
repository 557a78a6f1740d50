"""Size-adaptive rescaling: predict each image again at the scale its nuclei want.

Nuclei in the DSB2018 images range from under 50 to over 2,000 pixels, and a network
trained on random 0.7-1.4x rescaled crops finds small ones (a few pixels across, where the
2 px border and touching targets cover most of the nucleus) much worse than large ones.
A first pass at scale 1 gives instances; their median area says how large this image's
nuclei are, and the image is predicted again at

    scale = clip(sqrt(rescale_area_px / median_area), rescale_min, rescale_max)

(bilinear resize), the probabilities resized back to the original grid. Scales within
``RESCALE_TOLERANCE`` (10%) of the current one keep the current pass. With
``infer.rescale_passes > 1`` the area is measured again on the rescaled prediction and the
image re-predicted while the scale still moves by more than that. Off when
``infer.rescale_area_px`` is 0.

On the out-of-fold images the per-image best scale is far from constant (upscaling 2x
lifts images whose nuclei are under 200 px and hurts those over 800 px), which is why the
scale is chosen per image rather than as a fixed multi-scale TTA; see
``benchmarks/research/tta_gain.py --rescale-area`` for the measured gain.

>>> import numpy as np
>>> labels = np.zeros((64, 64), np.int32)
>>> labels[:5, :10] = 1; labels[10:15, :10] = 2   # two 50 px nuclei
>>> choose_scale(labels, area_px=200.0, min_scale=1.0, max_scale=3.0)
2.0
>>> choose_scale(np.zeros((8, 8), np.int32), area_px=200.0, min_scale=1.0, max_scale=3.0)
1.0
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from dsb.config import InferConfig, PostprocessConfig
from dsb.postprocess import labels_from_probs

#: A chosen scale this close to 1 keeps the first pass (not worth a second one).
RESCALE_TOLERANCE = 0.1


def choose_scale(label_map: np.ndarray, area_px: float, min_scale: float, max_scale: float) -> float:
    """The scale that brings the median instance area of ``label_map`` to ``area_px``.

    1.0 when there are no instances (nothing to measure).
    """
    areas = np.bincount(np.asarray(label_map).ravel())[1:]
    areas = areas[areas > 0]
    if areas.size == 0:
        return 1.0
    scale = math.sqrt(area_px / float(np.median(areas)))
    return float(min(max(scale, min_scale), max_scale))


def resize_hw(array: np.ndarray, height: int, width: int, channels_last: bool) -> np.ndarray:
    """Bilinear resize of an ``H x W x C`` (``channels_last``) or ``K x H x W`` float array
    (antialiased when shrinking)."""
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    tensor = tensor.permute(2, 0, 1) if channels_last else tensor
    shrink = height < tensor.shape[-2] or width < tensor.shape[-1]
    out = F.interpolate(tensor[None], size=(height, width), mode="bilinear", align_corners=False, antialias=shrink)[0]
    out = out.permute(1, 2, 0) if channels_last else out
    return np.ascontiguousarray(out.numpy())


def predict_at_scale(predictor, image: np.ndarray, scale: float) -> np.ndarray:
    """``K x H x W`` probabilities of ``image`` (``H x W x C`` float) predicted at ``scale``
    and resized back to its grid; ``predictor`` is a :class:`dsb.infer.Predictor`."""
    if scale == 1.0:
        return predictor.predict(image)
    height, width = image.shape[:2]
    resized = resize_hw(image, max(1, round(height * scale)), max(1, round(width * scale)), channels_last=True)
    return resize_hw(predictor.predict(resized), height, width, channels_last=False)


def predict_rescaled(
    predictor, image: np.ndarray, channels: Sequence[str], post: PostprocessConfig, infer: InferConfig
) -> tuple[np.ndarray, float]:
    """Probabilities (``K x H x W``, on ``image``'s grid) and the scale they were predicted at.

    ``predictor`` is a :class:`dsb.infer.Predictor`; ``image`` is ``H x W x C`` float in
    [0, 1]. With ``infer.rescale_area_px == 0`` this is one ``predictor.predict(image)``.
    """
    probs = predictor.predict(image)
    if not infer.rescale_area_px:
        return probs, 1.0
    scale = 1.0
    for _ in range(max(1, infer.rescale_passes)):
        # probabilities are always on the image's own grid, so areas are in its pixels
        wanted = choose_scale(labels_from_probs(probs, channels, post), infer.rescale_area_px,
                              infer.rescale_min, infer.rescale_max)
        if abs(wanted - scale) < RESCALE_TOLERANCE * scale:
            break
        probs, scale = predict_at_scale(predictor, image, wanted), wanted
    return probs, scale
