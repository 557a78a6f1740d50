"""Predictor: probabilities from models with TTA, tiling, fold ensembles; loading; streaming."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dsb.config import Config, InferConfig
from dsb.device import cpu_has_native_bf16
from dsb.errors import CheckpointError
from dsb.infer.predict import Predictor, iter_predictions, load_models, predict_probs
from dsb.rundir import resolve_checkpoints
from dsb.infer.tta import TRANSFORMS, tta_transforms

#: The tests of TTA, tiling and ensemble arithmetic compare with fp32 references to 1e-5, so
#: they predict in fp32 (``infer.amp: auto`` is bf16 on CPUs with native bf16); bf16 itself
#: is checked in test_bf16_autocast_on_cpu_is_close.
EXACT = "off"

CHANNELS = ["body", "border", "touching"]


class PixelNet(nn.Module):
    """Logits at a pixel depend only on that pixel: every TTA view aligns exactly."""

    def __init__(self, seed: int = 0, k: int = 3):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Tanh(), nn.Conv2d(8, k, 1))

    def forward(self, x):
        return self.net(x) * 3


class ConvNet(nn.Module):
    """A few 3x3 convs (receptive radius 3): not equivariant to flips or rotations."""

    def __init__(self, seed: int = 0, k: int = 3):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
            nn.Conv2d(8, k, 3, padding=1),
        )

    def forward(self, x):
        return self.net(x)


class Recorder(nn.Module):
    """Wraps a model and records the input shape of every forward pass."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x):
        self.shapes.append(tuple(x.shape))
        return self.inner(x)


