"""Overlapping tiles for images too large to predict in one pass.

The image is covered by a grid of equal ``tile_px x tile_px`` tiles (clipped to the image
where it is smaller than a tile in one dimension). Along each axis the tiles are spread
evenly so that neighbours overlap by at least ``overlap_px``; the last tile ends at the
image border (tiles are shifted inside the image, never padded past it).

Each tile's prediction is weighted by a separable window that is 1 in the middle and
falls off with a raised cosine over ``overlap_px`` pixels on the sides that face a
neighbouring tile (sides on the image border keep weight 1, so the border is predicted
exactly as the tile sees it). The window is > 0 everywhere and two ramps facing each
other sum to 1, so blending is smooth; dividing by the summed weight makes the result
exact wherever the tiles agree. Because every window is separable and the tiles form a
grid, the summed weight is the outer product of two 1-D sums: only the ``K x H x W``
float32 accumulator is image-sized.
"""

from __future__ import annotations

import math
from typing import Callable, Iterator

import numpy as np
import torch

#: A tile as ``(y0, y1, x0, x1)``, half-open pixel bounds.
Tile = tuple[int, int, int, int]


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``min(tile, length)`` covering ``[0, length)``.

    Tiles are spread evenly, the first starts at 0, the last ends at ``length``, and
    consecutive tiles overlap by at least ``overlap`` pixels.

    >>> tile_starts(100, 40, 10)
    [0, 30, 60]
    >>> tile_starts(30, 40, 10)
    [0]
    """
    if length < 1:
        raise ValueError(f"length must be positive, got {length}")
    if tile < 1 or overlap < 0 or 2 * overlap >= tile:
        raise ValueError(f"need tile >= 1 and 0 <= 2 * overlap < tile, got tile={tile}, overlap={overlap}")
    if length <= tile:
        return [0]
    span = length - tile
    n = 1 + math.ceil(span / (tile - overlap))
    # Integer floor of an even spacing: every gap is <= ceil(span / (n-1)) <= tile - overlap.
    return [(i * span) // (n - 1) for i in range(n)]


def tile_grid(height: int, width: int, tile_px: int, overlap_px: int) -> list[Tile]:
    """All tiles covering a ``height x width`` image, row by row, as ``(y0, y1, x0, x1)``."""
    th, tw = min(tile_px, height), min(tile_px, width)
    return [
        (y, y + th, x, x + tw)
        for y in tile_starts(height, tile_px, overlap_px)
        for x in tile_starts(width, tile_px, overlap_px)
    ]


def ramp(overlap_px: int) -> np.ndarray:
    """Rising raised-cosine ramp of ``overlap_px`` samples, strictly inside (0, 1).

    ``ramp(o) + ramp(o)[::-1] == 1``, so two tiles whose ramps face each other over an
    overlap of exactly ``o`` pixels blend with weights summing to one.
    """
    i = np.arange(overlap_px, dtype=np.float64)
    return (0.5 - 0.5 * np.cos(np.pi * (i + 0.5) / overlap_px)).astype(np.float32)


def window_1d(size: int, overlap_px: int, taper_start: bool, taper_end: bool) -> np.ndarray:
    """Weights of one tile along one axis: 1, tapered over ``overlap_px`` on chosen sides."""
    w = np.ones(size, dtype=np.float32)
    o = min(overlap_px, size // 2)
    if o > 0:
        r = ramp(o)
        if taper_start:
            w[:o] = r
        if taper_end:
            w[size - o :] = r[::-1]
    return w


def _axis_windows(length: int, tile: int, overlap: int) -> tuple[list[int], list[np.ndarray], np.ndarray]:
    starts = tile_starts(length, tile, overlap)
    size = min(tile, length)
    n = len(starts)
    windows = [window_1d(size, overlap, i > 0, i < n - 1) for i in range(n)]
    total = np.zeros(length, dtype=np.float32)
    for s, w in zip(starts, windows):
        total[s : s + size] += w
    return starts, windows, total


def _batches(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def predict_tiled(
    tile_fn: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    tile_px: int,
    overlap_px: int,
    tiles_per_batch: int = 1,
) -> torch.Tensor:
    """Predict a ``C x H x W`` image tile by tile and blend the tiles.

    Parameters
    ----------
    tile_fn : callable ``(n, C, th, tw) -> (n, K, th, tw)``
        Returns float predictions (e.g. probabilities) for a batch of tiles; it receives
        the crops in the dtype of ``image`` and returns on any device.
    image : tensor ``C x H x W``
        May be a non-contiguous view (e.g. ``torch.from_numpy(hwc).permute(2, 0, 1)``);
        only one batch of tiles is copied at a time.
    tile_px, overlap_px : int
        Tile side and minimum overlap between neighbouring tiles, in pixels.
    tiles_per_batch : int
        How many tiles go through ``tile_fn`` per call.

    Returns
    -------
    tensor ``K x H x W``, float32, on the CPU. With a single tile (image no larger than a
    tile) this is ``tile_fn``'s output itself, without blending.
    """
    if image.ndim != 3:
        raise ValueError(f"image must be C x H x W, got shape {tuple(image.shape)}")
    _, height, width = image.shape
    ys, wys, wy_total = _axis_windows(height, tile_px, overlap_px)
    xs, wxs, wx_total = _axis_windows(width, tile_px, overlap_px)
    th, tw = min(tile_px, height), min(tile_px, width)

    if len(ys) == 1 and len(xs) == 1:
        return tile_fn(image.unsqueeze(0))[0].float().cpu()

    tiles = [(iy, ix) for iy in range(len(ys)) for ix in range(len(xs))]
    out: torch.Tensor | None = None
    for batch in _batches(tiles, max(1, tiles_per_batch)):
        crops = torch.stack([image[:, ys[iy] : ys[iy] + th, xs[ix] : xs[ix] + tw] for iy, ix in batch])
        pred = tile_fn(crops)
        del crops
        if pred.ndim != 4 or pred.shape[0] != len(batch) or tuple(pred.shape[-2:]) != (th, tw):
            raise ValueError(f"tile_fn returned shape {tuple(pred.shape)} for {len(batch)} tiles of {th}x{tw}")
        pred = pred.float().cpu()
        if out is None:
            out = torch.zeros((pred.shape[1], height, width), dtype=torch.float32)
        for j, (iy, ix) in enumerate(batch):
            weight = torch.from_numpy(np.outer(wys[iy], wxs[ix]))
            out[:, ys[iy] : ys[iy] + th, xs[ix] : xs[ix] + tw].addcmul_(pred[j], weight)
        del pred
    assert out is not None
    # The summed weight is separable: divide by its two factors in place (no H x W array).
    out /= torch.from_numpy(wy_total).view(1, height, 1)
    out /= torch.from_numpy(wx_total).view(1, 1, width)
    return out
