"""The estimate that travels (dsb.shift, dsb evaluate --match) and the fates of true nuclei
by size (dsb.evaluate.recall_by_size): hand-made profiles with known answers, then the CLI
on a synthetic run."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cli.main import app
from dsb.evaluate import FATES, bootstrap_interval, nucleus_fates
from dsb.shift import match_weights, matched_estimate, novelty_distances, size_bin, weighted_interval

runner = CliRunner()


def _profiles(n_small=6, n_large=6):
    """Held-out images: small nuclei score 0.3, large ones 0.7; one group per image pair."""
    rows = []
    for i in range(n_small + n_large):
        small = i < n_small
        rows.append({"image_id": f"s{i}", "image_type": "fluorescence", "median_area_px": 80.0 if small else 600.0,
                     "novelty": 1.0, "score": 0.3 if small else 0.7, "group": f"g{i // 2}"})
    return pd.DataFrame(rows)


def test_a_target_of_small_nuclei_gets_the_small_nuclei_score():
    source = _profiles()
    target = pd.DataFrame({"image_id": ["t0", "t1", "t2"], "image_type": "fluorescence",
                           "median_area_px": [70.0, 90.0, 60.0], "novelty": 1.0})
    est = matched_estimate(source, target, novelty_threshold=3.0)
    assert est.plain_map == pytest.approx(0.5)
    assert est.map == pytest.approx(0.3)
    assert est.source["weight"].sum() == pytest.approx(1.0)
    assert (est.source.loc[est.source["median_area_px"] > 100, "weight"] == 0).all()
    assert est.effective_n == pytest.approx(6.0)
    lo, hi = est.interval
    assert lo == pytest.approx(0.3) and hi == pytest.approx(0.3)
    # a target with the held-out images' own mix gives the plain mean back
    same = matched_estimate(source, source.drop(columns=["score", "group"]), novelty_threshold=3.0)
    assert same.map == pytest.approx(same.plain_map) and same.effective_n == pytest.approx(len(source))


def test_a_cell_without_enough_held_out_images_falls_back_to_a_coarser_one():
    source = _profiles(n_small=2, n_large=6)
    target = pd.DataFrame({"image_id": ["t0"], "image_type": "fluorescence", "median_area_px": [80.0],
                           "novelty": [5.0]})  # new, small: no held-out image is new
    weights, cells = match_weights(source.assign(size_bin=[size_bin(a) for a in source["median_area_px"]],
                                                 novel=False),
                                   target.assign(size_bin="<100", novel=True), min_matches=2)
    assert cells.loc[0, "matched_on"] == "image_type+size_bin" and cells.loc[0, "n_source"] == 2
    np.testing.assert_allclose(weights, [0.5, 0.5] + [0.0] * 6)
    # a type the held-out images lack matches every held-out image
    other = pd.DataFrame({"image_type": ["stained"], "size_bin": ["<100"], "novel": [True]})
    weights, cells = match_weights(source.assign(size_bin="<100", novel=True), other)
    assert cells.loc[0, "matched_on"] == "all"
    np.testing.assert_allclose(weights, np.full(8, 1 / 8))


def test_novelty_is_the_distance_to_the_nearest_image_of_the_same_type():
    reference = np.array([[0.0, 0.0], [3.0, 4.0], [10.0, 0.0]])
    kinds = ["a", "a", "b"]
    query = np.array([[3.0, 4.5], [0.0, 0.0], [0.0, 0.0]])
    d = novelty_distances(query, ["a", "b", "c"], reference, kinds, mean=np.zeros(2), scale=np.ones(2))
    np.testing.assert_allclose(d, [0.5, 10.0, np.inf])
    self_d = novelty_distances(reference, kinds, reference, kinds, np.zeros(2), np.ones(2), exclude_self=True)
    np.testing.assert_allclose(self_d, [5.0, 5.0, np.inf])


def test_weighted_interval_with_equal_weights_is_the_plain_group_bootstrap():
    rng = np.random.default_rng(0)
    scores = rng.random(40)
    groups = [f"g{i % 9}" for i in range(40)]
    plain = bootstrap_interval(scores, groups)
    weighted = weighted_interval(scores, np.full(40, 1 / 40), groups)
    assert weighted == pytest.approx(plain)
    assert weighted[0] < scores.mean() < weighted[1]


def test_nucleus_fates_by_kind():
    truth = np.zeros((20, 40), np.int32)
    truth[1:7, 1:7] = 1      # found
    truth[1:7, 10:16] = 2    # missed
    truth[10:16, 1:7] = 3    # merged with 4
    truth[10:16, 8:14] = 4
    truth[10:18, 20:28] = 5  # split in two halves
    truth[1:9, 30:38] = 6    # misdrawn: one prediction far too large
    pred = np.zeros_like(truth)
    pred[1:7, 1:7] = 1
    pred[10:16, 1:14] = 2
    pred[10:14, 20:28] = 3
    pred[14:18, 20:28] = 4
    pred[0:20, 29:40] = 5
    areas, fates = nucleus_fates(truth, pred)
    assert [FATES[f] for f in fates] == ["found", "missed", "merged", "merged", "split", "misdrawn"]
    np.testing.assert_array_equal(areas, [36, 36, 36, 36, 64, 64])
    # no prediction at all: every nucleus missed
    assert [FATES[f] for f in nucleus_fates(truth, np.zeros_like(truth))[1]] == ["missed"] * 6


def test_evaluate_reports_fates_by_size_and_the_matched_estimate(tmp_path, synthetic_run):
    run = synthetic_run(tmp_path / "run")
    target = tmp_path / "target"
    assert runner.invoke(app, ["data", "synth", str(target), "--n", "6", "--seed", "3"]).exit_code == 0
    solution = tmp_path / "target_solution.csv"
    result = runner.invoke(app, ["evaluate", str(run), "--json", "--match", str(target),
                                 "--match-predictions", str(solution)])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    sizes = pd.DataFrame(out["by_size"])
    everything = sizes[(sizes["image_type"] == "all") & (sizes["size"] == "all")].iloc[0]
    assert everything["n_true"] == out["error_kinds"]["n_true"]
    assert sum(everything[f] for f in FATES) == pytest.approx(1.0)
    # the recall at IoU 0.5 grows with nucleus size on these maps (small ones are lost more)
    small, large = (sizes[(sizes["image_type"] == "all") & (sizes["size"] == b)].iloc[0]["found"]
                    for b in ("<50", "200-400"))
    assert small < large
    matched = out["matched"]
    assert matched["n_target"] == 6 and 0 < matched["effective_n"] <= matched["n_held_out"]
    assert 0.0 < matched["map"] < 1.0 and matched["interval"][0] <= matched["map"] <= matched["interval"][1]
    shares = pd.DataFrame(matched["mix"])
    assert shares.groupby("by")["target_share"].sum().round(6).eq(1.0).all()


def test_evaluate_match_errors_name_what_is_wrong(tmp_path, synthetic_run):
    run = synthetic_run(tmp_path / "run")
    target = tmp_path / "target"
    runner.invoke(app, ["data", "synth", str(target), "--n", "4", "--seed", "3"])
    solution = tmp_path / "target_solution.csv"
    lines = solution.read_text().splitlines()
    first = lines[1].split(",")[0]
    partial = tmp_path / "partial.csv"
    partial.write_text("\n".join([lines[0], *[line for line in lines[1:] if not line.startswith(first + ",")]]) + "\n")
    result = runner.invoke(app, ["evaluate", str(run), "--match", str(target), "--match-predictions", str(partial)])
    assert result.exit_code == 2 and first in result.output and "partial.csv" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(app, ["evaluate", str(run), "--match-predictions", str(solution)])
    assert result.exit_code == 2 and "--match" in result.output
    result = runner.invoke(app, ["evaluate", str(run), "--match", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "nowhere" in result.output
