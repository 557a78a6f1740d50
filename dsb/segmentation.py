"""Segment anyone's microscopy images: label images, ROIs and measurements.

The Python API is one call, :func:`segment`, also reachable as ``dsb.segment`` (imported
lazily, so ``import dsb`` stays light)::

    import dsb
    label_map = dsb.segment(image)                       # H x W (x C) array -> H x W int32
    label_map = dsb.segment(image, channel=2, nucleus_diameter=15)

The same pipeline as ``dsb predict`` (TTA, tiles, fold ensemble, size-adaptive rescaling,
watershed) behind :class:`Segmenter`; :func:`segment_sources` runs it over many images and
writes, per image, ``<name>_labels.tif`` (or ``.png``), optional ImageJ ROIs
(``<name>_rois.zip``), QuPath GeoJSON (``<name>.geojson``) and an outline overlay
(``<name>_overlay.png``); :func:`write_tables` writes ``nuclei.csv`` (one row per nucleus)
and ``summary.csv`` (one row per image). Every file is written atomically.

Scale: the model was trained on nuclei of about ``infer.rescale_area_px`` pixels (600 for
the shipped set, a diameter of ``2 * sqrt(600 / pi)`` = 27.6 px). With
``nucleus_diameter=D`` each image is predicted at ``scale = 27.6 / D`` (clipped to
0.25-4); without it, the size-adaptive rule of :mod:`dsb.infer.rescale` measures the
nuclei in a first pass.

Memory: images up to ``block_px**2`` pixels (default 4096 x 4096) go through exactly what
``dsb predict`` does (probabilities of the whole image, one watershed). Larger images are
segmented in blocks of ``block_px`` with a margin of context on every side (at least
128 px and two nucleus diameters); a nucleus belongs to the block that holds its centroid,
so each is taken once, whole, from a block that saw all of it. Peak memory is then one
block's probabilities plus the image and the int32 label map, whatever the image size.
"""

from __future__ import annotations

import dataclasses
import io
import math
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Optional, Sequence

import numpy as np

from dsb.config import Config, PostprocessConfig
from dsb.data.dataset import prepare_image
from dsb.data.images import _to_hwc, load_for_model, select_channels, to_model_uint8
from dsb.device import dtype_name
from dsb.errors import DataError, DsbError
from dsb.infer.pipeline import load_ensemble, postprocess_for
from dsb.infer.predict import Predictor
from dsb.infer.tta import TTA_MODES
from dsb.infer.rescale import RESCALE_TOLERANCE, choose_scale, predict_at_scale, predict_rescaled
from dsb.postprocess.filter import filtered_labels
from dsb.utils import atomic_write
from dsb.viz import overlay_instances, save_png

__all__ = ["Segmenter", "SegmentOptions", "ImageResult", "segment", "segment_sources", "write_tables",
           "write_label_image", "read_label_image", "instance_outlines", "write_imagej_rois", "write_geojson",
           "measure_nuclei", "output_paths", "gather_results", "DEFAULT_CHECKPOINT"]

#: The shipped checkpoint set used when none is given.
DEFAULT_CHECKPOINT = "unetpp_r18_nostain_full"
#: Nucleus area the model wants when its config names none (infer.rescale_area_px = 0).
DEFAULT_TARGET_AREA_PX = 600.0
#: Images with more pixels than ``block_px ** 2`` are segmented in blocks.
BLOCK_PX = 4096
MIN_MARGIN_PX = 128
SCALE_RANGE = (0.25, 4.0)

LabelFormat = Literal["tif", "png"]
RoiKind = Literal["imagej", "geojson"]


# --------------------------------------------------------------------------- the model


