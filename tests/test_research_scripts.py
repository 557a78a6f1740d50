"""The research scripts (benchmarks/research/): they run as a user runs them, in a fresh
process, on small synthetic data (with a hand-set model where they need one), and fail with a
message, not a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage

from dsb.data.kaggle import open_stage
from dsb.rle import label_map_to_rows
from dsb.submission import write_submission
from tests.test_groups import _field

RESEARCH = Path(__file__).resolve().parents[1] / "benchmarks" / "research"


def _run(script: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(RESEARCH / script), *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def _module(name: str, monkeypatch):
    """A research script imported as a module (it imports its neighbours, e.g. heldout.py)."""
    import importlib.util

    monkeypatch.syspath_prepend(str(RESEARCH))
    spec = importlib.util.spec_from_file_location(name, RESEARCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_test_novelty_counts_test_images_of_known_and_new_experiments(tmp_path):
    """benchmarks/research/test_novelty.py: a test image from a training experiment is
    'known', one from an experiment (here: a microscope size) absent from training is 'new'."""
    rng = np.random.default_rng(1)
    fields = {
        "stage1_train": [_field(rng, (64, 64), 0.05, 3, n=30) for _ in range(4)]
        + [_field(rng, (64, 64), 0.25, 12, n=3) for _ in range(3)],
        "stage1_test": [_field(rng, (64, 64), 0.05, 3, n=30) for _ in range(2)]   # the first experiment
        + [_field(rng, (64, 80), 0.05, 3, n=30)],                                  # a size training lacks
    }
    for stage, images in fields.items():
        for k, image in enumerate(images):
            image_id = f"{stage[7:]}{k:02d}" + "0" * 30
            (tmp_path / stage / image_id / "images").mkdir(parents=True)
            Image.fromarray(image).save(tmp_path / stage / image_id / "images" / f"{image_id}.png")
    out = tmp_path / "novelty.json"
    done = _run("test_novelty.py", "--data", tmp_path, "--out", out)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["n_test"] == 3 and result["n_train"] == 7
    assert result["known_experiment"] == 2
    known = {i[:6]: row["known_experiment"] for i, row in result["test_images"].items()}
    assert known == {"test00": True, "test01": True, "test02": False}
    assert result["per_type"]["fluorescence"] == {"test_images": 3, "known_experiment": 2}
    assert list(result["new_groups"]) == ["fluorescence-64x80-0"]
    # no data folder: a clear message, not a traceback
    missing = _run("test_novelty.py", "--data", tmp_path / "nowhere", "--out", out)
    assert missing.returncode != 0 and "stage1_train" in missing.stderr and "Traceback" not in missing.stderr


@pytest.mark.slow
def test_compare_submissions_scores_one_submission_against_another(synthetic_stage, tmp_path):
    """benchmarks/research/compare_submissions.py: identical submissions agree perfectly;
    one with its nuclei eroded has an area ratio below 1, and the same nuclei found."""
    stage = open_stage(synthetic_stage.path)
    maps = {i: stage.read_label_map(i) for i in stage.image_ids}
    shapes = {i: m.shape for i, m in maps.items()}

    def write(name, transform):
        rows = []
        for image_id, labels in maps.items():
            rows.extend(label_map_to_rows(image_id, transform(labels)))
        return write_submission(tmp_path / name, rows, image_shapes=shapes)

    def eroded(labels):
        out = np.zeros_like(labels)
        for k in range(1, labels.max() + 1):  # nuclei of 80 px and more lose their rim, smaller ones stay
            mask = labels == k
            out[ndimage.binary_erosion(mask) if mask.sum() >= 80 else mask] = k
        return out

    same, thin = write("same.csv", lambda m: m), write("thin.csv", eroded)
    out = tmp_path / "compare.json"
    done = _run("compare_submissions.py", same, same, "--images", synthetic_stage.path, "--out", out)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())["all"]
    assert result["map_a_vs_b"] == pytest.approx(1.0) and result["area_ratio"] == pytest.approx(1.0)
    assert result["n_pred"] == result["n_true"] == sum(int(m.max()) for m in maps.values())
    done = _run("compare_submissions.py", thin, same, "--images", synthetic_stage.path, "--out", out)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())["all"]
    assert 0.4 < result["area_ratio"] < 0.95 and result["missed"] == 0
    # --grow-a: the same submission grown 1 px is larger than itself, nothing lost
    done = _run("compare_submissions.py", same, same, "--images", synthetic_stage.path, "--out", out, "--grow-a", 1)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())["all"]
    assert 1.05 < result["area_ratio"] < 2.0 and result["missed"] == 0 and result["n_pred"] == result["n_true"]
    # a submission with an image the images lack: a message naming the file, not a traceback
    stray = tmp_path / "stray.csv"
    stray.write_text(same.read_text() + "0" * 64 + ",1 4\n")
    done = _run("compare_submissions.py", stray, same, "--images", synthetic_stage.path, "--out", out)
    assert done.returncode != 0 and "stray.csv" in done.stderr and "Traceback" not in done.stderr


def test_annotation_width_counts_the_groups_a_growth_improves(monkeypatch):
    """benchmarks/research/annotation_width.py --by-group: a gain carried by one large group
    shows as one group improved of three, with a median change that is a loss."""
    from types import SimpleNamespace

    module = _module("annotation_width", monkeypatch)
    group_of = {"a1": "g1", "a2": "g1", "a3": "g1", "b1": "g2", "c1": "g3", "f1": "g4"}
    types = {k: ("fluorescence" if k == "f1" else "stained") for k in group_of}
    ungrown = {k: 0.4 for k in group_of}
    grown = {"a1": 0.9, "a2": 0.9, "a3": 0.9, "b1": 0.35, "c1": 0.3, "f1": 0.4}
    scores = [SimpleNamespace(image_id=k, score=v) for k, v in grown.items()]
    out = module.groups_improved(scores, ungrown, group_of, types)
    assert out["stained"]["groups"] == 3 and out["stained"]["improved"] == 1
    assert out["stained"]["median_change"] == pytest.approx(-0.05)
    assert out["fluorescence"] == {"groups": 1, "improved": 0, "median_change": 0.0}


def test_held_out_folds_of_a_grouped_run_carry_its_recorded_groups(tmp_path, monkeypatch, synthetic_stage):
    """benchmarks/research/heldout.py: a run on grouped folds hands each fold's experiment
    groups from its folds.csv (so --by-group need not regroup the stage); random folds
    (no group column) hand none."""
    from dsb.config import config_from_dict, save_config
    from dsb.rundir import RunDir

    module = _module("heldout", monkeypatch)
    ids = sorted(open_stage(synthetic_stage.path).image_ids)
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    save_config(config_from_dict({"name": "r", "data": {"path": str(synthetic_stage.path)}}), run.config)
    table = {"image_id": ids, "image_type": ["fluorescence"] * 3, "fold": [0, 0, 1], "group": ["g1", "g2", "g3"]}
    pd.DataFrame(table).to_csv(run.folds, index=False)
    _, _, entries = module.held_out_folds(str(run.path), "0,1")
    assert [e.groups for e in entries] == [{ids[0]: "g1", ids[1]: "g2"}, {ids[2]: "g3"}]
    pd.DataFrame(table).drop(columns="group").to_csv(run.folds, index=False)
    _, _, entries = module.held_out_folds(str(run.path), "0")
    assert entries[0].groups is None and entries[0].image_ids == ids[:2]


@pytest.mark.slow
def test_tta_gain_weights_every_setting_to_the_match_images(tmp_path):
    """benchmarks/research/tta_gain.py --match: each setting's held-out scores weighted to
    another image set's mix, as `dsb evaluate --match` weights a run's out-of-fold maps; a
    predictions CSV that lacks one of the images is named before any model runs."""
    from dsb.config import config_from_dict, save_config
    from dsb.data.imagetypes import classify_image
    from dsb.data.synthetic import write_synthetic_dataset
    from dsb.models.checkpoint import save_checkpoint
    from dsb.rundir import RunDir
    from tests.test_segment import TINY, threshold_model

    train = write_synthetic_dataset(tmp_path / "train", n=8, seed=11)
    target = write_synthetic_dataset(tmp_path / "target", n=5, seed=12, masks=False)
    cfg = config_from_dict({**TINY, "data": {"path": str(train.path)}})
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    save_config(cfg, run.config)
    stage = open_stage(train.path)
    ids = sorted(stage.image_ids)
    types = [classify_image(stage.read_image_uint8(i).astype(np.float32) / 255.0) for i in ids]
    pd.DataFrame({"image_id": ids, "image_type": types, "fold": [0] * 4 + [1] * 4,
                  "group": [f"g{k % 3}" for k in range(8)]}).to_csv(run.folds, index=False)
    save_checkpoint(run.best(0), threshold_model(cfg), cfg)

    out = tmp_path / "tta_gain.json"
    res = _run("tta_gain.py", run.path, "--folds", "0", "--tta", "none", "pair", "--match", target.path,
               "--match-predictions", target.solution_csv, "--out", out)
    assert res.returncode == 0, res.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [r["setting"] for r in rows] == ["none", "pair"]
    for row in rows:
        matched = row["matched"]
        assert matched["n_target"] == 5 and 0 < matched["effective_n"] <= 4
        # a weighted mean of held-out image scores that are neither all 0 nor all 1
        assert 0.0 < row["map"] < 1.0 and 0.0 < matched["map"] < 1.0
        assert matched["interval_95"][0] <= matched["map"] <= matched["interval_95"][1]
    assert "matched" in res.stdout

    lines = target.solution_csv.read_text().splitlines()
    first = lines[1].split(",")[0]
    partial = tmp_path / "partial.csv"
    partial.write_text("\n".join([lines[0], *[ln for ln in lines[1:] if not ln.startswith(first + ",")]]) + "\n")
    res = _run("tta_gain.py", run.path, "--match", target.path, "--match-predictions", partial, "--out", out)
    assert res.returncode == 2 and first in res.stderr and "partial.csv" in res.stderr
    assert "Traceback" not in res.stderr
    res = _run("tta_gain.py", run.path, "--match-predictions", partial, "--out", out)
    assert res.returncode == 2 and "--match" in res.stderr


@pytest.mark.slow
def test_type_settings_searches_a_sets_per_type_postprocessing_on_a_runs_maps(tmp_path, synthetic_run):
    """benchmarks/research/type_settings.py: the search of `dsb tune --per-type` from a shipped
    set's common postprocessing, on another run's out-of-fold maps; a run without maps is
    named, without a traceback."""
    from dsb.config import config_from_dict
    from dsb.models import build_model
    from dsb.models.checkpoint import save_checkpoint
    from tests.conftest import SYNTHETIC_RUN

    run = synthetic_run(tmp_path / "run")
    cfg = config_from_dict({**SYNTHETIC_RUN, "postprocess": {"mask_threshold": 0.75, "seed_threshold": 0.85}})
    weights = save_checkpoint(tmp_path / "set.pt", build_model(cfg, load_weights=False), cfg)
    out = tmp_path / "type_settings.json"
    res = _run("type_settings.py", weights, run, "--rounds", "1", "--out", out)
    assert res.returncode == 0, res.stderr
    result = json.loads(out.read_text())
    folds = pd.read_csv(run / "folds.csv")
    assert {r["image_type"] for r in result["rows"]} == set(folds["image_type"])
    assert result["common"]["mask_threshold"] == 0.75 and result["n_images"] == len(folds)
    for row in result["rows"]:
        if row["held_out_own"] is not None:
            assert 0.0 <= row["held_out_common"] <= 1.0 and 0.0 <= row["held_out_own"] <= 1.0
        assert (row["kept"] != {}) == (row["image_type"] in result["by_type"])
        if row["kept"]:
            assert row["held_out_own"] > row["held_out_common"]
    # common thresholds far too high for these maps: some type's own settings win held out
    assert any(row["kept"] for row in result["rows"]) and "dsb export" in res.stdout

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.yaml").write_text((run / "config.yaml").read_text())
    (empty / "folds.csv").write_text((run / "folds.csv").read_text())
    res = _run("type_settings.py", weights, empty, "--out", out)
    assert res.returncode == 2 and "empty" in res.stderr and "Traceback" not in res.stderr


def test_weight_average_writes_the_mean_of_each_model_as_a_run(tmp_path, synthetic_run):
    """benchmarks/research/weight_average.py: each model of the new run is the element-wise
    mean of the runs' same model, with the first run's config, folds and postprocessing; runs
    of other folds are named, without a traceback, and nothing is written for them."""
    import shutil

    import torch

    from dsb.config import config_from_dict
    from dsb.models import build_model
    from dsb.models.checkpoint import load_model, save_checkpoint
    from tests.conftest import SYNTHETIC_RUN

    cfg = config_from_dict(SYNTHETIC_RUN)
    runs = []
    for i, name in enumerate(["a", "b", "c"]):
        run = synthetic_run(tmp_path / name)
        torch.manual_seed(i)
        for fold in range(cfg.folds.n_folds):
            save_checkpoint(run / f"fold{fold}" / "best.pt", build_model(cfg, load_weights=False), cfg, epoch=4)
        runs.append(run)
    (runs[0] / "postprocess.yaml").write_text("postprocess:\n  mask_threshold: 0.6\n")
    out, soup = tmp_path / "wa.json", tmp_path / "soup"
    res = _run("weight_average.py", soup, *runs, "--out", out)
    assert res.returncode == 0, res.stderr
    assert (soup / "postprocess.yaml").read_text() == (runs[0] / "postprocess.yaml").read_text()
    assert (soup / "folds.csv").read_text() == (runs[0] / "folds.csv").read_text()
    for fold in range(cfg.folds.n_folds):
        states = [load_model(r / f"fold{fold}" / "best.pt")[0].state_dict() for r in runs]
        mean = load_model(soup / f"fold{fold}" / "best.pt")[0].state_dict()
        for key, value in mean.items():
            if value.is_floating_point():
                torch.testing.assert_close(value, sum(s[key] for s in states) / 3, atol=1e-6, rtol=1e-5)
        # three different initialisations: each run is far from the mean, and all equally so
        distances = json.loads(out.read_text())["rows"][fold]["distances"]
        assert len(distances) == 3 and min(distances) > 0.1

    other = tmp_path / "other"
    shutil.copytree(runs[1], other)
    folds = pd.read_csv(other / "folds.csv")
    folds["fold"] = 1 - folds["fold"]
    folds.to_csv(other / "folds.csv", index=False)
    res = _run("weight_average.py", tmp_path / "soup2", runs[0], other, "--out", out)
    assert res.returncode == 2 and "other" in res.stderr and "folds" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "soup2").exists() and not (tmp_path / "soup2.partial").exists()
    res = _run("weight_average.py", soup, *runs, "--out", out)
    assert res.returncode == 2 and "exists" in res.stderr
