"""Kaggle RLE: hand-made cases for the competition's rules, and round-trip properties."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dsb.errors import DataError, SubmissionError
from dsb.rle import (
    HEADER,
    label_map_to_rows,
    label_map_to_runs,
    mask_runs,
    pairs_to_rle,
    read_rle_rows,
    rle_decode,
    rle_encode,
    rle_to_pairs,
    runs_to_label_map,
)

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def merged(runs: np.ndarray) -> np.ndarray:
    """Join runs that touch (one ends right before the next starts) into one."""
    runs = np.asarray(runs, np.int64).reshape(-1, 2)
    if len(runs) < 2:
        return runs
    touches = runs[1:, 0] == runs[:-1, 0] + runs[:-1, 1]
    group = np.concatenate(([0], np.cumsum(~touches)))
    starts = runs[np.concatenate(([True], ~touches)), 0]
    return np.stack([starts, np.bincount(group, weights=runs[:, 1]).astype(np.int64)], axis=1)


def naive_runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Reference encoder in plain Python: walk columns left to right, each top to bottom."""
    height, width = mask.shape
    runs: list[list[int]] = []
    previous = False
    for col in range(width):
        for row in range(height):
            number = col * height + row + 1  # 1-indexed, column-major
            if mask[row, col]:
                if previous:
                    runs[-1][1] += 1
                else:
                    runs.append([number, 1])
            previous = bool(mask[row, col])
    return [tuple(r) for r in runs]


# ----------------------------------------------------------------- Kaggle's rules by hand


def test_starts_are_one_indexed():
    mask = np.zeros((3, 4), bool)
    mask[0, 0] = True
    assert rle_encode(mask) == "1 1"


def test_pixels_are_numbered_top_to_bottom_then_left_to_right():
    mask = np.zeros((3, 4), bool)  # H=3: pixel (row r, col c) is number c*3 + r + 1
    mask[1, 0] = True  # 2
    mask[0, 1] = True  # 4
    mask[2, 3] = True  # 12, the last pixel
    assert rle_encode(mask) == "2 1 4 1 12 1"
    # A run continues from the bottom of one column to the top of the next.
    mask = np.zeros((3, 4), bool)
    mask[2, 0] = mask[0, 1] = mask[1, 1] = True
    assert rle_encode(mask) == "3 3"


def test_pairs_come_sorted_and_decode_back():
    mask = np.zeros((5, 5), bool)
    mask[4, 4] = True
    mask[0, 0] = True
    mask[1:4, 2] = True
    assert rle_encode(mask) == "1 1 12 3 25 1"
    np.testing.assert_array_equal(rle_decode("1 1 12 3 25 1", (5, 5)), mask)


def test_kaggle_style_decode_of_a_known_string():
    # "1 3 10 2" on a 4x3 image: pixels 1-3 (col 0, rows 0-2) and 10-11 (col 2, rows 1-2).
    expected = np.zeros((4, 3), bool)
    expected[0:3, 0] = True
    expected[1:3, 2] = True
    np.testing.assert_array_equal(rle_decode("1 3 10 2", (4, 3)), expected)


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (7, 1), (3, 5)])
def test_full_first_and_last_pixel(shape):
    n = shape[0] * shape[1]
    assert rle_encode(np.ones(shape, bool)) == f"1 {n}"
    last = np.zeros(shape, bool)
    last[-1, -1] = True
    assert rle_encode(last) == f"{n} 1"
    np.testing.assert_array_equal(rle_decode(f"{n} 1", shape), last)
    assert rle_encode(np.zeros(shape, bool)) == ""


def test_decode_empty_forms():
    for empty in ("", "   ", None, float("nan")):
        decoded = rle_decode(empty, (2, 3))
        assert decoded.shape == (2, 3) and decoded.dtype == bool and not decoded.any()
    assert rle_to_pairs("").shape == (0, 2)
    assert pairs_to_rle(np.zeros((0, 2), np.int64)) == ""


def test_decode_rejects_bad_runs():
    with pytest.raises(DataError, match="past the last pixel"):
        rle_decode("12 2", (3, 4))
    with pytest.raises(DataError):
        rle_decode("0 2", (3, 4))
    with pytest.raises(DataError):
        rle_decode("3 0", (3, 4))
    with pytest.raises(ValueError, match="odd"):
        rle_decode("1 2 3", (3, 4))
    with pytest.raises(ValueError, match="integer"):
        rle_decode("1 x", (3, 4))


def test_label_map_rows_by_hand():
    label_map = np.array([[0, 5, 5], [9, 5, 0], [9, 0, 0]], dtype=np.int32)
    # 5 covers pixels 4, 5 (column 1) and 7 (column 2); 9 covers 2, 3 (column 0).
    assert label_map_to_rows("img", label_map) == [("img", "4 2 7 1"), ("img", "2 2")]
    assert label_map_to_rows("img", np.zeros((2, 2), np.int32)) == [("img", "")]


