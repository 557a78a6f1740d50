"""Kaggle run-length encoding for the 2018 Data Science Bowl.

The competition's rules: ``EncodedPixels`` is a space-separated list of
``start length`` pairs; pixels are numbered from 1, top to bottom, then left to right
(column-major, i.e. NumPy ``order="F"``); pairs are sorted by start and do not overlap.

>>> import numpy as np
>>> mask = np.zeros((3, 4), bool); mask[1:, 1] = True; mask[0, 3] = True
>>> rle_encode(mask)
'5 2 10 1'
>>> bool((rle_decode('5 2 10 1', (3, 4)) == mask).all())
True
"""

from __future__ import annotations

from typing import Iterator

import numba
import numpy as np
from scipy import ndimage

from dsb.errors import DataError

__all__ = [
    "rle_encode",
    "rle_decode",
    "runs_to_label_map",
    "rle_to_pairs",
    "pairs_to_rle",
    "mask_runs",
    "label_map_to_rows",
    "label_map_to_runs",
]


def mask_runs(mask: np.ndarray) -> np.ndarray:
    """Runs of a 2-D mask as an ``(n, 2)`` int64 array of 1-indexed ``(start, length)``.

    Parameters
    ----------
    mask : (H, W) array, any dtype; nonzero pixels are foreground.
    """
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    # Pad with False on both ends so every run has a rising and a falling edge.
    padded = np.concatenate(([False], flat, [False]))
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    starts, ends = edges[0::2], edges[1::2]
    return np.stack([starts + 1, ends - starts], axis=1).astype(np.int64)


def pairs_to_rle(runs: np.ndarray) -> str:
    """Format an ``(n, 2)`` array of ``(start, length)`` as Kaggle's string."""
    if len(runs) == 0:
        return ""
    return " ".join(map(str, np.asarray(runs, dtype=np.int64).ravel().tolist()))


def rle_encode(mask: np.ndarray) -> str:
    """Encode a 2-D boolean mask as Kaggle RLE (empty string for an empty mask)."""
    return pairs_to_rle(mask_runs(mask))


def rle_to_pairs(rle: str | float | None) -> np.ndarray:
    """Parse an RLE string into an ``(n, 2)`` int64 array; empty/NaN gives ``(0, 2)``.

    Raises
    ------
    ValueError
        If a token is not an integer or the count of numbers is odd. Semantic checks
        (positive, sorted, inside the image) are the caller's: see
        :func:`dsb.submission.check_runs`.
    """
    if rle is None or (isinstance(rle, float) and np.isnan(rle)):
        return np.zeros((0, 2), np.int64)
    text = str(rle).strip()
    if not text:
        return np.zeros((0, 2), np.int64)
    try:
        values = np.array(text.split(), dtype=np.int64)
    except (ValueError, OverflowError):
        bad = next((t for t in text.split() if not t.lstrip("-").isdigit()), text[:20])
        raise ValueError(f"not an integer: {bad!r}") from None
    if values.size % 2:
        raise ValueError(f"odd number of values ({values.size}); expected start/length pairs")
    return values.reshape(-1, 2)


def _run_pixels(runs: np.ndarray, n_pixels: int, what: str = "RLE") -> np.ndarray:
    """0-indexed column-major pixel indices covered by ``runs``; checks their range."""
    if not len(runs):
        return np.zeros(0, dtype=np.int64)
    starts, lengths = runs[:, 0] - 1, runs[:, 1]
    if (starts < 0).any() or (lengths <= 0).any():
        raise DataError(f"{what} has a start < 1 or a length < 1")
    if (starts + lengths > n_pixels).any():
        raise DataError(f"{what} has a run past the last pixel (image has {n_pixels} pixels)")
    # O(area): each run's first index repeated over its length, plus 0..length-1.
    offsets = np.cumsum(lengths) - lengths
    return np.arange(int(lengths.sum()), dtype=np.int64) + np.repeat(starts - offsets, lengths)


def rle_decode(rle: str | float | None, shape: tuple[int, int]) -> np.ndarray:
    """Decode Kaggle RLE into an ``(H, W)`` bool mask.

    Raises :class:`dsb.errors.DataError` if a run is non-positive or falls outside the
    image, :class:`ValueError` if the string is not pairs of integers.
    """
    height, width = int(shape[0]), int(shape[1])
    flat = np.zeros(height * width, dtype=bool)
    flat[_run_pixels(rle_to_pairs(rle), flat.size)] = True
    return flat.reshape((width, height)).T


