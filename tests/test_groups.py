"""Experiment groups: near-identical fields of one experiment share a group; different
sizes, types or looks do not; names are deterministic."""

from __future__ import annotations

import numpy as np
import pytest

from dsb.data.dataset import Sample, balanced_weights, normalise_sample_size
from dsb.data.groups import assign_groups, image_features
from dsb.evaluate import bootstrap_interval


def _field(rng, shape, background, nucleus_px, n=12, colour=(1.0, 1.0, 1.0)):
    """A fluorescence-like field: ``n`` discs of radius ``nucleus_px`` on a flat background."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    gray = np.full(shape, background, np.float32)
    for _ in range(n):
        cy, cx = rng.integers(0, h), rng.integers(0, w)
        gray[(yy - cy) ** 2 + (xx - cx) ** 2 < nucleus_px ** 2] = 0.8
    gray += rng.normal(0, 0.01, shape).astype(np.float32)
    rgb = np.clip(gray[..., None] * np.float32(colour), 0, 1)
    return (rgb * 255).astype(np.uint8)


def test_fields_of_one_experiment_share_a_group_and_others_do_not():
    rng = np.random.default_rng(0)
    small = [_field(rng, (64, 64), 0.05, 3, n=30) for _ in range(4)]       # one experiment
    large = [_field(rng, (64, 64), 0.25, 12, n=3) for _ in range(3)]       # another look
    other_size = [_field(rng, (64, 80), 0.05, 3, n=30) for _ in range(2)]  # another microscope
    images = small + large + other_size
    ids = [f"img{i}" for i in range(len(images))]
    groups = assign_groups(ids, images, ["fluorescence"] * len(images))
    assert len({groups[i] for i in ids[:4]}) == 1
    assert len({groups[i] for i in ids[4:7]}) == 1
    assert groups[ids[0]] != groups[ids[4]]
    assert groups[ids[7]] == groups[ids[8]] != groups[ids[0]]
    assert groups[ids[7]].startswith("fluorescence-64x80-")
    # deterministic and independent of the input order
    again = assign_groups(ids[::-1], images[::-1], ["fluorescence"] * len(images))
    assert again == groups


def test_features_are_finite_for_any_image():
    for image in (np.zeros((5, 7), np.uint8), np.full((300, 20, 4), 255, np.uint8), np.random.default_rng(0).random((40, 40, 3))):
        feats = image_features(image)
        assert feats.ndim == 1 and np.isfinite(feats).all()


def test_balanced_weights_damp_big_groups_and_lift_rare_types():
    groups = ["big"] * 90 + ["small"] * 10 + ["rare"] * 4
    types = ["fluorescence"] * 100 + ["brightfield"] * 4
    w = balanced_weights(groups, types)
    assert w.sum() == pytest.approx(1.0)
    big, small, rare = w[:90].sum(), w[90:100].sum(), w[100:].sum()
    assert big / small == pytest.approx(3.0)          # sqrt(90) : sqrt(10)
    assert rare / (big + small) == pytest.approx(np.sqrt(4) / np.sqrt(100))
    assert rare > 4 / 104                             # more than its share of images


def test_size_normalisation_keeps_instances_and_scales_areas():
    label_map = np.zeros((40, 60), np.int32)
    label_map[5:15, 5:15] = 1
    label_map[20:30, 30:50] = 2
    image = np.zeros((40, 60, 3), np.uint8)
    image[label_map > 0] = 200
    sample = Sample("x", image, label_map, "fluorescence")
    up = normalise_sample_size(sample, 2.0)
    assert up.image.shape == (80, 120, 3) and up.label_map.shape == (80, 120)
    assert up.label_map.dtype == np.int32 and set(np.unique(up.label_map)) == {0, 1, 2}
    areas = np.bincount(up.label_map.ravel())[1:]
    np.testing.assert_allclose(areas, [400, 800], rtol=0.05)
    down = normalise_sample_size(sample, 0.5)
    assert down.label_map.shape == (20, 30) and set(np.unique(down.label_map)) == {0, 1, 2}
    assert normalise_sample_size(sample, 1.0) is sample


def test_bootstrap_interval_resamples_groups():
    rng = np.random.default_rng(0)
    scores = np.concatenate([np.full(50, 0.2), np.full(50, 0.8)]) + rng.normal(0, 0.01, 100)
    by_group = bootstrap_interval(scores, ["a"] * 50 + ["b"] * 50)
    by_image = bootstrap_interval(scores, [str(i) for i in range(100)])
    assert by_group[0] < 0.5 < by_group[1]
    # two groups are two observations: a far wider interval than 100 independent images
    assert by_group[1] - by_group[0] > 4 * (by_image[1] - by_image[0])
    assert bootstrap_interval(scores, ["a"] * 100, seed=1) == pytest.approx((scores.mean(), scores.mean()))

