"""Storage of probability maps: uint8 quantisation and the out-of-fold folders.

Training keeps each fold's held-out probabilities (``fold<k>/oof/<id>.npy``, see
:class:`dsb.rundir.RunDir`), and ``dsb predict --save-probs`` writes the same format:
``uint8 (K, H, W)``, step 1/255, a quarter of float32's disk.

>>> import numpy as np
>>> stored = quantise_probs(np.array([0.0, 0.5, 1.0], np.float32))
>>> stored.tolist(), [round(float(p), 3) for p in dequantise_probs(stored)]
([0, 128, 255], [0.0, 0.502, 1.0])
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Mapping

import numpy as np

__all__ = ["quantise_probs", "dequantise_probs", "write_prob_folder"]


def quantise_probs(probs: np.ndarray) -> np.ndarray:
    """Probabilities in [0, 1] as uint8 (step 1/255)."""
    return np.clip(np.rint(probs * 255.0), 0, 255).astype(np.uint8)


def dequantise_probs(stored: np.ndarray) -> np.ndarray:
    """uint8 maps back to float32 probabilities."""
    return stored.astype(np.float32) / 255.0


def write_prob_folder(folder: Path, probs: Mapping[str, np.ndarray]) -> None:
    """Replace ``folder`` with ``<image_id>.npy`` files of ``probs`` as a whole: written
    beside it and swapped in, so it is never half old, half new."""
    folder = Path(folder)
    staging = folder.with_name(folder.name + ".tmp")
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for image_id, arr in probs.items():
        np.save(staging / f"{image_id}.npy", arr)
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    staging.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