class Segmenter:
    """Images in, label maps out: a :class:`dsb.infer.Predictor` plus the config's
    preprocessing, rescaling and postprocessing.

    Parameters
    ----------
    predictor : :class:`dsb.infer.Predictor`
    cfg : :class:`dsb.config.Config`
        Supplies ``targets.channels``, ``augment.invert_brightfield``, ``postprocess`` and
        ``infer.rescale_*`` (``predictor.infer_cfg`` is used for inference itself).
    """

    def __init__(self, predictor, cfg: Config, instance_filter=None) -> None:
        self.predictor = predictor
        self.cfg = cfg
        #: Applied after the watershed and before ``postprocess.expand_px``, as dsb predict does
        #: (:func:`dsb.postprocess.filter.filtered_labels`).
        self.instance_filter = instance_filter

    def _labels(self, probs: np.ndarray, post: PostprocessConfig) -> np.ndarray:

        return filtered_labels(probs, self.cfg.targets.channels, post, self.instance_filter)

    @classmethod
    def load(
        cls,
        checkpoints: str | Path | Sequence[str | Path] = DEFAULT_CHECKPOINT,
        *,
        device: str = "auto",
        tta: Optional[str] = None,
        rescale_area_px: Optional[float] = None,
        amp: Optional[str] = None,
    ) -> "Segmenter":
        """Load checkpoints as ``dsb predict --checkpoint`` does (files, run folders with their
        tuned postprocessing, shipped set names); ``tta``, ``rescale_area_px`` and ``amp``
        (``infer.amp``: auto, off, bf16, fp16) override the config's."""
        specs = [checkpoints] if isinstance(checkpoints, (str, Path)) else list(checkpoints)
        ensemble = load_ensemble(specs, device=device)  # as dsb predict loads them (tuned thresholds, filter)
        cfg, instance_filter = ensemble.cfg, ensemble.instance_filter
        infer = cfg.infer
        if tta is not None:
            if tta not in TTA_MODES:
                raise DsbError(f"--tta: {tta!r} is not one of {', '.join(TTA_MODES)}")
            infer = dataclasses.replace(infer, tta=tta)
        if rescale_area_px is not None:
            if rescale_area_px < 0:
                raise DsbError(f"--rescale-area: must be >= 0, got {rescale_area_px}")
            infer = dataclasses.replace(infer, rescale_area_px=float(rescale_area_px))
        if amp is not None:
            if amp not in ("auto", "off", "bf16", "fp16"):
                raise DsbError(f"--amp: {amp!r} is not one of auto, off, bf16, fp16")
            infer = dataclasses.replace(infer, amp=amp)
        cfg = dataclasses.replace(cfg, infer=infer)
        return cls(Predictor(ensemble.models, cfg.targets.channels, infer, device=ensemble.device), cfg, instance_filter)

    @property
    def precision(self) -> str:
        """What the model computes in: ``"bf16"``, ``"fp16"`` or ``"fp32"``."""
        return dtype_name(self.predictor.amp_dtype)

    @property
    def target_area_px(self) -> float:
        return float(self.cfg.infer.rescale_area_px or DEFAULT_TARGET_AREA_PX)

    @property
    def target_diameter_px(self) -> float:
        """Diameter of the nuclei the model sees best: ``2 * sqrt(target_area / pi)``."""
        return 2.0 * math.sqrt(self.target_area_px / math.pi)

    def scale_for_diameter(self, nucleus_diameter_px: float) -> float:
        """``target_diameter / nucleus_diameter``, clipped to 0.25-4."""
        if not nucleus_diameter_px or nucleus_diameter_px <= 0 or not math.isfinite(nucleus_diameter_px):
            raise DsbError(f"--nucleus-diameter: must be a positive number of pixels, got {nucleus_diameter_px}")
        return float(min(max(self.target_diameter_px / nucleus_diameter_px, SCALE_RANGE[0]), SCALE_RANGE[1]))

    def label_map(self, image: np.ndarray, nucleus_diameter: Optional[float] = None,
                  block_px: int = BLOCK_PX) -> tuple[np.ndarray, float]:
        """Instances of one image.

        Parameters
        ----------
        image : ``H x W x 3`` uint8 (see :func:`dsb.data.images.to_model_uint8`)
        nucleus_diameter : typical nucleus diameter in pixels; None: measured (first pass)
        block_px : images over ``block_px ** 2`` pixels are done in blocks (module doc)

        Returns
        -------
        (label_map ``H x W`` int32, the scale the image was predicted at)
        """

        if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be H x W x 3 uint8, got {image.shape} {image.dtype}")
        cfg = self.cfg
        channels = cfg.targets.channels
        post = postprocess_for(cfg.postprocess, image)  # its image type's, as dsb predict does
        prepared = prepare_image(image, cfg.augment.invert_brightfield)
        height, width = prepared.shape[:2]
        infer = self.predictor.infer_cfg
        fixed = None if nucleus_diameter is None else self.scale_for_diameter(nucleus_diameter)
        if height * width <= block_px * block_px:
            # Exactly what dsb predict does (predict_stage).
            x = prepared.astype(np.float32) / 255.0
            if fixed is None:
                probs, scale = predict_rescaled(self.predictor, x, channels, post, infer)
            else:
                probs, scale = predict_at_scale(self.predictor, x, fixed), fixed
            return self._labels(probs, post), scale
        if fixed is not None:
            return self._blocks(prepared, fixed, block_px, post), fixed
        labels = self._blocks(prepared, 1.0, block_px, post)
        if not infer.rescale_area_px:
            return labels, 1.0
        scale = choose_scale(labels, infer.rescale_area_px, infer.rescale_min, infer.rescale_max)
        if abs(scale - 1.0) < RESCALE_TOLERANCE:
            return labels, 1.0
        del labels
        return self._blocks(prepared, scale, block_px, post), scale

    def _blocks(self, image: np.ndarray, scale: float, block_px: int, post: PostprocessConfig) -> np.ndarray:
        """Label map of a large prepared uint8 image, block by block (see the module doc)."""

        height, width = image.shape[:2]
        margin = max(MIN_MARGIN_PX, int(math.ceil(2.0 * self.target_diameter_px / scale)))
        out = np.zeros((height, width), np.int32)
        next_id = 1
        for y0 in range(0, height, block_px):
            for x0 in range(0, width, block_px):
                y1, x1 = min(height, y0 + block_px), min(width, x0 + block_px)
                oy0, ox0 = max(0, y0 - margin), max(0, x0 - margin)
                oy1, ox1 = min(height, y1 + margin), min(width, x1 + margin)
                crop = image[oy0:oy1, ox0:ox1].astype(np.float32) / 255.0
                probs = predict_at_scale(self.predictor, crop, scale)
                del crop
                labels = self._labels(probs, post)
                del probs
                n = int(labels.max())
                if n == 0:
                    continue
                rows, cols = np.nonzero(labels)
                lab = labels[rows, cols]
                del labels
                count = np.bincount(lab, minlength=n + 1).astype(np.float64)
                safe = np.maximum(count, 1.0)
                cy = np.bincount(lab, weights=rows, minlength=n + 1) / safe + oy0
                cx = np.bincount(lab, weights=cols, minlength=n + 1) / safe + ox0
                keep = (count > 0) & (cy >= y0) & (cy < y1) & (cx >= x0) & (cx < x1)
                keep[0] = False
                ids = np.zeros(n + 1, np.int32)
                n_keep = int(keep.sum())
                ids[keep] = np.arange(next_id, next_id + n_keep, dtype=np.int32)
                next_id += n_keep
                new = ids[lab]
                sel = new > 0
                gy, gx, values = rows[sel] + oy0, cols[sel] + ox0, new[sel]
                free = out[gy, gx] == 0  # a pixel two blocks both claim keeps the first
                out[gy[free], gx[free]] = values[free]
        # Instances cut down by a neighbour's claim may fall under the minimum area.
        areas = np.bincount(out.ravel(), minlength=next_id)
        keep = areas >= max(post.min_area_px, 1)
        keep[0] = False
        new_ids = (np.cumsum(keep) * keep).astype(np.int32)
        return new_ids[out]


