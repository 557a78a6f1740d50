"""The competition metric: hand-computed cases (ties in integers) and agreement with stardist.

The hand-made cases always run; only the comparisons with stardist (a dev extra) need it,
through the ``stardist_matching`` fixture, and each skips alone when it is absent.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage
from skimage.draw import ellipse
from skimage.segmentation import expand_labels

from dsb.metrics import THRESHOLDS, DatasetScore, ImageScore, image_score, score_label_maps


@pytest.fixture(scope="module")
def stardist_matching():
    """``stardist.matching``, the independent reference; the test asking for it skips without it."""
    return pytest.importorskip("stardist.matching")

# ----------------------------------------------------------------- helpers


def strip(n: int, length: int = 10) -> np.ndarray:
    """A 1 x length label map whose first n pixels are nucleus 1."""
    labels = np.zeros((1, length), np.int32)
    labels[0, :n] = 1
    return labels


def hits_from(k_first_miss: int) -> list[int]:
    """TP per threshold for one pair whose IoU is a hit below t = k_first_miss / 20."""
    return [1 if k < k_first_miss else 0 for k in range(10, 20)]


# ----------------------------------------------------------------- by hand


def test_thresholds():
    np.testing.assert_allclose(THRESHOLDS, np.arange(0.5, 0.951, 0.05))
    assert len(THRESHOLDS) == 10


@pytest.mark.parametrize(
    "inter, union, tp",
    [
        (4, 5, hits_from(16)),  # IoU 0.8 exactly: a hit at 0.50..0.75, not at 0.80
        (1, 2, [0] * 10),  # IoU 0.5 exactly: not a hit even at 0.50
        (3, 5, hits_from(12)),  # IoU 0.6 exactly: hits at 0.50, 0.55 only
        (19, 20, hits_from(19)),  # IoU 0.95 exactly: every threshold but 0.95
        (20, 20, [1] * 10),  # identical
        (11, 20, hits_from(11)),  # 0.55 exactly
        (51, 100, [1] + [0] * 9),  # just above 0.5
    ],
)
def test_iou_exactly_at_a_threshold_is_not_a_hit(inter, union, tp):
    # True nucleus = the first `union` pixels, prediction = the first `inter`: IoU inter/union.
    true = strip(union, length=union + 3)
    pred = strip(inter, length=union + 3)
    score = image_score(true, pred)
    assert score.tp.tolist() == tp
    assert score.fp.tolist() == [1 - t for t in tp] == score.fn.tolist()
    # One true and one predicted nucleus: precision is 1 on a hit, 0 otherwise.
    assert score.score == pytest.approx(sum(tp) / 10, abs=1e-12)
    assert (score.n_true, score.n_pred) == (1, 1)


def test_two_by_two_counts():
    # True: A (cols 0-3), B (cols 6-9). Pred: a = A exactly, b = 3 of B's 4 pixels (IoU
    # 0.75), c = a false positive far away.
    true = np.zeros((1, 16), np.int32)
    true[0, 0:4], true[0, 6:10] = 1, 2
    pred = np.zeros((1, 16), np.int32)
    pred[0, 0:4], pred[0, 6:9], pred[0, 13] = 10, 20, 30
    s = image_score(true, pred)
    assert s.tp.tolist() == [2] * 5 + [1] * 5  # b is a hit while t < 0.75
    assert s.fp.tolist() == [1] * 5 + [2] * 5
    assert s.fn.tolist() == [0] * 5 + [1] * 5
    expected = (5 * 2 / 3 + 5 * 1 / 4) / 10
    assert s.score == pytest.approx(expected, abs=1e-12)
    np.testing.assert_allclose(s.precision, [2 / 3] * 5 + [1 / 4] * 5)


def test_empty_cases():
    empty = np.zeros((5, 7), np.int32)
    some = empty.copy()
    some[1:3, 2:4] = 4
    both_empty = image_score(empty, empty)
    assert both_empty.score == 1.0 and both_empty.n_true == both_empty.n_pred == 0
    np.testing.assert_array_equal(both_empty.precision, np.ones(10))
    assert image_score(some, empty).score == 0.0  # truth, no prediction
    assert image_score(empty, some).score == 0.0  # prediction, no truth
    assert image_score(some, empty).fn.tolist() == [1] * 10
    assert image_score(empty, some).fp.tolist() == [1] * 10
    # Zero-size images are empty too.
    assert image_score(np.zeros((0, 3), np.int32), np.zeros((0, 3), np.int32)).score == 1.0


def test_ids_need_not_be_consecutive_or_agree():
    rng = np.random.default_rng(0)
    true = synthetic_labels(rng, (64, 80), 12)
    pred = perturb(rng, true)
    reference = image_score(true, pred)
    # Remap ids to scattered, huge (np.unique path) and unsigned values; drop background.
    for t_ids, p_ids, dtype in [
        (np.arange(13) * 7, np.arange(pred.max() + 1) * 1000, np.int32),
        (np.arange(13) * 2**40, np.arange(pred.max() + 1) * 3 + 2**50, np.int64),
        ((13 - np.arange(13)) * 3, np.arange(pred.max() + 1), np.uint16),  # order reversed
    ]:
        t_ids, p_ids = t_ids.copy(), p_ids.copy()
        t_ids[0] = p_ids[0] = 0
        s = image_score(t_ids[true].astype(dtype), p_ids[pred].astype(dtype))
        np.testing.assert_array_equal(s.tp, reference.tp)
        assert s.score == reference.score
    # No background pixel at all: the whole image is nuclei.
    full = np.repeat(np.array([[5, 5, 9, 9]]), 3, axis=0)
    assert image_score(full, full + 1).score == 1.0


def test_sparse_table_for_many_labels_gives_the_same_counts(monkeypatch):
    import dsb.metrics

    rng = np.random.default_rng(2)
    true = synthetic_labels(rng, (90, 70), 20)
    preds = [perturb(rng, true), rng.integers(0, 3000, size=true.shape)]  # the second: noise
    dense = [image_score(true, p) for p in preds]
    monkeypatch.setattr(dsb.metrics, "_MAX_DENSE_CELLS", 16)  # force relabel + np.unique
    for pred, expected in zip(preds, dense):
        s = image_score(true.astype(np.uint64), pred.astype(np.uint64))
        for field in ("tp", "fp", "fn"):
            np.testing.assert_array_equal(getattr(s, field), getattr(expected, field))
        assert (s.n_true, s.n_pred, s.score) == (expected.n_true, expected.n_pred, expected.score)


def test_records_are_immutable_and_inputs_untouched():
    rng = np.random.default_rng(1)
    true = synthetic_labels(rng, (40, 40), 6)
    pred = perturb(rng, true)
    true_before, pred_before = true.copy(), pred.copy()
    s = image_score(true, pred, image_id="abc")
    np.testing.assert_array_equal(true, true_before)
    np.testing.assert_array_equal(pred, pred_before)
    assert isinstance(s, ImageScore) and s.image_id == "abc"
    assert s.tp.dtype == np.int64 and s.tp.shape == (10,)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.score = 1.0  # type: ignore[misc]
    with pytest.raises(ValueError):
        s.tp[0] = 5
    dataset = score_label_maps([("a", true, pred)])
    with pytest.raises(TypeError):
        dataset.per_image["a"] = 0.0  # type: ignore[index]


def test_bad_inputs():
    with pytest.raises(ValueError, match="shapes"):
        image_score(np.zeros((2, 3), np.int32), np.zeros((3, 2), np.int32))
    with pytest.raises(ValueError, match="integer"):
        image_score(np.zeros((2, 2), np.float32), np.zeros((2, 2), np.int32))
    with pytest.raises(ValueError, match="negative"):
        image_score(np.zeros((2, 2), np.int32), -np.ones((2, 2), np.int32))


def test_dataset_score_is_the_mean_over_images():
    empty = np.zeros((4, 4), np.int32)
    one = empty.copy()
    one[:2, :2] = 1
    pairs = [("perfect", one, one), ("missed", one, empty), ("both-empty", empty, empty)]
    result = score_label_maps(pairs)
    assert isinstance(result, DatasetScore)
    assert result.n_images == 3
    assert dict(result.per_image) == {"perfect": 1.0, "missed": 0.0, "both-empty": 1.0}
    assert result.map == pytest.approx(2 / 3)
    np.testing.assert_allclose(result.per_threshold, [2 / 3] * 10)
    assert [s.image_id for s in result.worst(2)] == ["missed", "both-empty"]
    as_dict = result.to_dict()
    assert as_dict["map"] == result.map and as_dict["n_images"] == 3
    assert as_dict["tp"] == [1] * 10 and as_dict["fn"] == [1] * 10 and as_dict["fp"] == [0] * 10
    # Pairs without ids are numbered.
    assert list(score_label_maps([(one, one), (one, empty)]).per_image) == ["0", "1"]
    assert score_label_maps([]).map == 0.0
    with pytest.raises(ValueError, match="unique"):
        score_label_maps([("a", one, one), ("a", one, one)])


def test_uniqueness_argument_holds_with_many_overlaps():
    # A prediction that splits every true nucleus in two halves plus a sliver: each true
    # nucleus overlaps several predictions, yet at t >= 0.5 each is matched at most once.
    true, pred = many_overlaps()
    s = image_score(true, pred)
    assert (s.tp <= min(s.n_true, s.n_pred)).all()
    assert (np.diff(s.tp) <= 0).all()  # fewer hits as the threshold rises


def many_overlaps() -> tuple[np.ndarray, np.ndarray]:
    """Every true nucleus split in two halves plus a sliver (the case above)."""
    rng = np.random.default_rng(7)
    true = synthetic_labels(rng, (96, 96), 15)
    return true, true * 3 + (np.indices(true.shape)[1] % 3 == 0) * (true > 0)


def test_many_overlaps_match_stardist(stardist_matching):
    assert_matches_stardist(stardist_matching, *many_overlaps())


# ----------------------------------------------------------------- agreement with stardist

# stardist counts IoU >= thresh in float32; nudging its threshold just above t gives the
# strict rule. Exact ties (IoU = k/20) stay ties after float32 rounding, so they agree
# too; a pair within 1e-6 above a threshold would not, so cases are checked for that.
NUDGE = 1e-6


def near_tie(true: np.ndarray, pred: np.ndarray) -> bool:
    """Does any overlapping pair have an IoU in (t, t + 2 * NUDGE] for some threshold?"""
    both = (true > 0) & (pred > 0)
    pairs, inter = np.unique(np.stack([true[both], pred[both]]), axis=1, return_counts=True)
    area_t = dict(zip(*np.unique(true, return_counts=True)))
    area_p = dict(zip(*np.unique(pred, return_counts=True)))
    union = np.array([area_t[a] + area_p[b] for a, b in pairs.T]) - inter
    iou = inter / union
    gap = iou[None, :] - THRESHOLDS[:, None]
    return bool(((gap > 0) & (gap <= 2 * NUDGE)).any())


def stardist_precisions(matching, true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    return np.array([matching.matching(true, pred, thresh=t + NUDGE).accuracy for t in THRESHOLDS])


def assert_matches_stardist(matching, true: np.ndarray, pred: np.ndarray) -> None:
    """Our precisions equal those of ``matching`` (``stardist.matching``) at every threshold."""
    assert true.any() and pred.any(), "stardist scores an empty/empty image 0, we score 1"
    assert not near_tie(true, pred)
    ours = image_score(true, pred)
    np.testing.assert_allclose(ours.precision, stardist_precisions(matching, true, pred), rtol=0, atol=1e-9)


def synthetic_labels(rng: np.random.Generator, shape: tuple[int, int], n: int) -> np.ndarray:
    """n random ellipses (later ones do not overwrite earlier ones), ids 1..n."""
    labels = np.zeros(shape, np.int32)
    for label in range(1, n + 1):
        r, c = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        rr, cc = ellipse(r, c, rng.uniform(2, 12), rng.uniform(2, 12), shape=shape, rotation=rng.uniform(0, np.pi))
        free = labels[rr, cc] == 0
        labels[rr[free], cc[free]] = label
    return labels


def perturb(rng: np.random.Generator, true: np.ndarray) -> np.ndarray:
    """A plausible prediction: shifted, grown or shrunk, some dropped, merged, added."""
    pred = np.roll(true, tuple(rng.integers(-2, 3, size=2)), axis=(0, 1))
    if rng.random() < 0.5:
        pred = expand_labels(pred, distance=int(rng.integers(1, 3)))
    else:
        pred = np.where(ndimage.grey_erosion(pred, size=(3, 3)) == pred, pred, 0)
    ids = np.unique(pred)[1:]
    if ids.size:
        dropped = rng.choice(ids, size=ids.size // 6, replace=False)
        pred[np.isin(pred, dropped)] = 0
        # Merge a few nuclei into their neighbour's id.
        for a in rng.choice(ids, size=min(2, ids.size), replace=False):
            pred[pred == a] = a + 1 if a + 1 in ids else a
    extra = synthetic_labels(rng, true.shape, 3)
    pred = np.where((pred == 0) & (extra > 0), extra + 1000, pred)
    return pred


def test_matches_stardist_on_synthetic_label_maps(stardist_matching):
    checked = 0
    for seed in range(60):
        rng = np.random.default_rng(seed)
        shape = (int(rng.integers(20, 130)), int(rng.integers(20, 130)))
        true = synthetic_labels(rng, shape, int(rng.integers(1, 25)))
        pred = perturb(rng, true)
        if near_tie(true, pred):
            continue
        assert_matches_stardist(stardist_matching, true, pred)
        checked += 1
    assert checked >= 55


def test_matches_stardist_dataset_by_image(stardist_matching):
    rng = np.random.default_rng(123)
    trues = [synthetic_labels(rng, (100, 90), 20) for _ in range(8)]
    preds = [perturb(rng, t) for t in trues]
    assert not any(near_tie(t, p) for t, p in zip(trues, preds))
    ours = score_label_maps(zip(trues, preds))
    for t, mean_precision in zip(THRESHOLDS, ours.per_threshold):
        theirs = stardist_matching.matching_dataset(trues, preds, thresh=t + NUDGE, by_image=True, show_progress=False)
        assert mean_precision == pytest.approx(theirs.accuracy, abs=1e-9)


@pytest.fixture(scope="module")
def dsb_mask() -> np.ndarray:
    """The DSB2018 image stardist ships, with its instance mask."""
    _, mask = pytest.importorskip("stardist.data").test_image_nuclei_2d(return_mask=True)
    return mask.astype(np.int32)


@pytest.mark.parametrize("perturbation", ["identity", "shift", "dilate", "erode", "drop", "merge", "mixed"])
def test_matches_stardist_on_its_dsb_image(stardist_matching, dsb_mask, perturbation):
    rng = np.random.default_rng(5)
    true = dsb_mask
    ids = np.unique(true)[1:]
    if perturbation == "identity":
        pred = true.copy()
    elif perturbation == "shift":
        pred = np.roll(true, (1, 2), axis=(0, 1))
    elif perturbation == "dilate":
        pred = expand_labels(true, distance=2)
    elif perturbation == "erode":
        pred = np.where(ndimage.grey_erosion(true, size=(5, 5)) == true, true, 0)
    elif perturbation == "drop":
        pred = np.where(np.isin(true, rng.choice(ids, ids.size // 4, replace=False)), 0, true)
    elif perturbation == "merge":
        pred = true.copy()
        for a in rng.choice(ids[:-1], 30, replace=False):
            pred[pred == a] = a + 1
    else:
        pred = perturb(rng, true)
    if perturbation == "identity":
        assert image_score(true, pred).score == 1.0
    assert_matches_stardist(stardist_matching, true, pred)
