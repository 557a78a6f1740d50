"""Experiment groups: which training images come from the same experiment.

The DSB2018 images come from a few dozen experiments (a plate, a microscope, a stain, a
magnification), each contributing many near-identical fields of view. Folds that split an
experiment put its twins on both sides, so the out-of-fold score (and every threshold tuned
on it) measures how well the model knows *those* experiments, not how it does on new ones,
which is what a test set is. Grouped folds keep each group on one side.

The grouping is deterministic and uses only the images:

1. Images are first split into blocks by image type (:mod:`dsb.data.imagetypes`) and exact
   size ``(height, width)``: one experiment is one acquisition setting, so one size.
2. Inside a block, each image is described by :func:`image_features`: the channel means and
   spreads, gray-level percentiles, a 16-bin gray histogram and the radial power spectrum of
   the gray image (8 octave-spaced bins: how much structure there is at each scale, so
   nucleus size and density), each standardised over the whole dataset.
3. Average-linkage agglomerative clustering (:class:`sklearn.cluster.AgglomerativeClustering`)
   cuts each block at a Euclidean distance of ``threshold`` in that standardised space.

Groups are named ``<type>-<height>x<width>-<k>`` with ``k`` counted from 0 in order of each
cluster's smallest image id, so the names do not depend on the clustering's label order.
Five toy images of noise, three dark and two bright (standardised over five images only,
their features lie further apart than a real dataset's, hence a wider threshold):

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> dark = [rng.integers(0, 40, (32, 32, 3), dtype=np.uint8) for _ in range(3)]
>>> bright = [rng.integers(200, 255, (32, 32, 3), dtype=np.uint8) for _ in range(2)]
>>> ids = ["a", "b", "c", "d", "e"]
>>> groups = assign_groups(ids, dark + bright, ["fluorescence"] * 5, threshold=6.0)
>>> groups["a"] == groups["b"] == groups["c"], groups["d"] == groups["e"], groups["a"] == groups["d"]
(True, True, False)
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import numpy as np

from dsb.data.dataset import prepare_image
from dsb.data.imagetypes import classify_image

__all__ = ["DEFAULT_THRESHOLD", "image_features", "assign_groups"]

#: Distance (in dataset-standardised feature units) at which clusters stop merging.
DEFAULT_THRESHOLD = 3.0
_HIST_BINS = 16
_SPECTRUM_BINS = 8
_SIDE = 256  # features are taken on a centre-cropped/resized 256 x 256 gray view


def _gray_view(image: np.ndarray) -> np.ndarray:
    """A float gray image in [0, 1] of at most 256 x 256 (centre crop, then subsample)."""
    image = np.asarray(image)
    if image.ndim == 3:
        image = image[..., :3].mean(axis=-1)
    gray = image.astype(np.float32)
    if gray.max(initial=0) > 1.0:
        gray = gray / 255.0
    h, w = gray.shape
    step = max(1, min(h, w) // _SIDE)
    gray = gray[::step, ::step]
    h, w = gray.shape
    side = min(h, w, _SIDE)
    top, left = (h - side) // 2, (w - side) // 2
    return gray[top: top + side, left: left + side]


def _radial_spectrum(gray: np.ndarray) -> np.ndarray:
    """Log power in octave-spaced radial frequency bins, relative to the total."""
    side = gray.shape[0]
    window = np.outer(np.hanning(side), np.hanning(gray.shape[1]))
    power = np.abs(np.fft.fftshift(np.fft.fft2((gray - gray.mean()) * window))) ** 2
    yy, xx = np.indices(power.shape)
    radius = np.hypot(yy - power.shape[0] // 2, xx - power.shape[1] // 2) / (side / 2)
    edges = 0.5 ** np.arange(_SPECTRUM_BINS, -1, -1)  # 1/256 ... 1 of the Nyquist radius
    edges[0] = 0.0
    total = power.sum() + 1e-12
    out = np.empty(_SPECTRUM_BINS, np.float64)
    for i in range(_SPECTRUM_BINS):
        ring = (radius >= edges[i]) & (radius < edges[i + 1])
        out[i] = np.log10(power[ring].sum() / total + 1e-9)
    return out


def image_features(image: np.ndarray) -> np.ndarray:
    """A feature vector of one image (uint8 or float in [0, 1], gray or RGB/RGBA).

    Channel means and standard deviations (6), colour spread (1), gray percentiles 1, 50 and
    99 (3), a 16-bin gray histogram (16, as square roots of frequencies) and the radial
    power spectrum (8).
    """
    rgb = np.asarray(image)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=-1)
    rgb = rgb[..., :3].astype(np.float32)
    if np.asarray(image).dtype == np.uint8:
        rgb = rgb / 255.0
    step = max(1, int(np.sqrt(rgb.shape[0] * rgb.shape[1] / (1 << 16))))
    sub = rgb[::step, ::step].reshape(-1, 3)
    gray = sub.mean(axis=1)
    hist = np.histogram(gray, bins=_HIST_BINS, range=(0.0, 1.0))[0] / max(1, gray.size)
    return np.concatenate([
        sub.mean(axis=0), sub.std(axis=0), [float((sub.max(axis=1) - sub.min(axis=1)).mean())],
        np.percentile(gray, [1, 50, 99]), np.sqrt(hist), _radial_spectrum(_gray_view(rgb)),
    ]).astype(np.float64)


def assign_groups(
    image_ids: Sequence[str],
    images: Sequence[np.ndarray],
    image_types: Sequence[str],
    threshold: float = DEFAULT_THRESHOLD,
) -> dict[str, str]:
    """The experiment group of every image, as ``{image_id: group name}``.

    Parameters
    ----------
    image_ids, images, image_types : one entry per image (images as (H, W[, C]) uint8 or
        float in [0, 1])
    threshold : clusters closer than this (average linkage, standardised features) merge
    """
    from sklearn.cluster import AgglomerativeClustering

    if not (len(image_ids) == len(images) == len(image_types)):
        raise ValueError("image_ids, images and image_types differ in length")
    if not image_ids:
        return {}
    feats = np.stack([image_features(im) for im in images])
    scale = feats.std(axis=0)
    feats = (feats - feats.mean(axis=0)) / np.where(scale > 1e-9, scale, 1.0)
    blocks: dict[tuple, list[int]] = defaultdict(list)
    for i, (im, kind) in enumerate(zip(images, image_types)):
        blocks[(kind, int(np.shape(im)[0]), int(np.shape(im)[1]))].append(i)
    groups: dict[str, str] = {}
    for (kind, h, w), members in sorted(blocks.items()):
        if len(members) == 1:
            labels = np.zeros(1, np.int64)
        else:
            labels = AgglomerativeClustering(
                n_clusters=None, distance_threshold=threshold, linkage="average"
            ).fit_predict(feats[members])
        by_label: dict[int, list[str]] = defaultdict(list)
        for index, label in zip(members, labels):
            by_label[int(label)].append(image_ids[index])
        for k, ids in enumerate(sorted(by_label.values(), key=min)):
            for image_id in ids:
                groups[image_id] = f"{kind}-{h}x{w}-{k}"
    return groups


def stage_groups(stage, threshold: float = DEFAULT_THRESHOLD, invert_light_background: bool = True,
                 progress=None) -> dict[str, dict]:
    """Experiment groups of every image of a Kaggle stage (:func:`dsb.data.kaggle.open_stage`).

    Images are prepared as for training (:func:`dsb.data.dataset.prepare_image`), so the
    groups are the ones training writes to ``folds.csv`` for the same images and threshold.
    Returns ``{image_id: {"group", "image_type", "height", "width"}}``; ``progress`` is called
    with the number of images read.
    """
    ids, images, kinds = [], [], []
    image_ids = stage.labelled_ids if stage.has_labels else stage.image_ids
    for done, image_id in enumerate(image_ids, 1):
        image = stage.read_image_uint8(image_id)
        kinds.append(classify_image(image))
        images.append(prepare_image(image, invert_light_background))
        ids.append(image_id)
        if progress is not None:
            progress(done)
    groups = assign_groups(ids, images, kinds, threshold)
    return {i: {"group": groups[i], "image_type": k, "height": int(im.shape[0]), "width": int(im.shape[1])}
            for i, im, k in zip(ids, images, kinds)}
