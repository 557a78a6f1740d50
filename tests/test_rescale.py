"""Size-adaptive rescaling: the scale comes from the first pass's median nucleus area,
the second pass runs at that scale, and its probabilities come back on the image's grid."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from dsb.config import InferConfig, PostprocessConfig, config_from_dict
from dsb.errors import ConfigError
from dsb.infer.rescale import choose_scale, predict_rescaled, resize_hw
from dsb.postprocess import labels_from_probs

CHANNELS = ["body"]
POST = PostprocessConfig(min_seed_area_px=1, min_area_px=1)


class ThresholdPredictor:
    """A 'model' whose body probability is the image's first channel: scale-equivariant,
    so the rescaled pass must give back the same nuclei. Records the sizes it saw."""

    def __init__(self):
        self.shapes = []

    def predict(self, image):
        self.shapes.append(image.shape[:2])
        return image[None, :, :, 0].astype(np.float32)


def _discs(radius: int, size: int = 96) -> np.ndarray:
    image = np.zeros((size, size + 8, 3), np.float32)
    yy, xx = np.mgrid[:size, : size + 8]
    for cy, cx in [(20, 20), (20, 60), (60, 30), (70, 80)]:
        image[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = 1.0
    return image


def test_choose_scale_uses_the_median_area_and_clips():
    labels = np.zeros((40, 40), np.int32)
    labels[:2, :10] = 1          # 20 px
    labels[5:10, :10] = 2        # 50 px
    labels[20:30, :10] = 3       # 100 px: the median is 50
    assert choose_scale(labels, 200.0, 0.5, 4.0) == pytest.approx(2.0)
    assert choose_scale(labels, 12.5, 0.5, 4.0) == pytest.approx(0.5)
    assert choose_scale(labels, 12.5, 1.0, 4.0) == 1.0      # never below rescale_min
    assert choose_scale(labels, 5000.0, 1.0, 2.5) == 2.5    # never above rescale_max


def test_off_is_one_plain_pass():
    predictor = ThresholdPredictor()
    image = _discs(3)
    probs, scale = predict_rescaled(predictor, image, CHANNELS, POST, InferConfig())
    assert scale == 1.0 and predictor.shapes == [image.shape[:2]]
    np.testing.assert_array_equal(probs, image[None, :, :, 0])


def test_small_nuclei_are_predicted_again_upscaled_on_the_same_grid():
    predictor = ThresholdPredictor()
    image = _discs(3)  # about 29 px nuclei
    infer = InferConfig(rescale_area_px=29 * 4, rescale_min=1.0, rescale_max=3.0)
    probs, scale = predict_rescaled(predictor, image, CHANNELS, POST, infer)
    assert scale == pytest.approx(2.0, abs=0.05)
    assert predictor.shapes[1] == (round(96 * scale), round(104 * scale))
    assert probs.shape == (1, 96, 104) and probs.dtype == np.float32
    first, second = labels_from_probs(image[None, :, :, 0], CHANNELS, POST), labels_from_probs(probs, CHANNELS, POST)
    assert first.max() == second.max() == 4
    assert np.mean((first > 0) == (second > 0)) > 0.98


class FragmentingPredictor(ThresholdPredictor):
    """A 'model' with a limited view: blobs larger than ``max_area`` px (in the pixels it is
    given) come out as specks at their centres (3 x 3 by default), smaller ones whole."""

    def __init__(self, max_area: int, specks: bool = True, speck_px: int = 1):
        super().__init__()
        self.max_area, self.specks, self.speck_px = max_area, specks, speck_px

    def predict(self, image):
        from scipy import ndimage

        self.shapes.append(image.shape[:2])
        out = np.zeros(image.shape[:2], np.float32)
        blobs, n = ndimage.label(image[:, :, 0] > 0.5)
        for index in range(1, n + 1):
            mask = blobs == index
            if mask.sum() <= self.max_area:
                out[mask] = 1.0
            elif self.specks:  # else nothing at all, as when d4 TTA averages the specks away
                cy, cx = (round(c) for c in ndimage.center_of_mass(mask))
                out[cy - self.speck_px:cy + self.speck_px + 1, cx - self.speck_px:cx + self.speck_px + 1] = 1.0
        return out[None]


def test_fragmented_large_nuclei_are_found_at_the_smallest_scale_not_upscaled_away():
    predictor = FragmentingPredictor(max_area=400)
    image = _discs(15, size=128)  # about 700 px nuclei: specks at scale 1, whole at 0.5
    infer = InferConfig(rescale_area_px=150.0, rescale_min=0.5, rescale_max=2.0, rescale_passes=2)
    probs, scale = predict_rescaled(predictor, image, CHANNELS, POST, infer)
    assert scale == 0.5
    assert predictor.shapes == [(128, 136), (64, 68)]  # no upscaled pass
    labels = labels_from_probs(probs, CHANNELS, POST)
    areas = np.bincount(labels.ravel())[1:]
    assert labels.max() == 4 and np.all(areas > 500), areas
    # the old rule (no look at the smallest scale) upscaled the specks
    plain = dataclasses.replace(infer, rescale_min=1.0)
    _, plain_scale = predict_rescaled(FragmentingPredictor(max_area=400), image, CHANNELS, POST, plain)
    assert plain_scale == 2.0
    # nothing at all at scale 1: the smallest scale is looked at too
    blind = FragmentingPredictor(max_area=400, specks=False)
    probs, scale = predict_rescaled(blind, image, CHANNELS, POST, infer)
    assert scale == 0.5 and labels_from_probs(probs, CHANNELS, POST).max() == 4
    # and an empty image stays empty, at scale 1
    probs, scale = predict_rescaled(FragmentingPredictor(400), np.zeros((64, 64, 3), np.float32), CHANNELS, POST, infer)
    assert scale == 1.0 and not probs.any()


def test_genuinely_small_nuclei_still_upscale_after_the_look_at_the_smallest_scale():
    predictor = ThresholdPredictor()
    image = _discs(3)  # about 29 px nuclei: at 0.5 far below the standard size
    infer = InferConfig(rescale_area_px=29 * 4, rescale_min=0.5, rescale_max=3.0, rescale_passes=1)
    _, scale = predict_rescaled(predictor, image, CHANNELS, POST, infer)
    assert scale == pytest.approx(2.0, abs=0.05)
    assert predictor.shapes == [(96, 104), (48, 52), (round(96 * scale), round(104 * scale))]


def test_large_nuclei_or_none_keep_the_first_pass():
    for image in (_discs(12), np.zeros((32, 32, 3), np.float32)):
        predictor = ThresholdPredictor()
        probs, scale = predict_rescaled(predictor, image, CHANNELS, POST, InferConfig(rescale_area_px=200.0))
        assert scale == 1.0 and len(predictor.shapes) == 1


def test_resize_round_trip_and_layouts():
    yy, xx = np.mgrid[:40, :56] / 40.0
    hwc = np.stack([np.sin(3 * yy), np.cos(2 * xx), yy * xx], axis=-1).astype(np.float32)  # smooth, distinct channels
    up = resize_hw(hwc, 80, 112, channels_last=True)
    assert up.shape == (80, 112, 3)
    khw = resize_hw(np.moveaxis(up, -1, 0), 40, 56, channels_last=False)
    assert khw.shape == (3, 40, 56)
    assert np.abs(khw - np.moveaxis(hwc, -1, 0))[:, 2:-2, 2:-2].max() < 0.02


def test_bad_rescale_settings_are_config_errors():
    for infer in ({"rescale_area_px": -1.0}, {"rescale_min": 1.5}, {"rescale_max": 0.9}, {"rescale_min": 0.0}):
        with pytest.raises(ConfigError, match="infer.rescale_"):
            config_from_dict({"infer": infer})


class SizeBiasedPredictor(ThresholdPredictor):
    """A 'model' trained on one nucleus size: at scale 1 it sees each nucleus as four
    quarter-size ones (splits them), so its first size estimate is too small; at a scale near
    the right one it sees them whole."""

    def predict(self, image):
        probs = super().predict(image)
        if image.shape[0] < 150:  # not upscaled enough: cut every nucleus into quarters
            probs = probs.copy()
            probs[:, ::8, :] = 0.0
            probs[:, :, ::8] = 0.0
        return probs


def test_more_passes_refine_a_rough_first_estimate():
    image = _discs(radius=5)  # 4 nuclei of about 80 px
    infer = InferConfig(rescale_area_px=320.0, rescale_min=0.5, rescale_max=4.0)
    one = SizeBiasedPredictor()
    _, first = predict_rescaled(one, image, CHANNELS, POST, infer)
    two = SizeBiasedPredictor()
    probs, refined = predict_rescaled(two, image, CHANNELS, POST, dataclasses.replace(infer, rescale_passes=3))
    assert first > 2.0 * 1.1  # the split nuclei looked smaller than they are: scale too large
    assert refined == pytest.approx(2.0, rel=0.1)  # sqrt(320 / 80), measured on whole nuclei
    assert len(two.shapes) == len(one.shapes) + 1 and probs.shape == (1, *image.shape[:2])


class MergingPredictor(ThresholdPredictor):
    """A 'model' that blurs when shrunk: in images under ``min_side`` px it closes the gaps
    between nearby nuclei, so a tight cluster of small nuclei becomes one clump."""

    def __init__(self, min_side: int):
        super().__init__()
        self.min_side = min_side

    def predict(self, image):
        from scipy import ndimage

        probs = super().predict(image)
        if image.shape[0] < self.min_side:
            probs = ndimage.binary_dilation(probs[0] > 0.5, iterations=2).astype(np.float32)[None]
        return probs


def _cluster(size: int = 96) -> np.ndarray:
    """16 small nuclei (radius 3, about 29 px) in a tight 4 x 4 grid, 2 px apart."""
    image = np.zeros((size, size + 8, 3), np.float32)
    yy, xx = np.mgrid[:size, : size + 8]
    for cy in range(30, 62, 8):
        for cx in range(30, 62, 8):
            image[(yy - cy) ** 2 + (xx - cx) ** 2 <= 9] = 1.0
    return image


def test_small_nuclei_merged_by_shrinking_are_not_taken_for_fragments():
    image = _cluster()
    infer = InferConfig(rescale_area_px=29 * 4, rescale_min=0.5, rescale_max=3.0, rescale_passes=1)
    predictor = MergingPredictor(min_side=90)
    probs, scale = predict_rescaled(predictor, image, CHANNELS, POST, infer)
    # the shrunk pass was looked at, and it does hold far larger 'nuclei' (one clump) ...
    assert predictor.shapes[1] == (48, 52)
    low = labels_from_probs(MergingPredictor(90).predict(image[::2, ::2]), CHANNELS, POST)
    assert low.max() == 1 and np.count_nonzero(low) * 4 > 8 * 29 * 4
    # ... but the first pass found them whole, so they are upscaled as small nuclei
    assert scale == pytest.approx(2.0, abs=0.05)
    labels = labels_from_probs(probs, CHANNELS, POST)
    assert labels.max() == 16


def test_fragments_that_ask_for_a_downscale_are_found_whole_at_the_smallest_scale():
    # 7 x 7 specks of 700 px nuclei: their median (49 px) asks for 0.78 with a 30 px target,
    # where the nuclei (430 px) still fragment; the old rule looked at the smallest scale only
    # when the first pass asked to upscale (a d4 stage-1 test image stayed empty so).
    image = _discs(15, size=128)
    infer = InferConfig(rescale_area_px=30.0, rescale_min=0.5, rescale_max=2.0, rescale_passes=2)
    predictor = FragmentingPredictor(max_area=400, speck_px=3)
    probs, scale = predict_rescaled(predictor, image, CHANNELS, POST, infer)
    assert scale == 0.5 and predictor.shapes == [(128, 136), (64, 68)]
    areas = np.bincount(labels_from_probs(probs, CHANNELS, POST).ravel())[1:]
    assert len(areas) == 4 and np.all(areas > 500), areas


def test_the_scale_is_chosen_on_ungrown_nuclei():
    # postprocess.expand_px grows nuclei for annotations drawn wider; the scale must not follow it
    image = _discs(3)
    infer = InferConfig(rescale_area_px=29 * 4, rescale_min=1.0, rescale_max=3.0)
    _, plain = predict_rescaled(ThresholdPredictor(), image, CHANNELS, POST, infer)
    _, grown = predict_rescaled(ThresholdPredictor(), image, CHANNELS, dataclasses.replace(POST, expand_px=3.0), infer)
    assert grown == plain == pytest.approx(2.0, abs=0.05)


class ScoutedPredictor(ThresholdPredictor):
    """A 'model with TTA' whose scout (the same model without TTA) records its own passes."""

    def __init__(self):
        super().__init__()
        self.measurer = ThresholdPredictor()

    def scout(self):
        return self.measurer


def test_measuring_passes_go_to_the_scout_and_only_the_kept_pass_to_the_predictor():
    image = _discs(3)  # about 29 px nuclei: measured at 1 and 0.5, measured again at 2, kept at 2
    infer = InferConfig(rescale_area_px=29 * 4, rescale_min=0.5, rescale_max=3.0, rescale_passes=2)
    predictor = ScoutedPredictor()
    probs, scale = predict_rescaled(predictor, image, CHANNELS, POST, infer)
    assert scale == pytest.approx(2.0, abs=0.05)
    upscaled = (round(96 * scale), round(104 * scale))
    assert predictor.measurer.shapes == [(96, 104), (48, 52), upscaled]
    assert predictor.shapes == [upscaled]
    # the same choices as when the predictor measures too, with the same probabilities
    same = ScoutedPredictor()
    probs_same, scale_same = predict_rescaled(same, image, CHANNELS, POST,
                                              dataclasses.replace(infer, rescale_measure_tta="same"))
    assert scale_same == scale and same.measurer.shapes == []
    assert same.shapes == [(96, 104), (48, 52), upscaled]  # the last measuring pass is the one kept
    np.testing.assert_array_equal(probs, probs_same)


def test_a_kept_first_or_shrunk_pass_is_predicted_again_by_the_predictor():
    predictor = ScoutedPredictor()  # large nuclei: the first pass is kept
    probs, scale = predict_rescaled(predictor, _discs(12), CHANNELS, POST, InferConfig(rescale_area_px=200.0))
    assert scale == 1.0 and predictor.measurer.shapes == [(96, 104)] and predictor.shapes == [(96, 104)]
    # nuclei found whole only at the smallest scale: that pass is kept, made by the predictor
    class Fragmenting(FragmentingPredictor):
        def scout(self):
            return self.measurer

    fragmenting = Fragmenting(max_area=400)
    fragmenting.measurer = FragmentingPredictor(max_area=400)
    infer = InferConfig(rescale_area_px=150.0, rescale_min=0.5, rescale_max=2.0, rescale_passes=2)
    probs, scale = predict_rescaled(fragmenting, _discs(15, size=128), CHANNELS, POST, infer)
    assert scale == 0.5 and fragmenting.shapes == [(64, 68)]
    assert fragmenting.measurer.shapes == [(128, 136), (64, 68)]
    assert labels_from_probs(probs, CHANNELS, POST).max() == 4


def test_the_scout_of_a_predictor_is_it_without_tta():
    import torch

    from dsb.infer.predict import Predictor

    model = torch.nn.Conv2d(3, 1, 3, padding=1)
    d4 = Predictor([model], CHANNELS, InferConfig(tta="d4"))
    scout = d4.scout()
    assert scout is d4.scout() and scout.infer_cfg.tta == "none" and len(scout.transforms) == 1
    assert scout.models[0] is d4.models[0] and len(d4.transforms) == 8 and d4.infer_cfg.tta == "d4"
    plain = Predictor([model], CHANNELS, InferConfig(tta="none"))
    assert plain.scout() is plain
    image = np.random.default_rng(0).random((24, 32, 3), dtype=np.float32)
    np.testing.assert_allclose(scout.predict(image), plain.predict(image), atol=1e-6)


def test_a_first_pass_kept_after_the_look_at_the_smallest_scale_is_not_predicted_again():
    image = _discs(8)  # about 200 px nuclei: the standard size, not fragments at 0.5
    infer = InferConfig(rescale_area_px=200.0, rescale_min=0.5, rescale_max=2.0, rescale_passes=2)
    predictor = ThresholdPredictor()  # no scout: it measures and predicts
    probs, scale = predict_rescaled(predictor, image, CHANNELS, POST, infer)
    assert scale == 1.0 and predictor.shapes == [(96, 104), (48, 52)]
    np.testing.assert_array_equal(probs, image[None, :, :, 0])  # the first pass, not the shrunk one


class _DiscNet:
    """Logits that threshold the first channel into nuclei, plus a small lopsided 3x3 term so
    that TTA views really differ; records the batch shapes it is given."""

    def __new__(cls):
        import torch

        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = torch.nn.Conv2d(3, 1, 3, padding=1, bias=False)
                with torch.no_grad():
                    self.conv.weight.copy_(torch.linspace(-1, 1, 27).reshape(1, 3, 3, 3))
                self.shapes = []

            def forward(self, x):
                self.shapes.append(tuple(x.shape))
                return 20.0 * (x[:, :1] - 0.5) + 0.5 * self.conv(x)

        return Net()


@pytest.mark.parametrize("tta", ["pair", "flips", "d4"])
def test_the_kept_pass_reuses_the_scouts_identity_view(tta):
    from dsb.infer.predict import Predictor

    image = _discs(3)  # measured at 1 and 0.5, then at 2 by the scout; kept at 2
    infer = InferConfig(tta=tta, rescale_area_px=29 * 4, rescale_min=0.5, rescale_max=3.0, rescale_passes=2,
                        amp="off")
    net = _DiscNet()
    predictor = Predictor([net], CHANNELS, infer)
    probs, scale = predict_rescaled(predictor, image, CHANNELS, POST, infer)
    assert scale == pytest.approx(2.0, abs=0.05)
    n_views = len(predictor.transforms)
    forwarded = sum(shape[0] for shape in net.shapes)
    assert forwarded == 3 + (n_views - 1)  # three measuring passes, then the other views only
    # exactly what the whole TTA pass at that scale gives
    from dsb.infer.rescale import predict_at_scale

    whole = predict_at_scale(Predictor([_DiscNet()], CHANNELS, infer), image, scale)
    np.testing.assert_allclose(probs, whole, atol=1e-5, rtol=0)
    assert predictor.rest().transforms == predictor.transforms[1:]
    # the geometric mean does not split that way: the kept pass makes all its views
    gmean = Predictor([_DiscNet()], CHANNELS, dataclasses.replace(infer, merge="gmean"))
    assert gmean.rest() is None
    predict_rescaled(gmean, image, CHANNELS, POST, gmean.infer_cfg)
    assert sum(shape[0] for shape in gmean.models[0].shapes) == 3 + n_views