# --------------------------------------------------------------------------- the API

_SEGMENTERS: dict = {}


def _cached_segmenter(checkpoint, device: str, tta: Optional[str]) -> Segmenter:
    specs = (checkpoint,) if isinstance(checkpoint, (str, Path)) else tuple(checkpoint)
    key = (tuple(str(s) for s in specs), device, tta)
    if key not in _SEGMENTERS:
        _SEGMENTERS.clear()  # keep one loaded model set, not all ever used
        _SEGMENTERS[key] = Segmenter.load(specs, device=device, tta=tta)
    return _SEGMENTERS[key]


def segment(
    image: np.ndarray,
    checkpoint: str | Path | Sequence[str | Path] = DEFAULT_CHECKPOINT,
    *,
    channel: Optional[int] = None,
    nucleus_diameter: Optional[float] = None,
    normalize: str = "auto",
    tta: Optional[str] = None,
    device: str = "auto",
    segmenter: Optional[Segmenter] = None,
) -> np.ndarray:
    """Nuclei of one image as a label map.

    Parameters
    ----------
    image : array ``H x W`` (gray), ``H x W x C`` or ``C x H x W`` (C <= 4)
        Any integer or float dtype; intensities are normalised by the image's own range
        (8-bit images are used as they are; see :func:`dsb.data.images.to_model_uint8`).
    checkpoint : a shipped set name (default ``"unetpp_r18_nostain_full"``), a ``.pt`` file or a run
        folder, or several (a fold ensemble). Loaded once and kept for the next call.
    channel : the nuclear channel, counting from 1 (needed for 2 or more than 3 channels)
    nucleus_diameter : typical nucleus diameter in pixels (as Cellpose's ``diameter``);
        None measures it (a first pass)
    normalize : ``"auto"``, ``"percentile"`` or ``"none"``
    tta : ``"none"``, ``"pair"``, ``"flips"`` or ``"d4"`` (default: the checkpoint's, pair for the shipped set)
    device : ``"auto"``, ``"cpu"``, ``"cuda"``...
    segmenter : a :class:`Segmenter` to use instead of ``checkpoint``/``tta``/``device``

    Returns
    -------
    label_map : ``H x W`` int32, 0 background, nuclei ``1..n``

    Example (a user's 3-channel TIFF; 412 nuclei found)::

        import tifffile, dsb
        labels = dsb.segment(tifffile.imread("cells.tif"), channel=3)
        labels.max()   # 412
    """

    array = np.asarray(image)
    if array.ndim not in (2, 3):
        raise DataError(f"image: expected H x W or H x W x C, got shape {array.shape}")
    pixels = _to_hwc(array, None, "image")
    model_image = to_model_uint8(select_channels(pixels, channel, "image"), normalize)  # type: ignore[arg-type]
    seg = segmenter if segmenter is not None else _cached_segmenter(checkpoint, device, tta)
    return seg.label_map(model_image, nucleus_diameter)[0]