def _image(h: int = 20, w: int = 28, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((h, w, 3), dtype=np.float32)


@torch.no_grad()
def _plain(model: nn.Module, image: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(image).permute(2, 0, 1)[None]
    return torch.sigmoid(model.eval()(x))[0].numpy()


@torch.no_grad()
def _manual_tta(model: nn.Module, image: np.ndarray, mode: str, merge: str = "mean") -> np.ndarray:
    x = torch.from_numpy(image).permute(2, 0, 1)[None]
    views = [t.inverse(torch.sigmoid(model.eval()(t.forward(x))))[0] for t in tta_transforms(mode)]
    stack = torch.stack(views)
    if merge == "gmean":
        return stack.clamp(1e-6, 1).log().mean(0).exp().numpy()
    return stack.mean(0).numpy()


@pytest.mark.parametrize("tta", ["none", "pair", "flips", "d4"])
@pytest.mark.parametrize("tiled", [False, True])
def test_pixelwise_model_gives_plain_probabilities(tta, tiled):
    model = PixelNet()
    image = _image(21, 34)
    before = image.copy()
    cfg = InferConfig(tta=tta, max_full_px=100 if tiled else 10_000, tile_px=16, tile_overlap_px=4)
    pred = Predictor([model], CHANNELS, cfg, amp=EXACT)
    assert pred.is_tiled(21, 34) == tiled
    probs = pred.predict(image)
    assert probs.dtype == np.float32 and probs.shape == (3, 21, 34)
    assert probs.min() >= 0 and probs.max() <= 1
    np.testing.assert_allclose(probs, _plain(model, image), atol=1e-5, rtol=0)
    np.testing.assert_array_equal(image, before)


@pytest.mark.parametrize("tta", ["pair", "flips", "d4"])
@pytest.mark.parametrize("merge", ["mean", "gmean"])
def test_non_equivariant_model_tta_is_aligned_average(tta, merge):
    model = ConvNet()
    image = _image(13, 19)
    probs = predict_probs([model], image, InferConfig(), tta=tta, merge=merge, amp=EXACT)
    np.testing.assert_allclose(probs, _manual_tta(model, image, tta, merge), atol=1e-5, rtol=0)
    # and it really differs from the plain prediction
    assert np.abs(probs - _plain(model, image)).max() > 1e-3


def test_fold_ensemble_is_mean_of_models():
    models = [ConvNet(seed=s) for s in range(3)]
    image = _image(16, 24)
    cfg = InferConfig(tta="flips")
    probs = Predictor(models, CHANNELS, cfg, amp=EXACT).predict(image)
    expected = np.mean([_manual_tta(m, image, "flips") for m in models], axis=0)
    np.testing.assert_allclose(probs, expected, atol=1e-5, rtol=0)


def test_gmean_ensemble_is_mean_of_per_model_gmeans():
    models = [ConvNet(seed=s) for s in range(2)]
    image = _image(12, 12)
    probs = Predictor(models, CHANNELS, InferConfig(tta="d4", merge="gmean"), amp=EXACT).predict(image)
    expected = np.mean([_manual_tta(m, image, "d4", "gmean") for m in models], axis=0)
    np.testing.assert_allclose(probs, expected, atol=1e-5, rtol=0)


def test_tiled_receptive_field_model_close_to_full():
    model = ConvNet()
    image = _image(70, 45)
    cfg = InferConfig(tta="flips", max_full_px=1000, tile_px=32, tile_overlap_px=12)
    tiled = Predictor([model], CHANNELS, cfg).predict(image)
    full = Predictor([model], CHANNELS, InferConfig(tta="flips")).predict(image)
    err = np.abs(tiled - full)
    assert err.max() < 0.02 and err.mean() < 1e-3


def test_tta_views_batched_together_when_small():
    rec = Recorder(PixelNet())
    Predictor([rec], CHANNELS, InferConfig(tta="d4")).predict(_image(16, 16))
    assert rec.shapes == [(8, 3, 16, 16)]  # square: all 8 views in one pass
    rec.shapes.clear()
    Predictor([rec], CHANNELS, InferConfig(tta="d4")).predict(_image(16, 24))
    assert sorted(rec.shapes) == [(4, 3, 16, 24), (4, 3, 24, 16)]  # one pass per shape


def test_pixel_budget_bounds_every_forward_pass():
    rec = Recorder(PixelNet())
    image = _image(40, 50)
    cfg = InferConfig(tta="d4", max_full_px=1100, tile_px=16, tile_overlap_px=4)
    probs = Predictor([rec], CHANNELS, cfg, amp=EXACT).predict(image)
    assert all(b * h * w <= 1100 for b, _, h, w in rec.shapes)
    assert max(b for b, *_ in rec.shapes) == 1100 // (16 * 16)  # 4 views per pass
    np.testing.assert_allclose(probs, _plain(rec.inner, image), atol=1e-5, rtol=0)
    # A non-tiled image larger than an explicit budget goes one view at a time.
    rec.shapes.clear()
    Predictor([rec], CHANNELS, InferConfig(tta="flips"), max_batch_px=100).predict(_image(12, 12))
    assert rec.shapes == [(1, 3, 12, 12)] * 4


def test_cpu_passes_hold_at_most_cpu_batch_px():
    from dsb.infer.predict import CPU_BATCH_PX

    rec = Recorder(PixelNet())
    pred = Predictor([rec], CHANNELS, InferConfig(tta="d4", max_full_px=1_500_000), device="cpu")
    assert pred.max_batch_px == CPU_BATCH_PX < 1_500_000
    pred.predict(_image(520, 696))  # a large view goes alone (faster per pixel on CPU) ...
    assert [b for b, *_ in rec.shapes] == [1] * 8
    rec.shapes.clear()
    pred.predict(_image(256, 256))  # ... small ones together
    assert rec.shapes == [(8, 3, 256, 256)]
    assert Predictor([rec], CHANNELS, InferConfig(max_full_px=1000), device="cpu").max_batch_px == 1000


def test_uint8_and_float64_inputs():
    model = PixelNet()
    image_u8 = (np.random.default_rng(1).random((10, 14, 3)) * 255).astype(np.uint8)
    pred = Predictor([model], CHANNELS, InferConfig(tta="none"))
    from_u8 = pred.predict(image_u8)
    from_f = pred.predict(image_u8.astype(np.float64) / 255.0)
    np.testing.assert_allclose(from_u8, from_f, atol=1e-6)
    assert from_f.dtype == np.float32


def test_torch_image_and_non_contiguous_array():
    model = PixelNet()
    image = _image(10, 12)
    pred = Predictor([model], CHANNELS, InferConfig(tta="flips"))
    np.testing.assert_allclose(pred(torch.from_numpy(image)), pred(image), atol=1e-6)
    flipped = image[:, ::-1]
    np.testing.assert_allclose(pred(flipped), pred(flipped.copy()), atol=1e-6)


def test_errors():
    pred = Predictor([PixelNet()], CHANNELS, InferConfig(tta="none"))
    with pytest.raises(ValueError, match="H x W x C"):
        pred.predict(np.zeros((8, 8), np.float32))
    with pytest.raises(ValueError, match="float or uint8"):
        pred.predict(np.zeros((8, 8, 3), np.int64))
    with pytest.raises(ValueError, match="2 are named"):
        Predictor([PixelNet()], ["body", "border"], InferConfig(tta="none")).predict(_image())
    with pytest.raises(ValueError, match="at least one model"):
        Predictor([], CHANNELS)
    with pytest.raises(ValueError, match="less than half"):
        Predictor([PixelNet()], CHANNELS, InferConfig(tile_px=16, tile_overlap_px=8))
    with pytest.raises(ValueError, match="unknown amp"):
        Predictor([PixelNet()], CHANNELS, amp="fp8")

    class Wrong(nn.Module):
        def forward(self, x):
            return x[..., :-1]

    with pytest.raises(ValueError, match="expected B x K x H x W"):
        Predictor([Wrong()], None, InferConfig(tta="none")).predict(_image())


def test_models_put_in_eval_and_no_grad():
    model = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3), nn.Dropout(0.5))
    model.train()
    pred = Predictor([model], CHANNELS, InferConfig(tta="flips"))
    assert not model.training
    a, b = pred.predict(_image()), pred.predict(_image())
    np.testing.assert_array_equal(a, b)  # dropout off, BN in eval: deterministic
    assert all(p.grad is None for p in model.parameters())


