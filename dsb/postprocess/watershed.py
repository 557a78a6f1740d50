"""Marker-based watershed, label for label identical to scikit-image's.

:func:`watershed` gives the same labels as ``skimage.segmentation.watershed(image,
markers, connectivity=connectivity, mask=mask)`` (scikit-image 0.26, default
``compactness=0`` and ``watershed_line=False``) on 2-D inputs, ties included, and is
several times faster (``benchmarks/watershed.py``). The compiled core lives in
:mod:`dsb.postprocess._kernels`; this module validates, converts and reshapes.

>>> import numpy as np
>>> image = np.array([[0, 1, 2, 1, 0]], np.uint8)
>>> markers = np.array([[1, 0, 0, 0, 2]])
>>> watershed(image, markers)
array([[1, 1, 1, 2, 2]], dtype=int32)
"""

from __future__ import annotations

import numpy as np

from dsb.postprocess import _kernels

__all__ = ["watershed"]


def _image_bits(image: np.ndarray) -> tuple[np.ndarray, int, int]:
    """The image as ``(bits, rank_mode, nbits)`` for :func:`_kernels.watershed_flat`.

    scikit-image compares ``image.astype(float64)``. Every conversion below keeps that
    order and those ties exactly: integers of up to 32 bits and float16/float32 convert
    to float64 without rounding, so they are compared through cheaper order-preserving
    keys; int64/uint64 are rounded to float64 first, as scikit-image does.
    """
    dtype = image.dtype
    if dtype == np.bool_:
        return image.view(np.uint8), _kernels.RANK_DIRECT, 8
    if dtype == np.uint8:
        return image, _kernels.RANK_DIRECT, 8
    if dtype == np.uint16:
        return image, _kernels.RANK_DIRECT, 16
    if dtype == np.int8:
        return image.view(np.uint8) ^ np.uint8(0x80), _kernels.RANK_DIRECT, 8
    if dtype == np.int16:
        return image.view(np.uint16) ^ np.uint16(0x8000), _kernels.RANK_DIRECT, 16
    if dtype == np.uint32:
        return image, _kernels.RANK_SORT_UINT, 32
    if dtype == np.int32:
        return image.view(np.uint32) ^ np.uint32(0x80000000), _kernels.RANK_SORT_UINT, 32
    if dtype == np.float32:
        return image.view(np.uint32), _kernels.RANK_SORT_FLOAT, 32
    if dtype == np.float16:
        return image.astype(np.float32).view(np.uint32), _kernels.RANK_SORT_FLOAT, 32
    if dtype == np.float64:
        return image.view(np.uint64), _kernels.RANK_SORT_FLOAT, 64
    # int64, uint64, longdouble: exactly scikit-image's conversion
    return image.astype(np.float64).view(np.uint64), _kernels.RANK_SORT_FLOAT, 64


def watershed(
    image: np.ndarray,
    markers: np.ndarray,
    mask: np.ndarray | None = None,
    connectivity: int = 1,
) -> np.ndarray:
    """Flood ``image`` from ``markers``; pixels take the label of the basin that reaches them first.

    Same result as ``skimage.segmentation.watershed(image, markers,
    connectivity=connectivity, mask=mask)`` for 2-D inputs: a priority flood ordered by
    pixel value, ties broken by arrival order (so plateaus split between markers), a
    pixel's priority never below that of the pixel that reached it.

    Parameters
    ----------
    image : (H, W) array of bool, int or float
        Lowest values are flooded first. Compared as float64 values, like scikit-image.
    markers : (H, W) array of int
        Seed labels; 0 means "no seed". Any nonzero values (also negative or
        non-consecutive) are copied to the output as they are; they must fit in int32.
        Markers outside ``mask`` are ignored.
    mask : (H, W) array of bool (or 0/1), optional
        Only pixels where ``mask`` is nonzero are labelled. Default: the whole image.
    connectivity : {1, 2}
        1: 4-neighbours; 2: 8-neighbours.

    Returns
    -------
    labels : (H, W) int32
        The marker label of each pixel's basin; 0 outside the mask and where no
        marker's flood arrives (a mask component without markers).

    Raises
    ------
    ValueError
        If an array is not 2-D, shapes differ, ``connectivity`` is not 1 or 2, or a
        marker value does not fit in int32.
    TypeError
        If ``markers`` is not an integer array or ``image`` is not numeric.

    Notes
    -----
    The inputs are never modified, and any memory layout gives the same labels. (Not
    so scikit-image 0.26: with Fortran-ordered markers, e.g. a transposed array, its
    kernel writes into a temporary copy and it returns little more than the markers;
    tests compare with it on C-ordered copies.) A NaN inside the mask is handled
    exactly as scikit-image does, by a slower kernel.

    The kernel releases the GIL. Numba compiles it on the first call for each width
    of image value (8, 16, 32, 64 bits) and caches it on disk (``NUMBA_CACHE_DIR``, else
    ``__pycache__``): the first call in a process then takes a fraction of a second
    instead of several seconds.
    """
    image = np.asarray(image)
    markers = np.asarray(markers)
    if image.ndim != 2:
        raise ValueError(f"image must be 2-D, got {image.ndim}-D with shape {image.shape}")
    if markers.shape != image.shape:
        raise ValueError(f"markers shape {markers.shape} differs from image shape {image.shape}")
    if isinstance(connectivity, (bool, np.bool_)) or connectivity not in (1, 2):
        raise ValueError(f"connectivity must be 1 (4-neighbours) or 2 (8-neighbours), got {connectivity!r}")
    if image.dtype.kind not in "buif":
        raise TypeError(f"image must be a bool, integer or float array, got dtype {image.dtype}")
    if markers.dtype.kind not in "iu":
        raise TypeError(f"markers must be an integer array, got dtype {markers.dtype}")
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != image.shape:
            raise ValueError(f"mask shape {mask.shape} differs from image shape {image.shape}")

    height, width = image.shape
    if image.size == 0:
        return np.zeros((height, width), np.int32)
    if image.size >= 2**31 - 2:
        raise ValueError(f"image too large for int32 indices: {image.shape}")

    if markers.dtype != np.int32:
        info = np.iinfo(np.int32)
        if markers.dtype.itemsize >= 4 and markers.size:
            lo, hi = int(markers.min()), int(markers.max())
            if lo < info.min or hi > info.max:
                raise ValueError(f"marker values must fit in int32, got range [{lo}, {hi}]")
        markers = markers.astype(np.int32)
    markers_flat = np.ascontiguousarray(markers).ravel()

    if mask is None:
        mask_flat = np.empty(0, np.uint8)
    elif mask.dtype in (np.bool_, np.uint8, np.int8):
        mask_flat = np.ascontiguousarray(mask).view(np.uint8).ravel()
    else:
        mask_flat = np.ascontiguousarray(mask != 0).view(np.uint8).ravel()

    out = np.empty((height, width), np.int32)  # the kernel writes every pixel
    image = np.ascontiguousarray(image)
    bits, rank_mode, nbits = _image_bits(image)
    status = _kernels.watershed_flat(
        bits.ravel(), rank_mode, nbits, markers_flat, mask_flat, mask is not None,
        height, width, connectivity, out.ravel(),
    )
    if status != _kernels.STATUS_OK:  # a NaN inside the mask, or too many distinct values
        _kernels.watershed_float_compare(
            image.astype(np.float64).ravel(), markers_flat, mask_flat, mask is not None,
            height, width, connectivity, out.ravel(),
        )
    return out
