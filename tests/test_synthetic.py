"""Synthetic nuclei: shapes and dtypes, determinism, realism checks, dataset files."""

from __future__ import annotations

import csv
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from dsb.data.imagetypes import IMAGE_TYPES, classify_image
from dsb.data.kaggle import open_stage, read_rle_csv
from dsb.data.synthetic import (
    SHAPES,
    SOLUTION_COLUMNS,
    generate_samples,
    make_sample,
    sample_kind,
    write_synthetic_dataset,
)
from dsb.errors import DataError


@pytest.fixture(scope="module")
def samples():
    return generate_samples(12, seed=0)


def touching_pairs(label_map: np.ndarray) -> set[tuple[int, int]]:
    """Pairs of different nuclei that are 4-neighbours somewhere."""
    pairs = set()
    for a, b in ((label_map[:, :-1], label_map[:, 1:]), (label_map[:-1], label_map[1:])):
        touch = (a > 0) & (b > 0) & (a != b)
        pairs |= set(zip(a[touch].tolist(), b[touch].tolist()))
    return pairs


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("kind", IMAGE_TYPES)
def test_make_sample(kind):
    image, label_map = make_sample(np.random.default_rng(1), kind=kind, shape=(161, 519))
    assert image.shape == (161, 519, 3) and image.dtype == np.uint8
    assert label_map.shape == (161, 519) and label_map.dtype == np.int32
    n = label_map.max()
    assert n >= 1 and np.array_equal(np.unique(label_map), np.arange(n + 1))
    assert classify_image(image) == kind
    gray = kind != "stained"
    assert gray == bool((image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all())
    # Nuclei differ from the background in the expected direction.
    inside, outside = image[label_map > 0].mean(), image[label_map == 0].mean()
    assert (inside > outside + 20) if kind == "fluorescence" else (inside < outside - 20)


def test_make_sample_defaults_and_errors():
    image, label_map = make_sample(5)  # an int seed is accepted
    assert image.shape[:2] in SHAPES and label_map.shape == image.shape[:2]
    image, label_map = make_sample(np.random.default_rng(0), shape=(9, 11))
    assert image.shape == (9, 11, 3) and label_map.max() >= 1
    with pytest.raises(ValueError, match="unknown kind"):
        make_sample(0, kind="xray")
    with pytest.raises(ValueError, match="at least 8x8"):
        make_sample(0, shape=(4, 40))


def test_samples_look_like_the_competition(samples):
    assert [sample_kind(i) for i in range(4)] == ["fluorescence", "stained", "fluorescence", "brightfield"]
    areas = []
    for index, (image_id, image, label_map) in enumerate(samples):
        assert re.fullmatch("[0-9a-f]{64}", image_id)
        assert classify_image(image) == sample_kind(index)
        # Every sample has nuclei that touch, each nucleus in one piece.
        assert touching_pairs(label_map)
        n = int(label_map.max())
        assert all(ndimage.label(label_map == k)[1] == 1 for k in range(1, n + 1))
        areas.extend(np.bincount(label_map.ravel())[1:].tolist())
    assert len({s.image_id for s in samples}) == len(samples)
    assert len({s.image.shape for s in samples}) >= 3
    assert min(areas) >= 8 and min(areas) <= 40 and max(areas) >= 1000  # radius ~2 to ~30 px


def test_generation_is_deterministic(samples):
    again = generate_samples(12, seed=0)
    for a, b in zip(samples, again):
        assert a.image_id == b.image_id
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.label_map, b.label_map)
    # Sample i depends on (seed, i) only: a smaller n is a prefix.
    np.testing.assert_array_equal(generate_samples(2, seed=0)[1].image, samples[1].image)
    other = generate_samples(2, seed=1)
    assert other[0].image_id != samples[0].image_id
    assert other[0].image.shape != samples[0].image.shape or not np.array_equal(other[0].image, samples[0].image)


def test_written_dataset_is_byte_identical_for_a_seed(tmp_path):
    a = write_synthetic_dataset(tmp_path / "a", n=2, seed=4)
    b = write_synthetic_dataset(tmp_path / "b", n=2, seed=4)
    c = write_synthetic_dataset(tmp_path / "c", n=2, seed=5)
    assert tree_bytes(a.path) == tree_bytes(b.path) != tree_bytes(c.path)
    assert a.solution_csv.read_bytes() == b.solution_csv.read_bytes() != c.solution_csv.read_bytes()
    za = write_synthetic_dataset(tmp_path / "za.zip", n=2, seed=4)
    zb = write_synthetic_dataset(tmp_path / "zb", n=2, seed=4, as_zip=True)
    assert zb.path == tmp_path / "zb.zip" and zb.solution_csv == tmp_path / "zb_solution.csv"
    assert za.path.read_bytes() == zb.path.read_bytes()
    with zipfile.ZipFile(za.path) as zf:
        assert {n: zf.read(n) for n in zf.namelist()} == tree_bytes(a.path)


def test_dataset_layout_and_solution(tmp_path):
    dataset = write_synthetic_dataset(tmp_path / "stage", n=5, seed=2, public_fraction=0.4)
    assert dataset.solution_csv == tmp_path / "stage_solution.csv"
    assert [p.name for p in sorted(tmp_path.iterdir())] == ["stage", "stage_solution.csv"]  # no temporaries
    samples = generate_samples(5, seed=2)
    assert dataset.image_ids == tuple(s.image_id for s in samples)
    for index, (image_id, image, label_map) in enumerate(samples):
        folder = dataset.path / image_id
        masks = sorted((folder / "masks").iterdir())
        assert [p.name for p in (folder / "images").iterdir()] == [f"{image_id}.png"]
        assert len(masks) == label_map.max() == dataset.n_nuclei[image_id]
        assert dataset.kinds[image_id] == sample_kind(index)
    with open(dataset.solution_csv, newline="") as fh:
        rows = list(csv.reader(fh))
    assert tuple(rows[0]) == SOLUTION_COLUMNS
    assert len(rows) - 1 == sum(dataset.n_nuclei.values())
    table = read_rle_csv(dataset.solution_csv)
    assert [table.usage(i) for i in dataset.image_ids] == ["Public"] * 2 + ["Private"] * 3
    for image_id, image, label_map in samples:
        assert table.shape(image_id) == label_map.shape
        np.testing.assert_array_equal(table.label_map(image_id), label_map)


def test_dataset_without_masks_and_overwrite(tmp_path):
    dataset = write_synthetic_dataset(tmp_path / "test", n=2, seed=0, masks=False)
    assert not any(dataset.path.glob("*/masks"))
    assert not open_stage(dataset.path).has_labels
    with pytest.raises(DataError, match="already exists .*overwrite"):
        write_synthetic_dataset(tmp_path / "test", n=2, seed=0)
    again = write_synthetic_dataset(tmp_path / "test", n=3, seed=0, overwrite=True)
    assert len(open_stage(again.path)) == 3 and open_stage(again.path).has_labels
    with pytest.raises(DataError, match="at least one image"):
        write_synthetic_dataset(tmp_path / "none", n=0)
