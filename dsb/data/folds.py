"""Deterministic K-fold splits, saved as ``folds.csv``.

Two methods (``folds.method``):

- ``grouped`` (the default): every experiment group (:mod:`dsb.data.groups`) stays on one
  side of every split, with the folds stratified by image type as far as the groups allow
  (:class:`sklearn.model_selection.StratifiedGroupKFold`, shuffled with the seed). The
  out-of-fold score then measures the model on experiments it never saw, as a test set does.
- ``stratified``: each image type is shuffled with the seed and dealt round-robin over the
  folds, starting where the previous type stopped, so every fold gets its share of every
  type and the fold sizes differ by at most one. Near-identical images of one experiment
  land on both sides: the out-of-fold score is optimistic (kept for comparison).

The split is written once per run folder and reused, so a resumed or repeated run trains
on exactly the same folds. ``folds.csv`` has the columns ``image_id, image_type, fold`` and,
for grouped folds, ``group``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from dsb.errors import ConfigError, DataError
from dsb.utils import atomic_write


def make_folds(
    image_ids: Sequence[str],
    image_types: Sequence[str],
    n_folds: int,
    seed: int = 0,
    groups: Optional[Sequence[str]] = None,
) -> pd.DataFrame:
    """Assign each image to one of ``n_folds`` folds, stratified by ``image_types``.

    With ``groups`` (one name per image), images of one group share a fold
    (``StratifiedGroupKFold``) and the frame gets a ``group`` column.

    Returns a DataFrame with columns ``image_id``, ``image_type``, ``fold`` (and ``group``)
    sorted by id.
    """
    if len(image_ids) != len(image_types) or (groups is not None and len(groups) != len(image_ids)):
        raise ValueError("image_ids, image_types and groups differ in length")
    if len(image_ids) < n_folds:
        raise DataError(f"{len(image_ids)} images cannot be split into {n_folds} folds")
    frame = pd.DataFrame({"image_id": list(image_ids), "image_type": list(image_types)})
    if groups is not None:
        frame["group"] = list(groups)
    frame = frame.sort_values("image_id", kind="stable").reset_index(drop=True)
    if groups is not None:
        return _grouped_folds(frame, n_folds, seed)
    rng = np.random.default_rng(seed)
    folds = np.empty(len(frame), dtype=np.int64)
    next_fold = 0
    for image_type in sorted(frame["image_type"].unique()):
        index = np.flatnonzero(frame["image_type"].to_numpy() == image_type)
        index = index[rng.permutation(len(index))]
        folds[index] = (next_fold + np.arange(len(index))) % n_folds
        next_fold = (next_fold + len(index)) % n_folds
    frame["fold"] = folds
    return frame


def _grouped_folds(frame: pd.DataFrame, n_folds: int, seed: int) -> pd.DataFrame:
    from sklearn.model_selection import StratifiedGroupKFold

    n_groups = frame["group"].nunique()
    if n_groups < n_folds:
        raise DataError(
            f"{n_groups} experiment group(s) cannot be split into {n_folds} grouped folds; "
            "use fewer folds or folds.method: stratified"
        )
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds = np.full(len(frame), -1, dtype=np.int64)
    for k, (_, held_out) in enumerate(
        splitter.split(np.zeros(len(frame)), frame["image_type"].to_numpy(), frame["group"].to_numpy())
    ):
        folds[held_out] = k
    frame["fold"] = folds
    return frame[["image_id", "image_type", "fold", "group"]]


def save_folds(frame: pd.DataFrame, path: Path) -> None:
    with atomic_write(path) as fh:
        frame.to_csv(fh, index=False)


def load_folds(path: Path) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, dtype={"image_id": str, "image_type": str, "fold": int, "group": str})
    except Exception as exc:  # noqa: BLE001 - any parse failure is a data error here
        raise DataError(f"{path}: cannot read folds file: {exc}") from None
    missing = {"image_id", "image_type", "fold"} - set(frame.columns)
    if missing:
        raise DataError(f"{path}: missing column(s) {sorted(missing)}")
    return frame


def load_or_make_folds(
    path: Path, image_ids: Sequence[str], image_types: Sequence[str], n_folds: int, seed: int,
    groups: Optional[Sequence[str]] = None,
) -> pd.DataFrame:
    """Reuse the folds file ``path`` (a run's :attr:`dsb.rundir.RunDir.folds`) if present,
    checking it covers the same images; otherwise make the folds (grouped when ``groups``
    is given) and save them there."""
    path = Path(path)
    if path.is_file():
        frame = load_folds(path)
        if set(frame["image_id"]) != set(image_ids):
            raise DataError(
                f"{path}: its images differ from the training data's "
                f"({len(frame)} vs {len(image_ids)} ids); use a new run folder"
            )
        if frame["fold"].max() + 1 != n_folds:
            raise DataError(f"{path}: has {frame['fold'].max() + 1} folds, config asks for {n_folds}")
        return frame
    frame = make_folds(image_ids, image_types, n_folds, seed, groups=groups)
    save_folds(frame, path)
    return frame


def parse_folds(spec: Optional[str], n_folds: Optional[int] = None) -> Optional[list[int]]:
    """Folds from a command line: ``None`` (not given), ``all`` (every fold; needs
    ``n_folds``) or a comma-separated list like ``0,2``, checked against ``n_folds``.

    >>> parse_folds("0, 2", 4), parse_folds("all", 3), parse_folds(None)
    ([0, 2], [0, 1, 2], None)
    """
    if spec is None:
        return None
    if spec.strip() == "all" and n_folds is not None:
        return list(range(n_folds))
    try:
        chosen = [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        allowed = "'all' or " if n_folds is not None else ""
        raise ConfigError(f"--folds: expected {allowed}a comma-separated list like 0,2, got {spec!r}") from None
    if not chosen:
        raise ConfigError(f"--folds: no fold given ({spec!r}); expected a list like 0,2")
    bad = [f for f in chosen if n_folds is not None and not 0 <= f < n_folds]
    if bad:
        raise ConfigError(f"--folds: fold(s) {bad} out of range 0..{n_folds - 1}")
    return chosen
