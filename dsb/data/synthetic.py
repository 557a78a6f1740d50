"""Synthetic nuclei that look like the competition's, for tests, demos and benchmarks.

Three kinds, as in :data:`dsb.data.imagetypes.IMAGE_TYPES`:

- ``fluorescence``: bright textured blobs on a dark gray background;
- ``brightfield``: dark nuclei on a light gray background;
- ``stained``: H&E-like colour (hematoxylin-purple nuclei on pink/white tissue), made
  with the Beer-Lambert stain model so the colours mix like real stains.

Nuclei are irregular ellipses of random orientation (radius about 2 to 30 px, one
typical size per image), scattered, clustered, and placed against each other: a pixel
claimed by two nuclei keeps the first, so touching pairs share a boundary and the
watershed has work to do. Images get texture, blur, noise and uneven illumination, and
odd sizes (:data:`SHAPES`). Everything is deterministic given the seed; sample ``i`` of
a dataset depends only on ``(seed, i)``, so a smaller ``n`` gives a prefix.

>>> image, label_map = make_sample(np.random.default_rng(0), kind="stained", shape=(64, 96))
>>> image.shape, image.dtype, label_map.dtype
((64, 96, 3), dtype('uint8'), dtype('int32'))
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import numpy as np
from PIL import Image
from scipy import ndimage

from dsb.data.imagetypes import IMAGE_TYPES
from dsb.errors import DataError
from dsb.rle import label_map_to_rows
from dsb.utils import _umask, atomic_write

__all__ = [
    "SHAPES",
    "SyntheticSample",
    "SyntheticDataset",
    "make_sample",
    "sample_id",
    "sample_kind",
    "iter_samples",
    "generate_samples",
    "write_synthetic_dataset",
]

#: Image sizes ``(H, W)`` drawn from; odd ones on purpose (nothing is a multiple of 32).
SHAPES = ((161, 519), (239, 390), (256, 256), (256, 320), (360, 360))
#: Kinds of dataset sample ``i`` cycle through this: half fluorescence, a third
#: stained, a sixth brightfield, so every kind is present from 4 images on.
KIND_CYCLE = ("fluorescence", "stained", "fluorescence", "brightfield", "fluorescence", "stained")
#: Columns of the solution CSV (Kaggle's stage-1 solution format).
SOLUTION_COLUMNS = ("ImageId", "EncodedPixels", "Height", "Width", "Usage")

# Ruifrok & Johnston optical densities of hematoxylin and eosin (RGB, unit length).
_HEMATOXYLIN = np.array([0.650, 0.704, 0.286], np.float32)
_EOSIN = np.array([0.072, 0.990, 0.105], np.float32)
_MIN_AREA_PX = 8
_MAX_NUCLEI = 120


class SyntheticSample(NamedTuple):
    """One synthetic image with its instances: unpacks as ``image_id, image, label_map``.

    Its kind is :func:`sample_kind` of its index (and what
    :func:`~dsb.data.imagetypes.classify_image` says of it).
    """

    image_id: str
    #: (H, W, 3) uint8
    image: np.ndarray
    #: (H, W) int32, 0 = background, nuclei 1..n
    label_map: np.ndarray


@dataclass(frozen=True)
class SyntheticDataset:
    """What :func:`write_synthetic_dataset` wrote."""

    #: The Kaggle-layout folder or zip (open it with :func:`dsb.data.kaggle.open_stage`).
    path: Path
    #: The solution CSV beside it (``ImageId,EncodedPixels,Height,Width,Usage``).
    solution_csv: Path
    #: In generation order (sample index 0..n-1).
    image_ids: tuple[str, ...]
    #: Kind of each image.
    kinds: dict[str, str]
    #: Nuclei of each image.
    n_nuclei: dict[str, int]


# --------------------------------------------------------------------------- geometry


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise, rescaled to zero mean and unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return (field - field.mean()) / (field.std() + 1e-6)


def _nucleus(
    rng: np.random.Generator, radius: float, center: tuple[float, float], shape: tuple[int, int]
) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """An irregular rotated ellipse of area about ``pi * radius**2``, cropped to the image.

    Returns the bounding box and the boolean mask inside it, or None if it falls
    outside the image.
    """
    aspect = rng.uniform(1.0, 1.8)
    semi_a, semi_b = radius * np.sqrt(aspect), radius / np.sqrt(aspect)
    theta = rng.uniform(0.0, np.pi)
    # Low-order harmonics of the boundary radius make the outline irregular.
    orders = np.arange(2, 6)
    amplitudes = rng.normal(0.0, 0.05, orders.size) * (2.0 / orders)
    phases = rng.uniform(0.0, 2 * np.pi, orders.size)
    reach = semi_a * (1.0 + np.abs(amplitudes).sum()) + 1.0
    cy, cx = center
    y0, y1 = max(int(cy - reach), 0), min(int(np.ceil(cy + reach)) + 1, shape[0])
    x0, x1 = max(int(cx - reach), 0), min(int(np.ceil(cx + reach)) + 1, shape[1])
    if y0 >= y1 or x0 >= x1:
        return None
    dy = np.arange(y0, y1, dtype=np.float32)[:, None] - cy
    dx = np.arange(x0, x1, dtype=np.float32)[None, :] - cx
    u = (dx * np.cos(theta) + dy * np.sin(theta)) / semi_a
    v = (-dx * np.sin(theta) + dy * np.cos(theta)) / semi_b
    phi = np.arctan2(v, u)
    boundary = 1.0 + np.cos(phi[..., None] * orders + phases) @ amplitudes.astype(np.float32)
    return (slice(y0, y1), slice(x0, x1)), (u * u + v * v) <= boundary * boundary


def _place_nuclei(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Label map of scattered, clustered and touching nuclei, labels 1..n in paint order."""
    height, width = shape
    typical_radius = float(np.exp(rng.uniform(np.log(4.0), np.log(18.0))))
    coverage = rng.uniform(0.06, 0.25)
    n_target = int(np.clip(coverage * height * width / (np.pi * typical_radius**2), 3, _MAX_NUCLEI))
    clusters = rng.uniform((0, 0), (height, width), size=(rng.integers(0, 4), 2))
    p_touch = rng.uniform(0.15, 0.35)
    label_map = np.zeros(shape, np.int32)
    centers: list[tuple[float, float, float]] = []
    for _ in range(3 * n_target):
        if len(centers) >= n_target:
            break
        radius = float(np.clip(typical_radius * rng.lognormal(0.0, 0.25), 2.0, 30.0))
        draw = rng.random()
        if centers and draw < p_touch:
            # Against an earlier nucleus, a little closer than the sum of radii, so the
            # two overlap slightly and the later one is cut along a shared boundary.
            cy, cx, other = centers[rng.integers(len(centers))]
            angle = rng.uniform(0.0, 2 * np.pi)
            distance = (other + radius) * rng.uniform(0.75, 0.95)
            center = (cy + distance * np.sin(angle), cx + distance * np.cos(angle))
        elif len(clusters) and draw < 0.55:
            cy, cx = clusters[rng.integers(len(clusters))]
            center = (cy + rng.normal(0, 4 * typical_radius), cx + rng.normal(0, 4 * typical_radius))
        else:
            center = (rng.uniform(-radius / 2, height + radius / 2), rng.uniform(-radius / 2, width + radius / 2))
        placed = _nucleus(rng, radius, center, shape)
        if placed is None:
            continue
        box, mask = placed
        region = label_map[box]
        free = mask & (region == 0)
        n_free = int(free.sum())
        # Refuse heavy overlaps (one nucleus hidden behind another) and slivers.
        if n_free < _MIN_AREA_PX or n_free < 0.75 * int(mask.sum()):
            continue
        if n_free < mask.sum():
            # What is left after an overlap may be in pieces: keep the largest.
            pieces, n_pieces = ndimage.label(free)
            if n_pieces > 1:
                free = pieces == np.argmax(np.bincount(pieces.ravel())[1:]) + 1
                if free.sum() < _MIN_AREA_PX:
                    continue
        centers.append((center[0], center[1], radius))
        region[free] = len(centers)
    return label_map


