"""Training samples: images and label maps in memory, albumentations, targets, torch.

The label map (not the targets) goes through the augmentation, with nearest-neighbour
interpolation, and the targets (body, border, touching) are computed from the augmented
label map, so borders stay exactly one border wide whatever the scale or distortion.

Every sample is a pure function of ``(seed, epoch, index)``: the image it draws from and
its augmentation's random state both derive from those numbers, so a resumed run sees
the very same data order and augmentations as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from dsb.config import AugmentConfig, TargetsConfig
from dsb.data.imagetypes import is_light_background
from dsb.data.targets import make_targets as default_make_targets


@dataclass
class Sample:
    """One training image: ``image`` uint8 (H, W, 3), ``label_map`` int32 (H, W)."""

    image_id: str
    image: np.ndarray
    label_map: np.ndarray
    image_type: str


def prepare_image(image: np.ndarray, invert_light_background: bool) -> np.ndarray:
    """Model-side preprocessing shared by training and inference.

    With ``invert_light_background``, brightfield-like images (dark nuclei on a light
    background) are inverted so they look like fluorescence. Works on uint8 (255 - x)
    and on float images in [0, 1] (1 - x).
    """
    if not invert_light_background:
        return image
    as_float = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image
    if not is_light_background(as_float):
        return image
    return (255 - image) if image.dtype == np.uint8 else (1.0 - image).astype(image.dtype)


def build_augmentation(cfg: AugmentConfig, train: bool = True) -> A.Compose:
    """The albumentations pipeline of a config section (uint8 image + int32 label map)."""
    crop = cfg.crop_px
    if not train:
        return A.Compose([A.PadIfNeeded(crop, crop, border_mode=cv2.BORDER_REFLECT_101), A.CenterCrop(crop, crop)])
    steps: list = [
        A.Affine(
            scale=(cfg.scale_min, cfg.scale_max),
            rotate=(-cfg.rotate_deg, cfg.rotate_deg),
            interpolation=cv2.INTER_LINEAR,
            mask_interpolation=cv2.INTER_NEAREST,
            border_mode=cv2.BORDER_REFLECT_101,
            p=max(cfg.p_rotate, 0.5 if (cfg.scale_min, cfg.scale_max) != (1.0, 1.0) else 0.0),
        ),
        A.PadIfNeeded(crop, crop, border_mode=cv2.BORDER_REFLECT_101),
        A.RandomCrop(crop, crop),
    ]
    if cfg.flips:
        steps += [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)]
    if cfg.rotate90:
        steps.append(A.RandomRotate90(p=0.5))
    distortions = []
    if cfg.p_elastic > 0:
        distortions.append(A.ElasticTransform(alpha=30, sigma=6, mask_interpolation=cv2.INTER_NEAREST, p=cfg.p_elastic))
    if cfg.p_grid_distortion > 0:
        distortions.append(A.GridDistortion(mask_interpolation=cv2.INTER_NEAREST, p=cfg.p_grid_distortion))
    steps += distortions
    optional = [
        (cfg.p_clahe, lambda p: A.CLAHE(p=p)),
        (cfg.p_gamma, lambda p: A.RandomGamma(p=p)),
        (cfg.p_brightness_contrast, lambda p: A.RandomBrightnessContrast(p=p)),
        (cfg.p_hue_saturation, lambda p: A.HueSaturationValue(p=p)),
        (cfg.p_noise, lambda p: A.GaussNoise(std_range=(0.01, 0.05), p=p)),
        (cfg.p_invert, lambda p: A.InvertImg(p=p)),
        (cfg.p_channel_shuffle, lambda p: A.ChannelShuffle(p=p)),
        (cfg.p_gray, lambda p: A.ToGray(p=p)),
        (cfg.p_blur, lambda p: A.GaussianBlur(blur_limit=(3, 5), p=p)),
        (cfg.p_color_jitter, lambda p: A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.5, hue=0.1, p=p)),
    ]
    steps += [make(p) for p, make in optional if p > 0]
    return A.Compose(steps)


def balanced_weights(groups: Sequence[str], image_types: Sequence[str]) -> np.ndarray:
    """Sampling weights that balance experiment groups and image types.

    Each image weighs ``1 / sqrt(n_group)`` (a group of 100 near-identical fields counts ten
    times one image, not a hundred); the weights of each image type are then scaled so the
    type's share is proportional to ``sqrt(n_type)``. Returns weights summing to 1.

    >>> w = balanced_weights(["a", "a", "a", "a", "b"], ["x"] * 4 + ["y"])
    >>> [round(float(v), 3) for v in w]
    [0.167, 0.167, 0.167, 0.167, 0.333]
    """
    groups, image_types = list(groups), list(image_types)
    group_n = {g: groups.count(g) for g in set(groups)}
    weights = np.array([1.0 / np.sqrt(group_n[g]) for g in groups])
    for kind in set(image_types):
        members = np.array([t == kind for t in image_types])
        weights[members] *= np.sqrt(members.sum()) / weights[members].sum()
    return weights / weights.sum()


def with_pseudo_weights(weights: Optional[Sequence[float]], n_labelled: int, n_pseudo: int,
                        share: float) -> np.ndarray:
    """Sampling weights of ``n_labelled`` labelled images followed by ``n_pseudo``
    pseudo-labelled ones: the pseudo-labelled images draw ``share`` of the crops, evenly, and
    the labelled ones the rest in proportion to ``weights`` (None: evenly). Sums to 1.

    >>> [round(float(v), 3) for v in with_pseudo_weights([1, 3], 2, 2, 0.2)]
    [0.2, 0.6, 0.1, 0.1]
    """
    labelled = np.full(n_labelled, 1.0) if weights is None else np.asarray(weights, dtype=np.float64)
    if labelled.shape != (n_labelled,) or n_labelled == 0 or n_pseudo == 0 or not 0 < share < 1:
        raise ValueError("with_pseudo_weights: a weight per labelled image, images of both kinds, 0 < share < 1")
    return np.concatenate([(1.0 - share) * labelled / labelled.sum(), np.full(n_pseudo, share / n_pseudo)])


def normalise_sample_size(sample: Sample, scale: float) -> Sample:
    """``sample`` resized by ``scale`` (image bilinear, or area-averaged when shrinking;
    label map nearest-neighbour, so instances keep their ids)."""
    if scale == 1.0:
        return sample
    h, w = sample.label_map.shape
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    interp = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
    image = cv2.resize(sample.image, (nw, nh), interpolation=interp)
    rows = np.minimum(((2 * np.arange(nh) + 1) * h) // (2 * nh), h - 1)  # pixel centres
    cols = np.minimum(((2 * np.arange(nw) + 1) * w) // (2 * nw), w - 1)
    label_map = np.ascontiguousarray(sample.label_map[rows[:, None], cols[None, :]])
    return Sample(sample.image_id, image, label_map, sample.image_type)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed for one sample, stable across processes and runs."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class EpochDataset(Dataset):
    """``length`` augmented crops per epoch, drawn from ``samples``.

    Call :meth:`set_epoch` before each epoch: the image order is a permutation seeded by
    ``(seed, epoch)`` (repeated as needed to fill ``length``), or with ``weights`` a draw
    with replacement in proportion to them, and each crop's
    augmentation is seeded by ``(seed, epoch, index)``. Items are
    ``(image float32 (3, S, S), targets float32 (K, S, S))``, and with ``teacher_maps`` (one
    uint8 ``H x W x K`` map per sample, probabilities x 255) the map's crop as a third,
    float32 ``(K, S, S)`` in [0, 1], cut and moved as the label map is.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        augment: AugmentConfig,
        targets: TargetsConfig,
        length: int,
        seed: int = 0,
        make_targets: Callable | None = None,
        weights: Optional[Sequence[float]] = None,
        teacher_maps: Optional[Sequence[np.ndarray]] = None,
    ) -> None:
        if not samples:
            raise ValueError("no training samples")
        self.samples = list(samples)
        if teacher_maps is not None:
            teacher_maps = list(teacher_maps)
            if len(teacher_maps) != len(self.samples) or any(
                m.shape[:2] != s.label_map.shape or m.ndim != 3 or m.dtype != np.uint8
                for m, s in zip(teacher_maps, self.samples)
            ):
                raise ValueError("teacher_maps: one uint8 H x W x K map per sample, of the sample's size")
        self.teacher_maps = teacher_maps
        if weights is not None:
            weights = np.asarray(weights, dtype=np.float64)
            if weights.shape != (len(self.samples),) or not np.all(weights >= 0) or weights.sum() <= 0:
                raise ValueError("weights: one non-negative weight per sample, not all zero")
            weights = weights / weights.sum()
        self.weights = weights
        self.augment_cfg = augment
        self.targets_cfg = targets
        self.length = int(length)
        self.seed = int(seed)
        self.transform = build_augmentation(augment, train=True)
        if teacher_maps is not None:  # cropped and moved with the label map (nearest-neighbour)
            self.transform.add_targets({"teacher": "mask"})
        self._make_targets = make_targets if make_targets is not None else default_make_targets
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        rng = np.random.default_rng([self.seed, self.epoch])
        if self.weights is not None:
            self.order = rng.choice(len(self.samples), size=self.length, replace=True, p=self.weights)
            return
        reps = -(-self.length // len(self.samples))
        self.order = np.concatenate([rng.permutation(len(self.samples)) for _ in range(reps)])[: self.length]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        which = int(self.order[index])
        sample = self.samples[which]
        self.transform.set_random_seed(sample_seed(self.seed, self.epoch, index))
        if self.teacher_maps is None:
            out = self.transform(image=sample.image, mask=sample.label_map)
        else:
            out = self.transform(image=sample.image, mask=sample.label_map, teacher=self.teacher_maps[which])
        targets = self._make_targets(
            np.ascontiguousarray(out["mask"]).astype(np.int32, copy=False),
            self.targets_cfg.channels,
            border_px=self.targets_cfg.border_px,
            touching_px=self.targets_cfg.touching_px,
        )
        image = torch.from_numpy(np.ascontiguousarray(out["image"]).transpose(2, 0, 1).astype(np.float32) / 255.0)
        targets = torch.from_numpy(np.ascontiguousarray(targets, dtype=np.float32))
        if self.teacher_maps is None:
            return image, targets
        taught = np.ascontiguousarray(out["teacher"]).transpose(2, 0, 1).astype(np.float32) / 255.0
        return image, targets, torch.from_numpy(taught)
