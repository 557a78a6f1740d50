"""Labelled training images in memory, and their experiment groups.

A :class:`~dsb.data.dataset.Sample` is one image prepared for the model (uint8, light
backgrounds inverted when asked) with its int32 label map and image type. Training,
evaluation and the demo all start from :func:`load_samples`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from dsb.config import DataConfig
from dsb.data.dataset import Sample, prepare_image
from dsb.data.groups import assign_groups
from dsb.data.imagetypes import classify_image
from dsb.data.kaggle import open_stage
from dsb.data.synthetic import generate_samples
from dsb.errors import DataError

__all__ = ["Sample", "load_pseudo_samples", "load_samples", "sample_groups"]


def load_samples(data: DataConfig, invert_light_background: bool) -> list[Sample]:
    """All labelled training images of ``data`` (a Kaggle folder or zip with masks or an
    RLE CSV, or ``synthetic``) in memory: uint8 images, int32 label maps."""
    if data.path == "synthetic":
        items = generate_samples(n=data.synthetic_n, seed=data.synthetic_seed)
    else:
        stage = open_stage(data.path, labels=data.labels)
        if not stage.has_labels:
            raise DataError(f"{data.path}: has no instance labels (masks/ or data.labels CSV)")
        items = _stage_items(stage)
    return _as_samples(items, invert_light_background)


def _stage_items(stage):
    """A stage's labelled images, read lazily as ``(image_id, uint8 image, label map)``."""
    return ((i, stage.read_image_uint8(i), stage.read_label_map(i)) for i in stage.labelled_ids)


def _as_samples(items, invert_light_background: bool) -> list[Sample]:
    """``(image_id, uint8 image, label map)`` items as samples, typed and prepared for the model."""
    samples = []
    for image_id, image, label_map in items:
        image_type = classify_image(image.astype(np.float32) / 255.0)
        samples.append(Sample(image_id, prepare_image(image, invert_light_background), label_map, image_type))
    return samples


def load_pseudo_samples(data: DataConfig, invert_light_background: bool) -> list[Sample]:
    """The pseudo-labelled images of ``data`` (``data.pseudo_path`` with the predicted
    labels of ``data.pseudo_labels``, an RLE CSV) in memory, as :func:`load_samples` loads
    labelled ones; none when ``data.pseudo_path`` is not set."""
    if not data.pseudo_path:
        return []
    stage = open_stage(data.pseudo_path, labels=data.pseudo_labels)
    if not stage.has_labels:
        raise DataError(f"data.pseudo_labels: {data.pseudo_labels} has no row for any image of "
                        f"data.pseudo_path {data.pseudo_path}")
    return _as_samples(_stage_items(stage), invert_light_background)


_GROUP_CACHE: dict = {}


def sample_groups(samples: Sequence[Sample], threshold: float) -> list[str]:
    """The experiment group of each sample (:func:`dsb.data.groups.assign_groups`), cached
    per process for the same images and threshold."""
    key = (tuple(s.image_id for s in samples), float(threshold))
    if key not in _GROUP_CACHE:
        groups = assign_groups([s.image_id for s in samples], [s.image for s in samples],
                               [s.image_type for s in samples], threshold)
        _GROUP_CACHE.clear()
        _GROUP_CACHE[key] = [groups[s.image_id] for s in samples]
    return _GROUP_CACHE[key]
