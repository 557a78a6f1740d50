"""TTA transforms: inverses, group structure, alignment of predictions, merging."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from dsb.infer.tta import GMEAN_EPS, TRANSFORMS, merge_probs, tta_predict, tta_transforms

ALL = list(TRANSFORMS.values())


def _x(h: int = 5, w: int = 7, b: int = 2, c: int = 3) -> torch.Tensor:
    return torch.arange(b * c * h * w, dtype=torch.float32).reshape(b, c, h, w)


def test_modes():
    assert [t.name for t in tta_transforms("none")] == ["identity"]
    assert [t.name for t in tta_transforms("pair")] == ["identity", "rot180"]
    assert [t.name for t in tta_transforms("flips")] == ["identity", "hflip", "vflip", "rot180"]
    assert len(tta_transforms("d4")) == 8
    with pytest.raises(ValueError, match="unknown TTA mode"):
        tta_transforms("d8")


@pytest.mark.parametrize("t", ALL, ids=lambda t: t.name)
def test_inverse_undoes_forward_on_non_square(t):
    x = _x(5, 7)
    y = t.forward(x)
    assert y.shape[-2:] == ((7, 5) if t.swaps_hw else (5, 7))
    assert torch.equal(t.inverse(y), x)
    assert torch.equal(t.forward(t.inverse(x)), x)


def test_named_transforms_do_what_they_say():
    x = _x(4, 6)
    expected = {
        "identity": x,
        "hflip": x.flip(-1),
        "vflip": x.flip(-2),
        "rot180": x.flip(-2).flip(-1),
        "rot90": torch.rot90(x, 1, (-2, -1)),
        "rot270": torch.rot90(x, -1, (-2, -1)),
        "transpose": x.transpose(-2, -1),
        "antitranspose": x.transpose(-2, -1).flip(-2).flip(-1),
    }
    for name, want in expected.items():
        assert torch.equal(TRANSFORMS[name].forward(x), want), name


def test_eight_distinct_elements():
    x = _x(6, 6, b=1, c=1)
    outs = [t.forward(x).flatten().tolist() for t in ALL]
    assert len({tuple(o) for o in outs}) == 8


def test_group_is_closed_and_composition_is_right():
    x = _x(4, 6, b=1, c=1)
    for a, b in itertools.product(ALL, ALL):
        composed = b.forward(a.forward(x))
        matches = [t for t in ALL if t.forward(x).shape == composed.shape and torch.equal(t.forward(x), composed)]
        assert len(matches) == 1, (a.name, b.name)
        assert a.then(b) is matches[0]
    # every element has an inverse within the group
    for a in ALL:
        assert any(a.then(b).name == "identity" for b in ALL)


def test_flips_subset_is_a_subgroup():
    flips = tta_transforms("flips")
    for a, b in itertools.product(flips, flips):
        assert a.then(b) in flips


# -- predictions --------------------------------------------------------------------


class PixelwiseNet(torch.nn.Module):
    """Output at a pixel depends only on that pixel's value: equivariant to all of D4."""

    def __init__(self, k: int = 2):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), torch.nn.Tanh(), torch.nn.Conv2d(8, k, 1))

    def forward(self, x):
        return torch.sigmoid(self.net(x))


def _asymmetric_kernel() -> torch.Tensor:
    # No symmetry at all: each D4 element gives a different kernel.
    return torch.tensor([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0], [6.0, 7.0, 9.0]]).reshape(1, 1, 3, 3) / 40.0


def test_pixelwise_model_every_view_aligns_exactly():
    model = PixelwiseNet().eval()
    x = torch.rand(2, 3, 9, 13)
    plain = model(x)
    for t in ALL:
        aligned = t.inverse(model(t.forward(x)))
        torch.testing.assert_close(aligned, plain, rtol=0, atol=1e-6)
    for mode in ("flips", "d4"):
        for merge in ("mean", "gmean"):
            out = tta_predict(model, x, tta_transforms(mode), merge)
            torch.testing.assert_close(out, plain, rtol=0, atol=1e-6)


