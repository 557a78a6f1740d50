"""Batch norms folded into convolutions for inference (dsb.models.fuse)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dsb.config import InferConfig
from dsb.infer.predict import Predictor
from dsb.models.fuse import conv_bn_pairs, fold_batch_norms
from tests.test_models import ENCODERS, make, perturb_bn


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def n_batch_norms(model: nn.Module) -> int:
    return sum(type(m) is nn.BatchNorm2d for m in model.modules())


@pytest.mark.parametrize("encoder,depth,decoder", ENCODERS)
def test_folded_model_predicts_the_same_and_the_original_is_untouched(encoder, depth, decoder):
    model = make(encoder, depth, decoder)
    perturb_bn(model)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    n_before = n_batch_norms(model)
    folded = fold_batch_norms(model)
    x = torch.rand(2, 3, 96, 128)
    with torch.no_grad():
        want, got = model(x), folded(x)
    assert torch.allclose(want, got, atol=1e-4, rtol=1e-4), (want - got).abs().max()
    # The original keeps every parameter and batch norm (only put in eval mode).
    assert n_batch_norms(model) == n_before
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    if encoder == "resnet18":  # every batch norm of a ResNet U-Net++ follows a convolution
        assert n_before > 20 and n_batch_norms(folded) == 0 and folded is not model


def test_a_batch_norm_not_after_a_convolution_is_left_alone():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(4),
                          nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4))
    perturb_bn(model)
    assert conv_bn_pairs(model) == [("3", "4")]
    folded = fold_batch_norms(model)
    assert type(folded[2]) is nn.BatchNorm2d and type(folded[4]) is nn.Identity
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(model(x), folded(x), atol=1e-5)


class ConvThenBn(nn.Module):
    """A convolution registered before a batch norm; subclasses choose how they are applied."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)


class OutOfOrder(ConvThenBn):
    """Registers conv then bn, but applies the bn to the input: folding would be wrong."""

    def forward(self, x):
        return self.conv(self.bn(x))


def test_a_fold_that_changes_the_output_is_discarded():
    model = OutOfOrder()
    perturb_bn(model)
    assert conv_bn_pairs(model) == [("conv", "bn")]  # registration order pairs them ...
    assert fold_batch_norms(model) is model  # ... and the check against the original rejects it


def test_predictor_predicts_with_folded_models_and_leaves_the_given_one_be():
    model = make()
    perturb_bn(model)
    n_before = n_batch_norms(model)
    predictor = Predictor([model], ["body", "border", "touching"], InferConfig(tta="none"), amp="off")
    assert n_batch_norms(predictor.models[0]) == 0 and n_batch_norms(model) == n_before
    image = (torch.rand(64, 80, 3) * 255).to(torch.uint8).numpy()
    probs = predictor.predict(image)
    with torch.no_grad():
        want = torch.sigmoid(model.eval()(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255))[0]
    assert probs.shape == (3, 64, 80)
    assert float((torch.as_tensor(probs) - want).abs().max()) < 1e-4


class NeedsLargeInput(ConvThenBn):
    def forward(self, x):
        if x.shape[-1] < 128:
            raise ValueError("too small")
        return self.bn(self.conv(x))


def test_a_model_that_cannot_be_checked_is_predicted_as_it_is():
    model = NeedsLargeInput()
    assert fold_batch_norms(model) is model
