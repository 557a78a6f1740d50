"""Pictures for humans: outlines of instances on images, training curves, thumbnails.

Every picture of nuclei in the project is drawn here, from one primitive:
:func:`inner_edges` (a nucleus's one-pixel inner outline). :func:`paint_outlines` burns
outlines into an image in a colour per label (``dsb predict --overlays``, ``dsb segment
--overlays``, ``dsb evaluate --figures``); :func:`outline_layer` and
:func:`save_indexed_png` write the same outlines as a transparent layer, which the HTML
report lays over the image (:mod:`dsb.report`). :func:`display_image` is the contrast
stretch every picture of an image uses.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import IO, Sequence

import numpy as np
from PIL import Image

from dsb.utils import atomic_write


def label_colours(n_labels: int, seed: int = 0) -> np.ndarray:
    """``(n_labels + 1, 3)`` uint8 colours, one per label; index 0 (background) black.

    Hues are spread by the golden ratio so neighbouring labels differ, saturated and
    bright enough to show on dark fluorescence and on light brightfield images.
    """
    from matplotlib.colors import hsv_to_rgb

    hues = (np.arange(n_labels) * 0.618033988749895 + seed * 0.1) % 1.0
    hsv = np.stack([hues, np.full(n_labels, 0.9), np.full(n_labels, 1.0)], axis=1)
    colours = np.zeros((n_labels + 1, 3), np.uint8)
    colours[1:] = np.round(hsv_to_rgb(hsv) * 255).astype(np.uint8)
    return colours


def inner_edges(label_map: np.ndarray) -> np.ndarray:
    """Boolean ``(H, W)``: the pixels of a nucleus that have a 4-neighbour with another
    label (or background), i.e. each nucleus's one-pixel inner outline.

    The same pixels as ``skimage.segmentation.find_boundaries(label_map, mode="inner")``
    (the image border is not an edge), about 40 times faster.

    >>> lab = np.zeros((4, 5), np.int32); lab[1:3, 1:4] = 1; lab[1:3, 3] = 2
    >>> inner_edges(lab).astype(int)
    array([[0, 0, 0, 0, 0],
           [0, 1, 1, 1, 0],
           [0, 1, 1, 1, 0],
           [0, 0, 0, 0, 0]])
    """
    labels = np.asarray(label_map)
    edges = np.zeros(labels.shape, bool)
    vertical = labels[1:] != labels[:-1]
    edges[1:] |= vertical
    edges[:-1] |= vertical
    horizontal = labels[:, 1:] != labels[:, :-1]
    edges[:, 1:] |= horizontal
    edges[:, :-1] |= horizontal
    edges &= labels != 0
    return edges


def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """An image (uint8, or float in [0, 1]; HxW, HxWx1, HxWx3 or HxWx4) as uint8 (H, W, 3)."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = np.clip(np.asarray(image, np.float32) * 255.0, 0, 255).astype(np.uint8)
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    return image[..., :3]


