"""dsb.postprocess.labels_from_probs and threshold_labels: probabilities to label maps."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from dsb.config import PostprocessConfig
from dsb.data.synthetic import make_sample
from dsb.data.targets import make_targets
from dsb.errors import ConfigError
from dsb.postprocess import labels_from_probs, threshold_labels

CHANNELS = ["body", "border", "touching"]
SMALL = PostprocessConfig(min_seed_area_px=1, min_area_px=1)


def disks(shape, centres_radii) -> np.ndarray:
    """Label map of disks drawn in order (later ones on top)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    label_map = np.zeros(shape, np.int32)
    for k, (cy, cx, r) in enumerate(centres_radii, start=1):
        label_map[(yy - cy) ** 2 + (xx - cx) ** 2 <= r**2] = k
    return label_map


def probs_from_labels(label_map, channels=CHANNELS, blur=0.0) -> np.ndarray:
    """What a perfect network would predict: the targets, optionally softened."""
    probs = make_targets(label_map, channels)
    if blur:
        probs = np.stack([ndi.gaussian_filter(p, blur) for p in probs])
    return probs.astype(np.float32)


def best_iou(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """For each true instance, its best IoU with a predicted one."""
    n_true, n_pred = truth.max(), pred.max()
    pairs = np.bincount(truth.ravel() * (n_pred + 1) + pred.ravel(), minlength=(n_true + 1) * (n_pred + 1))
    inter = pairs.reshape(n_true + 1, n_pred + 1)[1:, 1:].astype(float)
    area_t = np.bincount(truth.ravel(), minlength=n_true + 1)[1:, None]
    area_p = np.bincount(pred.ravel(), minlength=n_pred + 1)[None, 1:]
    return (inter / (area_t + area_p - inter)).max(axis=1) if n_pred else np.zeros(n_true)


def assert_valid_label_map(labels: np.ndarray, shape):
    assert labels.dtype == np.int32 and labels.shape == shape
    assert labels.min() >= 0
    ids = np.unique(labels)
    np.testing.assert_array_equal(ids[ids > 0], np.arange(1, labels.max() + 1))  # consecutive


def test_two_touching_disks_are_split_by_the_border_channels():
    truth = disks((60, 80), [(30, 28, 14), (30, 52, 14)])  # sharing a straight contact
    probs = probs_from_labels(truth, blur=0.7)
    assert threshold_labels(probs, CHANNELS, 0.5).max() == 1  # one blob without the channels
    labels = labels_from_probs(probs, CHANNELS, PostprocessConfig())
    assert_valid_label_map(labels, truth.shape)
    assert labels.max() == 2
    assert (best_iou(truth, labels) > 0.9).all()


@pytest.mark.parametrize("channels", [["body", "touching"], ["body", "border"], ["touching", "body", "border"]])
def test_either_channel_alone_splits_them(channels):
    truth = disks((60, 80), [(30, 28, 14), (30, 52, 14)])
    probs = probs_from_labels(truth, channels)
    labels = labels_from_probs(probs, channels, PostprocessConfig())
    assert labels.max() == 2 and (best_iou(truth, labels) > 0.85).all()


@pytest.mark.parametrize("channels", [["body"], CHANNELS])
def test_a_single_blob_stays_one(channels):
    truth = disks((50, 50), [(25, 25, 15)])
    labels = labels_from_probs(probs_from_labels(truth, channels, blur=1.0), channels, PostprocessConfig())
    assert labels.max() == 1 and best_iou(truth, labels)[0] > 0.9


def test_min_area_drops_specks():
    probs = np.zeros((1, 30, 30), np.float32)
    probs[0, 5:15, 5:15] = 0.95  # 100 px
    probs[0, 25:27, 25:27] = 0.95  # 4 px speck
    labels = labels_from_probs(probs, ["body"], PostprocessConfig(min_area_px=8, min_seed_area_px=1))
    assert labels.max() == 1 and labels[25, 25] == 0 and labels[10, 10] == 1
    labels = labels_from_probs(probs, ["body"], SMALL)
    assert labels.max() == 2


def test_small_seeds_are_ignored_but_their_blob_survives():
    probs = np.zeros((1, 30, 30), np.float32)
    probs[0, 5:15, 5:15] = 0.6  # foreground, below the seed threshold...
    probs[0, 9:11, 9:10] = 0.9  # ...with a 2-px core, under min_seed_area_px
    labels = labels_from_probs(probs, ["body"], PostprocessConfig(min_seed_area_px=4, min_area_px=8))
    assert labels.max() == 1 and (labels > 0).sum() == 100


def test_unseeded_foreground_becomes_its_own_instance():
    probs = np.zeros((1, 40, 40), np.float32)
    probs[0, 5:20, 5:20] = 0.95  # seeded
    probs[0, 25:35, 25:35] = 0.6  # foreground but never above seed_threshold
    labels = labels_from_probs(probs, ["body"], PostprocessConfig())
    assert labels.max() == 2
    assert len(np.unique(labels[25:35, 25:35])) == 1 and labels[30, 30] > 0


def test_holes_are_filled():
    probs = np.zeros((1, 40, 40), np.float32)
    probs[0, 5:35, 5:35] = 0.95
    probs[0, 15:25, 15:25] = 0.0  # a hole in the nucleus
    on = labels_from_probs(probs, ["body"], PostprocessConfig(fill_holes=True))
    off = labels_from_probs(probs, ["body"], PostprocessConfig(fill_holes=False))
    assert on.max() == off.max() == 1
    assert (on[15:25, 15:25] == 1).all() and (off[15:25, 15:25] == 0).all()


def test_hole_filling_takes_no_pixels_from_other_instances():
    # a ring (instance A) around a hole that holds a smaller nucleus (instance B),
    # and a gap enclosed by two instances together
    ring = disks((70, 70), [(35, 35, 25)])
    ring[disks((70, 70), [(35, 35, 15)]) > 0] = 0
    inner = disks((70, 70), [(35, 35, 6)])
    body = np.maximum(ring > 0, inner > 0).astype(np.float32)
    border = np.zeros_like(body)
    border[(inner > 0) & ~ndi.binary_erosion(inner > 0, iterations=2)] = 1.0
    probs = np.stack([body, border])
    labels = labels_from_probs(probs, ["body", "border"], PostprocessConfig(min_seed_area_px=1))
    assert labels.max() == 2
    assert labels[35, 35] != labels[35, 12]  # the inner nucleus stays itself
    assert (labels[inner > 0] == labels[35, 35]).all()
    assert (labels[35, 22:27] == 0).all()  # the gap between them is enclosed by two: left empty

    two = disks((40, 60), [(20, 20, 12), (20, 40, 12)])
    two[18:23, 28:33] = 0  # a gap enclosed by both disks together
    labels = labels_from_probs(probs_from_labels(two, ["body", "touching"]), ["body", "touching"],
                               PostprocessConfig(min_seed_area_px=1))
    assert labels.max() == 2 and (labels[18:23, 28:33] == 0).all()


def test_empty_probs_give_all_zeros():
    labels = labels_from_probs(np.zeros((3, 25, 30), np.float32), CHANNELS, PostprocessConfig())
    assert labels.dtype == np.int32 and labels.shape == (25, 30) and not labels.any()
    assert labels_from_probs(np.zeros((1, 0, 7), np.float32), ["body"], PostprocessConfig()).shape == (0, 7)
    assert not threshold_labels(np.zeros((1, 4, 4), np.float32), ["body"], 0.5).any()


def test_connectivity_two_joins_diagonal_pixels():
    probs = np.zeros((1, 10, 10), np.float32)
    probs[0, np.arange(10), np.arange(10)] = 0.95
    one = labels_from_probs(probs, ["body"], PostprocessConfig(min_seed_area_px=1, min_area_px=1, connectivity=2))
    many = labels_from_probs(probs, ["body"], PostprocessConfig(min_seed_area_px=1, min_area_px=1, connectivity=1))
    assert one.max() == 1 and many.max() == 10


def test_probs_are_not_modified():
    truth = disks((40, 40), [(20, 15, 9), (20, 26, 9)])
    probs = probs_from_labels(truth, blur=1.0)
    before = probs.copy()
    labels_from_probs(probs, CHANNELS, PostprocessConfig())
    np.testing.assert_array_equal(probs, before)


def test_errors():
    probs = np.zeros((2, 5, 5), np.float32)
    with pytest.raises(ConfigError, match="body"):
        labels_from_probs(probs, ["border", "touching"], PostprocessConfig())
    with pytest.raises(ConfigError, match="body"):
        threshold_labels(probs, ["border", "touching"], 0.5)
    with pytest.raises(ConfigError):
        labels_from_probs(probs, ["body", "nucleus"], PostprocessConfig())
    with pytest.raises(ValueError, match="channels"):
        labels_from_probs(probs, ["body"], PostprocessConfig())
    with pytest.raises(ValueError, match="K, H, W"):
        labels_from_probs(np.zeros((5, 5), np.float32), ["body"], PostprocessConfig())
    with pytest.raises(TypeError, match="float"):
        labels_from_probs(np.zeros((1, 5, 5), np.uint8), ["body"], PostprocessConfig())
    with pytest.raises(ConfigError, match="connectivity"):
        labels_from_probs(np.zeros((1, 5, 5), np.float32), ["body"], PostprocessConfig(connectivity=3))


def test_threshold_labels_is_plain_components():
    truth = disks((40, 60), [(20, 15, 10), (20, 44, 10), (20, 30, 6)])  # three touching in a row
    probs = probs_from_labels(truth)
    labels = threshold_labels(probs, CHANNELS, 0.5)
    assert labels.dtype == np.int32 and labels.max() == 1
    labels = labels_from_probs(probs, CHANNELS, PostprocessConfig())
    assert labels.max() == 3


def test_recovers_synthetic_nuclei_from_perfect_probabilities():
    recall, baseline = [], []
    for seed in range(4):
        _, truth = make_sample(seed, shape=(256, 320))
        probs = probs_from_labels(truth, blur=0.6)
        labels = labels_from_probs(probs, CHANNELS, PostprocessConfig())
        assert_valid_label_map(labels, truth.shape)
        recall.append((best_iou(truth, labels) > 0.7).mean())
        baseline.append((best_iou(truth, threshold_labels(probs, CHANNELS, 0.5)) > 0.7).mean())
    # small nuclei pressed against others lose their core to the border band and merge
    # (a tuning matter: min_seed_area_px, seed_threshold); the rest are found, and far
    # more than by thresholding, which merges every touching pair
    assert np.mean(recall) > 0.85
    assert all(r > b + 0.2 for r, b in zip(recall, baseline))


def test_full_size_image_gives_a_valid_label_map():
    """The largest DSB2018 size (1040x1388) goes through. Its speed is timed, with a 500 ms
    bound, by ``benchmarks/watershed.py``."""
    _, truth = make_sample(0, shape=(1040, 1388))
    probs = probs_from_labels(truth, blur=0.8)
    labels = labels_from_probs(probs, CHANNELS, PostprocessConfig())
    assert_valid_label_map(labels, truth.shape)
    assert labels.max() > 0