def test_label_map_checks_and_does_not_modify():
    with pytest.raises(ValueError, match="2-D"):
        list(label_map_to_runs(np.zeros((2, 2, 2), np.int32)))
    with pytest.raises(ValueError, match="integer"):
        list(label_map_to_runs(np.zeros((2, 2), np.float32)))
    with pytest.raises(ValueError, match="negative"):
        list(label_map_to_runs(np.array([[0, -1]], np.int32)))
    label_map = np.array([[3, 3], [0, 7]], np.int32)
    before = label_map.copy()
    list(label_map_to_runs(label_map))
    np.testing.assert_array_equal(label_map, before)


def test_runs_to_label_map_reports_overlaps_first_row_wins():
    runs = [np.array([[1, 3]]), np.array([[3, 2]])]
    label_map, n_overlap = runs_to_label_map(runs, (2, 3))
    assert n_overlap == 1
    assert label_map.dtype == np.int32
    np.testing.assert_array_equal(label_map.ravel(order="F"), [1, 1, 1, 2, 0, 0])


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.int64])
def test_label_map_dtypes(dtype):
    label_map = np.zeros((4, 5), dtype)
    label_map[1:3, 1:4] = 200
    label_map[3, 4] = 3
    runs = dict(label_map_to_runs(label_map))
    assert sorted(runs) == [3, 200]
    np.testing.assert_array_equal(runs[3], [[20, 1]])
    np.testing.assert_array_equal(runs[200], mask_runs(label_map == 200))


# ----------------------------------------------------------------- properties

shapes = st.one_of(
    st.tuples(st.integers(1, 40), st.integers(1, 40)),
    st.tuples(st.just(1), st.integers(1, 200)),  # 1 x N
    st.tuples(st.integers(1, 200), st.just(1)),  # N x 1
)


@st.composite
def masks(draw):
    shape = draw(shapes)
    # Mix dense random masks with sparse ones so edge pixels turn up often.
    density = draw(st.sampled_from([0.05, 0.5, 0.95]))
    seed = draw(st.integers(0, 2**32 - 1))
    mask = np.random.default_rng(seed).random(shape) < density
    corners = draw(st.lists(st.sampled_from(["first", "last", "top-right", "bottom-left"]), max_size=4))
    for corner in corners:
        mask[{"first": (0, 0), "last": (-1, -1), "top-right": (0, -1), "bottom-left": (-1, 0)}[corner]] = True
    return mask


@st.composite
def label_maps(draw):
    """Label maps with non-consecutive ids (and sometimes no background at all)."""
    shape = draw(shapes)
    n_labels = draw(st.integers(0, 12))
    ids = draw(st.lists(st.integers(1, 5000), min_size=n_labels, max_size=n_labels, unique=True))
    small = draw(hnp.arrays(np.int64, shape, elements=st.integers(0, n_labels)))
    lut = np.array([0] + ids, dtype=np.int64)
    return lut[small].astype(draw(st.sampled_from([np.int32, np.int64, np.uint16])))


@PROPERTY
@given(masks())
@example(np.zeros((1, 1), bool))
@example(np.ones((1, 1), bool))
@example(np.eye(1, 9, 8, dtype=bool))  # only the last pixel of a 1x9 image
@example(np.eye(9, 1, -8, dtype=bool))  # only the last pixel of a 9x1 image
def test_encode_decode_round_trip(mask):
    rle = rle_encode(mask)
    np.testing.assert_array_equal(rle_decode(rle, mask.shape), mask)
    pairs = rle_to_pairs(rle)
    assert [tuple(p) for p in pairs.tolist()] == naive_runs(mask)
    if len(pairs):
        starts, lengths = pairs[:, 0], pairs[:, 1]
        assert starts.min() >= 1 and lengths.min() >= 1
        assert (starts + lengths - 1).max() <= mask.size
        # Sorted and maximal: each run starts after a gap of at least one pixel.
        assert (starts[1:] > starts[:-1] + lengths[:-1]).all()