def runs_to_label_map(
    runs_per_instance: list[np.ndarray], shape: tuple[int, int]
) -> tuple[np.ndarray, int]:
    """Paint instances ``1..n`` (in list order) into an ``(H, W)`` int32 label map.

    Overlaps are resolved deterministically: a pixel claimed by several instances keeps
    the first one (the earliest row). Returns ``(label_map, n_overlap_px)`` so callers
    can report overlaps instead of hiding them.
    """
    height, width = int(shape[0]), int(shape[1])
    flat = np.zeros(height * width, dtype=np.int32)
    pixels = [_run_pixels(runs, flat.size, f"instance {label}") for label, runs in enumerate(runs_per_instance, 1)]
    if not pixels:
        return flat.reshape((width, height)).T.copy(), 0
    sizes = np.array([len(p) for p in pixels])
    all_pixels = np.concatenate(pixels)
    labels = np.repeat(np.arange(1, len(pixels) + 1, dtype=np.int32), sizes)
    flat[all_pixels] = labels
    n_overlap = int(all_pixels.size - np.count_nonzero(flat))
    if n_overlap:
        # Fancy assignment does not define which duplicate wins: make the first win.
        flat[all_pixels] = np.iinfo(np.int32).max
        np.minimum.at(flat, all_pixels, labels)
    return flat.reshape((width, height)).T.copy(), n_overlap


@numba.njit(cache=True, nogil=True)
def _bbox_runs(label_map, boxes, out):  # pragma: no cover - compiled
    """Runs of each instance inside its box; ``out`` rows are (label, start, length).

    ``boxes`` rows are (label, r0, r1, c0, c1). Returns the number of runs written and
    fills ``offsets``-free output in label order (boxes are given sorted by label).
    """
    height = label_map.shape[0]
    n = 0
    for b in range(boxes.shape[0]):
        label, r0, r1, c0, c1 = boxes[b, 0], boxes[b, 1], boxes[b, 2], boxes[b, 3], boxes[b, 4]
        for c in range(c0, c1):
            r = r0
            while r < r1:
                if label_map[r, c] == label:
                    start = r
                    while r < r1 and label_map[r, c] == label:
                        r += 1
                    begin = c * height + start + 1
                    if n > 0 and out[n - 1, 0] == label and out[n - 1, 1] + out[n - 1, 2] == begin:
                        # A run that goes on from the bottom of one column into the top
                        # of the next (full-height boxes) is one run in Kaggle's numbering.
                        out[n - 1, 2] += r - start
                    else:
                        out[n, 0] = label
                        out[n, 1] = begin
                        out[n, 2] = r - start
                        n += 1
                else:
                    r += 1
    return n


def label_map_to_runs(label_map: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(label, runs)`` per instance of an int label map, in increasing label order.

    ``runs`` is an ``(n, 2)`` int64 array of 1-indexed ``(start, length)``. Each instance
    is encoded inside its bounding box (boxes from one :func:`scipy.ndimage.find_objects`
    pass, runs from one compiled kernel), never over the whole image, so the cost is
    proportional to the nuclei's boxes, not ``n_labels * H * W``.
    """
    if label_map.ndim != 2:
        raise ValueError(f"label map must be 2-D, got shape {label_map.shape}")
    if label_map.dtype.kind not in "iu":
        raise ValueError(f"label map must have an integer dtype, got {label_map.dtype}")
    if label_map.size and label_map.min() < 0:
        raise ValueError("label map has negative labels")
    slices = ndimage.find_objects(label_map)
    boxes = np.array(
        [(i + 1, s[0].start, s[0].stop, s[1].start, s[1].stop) for i, s in enumerate(slices) if s is not None],
        dtype=np.int64,
    ).reshape(-1, 5)
    if not len(boxes):
        return
    # A box of h x w pixels has at most ceil(h/2) runs per column.
    capacity = int((((boxes[:, 2] - boxes[:, 1] + 1) // 2) * (boxes[:, 4] - boxes[:, 3])).sum())
    out = np.empty((capacity, 3), dtype=np.int64)
    n = _bbox_runs(np.ascontiguousarray(label_map), boxes, out)
    out = out[:n]
    # Runs come out grouped by label in box order; split the groups.
    bounds = np.flatnonzero(np.diff(out[:, 0])) + 1
    for group in np.split(out, bounds):
        yield int(group[0, 0]), group[:, 1:]


def label_map_to_rows(image_id: str, label_map: np.ndarray) -> list[tuple[str, str]]:
    """Submission rows ``(image_id, rle)``, one per instance (bounding-box encoding).

    An image with no instance gets a single row with an empty ``EncodedPixels``, as the
    competition requires.
    """
    rows = [(image_id, pairs_to_rle(runs)) for _, runs in label_map_to_runs(label_map)]
    return rows or [(image_id, "")]
