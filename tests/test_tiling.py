"""Tiling: tile geometry, blending window, and agreement with full-image prediction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dsb.infer.tiling import predict_tiled, ramp, tile_grid, tile_starts, window_1d


@pytest.mark.parametrize("tile,overlap", [(16, 0), (16, 4), (32, 8), (33, 16), (512, 64)])
def test_tile_starts_cover_with_overlap(tile, overlap):
    for length in range(1, 3 * tile + 7):
        starts = tile_starts(length, tile, overlap)
        size = min(tile, length)
        assert starts[0] == 0
        assert starts[-1] + size == length  # last tile shifted inside, not padded past
        assert starts == sorted(set(starts))
        assert all(0 <= s and s + size <= length for s in starts)
        gaps = np.diff(starts)
        assert np.all(size - gaps >= overlap)  # every neighbour overlap is at least overlap
        if length > tile:  # and no more tiles than needed
            assert len(starts) == 1 + -(-(length - tile) // (tile - overlap))


def test_tile_starts_examples_and_errors():
    assert tile_starts(100, 40, 10) == [0, 30, 60]
    assert tile_starts(40, 40, 10) == [0]
    assert tile_starts(5, 40, 10) == [0]
    assert tile_starts(41, 40, 10) == [0, 1]
    for bad in [(10, 8, 4), (10, 8, -1), (10, 0, 0), (0, 8, 2)]:
        with pytest.raises(ValueError):
            tile_starts(*bad)


def test_tile_grid_small_in_one_dimension():
    tiles = tile_grid(10, 70, 32, 8)
    assert {(y1 - y0, x1 - x0) for y0, y1, x0, x1 in tiles} == {(10, 32)}
    assert [t[2] for t in tiles] == tile_starts(70, 32, 8)


def test_ramp_and_window():
    for o in (1, 4, 8, 64):
        r = ramp(o)
        assert r.dtype == np.float32 and np.all(r > 0) and np.all(r < 1)
        np.testing.assert_allclose(r + r[::-1], 1.0, atol=1e-6)
        assert np.all(np.diff(r) > 0)
    w = window_1d(20, 4, True, False)
    assert np.all(w > 0) and np.all(w[4:] == 1) and np.all(w[:4] < 1)
    assert np.all(window_1d(20, 4, False, False) == 1)


def _pixelwise(k: int = 2):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 6, 1), torch.nn.Tanh(), torch.nn.Conv2d(6, k, 1)).eval()


RF_LAYERS = 3  # three 3x3 convs: receptive radius 3 px


def _conv_net(k: int = 2):
    torch.manual_seed(1)
    layers = []
    c = 3
    for i in range(RF_LAYERS):
        out = 8 if i < RF_LAYERS - 1 else k
        layers += [torch.nn.Conv2d(c, out, 3, padding=1)]
        if i < RF_LAYERS - 1:
            layers += [torch.nn.ReLU()]
        c = out
    return torch.nn.Sequential(*layers).eval()


@torch.inference_mode()
@pytest.mark.parametrize("shape", [(45, 61), (61, 45), (10, 70), (33, 33), (24, 100)])
@pytest.mark.parametrize("tiles_per_batch", [1, 4])
def test_pixelwise_model_tiled_equals_full(shape, tiles_per_batch):
    model = _pixelwise()
    image = torch.rand(3, *shape)
    full = model(image[None])[0]
    calls = []

    def fn(crops):
        calls.append(tuple(crops.shape))
        return model(crops)

    tiled = predict_tiled(fn, image, tile_px=24, overlap_px=6, tiles_per_batch=tiles_per_batch)
    assert tiled.dtype == torch.float32 and tiled.shape == full.shape
    torch.testing.assert_close(tiled, full, rtol=0, atol=1e-5)
    n_tiles = len(tile_grid(*shape, 24, 6))
    assert sum(c[0] for c in calls) == n_tiles
    assert all(c[0] <= tiles_per_batch for c in calls)
    assert {c[-2:] for c in calls} == {(min(24, shape[0]), min(24, shape[1]))}  # all tiles one shape


def _seam_mask(height: int, width: int, tile_px: int, overlap_px: int, radius: int) -> np.ndarray:
    """Pixels within ``radius`` of an interior (non-image-border) edge of a tile covering them."""
    mask = np.zeros((height, width), bool)
    for y0, y1, x0, x1 in tile_grid(height, width, tile_px, overlap_px):
        inner = np.zeros((height, width), bool)
        inner[y0:y1, x0:x1] = True
        ok = np.zeros_like(inner)
        ya = y0 + radius if y0 > 0 else y0
        yb = y1 - radius if y1 < height else y1
        xa = x0 + radius if x0 > 0 else x0
        xb = x1 - radius if x1 < width else x1
        ok[ya:yb, xa:xb] = True
        mask |= inner & ~ok
    return mask


@torch.inference_mode()
@pytest.mark.parametrize("shape", [(50, 61), (19, 77)])
def test_receptive_field_model_exact_away_from_seams(shape):
    model = _conv_net()
    torch.manual_seed(2)
    image = torch.rand(3, *shape)
    full = model(image[None])[0]
    tile_px, overlap_px = 24, 8
    tiled = predict_tiled(model, image, tile_px, overlap_px, tiles_per_batch=3)
    seams = torch.from_numpy(_seam_mask(*shape, tile_px, overlap_px, RF_LAYERS))
    assert seams.any() and (~seams).any()
    err = (tiled - full).abs()
    # Exact wherever every covering tile sees the pixel's whole receptive field.
    assert err[:, ~seams].max() < 1e-5
    # Near seams the tile that sees a truncated receptive field has a small weight:
    # blending is much closer than taking either tile alone (a hard seam).
    hard = torch.zeros_like(full)
    for y0, y1, x0, x1 in tile_grid(*shape, tile_px, overlap_px):  # last tile wins
        hard[:, y0:y1, x0:x1] = model(image[None, :, y0:y1, x0:x1])[0]
    hard_err = (hard - full).abs()
    assert hard_err.max() > 0.01
    assert err.max() < 0.5 * hard_err.max()
    assert err.mean() < 0.1 * hard_err.mean()
    # Same answer whatever the batching of tiles.
    again = predict_tiled(model, image, tile_px, overlap_px, tiles_per_batch=1)
    torch.testing.assert_close(again, tiled, rtol=0, atol=1e-6)


@torch.inference_mode()
def test_single_tile_is_the_plain_prediction():
    model = _conv_net()
    image = torch.rand(3, 20, 30)
    out = predict_tiled(model, image, tile_px=32, overlap_px=8)
    assert torch.equal(out, model(image[None])[0])


@torch.inference_mode()
def test_non_contiguous_view_and_input_untouched():
    model = _pixelwise()
    hwc = np.random.default_rng(0).random((40, 50, 3), dtype=np.float32)
    before = hwc.copy()
    chw = torch.from_numpy(hwc).permute(2, 0, 1)
    out = predict_tiled(model, chw, tile_px=16, overlap_px=4, tiles_per_batch=2)
    np.testing.assert_array_equal(hwc, before)
    torch.testing.assert_close(out, model(chw[None].contiguous())[0], rtol=0, atol=1e-5)


def test_errors():
    with pytest.raises(ValueError, match="C x H x W"):
        predict_tiled(lambda x: x, torch.rand(1, 3, 8, 8), 4, 1)
    with pytest.raises(ValueError, match="tile_fn returned"):
        predict_tiled(lambda x: x[..., :-1], torch.rand(3, 20, 20), 8, 2)
