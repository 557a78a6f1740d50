"""Image types of the DSB2018 images, from two numbers: background level and colour.

The competition mixes modalities with very different looks; folds are stratified by
type and light-background images are inverted before training and prediction. The rule:

1. ``background = median over pixels of the channel mean``. Below
   :data:`LIGHT_BACKGROUND` (0.35) the image is **fluorescence**: bright nuclei on a
   dark background (whatever its colour).
2. Otherwise, ``colour = mean over pixels of (max channel - min channel)``. Above
   :data:`COLOUR_SPREAD` (0.02) it is **stained** (H&E-like or purple histology);
   else it is **brightfield**: gray, dark nuclei on a light background.

On the stage-1 data this gives 546 fluorescence, 16 brightfield and 108 stained
training images, and 53 fluorescence and 12 stained test images; the margins are wide
(fluorescence backgrounds are at most 0.21, the others at least 0.51; gray images have a
spread of exactly 0, colour ones at least 0.047).

>>> import numpy as np
>>> classify_image(np.full((8, 8, 3), 0.05, np.float32))
'fluorescence'
>>> classify_image(np.full((8, 8, 3), 0.8, np.float32))
'brightfield'
>>> classify_image(np.tile(np.float32([0.8, 0.5, 0.8]), (8, 8, 1)))
'stained'
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "IMAGE_TYPES",
    "LIGHT_BACKGROUND",
    "COLOUR_SPREAD",
    "background_level",
    "colour_spread",
    "is_light_background",
    "classify_image",
]

#: Every value :func:`classify_image` returns.
IMAGE_TYPES = ("fluorescence", "brightfield", "stained")
#: Median brightness above which the background counts as light.
LIGHT_BACKGROUND = 0.35
#: Mean channel spread above which an image counts as coloured.
COLOUR_SPREAD = 0.02
# Statistics are taken on a regular subsample of at most about this many pixels.
_MAX_PIXELS = 1 << 18


def _as_rgb(image: np.ndarray) -> np.ndarray:
    """A float view ``(h, w, 3)`` in [0, 1], subsampled on a grid for big images."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected an (H, W), (H, W, 3) or (H, W, 4) image, got {image.shape}")
    step = max(1, int(np.ceil(np.sqrt(image.shape[0] * image.shape[1] / _MAX_PIXELS))))
    image = image[::step, ::step, :3]
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    if image.dtype.kind != "f":
        raise ValueError(f"expected float in [0, 1] or uint8, got {image.dtype}")
    return image


def background_level(image: np.ndarray) -> float:
    """Median over pixels of the channel mean: the background's brightness in [0, 1]."""
    return float(np.median(_as_rgb(image).mean(axis=-1)))


def colour_spread(image: np.ndarray) -> float:
    """Mean over pixels of ``max - min`` across channels: 0 for gray images."""
    rgb = _as_rgb(image)
    return float((rgb.max(axis=-1) - rgb.min(axis=-1)).mean())


def is_light_background(image: np.ndarray) -> bool:
    """Whether nuclei are dark on a light background (brightfield, stained).

    Such images are inverted (``1 - image``) before the model sees them, so that every
    modality shows bright nuclei on a dark background.

    Parameters
    ----------
    image : (H, W, 3) float in [0, 1] (uint8 and gray (H, W) are accepted too)
    """
    return background_level(image) > LIGHT_BACKGROUND


def classify_image(image: np.ndarray) -> str:
    """``"fluorescence"``, ``"brightfield"`` or ``"stained"`` by the module's rule.

    Parameters
    ----------
    image : (H, W, 3) float in [0, 1] (uint8 and gray (H, W) are accepted too)
    """
    if not is_light_background(image):
        return "fluorescence"
    return "stained" if colour_spread(image) > COLOUR_SPREAD else "brightfield"