def test_non_equivariant_model_views_differ_but_are_aligned():
    """A fixed asymmetric convolution C_k: inverse(C_k(forward(x))) == C_{inverse(k)}(x)."""
    kernel = _asymmetric_kernel()

    def model(x):
        return F.conv2d(x, kernel, padding=1)

    x = torch.rand(1, 1, 7, 11)
    outs = {}
    for t in ALL:
        aligned = t.inverse(model(t.forward(x)))
        assert aligned.shape == x.shape
        expected = F.conv2d(x, t.inverse(kernel), padding=1)
        torch.testing.assert_close(aligned, expected, rtol=0, atol=1e-6)
        outs[t.name] = aligned
    names = list(outs)
    for a, b in itertools.combinations(names, 2):
        assert not torch.allclose(outs[a], outs[b]), (a, b)
    # TTA mean == convolution with the D4-averaged kernel
    avg_kernel = torch.stack([t.inverse(kernel) for t in ALL]).mean(0)
    merged = tta_predict(model, x, ALL, "mean")
    torch.testing.assert_close(merged, F.conv2d(x, avg_kernel, padding=1), rtol=0, atol=1e-6)


@pytest.mark.parametrize("max_batch", [None, 1, 3, 5])
def test_batching_of_views(max_batch):
    calls = []
    model = PixelwiseNet().eval()

    def fn(x):
        calls.append(tuple(x.shape))
        return model(x)

    x = torch.rand(2, 3, 6, 10)
    out = tta_predict(fn, x, ALL, "mean", max_batch=max_batch)
    torch.testing.assert_close(out, model(x), rtol=0, atol=1e-6)
    assert sum(s[0] for s in calls) == 16  # 8 views x 2 images
    assert all(s[0] <= (max_batch or 16) for s in calls)
    assert {s[-2:] for s in calls} == {(6, 10), (10, 6)}  # one shape per call
    if max_batch is None:
        assert len(calls) == 2  # one call per shape: H x W and W x H


def test_square_image_d4_is_one_batch():
    calls = []
    model = PixelwiseNet().eval()
    tta_predict(lambda x: (calls.append(x.shape[0]), model(x))[1], torch.rand(1, 3, 8, 8), ALL)
    assert calls == [8]


def test_merge_probs():
    p = torch.tensor([[0.2, 0.0], [0.8, 1.0]])
    torch.testing.assert_close(merge_probs(p, "mean"), torch.tensor([0.5, 0.5]))
    g = merge_probs([p[0], p[1]], "gmean")
    torch.testing.assert_close(g[0], torch.tensor(0.4))
    torch.testing.assert_close(g[1], torch.tensor(GMEAN_EPS**0.5))  # clamped, finite
    with pytest.raises(ValueError, match="unknown merge"):
        merge_probs(p, "median")


def test_gmean_matches_merge_probs():
    kernel = _asymmetric_kernel()

    def model(x):
        return torch.sigmoid(F.conv2d(x, kernel, padding=1) * 10 - 3)

    x = torch.rand(1, 1, 6, 9)
    views = [t.inverse(model(t.forward(x))) for t in ALL]
    torch.testing.assert_close(tta_predict(model, x, ALL, "gmean"), merge_probs(views, "gmean"))
    torch.testing.assert_close(tta_predict(model, x, ALL, "mean"), merge_probs(views, "mean"))


def test_tta_predict_rejects_bad_shapes():
    with pytest.raises(ValueError, match="B x C x H x W"):
        tta_predict(lambda x: x, torch.rand(3, 4, 4), ALL)
    with pytest.raises(ValueError, match="spatial size"):
        tta_predict(lambda x: x[..., :-1], torch.rand(1, 1, 4, 5), ALL[:1])


def test_input_not_modified():
    x = torch.rand(1, 3, 5, 6)
    before = x.clone()
    tta_predict(PixelwiseNet().eval(), x, ALL, "gmean")
    assert torch.equal(x, before)