# --------------------------------------------------------------------------- rendering


def _illumination(rng: np.random.Generator, shape: tuple[int, int], strength: float) -> np.ndarray:
    """A smooth multiplicative field around 1: a tilted plane plus a broad bump."""
    height, width = shape
    yy = np.linspace(-0.5, 0.5, height, dtype=np.float32)[:, None]
    xx = np.linspace(-0.5, 0.5, width, dtype=np.float32)[None, :]
    gy, gx = rng.uniform(-strength, strength, 2)
    by, bx = rng.uniform(-0.5, 0.5, 2)
    bump = np.exp(-((yy - by) ** 2 + (xx - bx) ** 2) / (2 * rng.uniform(0.15, 0.4) ** 2))
    return 1.0 + gy * yy + gx * xx + strength * (bump - bump.mean())


def _nucleus_signal(rng: np.random.Generator, label_map: np.ndarray) -> np.ndarray:
    """Float (H, W) in about [0, 1]: per-nucleus level, chromatin texture, soft edges."""
    n = int(label_map.max())
    levels = np.concatenate([[0.0], rng.uniform(0.45, 1.0, n)]).astype(np.float32)
    signal = levels[label_map]
    texture = _smooth_noise(rng, label_map.shape, rng.uniform(0.7, 1.8))
    signal *= np.clip(1.0 + rng.uniform(0.1, 0.3) * texture, 0.3, None)
    return ndimage.gaussian_filter(signal, rng.uniform(0.5, 1.1))


