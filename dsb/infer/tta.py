"""Test-time augmentation as data: the 8 symmetries of the square (the dihedral group D4).

Each :class:`Transform` is a pair of pure functions on torch tensors of shape
``B x C x H x W`` acting on the last two dimensions: ``forward`` maps an image to its
augmented view, ``inverse`` maps a prediction on that view back onto the original pixel
grid. Rotations by 90 degrees and the two transposes swap ``H`` and ``W``, so a
non-square ``H x W`` input becomes ``W x H`` and ``inverse`` brings the prediction back
to ``H x W``.

Every element is written as ``rot90(k) o hflip^f`` (first an optional left-right flip,
then ``k`` quarter turns with :func:`torch.rot90` over dims ``(-2, -1)``), which makes
composition and inversion arithmetic on ``(k, f)``.

>>> import torch
>>> x = torch.arange(6.0).reshape(1, 1, 2, 3)
>>> [t.name for t in tta_transforms("flips")]
['identity', 'hflip', 'vflip', 'rot180']
>>> t = TRANSFORMS["rot90"]
>>> tuple(t.forward(x).shape), tuple(t.inverse(t.forward(x)).shape)
((1, 1, 3, 2), (1, 1, 2, 3))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Literal, Sequence, get_args

import torch

from dsb.config import TtaMode

#: The TTA modes by name, fewest views first (:data:`dsb.config.TtaMode`).
TTA_MODES: tuple[str, ...] = get_args(TtaMode)
MergeMode = Literal["mean", "gmean"]

#: Probabilities are clamped to ``[GMEAN_EPS, 1]`` before the log of the geometric mean.
GMEAN_EPS = 1e-6


@dataclass(frozen=True)
class Transform:
    """One element of D4: ``forward(x) = rot90(hflip^flip(x), k)`` on dims ``(-2, -1)``."""

    name: str
    #: Number of counter-clockwise quarter turns (``torch.rot90`` convention), 0..3.
    k: int
    #: Flip left-right (``dim=-1``) before rotating.
    flip: bool

    @property
    def swaps_hw(self) -> bool:
        """Whether the transformed view is ``W x H`` instead of ``H x W``."""
        return self.k % 2 == 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Augmented view of ``x`` (``... x H x W`` -> ``... x H x W`` or ``... x W x H``)."""
        if self.flip:
            x = x.flip(-1)
        if self.k:
            x = torch.rot90(x, self.k, dims=(-2, -1))
        return x

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """Map a prediction on the augmented view back to the original pixel grid."""
        if self.k:
            y = torch.rot90(y, -self.k, dims=(-2, -1))
        if self.flip:
            y = y.flip(-1)
        return y

    def then(self, other: "Transform") -> "Transform":
        """The element ``other o self`` (apply ``self`` first, then ``other``)."""
        # hflip o rot90(k) == rot90(-k) o hflip, so pushing other's flip past our rotation
        # negates our k.
        k_self = -self.k if other.flip else self.k
        return _BY_KF[((other.k + k_self) % 4, self.flip != other.flip)]


_ALL = (
    Transform("identity", 0, False),
    Transform("hflip", 0, True),
    Transform("vflip", 2, True),
    Transform("rot180", 2, False),
    Transform("rot90", 1, False),
    Transform("rot270", 3, False),
    Transform("transpose", 1, True),
    Transform("antitranspose", 3, True),
)
_BY_KF = {(t.k, t.flip): t for t in _ALL}

#: All eight transforms by name.
TRANSFORMS: dict[str, Transform] = {t.name: t for t in _ALL}

_MODES: dict[str, tuple[str, ...]] = {
    "none": ("identity",),
    "pair": ("identity", "rot180"),
    "flips": ("identity", "hflip", "vflip", "rot180"),
    "d4": tuple(t.name for t in _ALL),
}


def tta_transforms(mode: TtaMode) -> list[Transform]:
    """The transforms of a TTA mode.

    ``"none"``: identity only; ``"pair"``: identity and rot180 (both flips at once, the view
    whose errors differ most from the identity's among the flips); ``"flips"``: identity,
    hflip, vflip and hvflip (= rot180);
    ``"d4"``: all eight (adds the 90/270-degree rotations, transpose and anti-transpose).
    """
    try:
        names = _MODES[mode]
    except KeyError:
        raise ValueError(f"unknown TTA mode {mode!r}; choose from {list(_MODES)}") from None
    return [TRANSFORMS[n] for n in names]


def _check_merge(merge: str) -> None:
    if merge not in ("mean", "gmean"):
        raise ValueError(f"unknown merge {merge!r}; choose 'mean' or 'gmean'")


