"""Anyone's microscopy images: find them, read them, pick the nuclear channel, normalise.

:func:`collect_inputs` turns command-line inputs (files, folders searched recursively,
glob patterns, Kaggle stages as a folder or zip) into :class:`ImageSource` items, each
with a relative output name. :func:`read_image_file` reads PNG, JPEG, BMP and TIFF
(8/16-bit, float, gray or RGB, channel-first or channel-last, 2-D OME-TIFF) into an
``H x W x C`` array in the file's own dtype; :func:`select_channels` picks the nuclear
channel; :func:`to_model_uint8` makes the ``H x W x 3`` uint8 image the model sees.

>>> import numpy as np
>>> to_model_uint8(np.array([[0, 4095]], np.uint16)[..., None]).shape
(1, 2, 3)
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from dsb.errors import DataError
from dsb.data.kaggle import open_stage
from dsb.data.kaggle import sixteen_bit_scale

__all__ = ["IMAGE_SUFFIXES", "ImageSource", "collect_inputs", "read_image_file", "select_channels",
           "to_model_uint8", "NormalizeMode"]

#: File name endings read as images (case-insensitive).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
NormalizeMode = Literal["auto", "percentile", "none"]
#: Percentiles mapped to 0 and 255 by the percentile normalisation.
PERCENTILES = (1.0, 99.8)
#: Above this many pixels, percentiles are taken on a regular subsample (same result to
#: within a grey level, without a full-size float copy of a huge image).
_PERCENTILE_SAMPLE_PX = 4_000_000


@dataclass(frozen=True)
class ImageSource:
    """One image to segment.

    Attributes
    ----------
    name : str
        Output name relative to the output folder, without suffix (``sub/dir/img``); the
        ``image`` column of the tables.
    describe : str
        Where it comes from, for messages (a path, or ``stage.zip:<id>/images/<id>.png``).
    path : Path or None
        The file, for plain image files.
    stage_path, image_id : Path, str or None
        The Kaggle stage (folder or zip) and image id, for stage images.
    """

    name: str
    describe: str
    path: Path | None = None
    stage_path: Path | None = None
    image_id: str | None = None

    def read(self, stage_cache: dict | None = None) -> np.ndarray:
        """Pixels ``H x W x C`` in the file's dtype (Kaggle stages: uint8 ``H x W x 3``,
        read as ``dsb predict`` reads them)."""
        if self.path is not None:
            return read_image_file(self.path)
        cache = stage_cache if stage_cache is not None else {}
        stage = cache.get(self.stage_path)
        if stage is None:
            stage = cache[self.stage_path] = open_stage(self.stage_path, labels=None)
        return stage.read_image_uint8(self.image_id)


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _stage_sources(path: Path) -> list[ImageSource] | None:
    """The images of a Kaggle stage at ``path``, or None when it is not one."""
    try:
        stage = open_stage(path, labels=None)
    except DataError:
        if path.is_file():
            raise
        return None
    with stage:
        return [ImageSource(name=image_id, describe=stage.describe(image_id), stage_path=path, image_id=image_id)
                for image_id in stage.image_ids]


def collect_inputs(inputs: Sequence[str | os.PathLike]) -> list[ImageSource]:
    """Expand inputs into images, in a stable order, each with a distinct output name.

    Each input is an image file (output name: its stem), a folder (every image file under
    it, recursively; output names keep the path relative to the folder), a glob pattern
    (``"data/*.tif"``, ``"**"`` recursive; names are the stems), a ``.zip`` Kaggle stage,
    or a Kaggle stage folder (``<id>/images/<id>.png``; names are the ImageIds).
    The same file given twice is segmented once.

    Raises
    ------
    DataError
        An input that does not exist or matches nothing, a file that is not an image of a
        known kind, no images at all, or two images that would write the same outputs.
    """
    sources: list[ImageSource] = []
    for raw in inputs:
        text = os.fspath(raw)
        path = Path(text)
        if path.is_file():
            if path.suffix.lower() == ".zip":
                sources.extend(_stage_sources(path) or [])
            elif _is_image(path):
                sources.append(ImageSource(name=_stem(path), describe=str(path), path=path))
            else:
                raise DataError(f"{path}: not an image file dsb segment reads "
                                f"({', '.join(IMAGE_SUFFIXES)}, or a Kaggle stage .zip)")
        elif path.is_dir():
            stage = _stage_sources(path)
            if stage is not None:
                sources.extend(stage)
                continue
            found = sorted(p for p in path.rglob("*") if p.is_file() and _is_image(p))
            if not found:
                raise DataError(f"{path}: no image files in this folder ({', '.join(IMAGE_SUFFIXES)})")
            for p in found:
                rel = p.relative_to(path)
                sources.append(ImageSource(name=(rel.parent / _stem(p)).as_posix(), describe=str(p), path=p))
        elif glob.has_magic(text):
            found = sorted(Path(p) for p in glob.glob(text, recursive=True))
            images = [p for p in found if p.is_file() and _is_image(p)]
            if not images:
                raise DataError(f"{text}: the pattern matches no image files")
            sources.extend(ImageSource(name=_stem(p), describe=str(p), path=p) for p in images)
        else:
            raise DataError(f"{path}: no such file or folder")
    unique: list[ImageSource] = []
    seen_files: set = set()
    by_name: dict[str, ImageSource] = {}
    for src in sources:
        key = (src.path.resolve() if src.path is not None else (src.stage_path.resolve(), src.image_id))
        if key in seen_files:
            continue
        seen_files.add(key)
        other = by_name.get(src.name)
        if other is not None:
            raise DataError(f"{other.describe} and {src.describe} would both write {src.name}_labels.*; "
                            "rename one or segment them into different --out folders")
        by_name[src.name] = src
        unique.append(src)
    if not unique:
        raise DataError("no images to segment")
    return unique


# --------------------------------------------------------------------------- reading


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes = series.axes
            pixels = series.asarray()
    except (tifffile.TiffFileError, ValueError, OSError, IndexError, KeyError, NotImplementedError) as exc:
        raise DataError(f"{path}: not a readable TIFF ({type(exc).__name__}: {exc})") from None
    if len(axes) != pixels.ndim:  # should not happen; fall back to the shape alone
        return _to_hwc(pixels, None, str(path))
    return _to_hwc(pixels, axes, str(path))


def _to_hwc(pixels: np.ndarray, axes: str | None, what: str) -> np.ndarray:
    """``H x W x C`` from an array whose axes are named (tifffile: ``YX``, ``YXS``, ``CYX``,
    ``ZYX``...) or not (then a leading or trailing axis of at most 4 is the channels)."""
    if axes is None:
        keep = [i for i, n in enumerate(pixels.shape) if n != 1] if pixels.ndim > 2 else list(range(pixels.ndim))
        pixels = pixels.reshape([pixels.shape[i] for i in keep]) if pixels.ndim > 2 else pixels
        if pixels.ndim == 2:
            return pixels[..., None]
        if pixels.ndim == 3:
            if pixels.shape[-1] <= 4:
                return pixels
            if pixels.shape[0] <= 4:
                return np.moveaxis(pixels, 0, -1)
        raise DataError(f"{what}: cannot tell the channels of an image of shape {pixels.shape}; "
                        "give a 2-D gray or colour image")
    axes = axes.upper()
    # Drop length-1 axes (an OME-TIFF's T=1, Z=1, C=1).
    squeeze = tuple(i for i, (a, n) in enumerate(zip(axes, pixels.shape)) if n == 1 and a not in "YX")
    pixels = pixels.squeeze(axis=squeeze) if squeeze else pixels
    axes = "".join(a for i, a in enumerate(axes) if i not in squeeze)
    if "Y" not in axes or "X" not in axes:
        raise DataError(f"{what}: no Y and X axes in this TIFF (axes {axes!r}, shape {pixels.shape})")
    others = [a for a in axes if a not in "YX"]
    if len(others) > 1:
        raise DataError(f"{what}: a {pixels.ndim}-D image (axes {axes!r}, shape {pixels.shape}); dsb segment "
                        "works on 2-D images with channels: save one plane (Fiji: Image > Duplicate)")
    if others and others[0] in "ZT":
        kind = "z-stack" if others[0] == "Z" else "time series"
        raise DataError(f"{what}: a {kind} of {pixels.shape[axes.index(others[0])]} planes; dsb segment works "
                        "on 2-D images: save one plane or a projection (Fiji: Image > Stacks > Z Project)")
    order = [axes.index("Y"), axes.index("X")] + ([axes.index(others[0])] if others else [])
    pixels = np.transpose(pixels, order)
    return pixels if pixels.ndim == 3 else pixels[..., None]


def _read_pillow(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode.startswith("I;16"):
                pixels = np.asarray(im).astype(np.uint16)
            elif mode == "I":
                pixels = np.asarray(im)
                if pixels.size and (pixels.min() < 0 or pixels.max() > 65535):
                    pixels = pixels.astype(np.float32)
                else:
                    pixels = pixels.astype(np.uint16)
            elif mode in ("L", "RGB", "F"):
                pixels = np.asarray(im)
            elif mode in ("LA", "RGBA"):
                pixels = np.asarray(im)[..., :-1]
            else:
                pixels = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        size = path.stat().st_size if path.exists() else None
        if size == 0:
            raise DataError(f"{path}: empty file (0 bytes)") from None
        if isinstance(exc, UnidentifiedImageError):
            raise DataError(f"{path}: not a readable {path.suffix.lstrip('.').upper()} image") from None
        raise DataError(f"{path}: not a readable image ({exc})") from None
    return pixels if pixels.ndim == 3 else pixels[..., None]


def read_image_file(path: str | os.PathLike) -> np.ndarray:
    """Pixels of an image file as ``H x W x C`` in the file's own dtype.

    TIFF (``.tif``/``.tiff``, OME-TIFF included) through :mod:`tifffile`, using the file's
    axes (``YXS`` RGB, ``CYX`` channel-first...); PNG, JPEG and BMP through Pillow (an
    alpha channel is dropped, palette images become RGB). Length-1 axes are dropped.

    Raises
    ------
    DataError
        Naming the file: missing, empty, not decodable, or not a 2-D image (a z-stack,
        a time series).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.suffix.lower() in (".tif", ".tiff"):
        pixels = _read_tiff(path)
    else:
        pixels = _read_pillow(path)
    if pixels.dtype == bool:
        pixels = pixels.astype(np.uint8) * 255
    if pixels.dtype.kind not in "uif":
        raise DataError(f"{path}: unsupported pixel type {pixels.dtype}")
    if pixels.shape[0] < 1 or pixels.shape[1] < 1:
        raise DataError(f"{path}: an empty image (shape {pixels.shape})")
    return pixels