def _render(rng: np.random.Generator, kind: str, label_map: np.ndarray) -> np.ndarray:
    """The (H, W, 3) uint8 image of ``label_map`` in the given kind."""
    shape = label_map.shape
    signal = _nucleus_signal(rng, label_map)
    if kind == "fluorescence":
        illumination = _illumination(rng, shape, 0.4)
        gray = rng.uniform(0.01, 0.08) + rng.uniform(0.3, 0.9) * signal * illumination
        gray += rng.uniform(0.005, 0.025) * rng.standard_normal(shape)
        rgb = np.repeat(gray[..., None], 3, axis=-1)
    elif kind == "brightfield":
        illumination = _illumination(rng, shape, 0.15)
        background = rng.uniform(0.72, 0.9) * (1 + 0.02 * _smooth_noise(rng, shape, 6.0))
        gray = (background - rng.uniform(0.25, 0.55) * signal) * illumination
        gray += rng.uniform(0.005, 0.02) * rng.standard_normal(shape)
        rgb = np.repeat(gray[..., None], 3, axis=-1)
    elif kind == "stained":
        # Optical densities of the two stains add up; transmitted light is exp(-OD).
        tissue = 1.0 / (1.0 + np.exp(-3.0 * _smooth_noise(rng, shape, rng.uniform(8, 20))))
        eosin = rng.uniform(0.05, 0.5) * tissue
        hematoxylin = 0.12 * tissue + rng.uniform(0.9, 2.0) * signal
        density = hematoxylin[..., None] * _HEMATOXYLIN + eosin[..., None] * _EOSIN
        rgb = np.exp(-density) * _illumination(rng, shape, 0.1)[..., None]
        rgb += rng.uniform(0.005, 0.02) * rng.standard_normal(rgb.shape)
    else:
        raise ValueError(f"unknown kind {kind!r}; expected one of {IMAGE_TYPES}")
    return np.round(np.clip(rgb, 0.0, 1.0) * 255).astype(np.uint8)