@PROPERTY
@given(label_maps())
@example(np.zeros((1, 1), np.int32))
@example(np.full((3, 1), 4000, np.int32))
@example(np.array([[0, 0, 0, 17]], np.int32))
def test_label_map_round_trip(label_map):
    before = label_map.copy()
    instances = list(label_map_to_runs(label_map))
    labels = [label for label, _ in instances]
    assert labels == sorted(set(np.unique(label_map).tolist()) - {0})
    for label, runs in instances:
        assert runs.dtype == np.int64 and runs.shape[1] == 2
        starts, ends = runs[:, 0], runs[:, 0] + runs[:, 1] - 1
        assert (runs >= 1).all() and ends.max() <= label_map.size
        assert (starts[1:] > ends[:-1]).all()  # sorted, non-overlapping
        # Same pixels as the whole-image encoder; see test_runs_join_across_columns for
        # the one way the strings can differ (a run wrapping into the next column).
        np.testing.assert_array_equal(merged(runs), mask_runs(label_map == label))

    rebuilt, n_overlap = runs_to_label_map([runs for _, runs in instances], label_map.shape)
    assert n_overlap == 0 and rebuilt.dtype == np.int32
    # Painted in order 1..n: the same partition, ids relabelled consecutively.
    lut = np.zeros(int(label_map.max()) + 1, np.int64)
    lut[labels] = np.arange(1, len(labels) + 1)
    np.testing.assert_array_equal(rebuilt, lut[label_map])

    rows = label_map_to_rows("x", label_map)
    if not labels:
        assert rows == [("x", "")]
    else:
        assert [image_id for image_id, _ in rows] == ["x"] * len(labels)
        for (_, rle), label in zip(rows, labels):
            np.testing.assert_array_equal(rle_decode(rle, label_map.shape), label_map == label)
    np.testing.assert_array_equal(label_map, before)


def test_runs_join_across_columns():
    """A nucleus running from the bottom of a column into the top of the next (full
    image height) is one run, exactly as rle_encode of its mask gives."""
    label_map = np.array([[0, 3, 3, 3]], np.int32)  # 1x4: one horizontal nucleus
    assert label_map_to_rows("z", label_map) == [("z", rle_encode(label_map == 3))] == [("z", "2 3")]
    tall = np.zeros((5, 4), np.int32)
    tall[3:, 0] = 1
    tall[:2, 1] = 1  # continues from (4, 0) into (0, 1): pixels 4..7
    tall[2, 2] = 2
    assert label_map_to_rows("t", tall) == [("t", "4 4"), ("t", "13 1")]
    assert label_map_to_rows("t", tall)[0][1] == rle_encode(tall == 1)


def test_large_label_id():
    label_map = np.zeros((6, 4), np.int64)
    label_map[2:4, 1] = 123_456
    assert label_map_to_rows("y", label_map) == [("y", "9 2")]


# ----------------------------------------------------------------- RLE CSV files (the one reader)


def test_read_rle_rows_keeps_every_column_and_the_real_lines(tmp_path):
    path = tmp_path / "solution.csv"
    path.write_text('ImageId,EncodedPixels,Usage\na,1 2,Public\n\nb,"3 1\n4 1",Private\nc,,Public\n', newline="")
    rows = read_rle_rows(path, extra_columns=True)
    assert rows.name == str(path) and len(rows) == 3
    assert list(rows.columns) == ["ImageId", "EncodedPixels", "Usage"]
    assert rows.columns["EncodedPixels"] == ["1 2", "3 1\n4 1", ""]  # as written: nothing judged
    assert rows.lines.tolist() == [2, 4, 6]  # the blank line 3 skipped, line 5 inside a field
    with pytest.raises(DataError, match=f"line 1 must be exactly {HEADER!r}"):
        read_rle_rows(path)  # a submission's header is exact
    with pytest.raises(SubmissionError, match="line 1 must be exactly"):
        read_rle_rows(path, error=SubmissionError)


def test_read_rle_rows_header_needs_both_columns_once(tmp_path):
    path = tmp_path / "twice.csv"
    path.write_text("ImageId,EncodedPixels,ImageId\na,1 1,a\n")
    with pytest.raises(DataError, match=r"twice.csv: line 1: the header needs .*; ImageId more than once"):
        read_rle_rows(path, extra_columns=True)
    path.write_text("ImageId, EncodedPixels,Usage\na,1 1,Public\n")  # names as written
    with pytest.raises(DataError, match=r"twice.csv: line 1: the header needs .*; missing EncodedPixels"):
        read_rle_rows(path, extra_columns=True)
    path.write_text("\n")
    with pytest.raises(DataError, match="twice.csv: empty file; expected the header 'ImageId,EncodedPixels'"):
        read_rle_rows(path, extra_columns=True)


def test_read_rle_rows_names_the_zip_member(tmp_path):
    path = tmp_path / "labels.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("inner/labels.csv", "ImageId,EncodedPixels\na,1 1\n")
        zf.writestr("__MACOSX/inner/._labels.csv", "junk")
    rows = read_rle_rows(path)
    assert rows.name == f"{path}:inner/labels.csv" and rows.columns["ImageId"] == ["a"]
