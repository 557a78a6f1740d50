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
``infer.rescale_area_px`` is 0. The passes that only measure (every one but the pass that
is returned) are made without TTA unless ``infer.rescale_measure_tta`` is ``"same"``: with
d4 that halves the time of a rescaled image at the same mAP on held-out images.

Nuclei far larger than the network's view come out of the first pass as small fragments,
which ask for an upscale (or a too-small downscale) that loses them entirely (stage-1 test
images with a few big, dim nuclei came out empty). So unless the first pass already asks
for about ``rescale_min``, the image is also predicted at ``rescale_min``, and that pass is
kept as it is when it looks like the first pass's fragments made whole
(:func:`fragmented`): its nuclei ``FRAGMENT_RATIO`` (4) times larger, at least half of
``rescale_area_px`` in the shrunk image's pixels, and the first pass's nuclei covering less
than ``FRAGMENT_COVERAGE`` (30%) of them. The last condition tells fragments (specks inside
a big nucleus: 7-19% on the stage-1 test images) from small nuclei that the shrunk pass
merges into clumps (a cluster of 14 small nuclei: 45-47%).

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

import dataclasses
import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from dsb.config import InferConfig, PostprocessConfig
from dsb.postprocess import labels_from_probs

#: A chosen scale this close to 1 keeps the first pass (not worth a second one).
RESCALE_TOLERANCE = 0.1
#: Nuclei seen at ``rescale_min`` this many times larger (median area, on the image's own
#: grid) than at scale 1 may mean the first pass was fragmenting them ...
FRAGMENT_RATIO = 4.0
#: ... when the first pass's nuclei cover less than this fraction of theirs (merged small
#: nuclei are covered far more: the first pass found them whole).
FRAGMENT_COVERAGE = 0.3


def median_area(label_map: np.ndarray) -> float:
    """Median instance area of ``label_map`` in pixels (0.0 when it has none)."""
    areas = np.bincount(np.asarray(label_map).ravel())[1:]
    areas = areas[areas > 0]
    return float(np.median(areas)) if areas.size else 0.0


def fragmented(first: np.ndarray, low: np.ndarray, low_scale: float, area_px: float) -> bool:
    """Whether ``low`` (instances predicted at ``low_scale``, on the image's grid) holds
    whole the nuclei that ``first`` (scale 1) found only as fragments.

    True when ``low``'s median nucleus is at least ``FRAGMENT_RATIO`` times ``first``'s and
    at least ``area_px / 2`` in the shrunk image's pixels, and ``first``'s nuclei cover less
    than ``FRAGMENT_COVERAGE`` of ``low``'s: specks inside big nuclei, not separate small
    nuclei that shrinking merged.

    >>> first = np.zeros((40, 40), np.int32); first[10:13, 10:13] = 1   # a 9 px speck ...
    >>> low = np.zeros((40, 40), np.int32); low[2:22, 2:22] = 1         # ... of a 400 px nucleus
    >>> fragmented(first, low, low_scale=0.5, area_px=150.0)
    True
    >>> first[2:22, 2:22] = 1                                           # the same nucleus whole
    >>> fragmented(first, low, low_scale=0.5, area_px=150.0)
    False
    """
    low_median = median_area(low)
    if low_median == 0.0 or low_median < FRAGMENT_RATIO * median_area(first):
        return False
    if low_median * low_scale**2 < area_px / 2:
        return False
    inside = low > 0
    return bool(np.count_nonzero(first[inside]) < FRAGMENT_COVERAGE * np.count_nonzero(inside))