# --------------------------------------------------------------------------- outputs


def label_dtype(n_labels: int) -> type:
    """uint16 up to 65,535 nuclei, else uint32."""
    return np.uint16 if n_labels <= np.iinfo(np.uint16).max else np.uint32


def write_label_image(path: str | Path, label_map: np.ndarray, fmt: LabelFormat = "tif") -> Path:
    """Write a label map atomically: ``tif`` (uint16, uint32 above 65,535 nuclei; deflate
    compression, which Fiji, QuPath and napari read) or ``png`` (16-bit gray)."""
    path = Path(path)
    n = int(label_map.max()) if label_map.size else 0
    if fmt == "png":
        from PIL import Image

        if n > np.iinfo(np.uint16).max:
            raise DataError(f"{path}: {n} nuclei do not fit a 16-bit PNG; use --format tif")
        with atomic_write(path, "wb") as fh:
            Image.fromarray(label_map.astype(np.uint16)).save(fh, format="PNG")
        return path
    if fmt != "tif":
        raise ValueError(f"unknown label format {fmt!r}; choose tif or png")
    import tifffile

    buffer = io.BytesIO()  # tifffile wants a named file or a buffer; compressed, label images are small
    tifffile.imwrite(buffer, label_map.astype(label_dtype(n)), compression="zlib", metadata=None,
                     photometric="minisblack")
    with atomic_write(path, "wb") as fh:
        fh.write(buffer.getbuffer())
    return path


