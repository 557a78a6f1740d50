import numpy as np
import pandas as pd
import pytest

from dsb.rundir import RunDir
from dsb.data.folds import load_folds, load_or_make_folds, make_folds
from dsb.errors import DataError


def _ids(n):
    return [f"{i:04d}" for i in range(n)]


def test_folds_are_stratified_balanced_and_deterministic():
    ids = _ids(103)
    types = ["fluorescence"] * 80 + ["stained"] * 17 + ["brightfield"] * 6
    a = make_folds(ids, types, 4, seed=3)
    b = make_folds(list(reversed(ids)), list(reversed(types)), 4, seed=3)
    pd.testing.assert_frame_equal(a, b)
    sizes = a["fold"].value_counts()
    assert sizes.max() - sizes.min() <= 1
    for _, group in a.groupby("image_type"):
        counts = group["fold"].value_counts().reindex(range(4), fill_value=0)
        assert counts.max() - counts.min() <= 1
    assert not make_folds(ids, types, 4, seed=4)["fold"].equals(a["fold"])


def test_folds_file_is_reused_and_checked(tmp_path):
    ids, types = _ids(12), ["a"] * 12
    first = load_or_make_folds(RunDir(tmp_path).folds, ids, types, 3, seed=0)
    again = load_or_make_folds(RunDir(tmp_path).folds, ids, types, 3, seed=99)  # seed ignored: file reused
    pd.testing.assert_frame_equal(first, again)
    with pytest.raises(DataError, match="differ"):
        load_or_make_folds(RunDir(tmp_path).folds, _ids(13), ["a"] * 13, 3, seed=0)
    with pytest.raises(DataError, match="folds"):
        load_or_make_folds(RunDir(tmp_path).folds, ids, types, 4, seed=0)


def test_too_few_images():
    with pytest.raises(DataError):
        make_folds(["a", "b"], ["x", "x"], 4)


def _grouped_data(n_groups=16, per_group=(3, 9), seed=0):
    rng = np.random.default_rng(seed)
    ids, types, groups = [], [], []
    for g in range(n_groups):
        kind = "stained" if g % 4 == 0 else "fluorescence"
        for _ in range(int(rng.integers(*per_group))):
            ids.append(f"{len(ids):04d}")
            types.append(kind)
            groups.append(f"g{g}")
    return ids, types, groups


def test_grouped_folds_keep_each_group_on_one_side_and_are_deterministic():
    ids, types, groups = _grouped_data()
    a = make_folds(ids, types, 4, seed=1, groups=groups)
    assert list(a.columns) == ["image_id", "image_type", "fold", "group"]
    assert (a.groupby("group")["fold"].nunique() == 1).all()
    assert set(a["fold"]) == {0, 1, 2, 3}
    # every fold holds out some of each type where the groups allow it
    assert (a.groupby("fold")["image_type"].nunique() == 2).all()
    b = make_folds(list(reversed(ids)), list(reversed(types)), 4, seed=1, groups=list(reversed(groups)))
    pd.testing.assert_frame_equal(a, b)


def test_grouped_folds_need_enough_groups_and_round_trip(tmp_path):
    ids, types, groups = _grouped_data(n_groups=3)
    with pytest.raises(DataError, match="3 experiment group"):
        make_folds(ids, types, 4, groups=groups)
    ids, types, groups = _grouped_data()
    made = load_or_make_folds(RunDir(tmp_path).folds, ids, types, 4, seed=0, groups=groups)
    pd.testing.assert_frame_equal(made, load_folds(tmp_path / "folds.csv"))