def choose_scale(label_map: np.ndarray, area_px: float, min_scale: float, max_scale: float) -> float:
    """The scale that brings the median instance area of ``label_map`` to ``area_px``.

    1.0 when there are no instances (nothing to measure).
    """
    median = median_area(label_map)
    if median == 0.0:
        return 1.0
    scale = math.sqrt(area_px / median)
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
    predictor,
    image: np.ndarray,
    channels: Sequence[str],
    post: PostprocessConfig,
    infer: InferConfig,
) -> tuple[np.ndarray, float]:
    """Probabilities (``K x H x W``, on ``image``'s grid) and the scale they were predicted at.

    ``predictor`` is a :class:`dsb.infer.Predictor`; ``image`` is ``H x W x C`` float in
    [0, 1]. With ``infer.rescale_area_px == 0`` this is one ``predictor.predict(image)``.
    With ``infer.rescale_measure_tta == "none"`` the passes that only measure the nuclei's
    size (the first one, the shrunk one, all but the last rescaled one) are made by
    ``predictor.scout()`` (the same models without TTA; predictors without ``scout`` measure
    themselves), and ``predictor`` makes only the pass that is returned: with d4 TTA every
    measuring pass would cost eight forward passes. When the returned pass is at a scale the
    scout has measured at, its identity view is the scout's and only the other views are
    predicted (``predictor.rest()``, mean merge): seven of d4's eight.
    """
    if not infer.rescale_area_px:
        return predictor.predict(image), 1.0
    measure_alone = infer.rescale_measure_tta == "none" and hasattr(predictor, "scout")
    scout = predictor.scout() if measure_alone else predictor
    # The scout's predictions, by scale, when they are also the predictor's (nothing to redo):
    # the first pass's and the latest one's, the only ones that can be returned.
    reusable: dict[float, np.ndarray] = {}

    # Otherwise the scout's predictions are the identity view of the predictor's TTA at that
    # scale: the final pass then makes only the other views (Predictor.rest).
    rest = predictor.rest() if scout is not predictor and hasattr(predictor, "rest") else None

    def scouted(scale: float) -> np.ndarray:
        probs = predict_at_scale(scout, image, scale)
        if scout is predictor or rest is not None:
            for older in [s for s in reusable if s != 1.0]:
                del reusable[older]
            reusable[scale] = probs
        return probs

    def final(scale: float) -> tuple[np.ndarray, float]:
        probs = reusable.get(scale)
        if probs is None:
            return predict_at_scale(predictor, image, scale), scale
        if scout is predictor:
            return probs, scale
        n_views = len(predictor.transforms)
        others = predict_at_scale(rest, image, scale)
        others *= (n_views - 1) / n_views
        others += probs / n_views
        return others, scale

    # Sizes are measured on the nuclei as the network draws them, not as postprocess.expand_px
    # grows them to match annotations drawn wider (that growth comes after the choice of scale).
    post = dataclasses.replace(post, expand_px=0.0)

    def wanted_scale(p: np.ndarray) -> float:  # probabilities are on the image's own grid: areas in its pixels
        return choose_scale(labels_from_probs(p, channels, post), infer.rescale_area_px,
                            infer.rescale_min, infer.rescale_max)

    first = labels_from_probs(scouted(1.0), channels, post)
    scale = 1.0
    wanted = choose_scale(first, infer.rescale_area_px, infer.rescale_min, infer.rescale_max)
    if infer.rescale_min < 1.0 and (not first.any() or wanted > infer.rescale_min * (1.0 + RESCALE_TOLERANCE)):
        # The first pass's instances (or none) may be fragments of nuclei too large for the
        # network to see whole (on stage-1 test images with a few big dim nuclei, specks
        # that the rescaled pass then lost entirely). Look at the image shrunk as far as
        # allowed: kept as it is if it holds them whole (re-measuring on partly fragmented
        # nuclei drifts back up).
        low = scouted(infer.rescale_min)
        if fragmented(first, labels_from_probs(low, channels, post), infer.rescale_min, infer.rescale_area_px):
            return final(infer.rescale_min)
    passes = max(1, infer.rescale_passes)
    for done in range(1, passes + 1):
        if abs(wanted - scale) < RESCALE_TOLERANCE * scale:
            break
        scale = wanted
        if done < passes:  # measured again; the last pass is only predicted
            wanted = wanted_scale(scouted(scale))
    return final(scale)
