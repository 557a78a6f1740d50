"""Pictures for humans: overlays of instances on images, training curves."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from skimage.segmentation import find_boundaries

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


def overlay_instances(image: np.ndarray, label_map: np.ndarray) -> np.ndarray:
    """The image (uint8 or float in [0, 1], HxWx3 or HxW) with each nucleus outlined in
    its own colour. Returns uint8 (H, W, 3)."""
    if image.dtype != np.uint8:
        image = np.clip(np.asarray(image, np.float32) * 255.0, 0, 255).astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    out = image[..., :3].copy()
    edges = find_boundaries(label_map, mode="inner")
    if label_map.max() > 0:
        colours = label_colours(int(label_map.max()))
        out[edges] = colours[label_map[edges]]
    return out


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


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Lay out, write as PNG atomically, and close a matplotlib figure."""
    fig.tight_layout()
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
