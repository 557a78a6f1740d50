"""dsb.postprocess.watershed: hand-made cases, and labels identical to scikit-image's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import ndimage as ndi
from skimage.segmentation import watershed as sk_watershed

from dsb.postprocess import _kernels, watershed

REPO = Path(__file__).resolve().parents[1]

PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def assert_same_as_skimage(image, markers, mask=None, connectivity=1):
    ours = watershed(image, markers, mask=mask, connectivity=connectivity)
    ref = sk_watershed(image, markers, connectivity=connectivity, mask=mask)
    assert ours.dtype == np.int32
    assert ours.shape == image.shape
    np.testing.assert_array_equal(ours, ref)
    return ours


def random_case(rng: np.random.Generator, shape, kind: str, marker_density: float, blobs: bool):
    """An image of ``kind`` and markers (single pixels or small blobs, ids in -3..9)."""
    if kind == "ties":  # a handful of levels: plateaus and tied markers everywhere
        image = rng.integers(0, 4, shape).astype(np.uint8)
    elif kind == "smooth":
        image = ndi.gaussian_filter(rng.random(shape), 1.5).astype(np.float32)
    elif kind == "float64":
        image = rng.normal(size=shape)
    else:  # "int": signed values with repeats
        image = rng.integers(-20, 20, shape).astype(np.int16)
    seeds = rng.random(shape) < marker_density
    if blobs:
        seeds = ndi.binary_dilation(seeds)
    labels = rng.choice(np.array([-3, -1, 1, 2, 5, 9]), size=shape)
    markers = np.where(seeds, labels, 0).astype(np.int64)
    return image, markers


# --------------------------------------------------------------------- by hand


def test_two_basins_meet_at_the_ridge():
    image = np.array([[0, 1, 2, 1, 0]], np.uint8)
    markers = np.array([[1, 0, 0, 0, 2]])
    # the ridge pixel goes to the basin that reaches it first: the left one
    np.testing.assert_array_equal(watershed(image, markers), [[1, 1, 1, 2, 2]])


def test_plateau_is_split_between_markers():
    image = np.zeros((1, 6), np.float32)
    markers = np.array([[3, 0, 0, 0, 0, 7]])
    np.testing.assert_array_equal(watershed(image, markers), [[3, 3, 3, 7, 7, 7]])


def test_mask_limits_the_flood_and_unseeded_components_stay_zero():
    image = np.zeros((3, 7))
    mask = np.ones((3, 7), bool)
    mask[:, 3] = False  # two components; only the left one has a marker
    markers = np.zeros((3, 7), np.int32)
    markers[1, 0] = 4
    markers[1, 3] = 5  # outside the mask: ignored
    labels = watershed(image, markers, mask=mask)
    expected = np.zeros((3, 7), np.int32)
    expected[:, :3] = 4
    np.testing.assert_array_equal(labels, expected)


def test_labels_are_copied_as_given():
    image = np.zeros((4, 4), np.float64)
    markers = np.zeros((4, 4), np.int64)
    markers[0, 0] = -7
    markers[3, 3] = 2_000_000_000
    labels = watershed(image, markers)
    assert set(np.unique(labels)) == {-7, 2_000_000_000}


def test_connectivity_two_crosses_diagonals():
    mask = np.eye(4, dtype=bool)
    markers = np.zeros((4, 4), np.int32)
    markers[0, 0] = 1
    image = np.zeros((4, 4), np.float32)
    assert (watershed(image, markers, mask=mask, connectivity=1) > 0).sum() == 1
    np.testing.assert_array_equal(watershed(image, markers, mask=mask, connectivity=2), np.eye(4, dtype=np.int32))


def test_no_markers_gives_zeros():
    labels = watershed(np.random.default_rng(0).random((5, 6)), np.zeros((5, 6), np.int32))
    assert labels.dtype == np.int32 and not labels.any()


def test_empty_image():
    labels = watershed(np.zeros((0, 5), np.float32), np.zeros((0, 5), np.int32))
    assert labels.shape == (0, 5) and labels.dtype == np.int32


@pytest.mark.parametrize(
    "dtype",
    [np.uint8, np.uint16, np.uint32, np.uint64, np.int8, np.int16, np.int32, np.int64,
     np.float16, np.float32, np.float64, bool],
)
@pytest.mark.parametrize("connectivity", [1, 2])
def test_every_image_dtype_matches_skimage(dtype, connectivity):
    rng = np.random.default_rng(1)
    base = ndi.gaussian_filter(rng.random((40, 50)), 2)
    if dtype is bool:
        image = base > np.median(base)
    elif np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        lo, hi = max(info.min, -1000), min(info.max, 1000)
        image = np.round(lo + (hi - lo) * (base - base.min()) / np.ptp(base)).astype(dtype)
    else:
        image = (base - 0.5).astype(dtype)
    markers = np.zeros(image.shape, np.int32)
    markers[5, 5], markers[30, 40], markers[20, 10], markers[35, 5] = 1, 2, 3, 3
    assert_same_as_skimage(image, markers, mask=base > 0.3 * base.max(), connectivity=connectivity)


@pytest.mark.parametrize("marker_dtype", [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64])
def test_marker_dtypes(marker_dtype):
    rng = np.random.default_rng(2)
    image = rng.random((20, 20)).astype(np.float32)
    markers = np.zeros((20, 20), marker_dtype)
    markers[2, 3], markers[15, 12] = 1, 100
    assert_same_as_skimage(image, markers)


def test_int64_image_rounds_like_skimage():
    # distinct int64 values that collapse to one float64: ties exactly where skimage has them
    image = np.full((3, 9), 2**60, np.int64) + np.arange(9)
    markers = np.zeros((3, 9), np.int32)
    markers[1, 0], markers[1, 8] = 1, 2
    assert_same_as_skimage(image, markers)


def test_nan_inf_and_signed_zero_match_skimage():
    rng = np.random.default_rng(3)
    for trial in range(60):
        image = rng.normal(size=(15, 17)).astype(np.float32 if trial % 2 else np.float64)
        image[rng.random(image.shape) < 0.1] = np.nan
        image[rng.random(image.shape) < 0.1] = -0.0
        image[rng.random(image.shape) < 0.1] = 0.0
        image[rng.random(image.shape) < 0.05] = -np.inf
        markers = np.where(rng.random(image.shape) < 0.1, rng.integers(1, 4, image.shape), 0)
        mask = rng.random(image.shape) < 0.85 if trial % 3 else None
        assert_same_as_skimage(image, markers, mask=mask, connectivity=1 + trial % 2)


def test_exact_fallback_kernel_matches_skimage():
    # the float-compare kernel (NaNs, or too many distinct values) on ordinary inputs
    rng = np.random.default_rng(4)
    for trial in range(40):
        image, markers = random_case(rng, (23, 19), ("ties", "float64")[trial % 2], 0.05, trial % 3 == 0)
        mask = rng.random(image.shape) < 0.8
        out = np.empty(image.size, np.int32)
        _kernels.watershed_float_compare(
            image.astype(np.float64).ravel(), markers.astype(np.int32).ravel(), mask.view(np.uint8).ravel(), True,
            image.shape[0], image.shape[1], 1 + trial % 2, out,
        )
        np.testing.assert_array_equal(out.reshape(image.shape), sk_watershed(image, markers, mask=mask,
                                                                            connectivity=1 + trial % 2))


def test_inputs_are_not_modified_and_views_are_accepted():
    rng = np.random.default_rng(5)
    image = rng.random((30, 40)).astype(np.float32)
    markers = np.zeros((30, 40), np.int32)
    markers[3, 4], markers[20, 30] = 1, 2
    mask = rng.random((30, 40)) < 0.9
    copies = [a.copy() for a in (image, markers, mask)]
    assert_same_as_skimage(image, markers, mask)
    for a, b in zip((image, markers, mask), copies):
        np.testing.assert_array_equal(a, b)
    # Transposed and strided views give the labels of their C-contiguous copies.
    # (scikit-image 0.26 itself returns little more than the markers for Fortran-ordered
    # markers: its Cython kernel writes into a temporary copy. We compare with copies.)
    for view in (np.transpose, lambda a: a[::2, 1::3], lambda a: a[::-1, 5:]):
        args = [view(a) for a in (image, markers, mask)]
        for connectivity in (1, 2):
            ours = watershed(*args, connectivity=connectivity)
            ref = sk_watershed(*[np.ascontiguousarray(a) for a in args[:2]], connectivity=connectivity,
                               mask=np.ascontiguousarray(args[2]))
            np.testing.assert_array_equal(ours, ref)


def test_mask_of_other_dtypes():
    rng = np.random.default_rng(6)
    image = rng.random((12, 12))
    markers = np.zeros((12, 12), np.int32)
    markers[1, 1] = 1
    mask = (rng.random((12, 12)) < 0.8).astype(np.float32) * 255
    np.testing.assert_array_equal(watershed(image, markers, mask=mask), watershed(image, markers, mask=mask > 0))


# --------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "image_shape, markers_shape, mask_shape",
    [((4, 4, 3), (4, 4, 3), None), ((4, 4), (4, 5), None), ((4, 4), (4, 4), (4, 5)), ((8,), (8,), None)],
)
def test_bad_shapes_raise(image_shape, markers_shape, mask_shape):
    mask = None if mask_shape is None else np.ones(mask_shape, bool)
    with pytest.raises(ValueError):
        watershed(np.zeros(image_shape), np.zeros(markers_shape, np.int32), mask=mask)


@pytest.mark.parametrize("connectivity", [0, 3, True, 1.5, "1"])
def test_bad_connectivity_raises(connectivity):
    with pytest.raises(ValueError, match="connectivity"):
        watershed(np.zeros((3, 3)), np.zeros((3, 3), np.int32), connectivity=connectivity)


def test_bad_dtypes_raise():
    with pytest.raises(TypeError, match="markers"):
        watershed(np.zeros((3, 3)), np.zeros((3, 3), np.float32))
    with pytest.raises(TypeError, match="markers"):
        watershed(np.zeros((3, 3)), np.zeros((3, 3), bool))
    with pytest.raises(TypeError, match="image"):
        watershed(np.zeros((3, 3), np.complex64), np.zeros((3, 3), np.int32))


def test_markers_beyond_int32_raise():
    markers = np.zeros((3, 3), np.int64)
    markers[1, 1] = 2**31
    with pytest.raises(ValueError, match="int32"):
        watershed(np.zeros((3, 3)), markers)


# --------------------------------------------------------------------- same as scikit-image


@PROPERTY
@given(
    seed=st.integers(0, 2**32 - 1),
    height=st.integers(1, 24),
    width=st.integers(1, 24),
    kind=st.sampled_from(["ties", "smooth", "float64", "int"]),
    marker_density=st.sampled_from([0.005, 0.03, 0.1, 0.4]),
    blobs=st.booleans(),
    mask_density=st.sampled_from([None, 0.6, 0.9]),
    connectivity=st.sampled_from([1, 2]),
)
def test_identical_to_skimage(seed, height, width, kind, marker_density, blobs, mask_density, connectivity):
    rng = np.random.default_rng(seed)
    image, markers = random_case(rng, (height, width), kind, marker_density, blobs)
    mask = None if mask_density is None else rng.random((height, width)) < mask_density
    assert_same_as_skimage(image, markers, mask=mask, connectivity=connectivity)


@pytest.mark.parametrize("connectivity", [1, 2])
@pytest.mark.parametrize("kind", ["ties", "smooth", "float64", "int"])
def test_identical_to_skimage_on_larger_images(kind, connectivity):
    # bigger floods: long exact-heap phases, the hand-over to the bucket queue, dead markers
    rng = np.random.default_rng(["ties", "smooth", "float64", "int"].index(kind) * 10 + connectivity)
    for trial in range(12):
        shape = (int(rng.integers(60, 120)), int(rng.integers(60, 120)))
        image, markers = random_case(rng, shape, kind, float(rng.choice([0.001, 0.01, 0.05])), trial % 2 == 0)
        mask = ndi.gaussian_filter(rng.random(shape), 3) > 0.48 if trial % 3 else None
        assert_same_as_skimage(image, markers, mask=mask, connectivity=connectivity)


def overlapping_disks(shape=(120, 160), n=14, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    mask = np.zeros(shape, bool)
    for _ in range(n):
        cy, cx, r = rng.uniform(10, shape[0] - 10), rng.uniform(10, shape[1] - 10), rng.uniform(6, 16)
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
    return mask


@pytest.mark.parametrize("connectivity", [1, 2])
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.uint8])
def test_identical_on_distance_transform_of_overlapping_disks(dtype, connectivity):
    # scikit-image's own example: split touching disks at the necks of -distance
    for seed in range(4):
        mask = overlapping_disks(seed=seed)
        distance = ndi.distance_transform_edt(mask)
        peaks = (distance == ndi.maximum_filter(distance, size=7)) & mask & (distance > 1)
        markers = ndi.label(peaks)[0]
        image = -distance
        if dtype is np.uint8:
            image = (255 * distance / distance.max()).astype(np.uint8)
            image = 255 - image
        else:
            image = image.astype(dtype)
        labels = assert_same_as_skimage(image, markers, mask=mask, connectivity=connectivity)
        assert set(np.unique(labels[mask])) <= set(np.unique(markers[markers > 0]))


def test_identical_with_seed_regions_as_markers():
    # the postprocessing's situation: whole seed components as markers, many tied values
    rng = np.random.default_rng(7)
    for trial in range(6):
        mask = overlapping_disks(seed=10 + trial)
        prob = ndi.gaussian_filter(mask.astype(np.float32), 2.5) + rng.normal(0, 0.02, mask.shape).astype(np.float32)
        prob = np.round(prob * 64) / 64 if trial % 2 else prob  # quantised: plateaus
        seeds = ndi.label(prob > 0.8)[0]
        for connectivity in (1, 2):
            assert_same_as_skimage(-prob, seeds, mask=prob > 0.4, connectivity=connectivity)


@pytest.mark.slow
def test_second_process_loads_kernels_from_cache(tmp_path):
    code = (
        "import numpy as np\n"
        "from dsb.postprocess import watershed, _kernels\n"
        "watershed(np.random.default_rng(0).random((9, 9)).astype(np.float32), np.eye(9, dtype=np.int32))\n"
        "s = _kernels.watershed_flat.stats\n"
        "print(sum(s.cache_hits.values()), sum(s.cache_misses.values()))\n"
    )
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path), PYTHONPATH=str(REPO))
    runs = [subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
            for _ in range(2)]
    first, second = (tuple(map(int, r.stdout.split())) for r in runs)
    assert first == (0, 1)  # compiled and written to the cache
    assert second == (1, 0)  # loaded, not compiled


def test_threads_give_the_same_labels():
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(8)
    cases = [random_case(rng, (80, 90), kind, 0.01, True) for kind in ("ties", "smooth", "float64", "int") * 2]
    serial = [watershed(image, markers) for image, markers in cases]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(lambda case: watershed(*case), cases))
    for a, b in zip(serial, threaded):
        np.testing.assert_array_equal(a, b)