def display_image(image: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """uint8 (H, W, 3) for display only: the ``low``-``high`` percentiles of all channels
    stretched to 0-255 (dim fluorescence images would otherwise show as black). An image
    without contrast is returned as is. Percentiles come from the 256-bin histogram."""
    image = as_rgb_uint8(image)
    if not image.size:
        return image
    cdf = np.cumsum(np.bincount(image.ravel(), minlength=256)) / image.size
    lo, hi = int(np.searchsorted(cdf, low / 100.0)), int(np.searchsorted(cdf, high / 100.0))
    if hi <= lo:
        return image
    lut = np.clip((np.arange(256, dtype=np.float32) - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)
    return lut[image]


def paint_outlines(image: np.ndarray, label_map: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """The image (as :func:`as_rgb_uint8`) with each nucleus's inner outline painted in
    ``colours[label]`` (``colours``: uint8 ``(max label + 1, 3)``). Returns a new array."""
    out = as_rgb_uint8(image).copy()
    edges = inner_edges(label_map)
    if edges.any():
        out[edges] = np.asarray(colours, np.uint8)[np.asarray(label_map)[edges]]
    return out


def overlay_instances(image: np.ndarray, label_map: np.ndarray) -> np.ndarray:
    """The image (uint8 or float in [0, 1], HxWx3 or HxW) with each nucleus outlined in
    its own colour. Returns uint8 (H, W, 3)."""
    n = int(np.asarray(label_map).max(initial=0))
    return paint_outlines(image, label_map, label_colours(n)) if n > 0 else as_rgb_uint8(image).copy()


def outline_layer(label_map: np.ndarray, index_of_label: np.ndarray) -> np.ndarray:
    """uint8 ``(H, W)`` palette indices: ``index_of_label[label]`` on each nucleus's inner
    outline, 0 (transparent in :func:`save_indexed_png`) elsewhere."""
    layer = np.zeros(np.shape(label_map), np.uint8)
    edges = inner_edges(label_map)
    if edges.any():
        layer[edges] = np.asarray(index_of_label, np.uint8)[np.asarray(label_map)[edges]]
    return layer


def save_indexed_png(target: str | Path | IO[bytes], indices: np.ndarray, palette: np.ndarray,
                     compress_level: int = 1) -> None:
    """Write uint8 palette indices as a palette PNG whose index 0 is fully transparent
    (an outline layer to lay over an image); ``palette`` is uint8 ``(k, 3)``."""
    im = Image.fromarray(np.ascontiguousarray(indices, np.uint8))
    colours = np.zeros((256, 3), np.uint8)
    colours[: len(palette)] = palette
    im.putpalette(colours.tobytes())
    im.save(target, format="PNG", transparency=0, compress_level=compress_level)


def thumbnail(image: np.ndarray, max_px: int) -> np.ndarray:
    """uint8 RGB image shrunk (never enlarged) so its longer side is ``max_px``."""
    im = Image.fromarray(as_rgb_uint8(image))
    im.thumbnail((max_px, max_px), Image.Resampling.BOX)
    return np.asarray(im)


def encode_png(image: np.ndarray, compress_level: int = 1) -> bytes:
    """PNG bytes of a uint8 image; an RGB image whose channels are equal is stored as gray
    (a third of the data: most microscopy images are)."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 3 and (image[..., 0] == image[..., 1]).all() \
            and (image[..., 1] == image[..., 2]).all():
        image = image[..., 0]
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def save_png(path: str | Path, array: np.ndarray) -> Path:
    """Write an RGB uint8 array as PNG, atomically."""
    path = Path(path)
    with atomic_write(path, "wb") as fh:
        Image.fromarray(array).save(fh, format="PNG")
    return path


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, dpi: int = 110, rect: Sequence[float] | None = None) -> Path:
    """Lay out (inside ``rect`` of the figure, if given), write as PNG atomically, and
    close a matplotlib figure."""
    fig.tight_layout(rect=rect)
    path = Path(path)
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=dpi)
    pyplot().close(fig)
    return path


def plot_training_curves(histories: dict[str, Sequence[dict]], path: str | Path) -> Path:
    """Loss and validation mAP per epoch for several runs/folds, saved as one PNG."""
    fig, (ax_loss, ax_map) = pyplot().subplots(1, 2, figsize=(11, 4))
    for name, records in histories.items():
        epochs = [r["epoch"] for r in records]
        ax_loss.plot(epochs, [r["loss"] for r in records], label=name)
        val = [(r["epoch"], r["val_map"]) for r in records if r.get("val_map") is not None]
        if val:
            ax_map.plot(*zip(*val), marker="o", label=name)
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="Loss")
    ax_map.set(xlabel="epoch", ylabel="validation mAP", title="Validation mAP (competition metric)")
    for ax in (ax_loss, ax_map):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_groups(images: dict[str, np.ndarray], groups: dict[str, str], path: str | Path,
                n_groups: int = 14, per_group: int = 8, thumb_px: int = 96, seed: int = 0) -> Path:
    """A figure of experiment groups: one row per group (the largest half of ``n_groups``
    and a random draw of the rest), up to ``per_group`` random members each, to check the
    grouping by eye. ``images`` are uint8 (H, W, 3) by id; ``groups`` maps id to group."""
    plt = pyplot()
    members: dict[str, list[str]] = {}
    for image_id in sorted(groups):
        members.setdefault(groups[image_id], []).append(image_id)
    by_size = sorted(members, key=lambda g: (-len(members[g]), g))
    rng = np.random.default_rng(seed)
    largest = by_size[: n_groups // 2]
    rest = by_size[n_groups // 2:]
    drawn = [rest[i] for i in sorted(rng.choice(len(rest), size=min(len(rest), n_groups - len(largest)), replace=False))]
    rows = largest + drawn
    fig, axes = plt.subplots(len(rows), per_group, figsize=(per_group * 1.1, len(rows) * 1.2), squeeze=False)
    for r, group in enumerate(rows):
        ids = members[group]
        picked = [ids[i] for i in sorted(rng.choice(len(ids), size=min(per_group, len(ids)), replace=False))]
        for c in range(per_group):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(picked):
                thumb = Image.fromarray(images[picked[c]][..., :3]).resize((thumb_px, thumb_px), Image.BILINEAR)
                ax.imshow(np.asarray(thumb))
        axes[r, 0].set_title(f"{group} ({len(ids)})", fontsize=7, loc="left")
    fig.suptitle(f"{len(members)} experiment groups of {len(groups)} images: the {len(largest)} largest, "
                 f"then {len(drawn)} drawn at random", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)
