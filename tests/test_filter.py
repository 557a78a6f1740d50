"""The instance filter learns out of fold which predicted instances are false and drops them."""

from __future__ import annotations

import numpy as np
import pytest

from dsb.config import PostprocessConfig
from dsb.errors import CheckpointError
from dsb.evaluate import OofItem, fit_instance_filter
from dsb.postprocess.filter import FEATURES, instance_features, instance_ious, load_filter

POST = PostprocessConfig(seed_threshold=0.5, mask_threshold=0.5, min_seed_area_px=1, min_area_px=1)


def _item(rng, index):
    """True nuclei (discs of radius 6, body 0.9) and spurious faint specks (radius 2, body 0.6)."""
    size = 96
    yy, xx = np.mgrid[:size, :size]
    truth = np.zeros((size, size), np.int32)
    body = np.zeros((size, size), np.float32)
    for k in range(6):
        cy, cx = 12 + 24 * (k // 3) + rng.integers(-3, 4), 16 + 30 * (k % 3) + rng.integers(-3, 4)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= 36
        truth[disc] = k + 1
        body[disc] = 0.9
    for _ in range(4):
        cy, cx = rng.integers(60, 92), rng.integers(4, 92)
        body[(yy - cy) ** 2 + (xx - cx) ** 2 <= 4] = 0.6
    probs = np.clip(body + rng.normal(0, 0.02, body.shape), 0, 1)[None].astype(np.float32)
    quantised = np.rint(probs * 255).astype(np.uint8)
    return OofItem(f"img{index}", "fluorescence", index % 2, quantised, truth, group=f"g{index % 5}")


def test_filter_drops_spurious_instances_out_of_fold(tmp_path):
    rng = np.random.default_rng(0)
    items = [_item(rng, i) for i in range(20)]
    result = fit_instance_filter(items, ["body"], POST)
    assert result.map_after > result.map_before + 0.1, (result.map_before, result.map_after)
    assert result.filter.threshold > 0 and result.n_instances >= 20 * 6
    path = result.filter.save(tmp_path / "f.pkl")
    again = load_filter(path)
    from dsb.postprocess import labels_from_probs

    item = _item(np.random.default_rng(99), 0)
    probs = item.probs.astype(np.float32) / 255
    pred = labels_from_probs(probs, ["body"], POST)
    kept = again.apply(pred, probs)
    assert kept.max() == 6 and pred.max() > 6            # the specks are gone, the nuclei stay
    assert set(np.unique(kept)) == set(range(7))         # renumbered without gaps


def test_features_and_ious_shapes():
    labels = np.zeros((10, 10), np.int32)
    labels[1:4, 1:4] = 1
    labels[6:9, 6:9] = 2
    feats = instance_features(labels, np.full((3, 10, 10), 0.5, np.float32), ["body", "border", "touching"])
    assert feats.shape == (2, len(FEATURES)) and np.isfinite(feats).all()
    truth = np.zeros_like(labels)
    truth[1:4, 1:5] = 1
    np.testing.assert_allclose(instance_ious(truth, labels), [9 / 12, 0.0])
    assert instance_features(np.zeros((4, 4), np.int32), np.zeros((1, 4, 4), np.float32), ["body"]).shape == (0, len(FEATURES))


def test_a_file_that_is_not_a_filter_is_a_checkpoint_error(tmp_path):
    bad = tmp_path / "x.pkl"
    bad.write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match="x.pkl"):
        load_filter(bad)


def test_the_filter_runs_before_the_growth_of_expand_px():
    """Growing nuclei first would widen them into background of low probability and make the
    filter (fitted on ungrown instances) drop them; `filtered_labels` filters, then grows."""
    import dataclasses

    from scipy import ndimage

    from dsb.postprocess import labels_from_probs
    from dsb.postprocess.filter import InstanceFilter, filtered_labels

    class MeanProbFilter(InstanceFilter):  # predicts each instance's IoU as its mean body probability
        def predict_iou(self, label_map, probs):
            return np.asarray(ndimage.mean(probs[0], label_map, np.arange(1, label_map.max() + 1)))

    keep_confident = MeanProbFilter(model=None, threshold=0.8, channels=("body",))
    yy, xx = np.mgrid[:48, :48]
    probs = np.zeros((1, 48, 48), np.float32)
    for cy, cx in [(12, 12), (32, 30)]:
        probs[0][(yy - cy) ** 2 + (xx - cx) ** 2 <= 25] = 0.9
    post = dataclasses.replace(POST, expand_px=2.0)
    labels = filtered_labels(probs, ["body"], post, keep_confident)
    plain = labels_from_probs(probs, ["body"], dataclasses.replace(post, expand_px=0.0))
    assert labels.max() == 2 and np.count_nonzero(labels) > 1.4 * np.count_nonzero(plain)
    grown_first = labels_from_probs(probs, ["body"], post)
    assert (keep_confident.predict_iou(grown_first, probs) < keep_confident.threshold).all()  # grown first: rejected
    # without a filter it is labels_from_probs itself
    np.testing.assert_array_equal(filtered_labels(probs, ["body"], post, None), labels_from_probs(probs, ["body"], post))


def test_filter_fitted_for_grown_nuclei_still_drops_the_specks():
    import dataclasses

    rng = np.random.default_rng(0)
    items = [_item(rng, i) for i in range(20)]
    result = fit_instance_filter(items, ["body"], dataclasses.replace(POST, expand_px=1.0))
    assert result.map_after > result.map_before + 0.1 and result.filter.threshold > 0


def test_the_filter_never_empties_an_image():
    """Every image holds nuclei and an empty prediction scores 0 on it: where the filter would
    reject every instance of an image it keeps them all; otherwise it drops the rejected ones."""
    from scipy import ndimage

    from dsb.postprocess.filter import InstanceFilter

    class MeanProbFilter(InstanceFilter):
        def predict_iou(self, label_map, probs):
            return np.asarray(ndimage.mean(probs[0], label_map, np.arange(1, label_map.max() + 1)))

    labels = np.zeros((40, 40), np.int32)
    labels[4:12, 4:12], labels[20:30, 20:30] = 1, 2
    probs = np.zeros((1, 40, 40), np.float32)
    probs[0][labels == 1], probs[0][labels == 2] = 0.7, 0.95
    strict = MeanProbFilter(model=None, threshold=0.9, channels=("body",))
    kept = strict.apply(labels, probs)
    assert kept.max() == 1 and np.array_equal(kept > 0, labels == 2)   # the doubtful one goes
    probs[0][labels == 2] = 0.8                                         # now both are doubtful
    np.testing.assert_array_equal(strict.apply(labels, probs), labels)  # both stay
