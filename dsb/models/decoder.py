"""The U-Net++ decoder (Zhou et al., 2018): the nested grid of nodes ``X(i, j)``.

Given ``D`` encoder feature maps ``X(i, 0)``, ``i = 0 .. L`` (``L = D - 1``, level ``i`` at
the encoder's ``i``-th reduction), node ``X(i, j)`` (``j >= 1``, ``i + j <= L``) is::

    X(i, j) = H([X(i, 0), X(i, 1), ..., X(i, j-1), Up(X(i+1, j-1))])

with ``H`` = (conv3x3-BN-ReLU) x 2 (:class:`DecoderNode`) and ``Up`` a nearest or bilinear
resize to level ``i``'s size. All nodes of level ``i`` have ``c_i`` channels. The decoder
returns the top row ``X(0, 1) .. X(0, d)``: the ``d`` nested outputs up to depth ``d``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ConvBNReLU", "DecoderNode", "UNetPlusPlusDecoder", "resize"]

Upsample = Literal["nearest", "bilinear"]


def resize(x: torch.Tensor, size: Sequence[int], mode: Upsample) -> torch.Tensor:
    """``B x C x h x w`` -> ``B x C x size[0] x size[1]`` by nearest or bilinear interpolation."""
    if mode == "bilinear":
        return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
    return F.interpolate(x, size=tuple(size), mode="nearest")


class ConvBNReLU(nn.Sequential):
    """conv3x3 (no bias) -> BatchNorm -> ReLU; keeps H and W."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )


class DecoderNode(nn.Sequential):
    """``H``: concatenated inputs ``B x in_ch x h x w`` -> (conv3x3-BN-ReLU) x 2 -> ``B x out_ch x h x w``."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(ConvBNReLU(in_ch, out_ch), ConvBNReLU(out_ch, out_ch))


class UNetPlusPlusDecoder(nn.ModuleDict):
    """The nodes ``X(i, j)``, ``1 <= j``, ``i + j <= L``, registered as ``x_{i}_{j}``.

    Parameters
    ----------
    encoder_channels : sequence of ``D`` ints
        Channels of the encoder levels ``X(0, 0) .. X(L, 0)``, shallowest first.
    decoder_channels : sequence of ``L`` ints
        Node channels per level, deepest first (like segmentation_models_pytorch):
        ``[c_{L-1}, ..., c_0]``.
    upsample : ``"nearest"`` or ``"bilinear"``
        How ``Up`` resizes.
    """

    def __init__(
        self, encoder_channels: Sequence[int], decoder_channels: Sequence[int], upsample: Upsample = "nearest"
    ):
        super().__init__()
        enc_ch = list(encoder_channels)
        self.depth = L = len(enc_ch) - 1
        if len(decoder_channels) != L:
            raise ValueError(
                f"decoder_channels: needs {L} entries (one per level below the deepest), got {len(decoder_channels)}"
            )
        level_ch = list(reversed(list(decoder_channels)))  # level_ch[i] = c_i
        self.level_channels = level_ch
        self.upsample = upsample
        for j in range(1, L + 1):
            for i in range(L - j + 1):
                below = enc_ch[i + 1] if j == 1 else level_ch[i + 1]
                in_ch = enc_ch[i] + (j - 1) * level_ch[i] + below
                self[f"x_{i}_{j}"] = DecoderNode(in_ch, level_ch[i])

    def forward(self, features: Sequence[torch.Tensor], depth: int | None = None) -> list[torch.Tensor]:
        """Top row ``[X(0, 1), ..., X(0, depth)]`` from the encoder maps ``X(0, 0) .. X(depth, 0)``.

        ``features[i]`` is ``B x encoder_channels[i] x h_i x w_i``; only the first
        ``depth + 1`` are used (default ``depth``: ``len(features) - 1``, at most ``L``) and
        only the nodes with ``i + j <= depth`` run. ``X(0, j)`` is ``B x c_0 x h_0 x w_0``.
        """
        if depth is None:
            depth = min(len(features) - 1, self.depth)
        grid: dict[tuple[int, int], torch.Tensor] = {(i, 0): f for i, f in enumerate(features[: depth + 1])}
        for j in range(1, depth + 1):
            for i in range(depth - j + 1):
                skips = [grid[(i, k)] for k in range(j)]
                up = resize(grid[(i + 1, j - 1)], skips[0].shape[-2:], self.upsample)
                grid[(i, j)] = self[f"x_{i}_{j}"](torch.cat(skips + [up], dim=1))
        return [grid[(0, j)] for j in range(1, depth + 1)]