def select_channels(pixels: np.ndarray, channel: int | None, what: str = "image") -> np.ndarray:
    """The channels the model sees: ``H x W x 1`` (gray, or the ``channel``-th) or ``H x W x 3`` (RGB).

    ``channel`` counts from 1, as Fiji does (a gray image ignores it, so one ``--channel``
    serves a folder that mixes gray and multi-channel files). Without it, 1 channel is gray, 3 are RGB
    (stained and brightfield colour images), and 4 are taken as RGB + alpha only for
    8-bit data; any other count needs ``channel``.

    Raises
    ------
    DataError
        ``channel`` out of range, or a multi-channel image without ``channel``.
    """
    n = pixels.shape[-1]
    if channel is not None and n > 1:
        if not 1 <= channel <= n:
            raise DataError(f"{what}: --channel {channel} but the image has {n} channel(s) (count from 1)")
        return pixels[..., channel - 1: channel]
    if n in (1, 3):
        return pixels
    if n == 4 and pixels.dtype == np.uint8:
        return pixels[..., :3]
    raise DataError(f"{what}: {n} channels; choose the nuclear one with --channel N (1..{n})")


def _percentile_range(pixels: np.ndarray, low: float, high: float) -> tuple[float, float]:
    step = max(1, int(np.ceil(np.sqrt(pixels.shape[0] * pixels.shape[1] / _PERCENTILE_SAMPLE_PX))))
    sample = pixels[::step, ::step]
    lo, hi = np.percentile(sample, (low, high))
    return float(lo), float(hi)