def read_label_image(path: str | Path) -> np.ndarray:
    """A label image written by :func:`write_label_image`, as int32 (H, W)."""
    path = Path(path)
    if path.suffix.lower() == ".png":
        from PIL import Image

        with Image.open(path) as im:
            array = np.asarray(im)
    else:
        import tifffile

        array = tifffile.imread(path)
    if array.ndim != 2:
        raise DataError(f"{path}: not a 2-D label image (shape {array.shape})")
    if array.size and int(array.max()) > np.iinfo(np.int32).max:
        raise DataError(f"{path}: labels above 2**31")
    return array.astype(np.int32)


def _drop_collinear(points: np.ndarray) -> np.ndarray:
    """Drop the vertices of an open ring (N x 2) that lie on a straight line between their
    neighbours (marching squares puts one on every pixel edge)."""
    if len(points) < 4:
        return points
    prev = np.roll(points, 1, axis=0)
    nxt = np.roll(points, -1, axis=0)
    cross = (points[:, 0] - prev[:, 0]) * (nxt[:, 1] - prev[:, 1]) - (points[:, 1] - prev[:, 1]) * (nxt[:, 0] - prev[:, 0])
    keep = np.abs(cross) > 1e-9
    return points[keep] if keep.sum() >= 3 else points


def instance_outlines(label_map: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """One closed outline per instance: ``[(label, xy), ...]`` in label order.

    ``xy`` is ``N x 2`` float64 ``(x, y)`` in the pixel-corner coordinates of ImageJ and
    QuPath (pixel ``(row, col)`` covers ``[col, col + 1) x [row, row + 1)``), without
    repeating the first vertex. The outline runs along the instance's pixel edges with the
    corners cut (marching squares at 0.5), so every pixel of the instance has its centre
    inside and every other pixel outside. An instance in several pieces (rare) gets the
    outline of its largest piece; holes are not traced.
    """
    from scipy import ndimage as ndi
    from skimage.measure import find_contours

    outlines = []
    for index, sl in enumerate(ndi.find_objects(label_map)):
        if sl is None:
            continue
        label = index + 1
        mask = np.pad(label_map[sl] == label, 1).astype(np.uint8)
        best, best_area = None, -1.0
        for contour in find_contours(mask, 0.5):
            r, c = contour[:, 0], contour[:, 1]
            area = abs(float(np.dot(c[:-1], r[1:]) - np.dot(c[1:], r[:-1]))) / 2
            if area > best_area:
                best, best_area = contour, area
        if best is None:
            continue
        ring = best[:-1] if np.allclose(best[0], best[-1]) else best
        ring = _drop_collinear(ring)
        xy = np.stack([ring[:, 1] - 1 + sl[1].start + 0.5, ring[:, 0] - 1 + sl[0].start + 0.5], axis=1)
        outlines.append((label, xy))
    return outlines


def write_imagej_rois(path: str | Path, outlines: list[tuple[int, np.ndarray]]) -> Path:
    """An ImageJ/Fiji ROI set (``.zip`` of polygon ``.roi`` files, one per nucleus, named by
    label: ``0001``...), written atomically. Fiji: drag onto the window, or ROI Manager > More > Open."""
    import roifile

    path = Path(path)
    width = max(4, len(str(max((lab for lab, _ in outlines), default=0))))
    with atomic_write(path, "wb") as fh:
        with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for label, xy in outlines:
                name = f"{label:0{width}d}"
                roi = roifile.ImagejRoi.frompoints(xy.astype(np.float32), name=name)
                zf.writestr(f"{name}.roi", roi.tobytes())
    return path


def write_geojson(path: str | Path, outlines: list[tuple[int, np.ndarray]], image_name: str = "") -> Path:
    """A GeoJSON FeatureCollection, one Polygon detection per nucleus, that QuPath imports
    (File > Import objects from file, or drag and drop); written atomically."""
    import json

    features = []
    for label, xy in outlines:
        ring = np.vstack([xy, xy[:1]]).round(3).tolist()
        features.append({
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {"objectType": "detection", "name": f"nucleus {label}", "label": int(label),
                           "classification": {"name": "Nucleus", "color": [0, 200, 255]}},
        })
    path = Path(path)
    with atomic_write(path, "w", encoding="utf-8") as fh:
        json.dump({"type": "FeatureCollection", "image": image_name, "features": features}, fh, separators=(",", ":"))
    return path


#: nuclei.csv columns, before the per-channel intensities.
NUCLEI_COLUMNS = ["image", "label", "area_px", "centroid_y", "centroid_x", "bbox_top", "bbox_left", "bbox_bottom",
                  "bbox_right", "equivalent_diameter_px", "eccentricity", "solidity"]


def measure_nuclei(label_map: np.ndarray, pixels: np.ndarray | None, image_name: str):
    """One row per nucleus (:func:`skimage.measure.regionprops_table`), as a DataFrame.

    Columns: :data:`NUCLEI_COLUMNS` (pixel units; bbox bottom/right exclusive), then
    ``mean_intensity_ch<k>`` and ``max_intensity_ch<k>`` for every channel ``k`` (from 1)
    of ``pixels`` (``H x W x C``, the file's own values), when given.
    """
    import pandas as pd
    from skimage.measure import regionprops_table

    props = ["label", "area", "centroid", "bbox", "equivalent_diameter_area", "eccentricity", "solidity"]
    n_channels = 0
    if pixels is not None:
        if pixels.shape[:2] != label_map.shape:
            raise DataError(f"{image_name}: image {pixels.shape[:2]} and labels {label_map.shape} differ in size")
        n_channels = pixels.shape[-1]
        props += ["intensity_mean", "intensity_max"]
    table = regionprops_table(label_map, intensity_image=pixels, properties=props)
    frame = pd.DataFrame({
        "image": image_name,
        "label": table["label"].astype(np.int64),
        "area_px": table["area"].astype(np.int64),
        "centroid_y": table["centroid-0"], "centroid_x": table["centroid-1"],
        "bbox_top": table["bbox-0"], "bbox_left": table["bbox-1"],
        "bbox_bottom": table["bbox-2"], "bbox_right": table["bbox-3"],
        "equivalent_diameter_px": table["equivalent_diameter_area"],
        "eccentricity": table["eccentricity"], "solidity": table["solidity"],
    }, columns=NUCLEI_COLUMNS)
    for kind, key in (("mean", "intensity_mean"), ("max", "intensity_max")):
        for k in range(n_channels):
            column = f"{key}-{k}" if f"{key}-{k}" in table else key
            frame[f"{kind}_intensity_ch{k + 1}"] = table[column]
    return frame


# --------------------------------------------------------------------------- many images


@dataclass(frozen=True)
class SegmentOptions:
    """What to write and how to read, for :func:`segment_sources`."""

    label_format: LabelFormat = "tif"
    rois: tuple[str, ...] = ()
    overlays: bool = False
    overwrite: bool = False
    channel: Optional[int] = None
    normalize: str = "auto"
    nucleus_diameter: Optional[float] = None
    block_px: int = BLOCK_PX

    def __post_init__(self) -> None:
        if self.label_format not in ("tif", "png"):
            raise DsbError(f"--format: {self.label_format!r} is not one of tif, png")
        bad = [r for r in self.rois if r not in ("imagej", "geojson")]
        if bad:
            raise DsbError(f"--rois: {bad[0]!r} is not one of imagej, geojson")
        if self.normalize not in ("auto", "percentile", "none"):
            raise DsbError(f"--normalize: {self.normalize!r} is not one of auto, percentile, none")
        if self.channel is not None and self.channel < 1:
            raise DsbError(f"--channel: channels count from 1, got {self.channel}")
        if self.nucleus_diameter is not None and not (self.nucleus_diameter > 0 and math.isfinite(self.nucleus_diameter)):
            raise DsbError(f"--nucleus-diameter: must be a positive number of pixels, got {self.nucleus_diameter}")
        if self.block_px < 256:
            raise DsbError(f"block_px: must be at least 256, got {self.block_px}")


def output_paths(out_dir: Path, name: str, opts: SegmentOptions) -> dict[str, Path]:
    """Per-image output files by kind: ``labels`` always, ``imagej``, ``geojson``, ``overlay`` as asked."""
    base = Path(out_dir) / name
    paths = {"labels": base.with_name(f"{base.name}_labels.{opts.label_format}")}
    if "imagej" in opts.rois:
        paths["imagej"] = base.with_name(f"{base.name}_rois.zip")
    if "geojson" in opts.rois:
        paths["geojson"] = base.with_name(f"{base.name}.geojson")
    if opts.overlays:
        paths["overlay"] = base.with_name(f"{base.name}_overlay.png")
    return paths


@dataclass
class ImageResult:
    """What happened to one image: ``status`` is ``segmented``, ``skipped`` (its labels
    were already there: read back, missing outputs added, measured) or ``failed``."""

    index: int
    name: str
    source: str
    status: str
    height: Optional[int] = None
    width: Optional[int] = None
    n_nuclei: Optional[int] = None
    median_area_px: Optional[float] = None
    scale: Optional[float] = None
    seconds: Optional[float] = None
    error: str = ""
    nuclei: object = field(default=None, repr=False)  # pandas DataFrame


def _segment_one(index: int, source, segmenter: Optional[Segmenter], out_dir: Path, opts: SegmentOptions,
                 stage_cache: dict) -> ImageResult:

    t0 = time.perf_counter()
    paths = output_paths(out_dir, source.name, opts)
    pixels, model_image = load_for_model(source, opts.channel, opts.normalize, stage_cache)  # type: ignore[arg-type]
    height, width = model_image.shape[:2]
    status, scale = "segmented", None
    if paths["labels"].is_file() and not opts.overwrite:
        status = "skipped"
        label_map = read_label_image(paths["labels"])
        if label_map.shape != (height, width):
            raise DataError(f"{paths['labels']}: labels are {label_map.shape[0]}x{label_map.shape[1]} but "
                            f"{source.describe} is {height}x{width}; rerun with --overwrite")
    else:
        if segmenter is None:
            raise DsbError("no model loaded")
        label_map, scale = segmenter.label_map(model_image, opts.nucleus_diameter, opts.block_px)
    todo = {k: p for k, p in paths.items() if k != "labels" and (opts.overwrite or status == "segmented" or not p.is_file())}
    if "imagej" in todo or "geojson" in todo:
        outlines = instance_outlines(label_map)
        if "imagej" in todo:
            write_imagej_rois(todo["imagej"], outlines)
        if "geojson" in todo:
            write_geojson(todo["geojson"], outlines, source.name)
        del outlines
    if "overlay" in todo:

        save_png(todo["overlay"], overlay_instances(model_image, label_map))
    del model_image
    nuclei = measure_nuclei(label_map, pixels, source.name)
    if status == "segmented":  # last: its presence means every output of the image is there
        write_label_image(paths["labels"], label_map, opts.label_format)
    areas = nuclei["area_px"].to_numpy()
    return ImageResult(
        index=index, name=source.name, source=source.describe, status=status, height=height, width=width,
        n_nuclei=int(len(nuclei)), median_area_px=float(np.median(areas)) if len(areas) else 0.0, scale=scale,
        seconds=round(time.perf_counter() - t0, 3), nuclei=nuclei,
    )


def needs_model(sources: Sequence, out_dir: Path, opts: SegmentOptions) -> bool:
    """Whether any image lacks its label image (so the model must be loaded)."""
    return opts.overwrite or any(not output_paths(out_dir, s.name, opts)["labels"].is_file() for s in sources)


def segment_sources(
    sources: Sequence,
    segmenter: Optional[Segmenter],
    out_dir: str | Path,
    opts: SegmentOptions = SegmentOptions(),
    *,
    rank: int = 0,
    world_size: int = 1,
    on_image: Optional[Callable[[ImageResult, int, int], None]] = None,
) -> list[ImageResult]:
    """Segment this rank's share of ``sources`` (:class:`dsb.data.images.ImageSource`,
    every ``world_size``-th from ``rank``) and write each image's outputs under ``out_dir``.

    An image that fails (unreadable, too many channels...) is reported in its
    :class:`ImageResult` (``status="failed"``, ``error`` naming the file) and the others go
    on. ``on_image(result, done, total)`` is called after each image. Tables are written by
    :func:`write_tables`.
    """
    out_dir = Path(out_dir)
    mine = list(enumerate(sources))[rank::world_size]
    results: list[ImageResult] = []
    stage_cache: dict = {}
    try:
        for done, (index, source) in enumerate(mine, start=1):
            try:
                result = _segment_one(index, source, segmenter, out_dir, opts, stage_cache)
            except DsbError as exc:
                message = str(exc) if source.describe in str(exc) else f"{source.describe}: {exc}"
                result = ImageResult(index=index, name=source.name, source=source.describe, status="failed", error=message)
            except (MemoryError, ValueError, TypeError, OSError, RuntimeError) as exc:
                result = ImageResult(index=index, name=source.name, source=source.describe, status="failed",
                                     error=f"{source.describe}: {type(exc).__name__}: {exc}")
            results.append(result)
            if on_image is not None:
                on_image(result, done, len(mine))
    finally:
        for stage in stage_cache.values():
            stage.close()
    return results


def gather_results(results: list[ImageResult], world_size: int) -> Optional[list[ImageResult]]:
    """Under ``torch.distributed`` with ``world_size > 1``: every rank's results on rank 0
    (in input order; None on the other ranks). With one process: ``results``, sorted."""
    if world_size <= 1:
        return sorted(results, key=lambda r: r.index)
    import torch.distributed as dist

    rank = dist.get_rank()
    gathered: Optional[list] = [None] * world_size if rank == 0 else None
    dist.gather_object(results, gathered, dst=0)
    if rank != 0:
        return None
    return sorted((r for part in gathered for r in part), key=lambda r: r.index)  # type: ignore[union-attr]


SUMMARY_COLUMNS = ["image", "source", "status", "height", "width", "n_nuclei", "median_area_px", "scale",
                   "seconds", "error"]


def write_tables(out_dir: str | Path, results: Sequence[ImageResult]) -> tuple[Path, Path]:
    """Write ``nuclei.csv`` and ``summary.csv`` under ``out_dir`` atomically.

    Skipped images keep the ``scale`` and ``seconds`` of the run that segmented them (read
    from the previous ``summary.csv``).
    """
    import pandas as pd

    out_dir = Path(out_dir)
    summary_path, nuclei_path = out_dir / "summary.csv", out_dir / "nuclei.csv"
    previous: dict = {}
    if summary_path.is_file():
        try:
            old = pd.read_csv(summary_path, dtype={"image": str})
            previous = {row["image"]: row for _, row in old.iterrows() if row.get("status") != "failed"}
        except (ValueError, KeyError, pd.errors.ParserError, pd.errors.EmptyDataError):
            previous = {}
    rows = []
    for r in results:
        row = {c: getattr(r, c if c != "image" else "name") for c in SUMMARY_COLUMNS}
        if r.status == "skipped" and r.name in previous:
            row["scale"] = previous[r.name].get("scale")
            row["seconds"] = previous[r.name].get("seconds")
        rows.append(row)
    tables = [r.nuclei for r in results if r.nuclei is not None]
    nuclei = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=NUCLEI_COLUMNS)
    with atomic_write(nuclei_path, "w", newline="") as fh:
        nuclei.to_csv(fh, index=False)
    with atomic_write(summary_path, "w", newline="") as fh:
        pd.DataFrame(rows, columns=SUMMARY_COLUMNS).to_csv(fh, index=False)
    return nuclei_path, summary_path