def make_sample(
    rng: np.random.Generator | int,
    kind: str | None = None,
    shape: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic image and its instances.

    Parameters
    ----------
    rng : numpy Generator (or an int seed)
    kind : one of :data:`~dsb.data.imagetypes.IMAGE_TYPES`; random if None
    shape : ``(H, W)``; one of :data:`SHAPES` at random if None

    Returns
    -------
    image : (H, W, 3) uint8
    label_map : (H, W) int32, nuclei ``1..n`` (at least one), 0 = background
    """
    rng = np.random.default_rng(rng)
    if kind is None:
        kind = str(rng.choice(IMAGE_TYPES, p=(0.6, 0.15, 0.25)))
    elif kind not in IMAGE_TYPES:
        raise ValueError(f"unknown kind {kind!r}; expected one of {IMAGE_TYPES}")
    if shape is None:
        shape = SHAPES[rng.integers(len(SHAPES))]
    shape = (int(shape[0]), int(shape[1]))
    if min(shape) < 8:
        raise ValueError(f"shape must be at least 8x8, got {shape}")
    label_map = _place_nuclei(rng, shape)
    if not label_map.any():  # tiny images: make sure there is one nucleus
        box, mask = _nucleus(rng, min(shape) / 4, (shape[0] / 2, shape[1] / 2), shape)
        label_map[box][mask] = 1
    return _render(rng, kind, label_map), label_map


# --------------------------------------------------------------------------- datasets


def sample_id(seed: int, index: int) -> str:
    """The 64-hex ImageId of sample ``index`` of the dataset made with ``seed``."""
    return hashlib.sha256(f"dsb-synthetic/{seed}/{index}".encode()).hexdigest()


def sample_kind(index: int) -> str:
    """The kind of dataset sample ``index``: :data:`KIND_CYCLE` repeated."""
    return KIND_CYCLE[index % len(KIND_CYCLE)]


def iter_samples(n: int, seed: int = 0) -> Iterator[SyntheticSample]:
    """Yield ``n`` samples; sample ``i`` depends only on ``(seed, i)``.

    Kinds follow :func:`sample_kind`; shapes are drawn from :data:`SHAPES`.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    for index in range(n):
        rng = np.random.default_rng([seed, index])
        image, label_map = make_sample(rng, kind=sample_kind(index))
        yield SyntheticSample(sample_id(seed, index), image, label_map)


def generate_samples(n: int, seed: int = 0) -> list[SyntheticSample]:
    """``n`` samples in memory, as :func:`iter_samples` makes them (training, tests)."""
    return list(iter_samples(n, seed))


def _png_bytes(array: np.ndarray, mode: str) -> bytes:
    buffer = io.BytesIO()
    # Level 1: these PNGs are tiny either way, and it is several times faster.
    Image.fromarray(array).convert(mode).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _sample_files(sample: SyntheticSample, kind: str, masks: bool) -> Iterator[tuple[str, bytes]]:
    """``(relative name, PNG bytes)`` of one sample in the Kaggle layout."""
    image_id = sample.image_id
    # Gray kinds are stored as RGBA (alpha 255) like the training images, colour as RGB
    # like many test images, so readers meet both.
    mode = "RGB" if kind == "stained" else "RGBA"
    yield f"{image_id}/images/{image_id}.png", _png_bytes(sample.image, mode)
    if masks:
        n = int(sample.label_map.max())
        width = max(4, len(str(n)))  # zero-padded, so sorted file order is label order
        for label, box in enumerate(ndimage.find_objects(sample.label_map), start=1):
            if box is None:
                continue
            mask = np.zeros(sample.label_map.shape, np.uint8)
            mask[box][sample.label_map[box] == label] = 255
            yield f"{image_id}/masks/{label:0{width}d}.png", _png_bytes(mask, "L")


def write_synthetic_dataset(
    out: str | os.PathLike,
    n: int = 40,
    seed: int = 0,
    *,
    as_zip: bool | None = None,
    masks: bool = True,
    public_fraction: float = 0.5,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> SyntheticDataset:
    """Write ``n`` synthetic images as a Kaggle stage, plus its solution CSV.

    Layout: ``<id>/images/<id>.png`` (RGBA for gray kinds, RGB for stained) and, with
    ``masks``, ``<id>/masks/<k>.png`` (0/255, one per nucleus, ``k`` zero-padded so
    that sorted order is label order). Without ``masks`` it looks like a test stage.

    The solution CSV is written beside the dataset as ``<name>_solution.csv`` (``name``
    without ``.zip``), in the stage-1 solution format ``ImageId,EncodedPixels,Height,
    Width,Usage``: one row per nucleus in label order, ``Usage`` ``Public`` for the
    first ``round(n * public_fraction)`` samples and ``Private`` for the rest.

    Parameters
    ----------
    out : the folder to create, or the zip (``.zip`` is added when ``as_zip``)
    as_zip : write a zip; None means "if ``out`` ends in ``.zip``"
    overwrite : replace an existing dataset/solution instead of raising DataError
    progress : called with the number of images written so far

    Both files are written atomically (a temporary beside them, then a rename).
    """
    out = Path(out)
    if n < 1:
        raise DataError(f"need at least one image, got n={n}")
    if not 0.0 <= public_fraction <= 1.0:
        raise DataError(f"public_fraction must be in [0, 1], got {public_fraction}")
    if as_zip is None:
        as_zip = out.suffix.lower() == ".zip"
    if as_zip and out.suffix.lower() != ".zip":
        out = out.with_name(out.name + ".zip")
    stem = out.name[: -len(".zip")] if as_zip else out.name
    solution_csv = out.with_name(f"{stem}_solution.csv")
    existing = [p for p in (out, solution_csv) if p.exists()]
    if existing and not overwrite:
        raise DataError(f"{existing[0]} already exists (pass overwrite=True / --overwrite to replace it)")
    if as_zip and out.is_dir():
        raise DataError(f"{out} is a folder; cannot replace it with a zip")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{out}: cannot create its folder {out.parent} ({exc.strerror or exc})") from None

    n_public = int(round(n * public_fraction))
    rows: list[tuple[str, str, int, int, str]] = []
    kinds: dict[str, str] = {}
    n_nuclei: dict[str, int] = {}

    def write_all(put: Callable[[str, bytes], None]) -> None:
        for index, sample in enumerate(iter_samples(n, seed)):
            kind = sample_kind(index)
            for name, data in _sample_files(sample, kind, masks):
                put(name, data)
            height, width = sample.label_map.shape
            usage = "Public" if index < n_public else "Private"
            rows.extend(
                (image_id, rle, height, width, usage)
                for image_id, rle in label_map_to_rows(sample.image_id, sample.label_map)
            )
            kinds[sample.image_id] = kind
            n_nuclei[sample.image_id] = int(sample.label_map.max())
            if progress is not None:
                progress(index + 1)

    if as_zip:

        def put_member(name: str, data: bytes) -> None:
            # A fixed timestamp keeps the zip's bytes a function of the seed alone.
            member = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            member.external_attr = 0o644 << 16
            zf.writestr(member, data)  # stored: PNGs are compressed already

        with atomic_write(out, "wb") as fh, zipfile.ZipFile(fh, "w") as zf:
            write_all(put_member)
    else:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
        try:
            # mkdtemp makes 0700 folders; the dataset gets what mkdir would give (umask).
            os.chmod(tmp, 0o777 & ~_umask())

            def put(name: str, data: bytes) -> None:
                target = tmp / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)

            write_all(put)
            if out.exists():
                shutil.rmtree(out) if out.is_dir() else out.unlink()
            os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    with atomic_write(solution_csv, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(SOLUTION_COLUMNS)
        writer.writerows(rows)
    return SyntheticDataset(out, solution_csv, tuple(kinds), kinds, n_nuclei)