def to_model_uint8(pixels: np.ndarray, mode: NormalizeMode = "auto",
                   percentiles: tuple[float, float] = PERCENTILES) -> np.ndarray:
    """The ``H x W x 3`` uint8 image the model sees (gray replicated to three channels).

    Parameters
    ----------
    pixels : ``H x W x 1`` or ``H x W x 3``, any integer or float dtype
    mode : ``"auto"``, ``"percentile"`` or ``"none"``
        ``"percentile"`` maps the image's own ``percentiles`` (default 1 and 99.8, over
        all channels) to 0 and 255, so 10-, 12- or 14-bit data in 16-bit files and float
        images all fill the range. ``"none"`` keeps 8-bit data and divides 16-bit data by
        the full scale of the bits it uses (as the Kaggle reader does), float data must be
        in [0, 1]. ``"auto"`` (default): 8-bit images unchanged (what the model was trained
        on), anything else by percentiles.
    """
    if pixels.ndim != 3 or pixels.shape[-1] not in (1, 3):
        raise ValueError(f"pixels must be H x W x 1 or H x W x 3, got shape {pixels.shape}")
    if mode not in ("auto", "percentile", "none"):
        raise ValueError(f"unknown normalisation {mode!r}; choose auto, percentile or none")
    if pixels.dtype == np.uint8 and mode in ("auto", "none"):
        out = pixels
    elif mode == "none":
        if pixels.dtype == np.uint16:
            scale = sixteen_bit_scale(pixels)
            out = ((pixels.astype(np.uint32) * 255 + scale // 2) // scale).astype(np.uint8)
        elif pixels.dtype.kind == "f":
            out = np.round(np.clip(pixels, 0.0, 1.0) * 255.0).astype(np.uint8)
        else:
            raise ValueError(f"normalisation 'none' cannot scale {pixels.dtype} data; use 'percentile'")
    else:
        lo, hi = _percentile_range(pixels, *percentiles)
        if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
            out = np.zeros(pixels.shape, np.uint8)
        else:
            out = np.empty(pixels.shape, np.uint8)
            # Row blocks: no full-size float copy of a huge image.
            step = max(1, 4_000_000 // max(1, pixels.shape[1] * pixels.shape[2]))
            factor = np.float32(255.0 / (hi - lo))
            for r in range(0, pixels.shape[0], step):
                block = (pixels[r: r + step].astype(np.float32) - np.float32(lo)) * factor
                out[r: r + step] = np.clip(np.round(block), 0, 255).astype(np.uint8)
    if out.shape[-1] == 1:
        out = np.repeat(out, 3, axis=-1)
    return np.ascontiguousarray(out)


def load_for_model(source: ImageSource, channel: int | None, mode: NormalizeMode = "auto",
                   stage_cache: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read ``source``: ``(pixels H x W x C in the file's dtype, model image H x W x 3 uint8)``.

    Errors name the file.
    """
    pixels = source.read(stage_cache)
    try:
        chosen = select_channels(pixels, channel, source.describe)
        return pixels, to_model_uint8(chosen, mode)
    except ValueError as exc:
        raise DataError(f"{source.describe}: {exc}") from None