def merge_probs(probs: torch.Tensor | Sequence[torch.Tensor], merge: MergeMode = "mean") -> torch.Tensor:
    """Merge aligned probability maps along a new leading axis.

    Parameters
    ----------
    probs : tensor ``N x ...`` or a sequence of N tensors of equal shape
        Probabilities in [0, 1], already brought back to the original grid.
    merge : ``"mean"`` or ``"gmean"``
        Arithmetic mean, or geometric mean ``exp(mean(log(clamp(p, GMEAN_EPS, 1))))``.
    """
    _check_merge(merge)
    stack = probs if isinstance(probs, torch.Tensor) else torch.stack(list(probs))
    if merge == "mean":
        return stack.mean(0)
    return stack.clamp(GMEAN_EPS, 1.0).log().mean(0).exp()


def _chunks(
    transforms: Sequence[Transform], batch: int, max_items: int, square: bool
) -> Iterator[list[tuple[Transform, int, int]]]:
    """Pack ``(transform, b0, b1)`` segments into chunks of at most ``max_items`` items.

    A chunk holds views of one shape only (``H x W`` or ``W x H``; all views when the
    image is square), so it can be concatenated into one batch.
    """
    groups = [list(transforms)] if square else [
        [t for t in transforms if not t.swaps_hw],
        [t for t in transforms if t.swaps_hw],
    ]
    for group in groups:
        chunk: list[tuple[Transform, int, int]] = []
        n_items = 0
        for t in group:
            b0 = 0
            while b0 < batch:
                take = min(batch - b0, max_items - n_items)
                chunk.append((t, b0, b0 + take))
                n_items += take
                b0 += take
                if n_items == max_items:
                    yield chunk
                    chunk, n_items = [], 0
        if chunk:
            yield chunk


def tta_predict(
    predict_fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    transforms: Sequence[Transform],
    merge: MergeMode = "mean",
    max_batch: int | None = None,
) -> torch.Tensor:
    """Predict ``x`` under every transform, align the predictions and merge them.

    The views of one shape are concatenated along the batch axis and sent through
    ``predict_fn`` together, at most ``max_batch`` items per call (``None``: all), so
    with ``B = 1`` a square image under ``"d4"`` is a single batch of 8. Results are
    accumulated as they come (no stack of all views is kept).

    Parameters
    ----------
    predict_fn : callable ``(n, C, h, w) -> (n, K, h, w)``
        Returns probabilities in [0, 1] for any ``h, w``.
    x : tensor ``B x C x H x W``
    transforms : sequence of :class:`Transform`
    merge : ``"mean"`` or ``"gmean"`` (see :func:`merge_probs`)
    max_batch : int or None
        Largest batch passed to ``predict_fn``.

    Returns
    -------
    tensor ``B x K x H x W``, dtype float32, on the device ``predict_fn`` returns on.
    """
    _check_merge(merge)
    if x.ndim != 4:
        raise ValueError(f"x must be B x C x H x W, got shape {tuple(x.shape)}")
    if not transforms:
        raise ValueError("at least one transform is needed")
    batch = x.shape[0]
    max_items = max(1, max_batch if max_batch is not None else batch * len(transforms))
    total: torch.Tensor | None = None
    for chunk in _chunks(transforms, batch, max_items, x.shape[-2] == x.shape[-1]):
        views = [t.forward(x[b0:b1]) for t, b0, b1 in chunk]
        inp = views[0] if len(views) == 1 else torch.cat(views)
        del views
        out = predict_fn(inp.contiguous())
        del inp
        if out.ndim != 4 or out.shape[0] != sum(b1 - b0 for _, b0, b1 in chunk):
            raise ValueError(f"predict_fn returned shape {tuple(out.shape)} for a batch of views")
        out = out.float()
        if merge == "gmean":
            out = out.clamp(GMEAN_EPS, 1.0).log_()
        offset = 0
        for t, b0, b1 in chunk:
            aligned = t.inverse(out[offset : offset + b1 - b0])
            offset += b1 - b0
            if total is None:
                total = torch.zeros(
                    (batch, aligned.shape[1], *x.shape[-2:]), dtype=torch.float32, device=out.device
                )
            if aligned.shape[-2:] != x.shape[-2:]:
                raise ValueError(
                    f"predict_fn changed the spatial size: {tuple(aligned.shape[-2:])} "
                    f"instead of {tuple(x.shape[-2:])}"
                )
            total[b0:b1] += aligned
        del out
    assert total is not None
    total /= len(transforms)
    if merge == "gmean":
        total.exp_()
    return total