def test_bf16_autocast_on_cpu_is_close():
    model = ConvNet()
    image = _image(16, 20)
    full = Predictor([model], CHANNELS, InferConfig(tta="flips"), amp="off").predict(image)
    half = Predictor([model], CHANNELS, InferConfig(tta="flips"), amp="bf16").predict(image)
    assert half.dtype == np.float32
    np.testing.assert_allclose(half, full, atol=3e-2)
    # CPU default: bf16 where the CPU computes it natively (AVX512-BF16/AMX), else fp32
    native = cpu_has_native_bf16()
    assert Predictor([model], CHANNELS, amp="auto").amp_dtype == (torch.bfloat16 if native else None)
    assert Predictor([model], CHANNELS, InferConfig(amp="off")).amp_dtype is None  # infer.amp is the default
    assert Predictor([model], CHANNELS, InferConfig(amp="off"), amp="bf16").amp_dtype == torch.bfloat16


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fp16_matches_cpu():
    model = ConvNet()
    image = _image(40, 52)
    cfg = InferConfig(tta="d4", max_full_px=1000, tile_px=32, tile_overlap_px=8)
    cpu = Predictor([model], CHANNELS, cfg, device="cpu", amp="off").predict(image)
    gpu = Predictor([ConvNet()], CHANNELS, cfg, device="cuda", amp="auto").predict(image)
    np.testing.assert_allclose(gpu, cpu, atol=5e-3)


def test_predict_probs_overrides_config():
    rec = Recorder(PixelNet())
    cfg = InferConfig(tta="d4")
    predict_probs([rec], _image(8, 8), cfg, tta="none")
    assert rec.shapes == [(1, 3, 8, 8)]
    assert cfg.tta == "d4"  # not modified
    probs = predict_probs(PixelNet(), _image(8, 8))  # a bare module, default config
    assert probs.shape == (3, 8, 8)


# -- loading and streaming ----------------------------------------------------------


@pytest.fixture
def fake_checkpoints(monkeypatch, tmp_path):
    """A stand-in for ``load_model`` where dsb.infer.predict looks it up: a checkpoint
    file holds its channel list."""
    loaded: list[tuple[Path, str]] = []

    def load_model(path, device):
        channels = Path(path).read_text().split(",")
        cfg = Config()
        cfg.targets.channels = channels
        cfg.loss.channel_weights = [1.0] * len(channels)
        loaded.append((Path(path), str(device)))
        return PixelNet(k=len(channels)).to(device), cfg, {"path": str(path)}

    monkeypatch.setattr("dsb.infer.predict.load_model", load_model)

    def make(rel: str, channels=("body", "border", "touching")) -> Path:
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(",".join(channels))
        return path

    return make, loaded, tmp_path


def test_load_models_from_run_folder(fake_checkpoints):
    make, loaded, root = fake_checkpoints
    for k in (1, 0, 2):
        make(f"run/fold{k}/best.pt")
    make("run/fold0/last.pt")
    models, cfg = load_models(root / "run")
    assert len(models) == 3 and all(not m.training for m in models)
    assert [p.parent.name for p, _ in loaded] == ["fold0", "fold1", "fold2"]
    assert cfg.targets.channels == ["body", "border", "touching"]


def test_load_models_list_and_single_file(fake_checkpoints):
    make, loaded, root = fake_checkpoints
    a = make("a.pt", ["body", "border"])
    b = make("single/best.pt", ["body", "border"])
    models, cfg = load_models([a, str(b.parent)], device="cpu")
    assert len(models) == 2 and cfg.targets.channels == ["body", "border"]
    assert resolve_checkpoints(a) == [a]


def test_load_models_channel_mismatch_names_checkpoint(fake_checkpoints):
    make, _, root = fake_checkpoints
    a = make("a.pt", ["body", "border"])
    b = make("b.pt", ["body", "border", "touching"])
    with pytest.raises(CheckpointError, match="b.pt: predicts channels"):
        load_models([a, b])


def test_load_models_errors(fake_checkpoints):
    _, _, root = fake_checkpoints
    (root / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no fold"):
        load_models(root / "empty")
    with pytest.raises(CheckpointError, match="missing.pt: no such checkpoint file"):
        load_models(root / "missing.pt")
    with pytest.raises(CheckpointError, match="no checkpoints"):
        load_models([])


def test_predictor_from_checkpoints(fake_checkpoints):
    make, _, root = fake_checkpoints
    make("run/fold0/best.pt")
    make("run/fold1/best.pt")
    pred = Predictor.from_checkpoints(root / "run", InferConfig(tta="none"), device="cpu")
    assert len(pred.models) == 2 and pred.channels == CHANNELS
    assert pred.predict(_image(8, 9)).shape == (3, 8, 9)


class FakeStage:
    def __init__(self, shapes: dict[str, tuple[int, int]]):
        self.shapes = shapes
        self.image_ids = list(shapes)
        self.reads: list[str] = []

    def read_image(self, image_id: str) -> np.ndarray:
        self.reads.append(image_id)
        return _image(*self.shapes[image_id])


def test_iter_predictions_streams_one_at_a_time():
    stage = FakeStage({"a": (8, 10), "b": (12, 6), "c": (5, 5)})
    pred = Predictor([PixelNet()], CHANNELS, InferConfig(tta="flips"))
    it = iter_predictions(stage, None, pred)
    assert stage.reads == []  # lazy
    image_id, image, probs = next(it)
    assert image_id == "a" and stage.reads == ["a"]
    assert image.shape == (8, 10, 3) and probs.shape == (3, 8, 10)
    rest = list(it)
    assert [r[0] for r in rest] == ["b", "c"] and rest[0][2].shape == (3, 12, 6)
    assert [r[0] for r in iter_predictions(stage, ["c"], pred)] == ["c"]


def test_transforms_of_mode_exposed():
    pred = Predictor([PixelNet()], CHANNELS, InferConfig(tta="d4"))
    assert [t.name for t in pred.transforms] == list(TRANSFORMS)


def test_channels_last_same_numbers():
    image = _image(14, 18)
    cfg = InferConfig(tta="d4")
    a = Predictor([ConvNet()], CHANNELS, cfg, channels_last=True).predict(image)
    b = Predictor([ConvNet()], CHANNELS, cfg, channels_last=False).predict(image)
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
