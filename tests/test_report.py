"""`dsb report`: the HTML report of a run or a submission; its numbers are `dsb evaluate`'s
and `dsb score`'s, every image is in it, bad inputs are clean errors, and the nucleus fates
agree with `dsb.evaluate.error_kinds`.

The run is synthetic and made without training (the ``synthetic_run`` fixture of
``conftest.py``): out-of-fold probability maps are the targets of perturbed true label maps
(nuclei dropped, merged, cut in two, grown, added), so every fate occurs.
`tests/test_report_browser.py` opens the report of the same run in Chromium.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from skimage.segmentation import relabel_sequential
from typer.testing import CliRunner

from cli.main import app
from dsb import viz
from dsb.data.folds import make_folds, save_folds
from dsb.data.kaggle import DataWarning
from dsb.data.synthetic import iter_samples, write_synthetic_dataset
from dsb.evaluate import OofItem, error_kinds
from dsb.metrics import image_score
from dsb.report.fates import LOOSE, MATCHED, MERGED, MISSED, SPLIT, SPURIOUS, image_fates
from dsb.rundir import RunDir
from dsb.submission import write_submission_from_label_maps

runner = CliRunner()


@pytest.fixture(scope="module")
def run_dir(synthetic_run, tmp_path_factory) -> Path:
    return synthetic_run(tmp_path_factory.mktemp("report") / "run")


@pytest.fixture(scope="module")
def built(run_dir, tmp_path_factory):
    """`dsb evaluate --json` and `dsb report` of the same run."""
    res = runner.invoke(app, ["evaluate", str(run_dir), "--json", "--out", str(run_dir.parent / "oof.csv")])
    assert res.exit_code == 0, res.output
    evaluation = json.loads(res.stdout)
    out = tmp_path_factory.mktemp("built") / "report"
    res = runner.invoke(app, ["report", str(run_dir), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert str(out / "index.html") in res.output
    return evaluation, out, json.loads((out / "report.json").read_text())


def test_report_numbers_are_those_of_evaluate(built):
    evaluation, _, report = built
    assert report["generator"] == "dsb report"
    for key in ("map", "n_images", "interval", "interval_unit", "n_groups", "per_type", "per_fold", "per_threshold",
                "error_kinds_per_type"):
        assert report[key] == evaluation[key], key
    for key, value in evaluation["error_kinds"].items():
        assert report["error_kinds"][key] == pytest.approx(value, nan_ok=True), key
    rows = report["images"]
    assert len(rows) == evaluation["n_images"] == 14
    assert np.mean([r["score"] for r in rows]) == pytest.approx(evaluation["map"], abs=1e-12)
    # Every image's error counts add up to `dsb evaluate`'s error kinds, overall and per type.
    for key in ("n_true", "n_pred", "missed", "merged", "split", "spurious"):
        assert sum(r["counts"][key] for r in rows) == evaluation["error_kinds"][key], key
        for image_type, kinds in evaluation["error_kinds_per_type"].items():
            assert sum(r["counts"][key] for r in rows if r["image_type"] == image_type) == kinds[key]
    seen = {name for r in rows for side in r["fates"].values() for name in side}
    assert seen == {"matched", "missed", "split", "merged", "loose", "spurious"}
    assert [r["score"] for r in rows] == sorted(r["score"] for r in rows)      # worst first


def test_every_image_has_its_row_page_and_pictures(built, run_dir):
    evaluation, out, report = built
    index = (out / "index.html").read_text()
    rows = report["images"]
    assert len(re.findall(r"<tr data-type=", index)) == len(rows) + len(evaluation["per_type"])
    assert f"{evaluation['map']:.4f}" in index and (out / "training_curves.png").is_file()
    for row in rows:
        assert f'data-id="{row["image_id"]}"' in index
        page = (out / "images" / f"{row['slug']}.html").read_text()
        assert row["image_id"] in page and f"{row['score']:.4f}" in page
        for name in (f"{row['slug']}.png", f"{row['slug']}.truth.png", f"{row['slug']}.pred.png"):
            assert f'src="{name}"' in page
            with Image.open(out / "images" / name) as im:
                assert im.size == (row["width"], row["height"])
        with Image.open(out / "thumbs" / f"{row['slug']}.png") as im:
            assert max(im.size) <= 72 and list(im.size) == row["thumb_size"]
        with Image.open(out / "images" / f"{row['slug']}.truth.png") as im:   # outlines in fate colours
            assert im.mode == "P" and im.info["transparency"] == 0
            assert set(np.unique(np.asarray(im))) - {0}
    # Self-contained: no absolute URL anywhere, every local reference exists.
    for page in [out / "index.html", *(out / "images").glob("*.html")]:
        text = page.read_text()
        assert not re.search(r"(src|href)=\"?(https?:)?//", text), page
        for ref in re.findall(r'(?:src|href)="([^"#]+)"', text):
            assert (page.parent / ref).is_file(), (page, ref)


def test_per_image_numbers_match_the_metric(built, run_dir):
    _, _, report = built
    oof = {line.split(",")[0]: line.split(",") for line in (run_dir.parent / "oof.csv").read_text().splitlines()[1:]}
    for row in report["images"]:
        assert float(oof[row["image_id"]][3]) == pytest.approx(row["score"], abs=1e-6)
        assert row["ap50"] == row["per_threshold"][0]["precision"]
        assert row["counts"]["matched"] == row["per_threshold"][0]["tp"]
        assert row["fates"]["truth"].get("matched", 0) == row["per_threshold"][0]["tp"]


def test_report_of_a_submission_matches_score(perturb_labels, tmp_path):
    stage = write_synthetic_dataset(tmp_path / "test", n=6, seed=11)
    rng = np.random.default_rng(1)
    samples = list(iter_samples(6, 11))
    preds = {s.image_id: perturb_labels(s.label_map, rng) for s in samples}
    sub = write_submission_from_label_maps(tmp_path / "sub.csv", preds.items(), {s.image_id: s.label_map.shape for s in samples})
    res = runner.invoke(app, ["score", str(sub), "--solution", str(stage.solution_csv), "--json"])
    assert res.exit_code == 0, res.output
    scored = json.loads(res.stdout.strip().splitlines()[-1])
    for solution, images in ((stage.solution_csv, stage.path), (stage.path, None)):
        out = tmp_path / f"report-{Path(solution).suffix or 'dir'}"
        args = ["report", str(sub), "--solution", str(solution), "--out", str(out)]
        res = runner.invoke(app, args + (["--images", str(images)] if images else []))
        assert res.exit_code == 0, res.output
        report = json.loads((out / "report.json").read_text())
        assert report["map"] == pytest.approx(scored["map"], abs=1e-12) and report["n_images"] == 6
        assert report["per_threshold"] == pytest.approx(dict(zip([f"{t:.2f}" for t in scored["thresholds"]],
                                                                   scored["per_threshold"])))
        assert {r["image_id"]: r["score"] for r in report["images"]} == pytest.approx(scored["per_image"])
        assert report["interval_unit"] == "images" and report["per_fold"] == {}
        items = [OofItem(s.image_id, "", 0, None, s.label_map) for s in samples]
        kinds = error_kinds(items, {i: relabel_sequential(p)[0] for i, p in preds.items()})  # as the CSV numbers them
        for key in ("n_true", "n_pred", "missed", "merged", "split", "spurious", "small_true"):
            assert report["error_kinds"][key] == kinds[key], key
        assert report["error_kinds"]["area_ratio"] == pytest.approx(kinds["area_ratio"])
        assert not (out / "training_curves.png").exists()
        assert all((out / "images" / f"{r['slug']}.html").is_file() for r in report["images"])


def test_bad_inputs_are_clean_errors(run_dir, tmp_path):
    def fails(args, code=2, *words):
        res = runner.invoke(app, ["report", *map(str, args)])
        assert res.exit_code == code, res.output
        assert "Traceback" not in res.output
        for word in words:
            assert str(word) in res.output, (word, res.output)
        return res.output

    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    fails([run_dir, "--out", a_file], 2, "file.txt", "not a folder")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    fails([run_dir, "--out", busy], 2, "busy", "not an earlier dsb report")
    assert (busy / "keep.txt").read_text() == "mine"
    fails([tmp_path / "nothing", "--out", tmp_path / "r"], 2, "nothing")
    fails([tmp_path, "--out", tmp_path / "r"], 2, "not a run folder")
    empty_run = tmp_path / "empty_run"
    empty_run.mkdir()
    shutil.copyfile(RunDir(run_dir).config, RunDir(empty_run).config)
    save_folds(make_folds(["a", "b"], ["fluorescence"] * 2, 2), RunDir(empty_run).folds)
    fails([empty_run, "--out", tmp_path / "r"], 2, "out-of-fold")
    fails([run_dir, "--out", tmp_path / "r", "--solution", a_file], 2, "--solution")

    stage = write_synthetic_dataset(tmp_path / "stage", n=3, seed=2)
    sub = tmp_path / "sub.csv"
    fails([sub, "--out", tmp_path / "r", "--solution", stage.solution_csv, "--images", stage.path], 2, "sub.csv")
    sub.write_text("ImageId,EncodedPixels\nnot-an-image,1 5\n")
    fails([sub, "--out", tmp_path / "r"], 2, "--solution")
    fails([sub, "--out", tmp_path / "r", "--solution", stage.solution_csv], 2, "--images")
    out = fails([sub, "--out", tmp_path / "r", "--solution", stage.solution_csv, "--images", stage.path], 1, "not-an-image")
    other = write_synthetic_dataset(tmp_path / "other", n=2, seed=9)
    fails([sub, "--out", tmp_path / "r", "--solution", stage.solution_csv, "--images", other.path], 2, "shares no ImageId")
    partial = Path(shutil.copytree(stage.path, tmp_path / "partial"))
    shutil.rmtree(partial / stage.image_ids[1])
    with pytest.warns(DataWarning, match="not in"):
        fails([sub, "--out", tmp_path / "r", "--solution", stage.solution_csv, "--images", partial], 2,
              "has no image for 1 of the 3", stage.image_ids[1])
    assert not (tmp_path / "r").exists() and not list(tmp_path.glob(".r.*")), out


@pytest.mark.slow
def test_a_failed_build_keeps_the_earlier_report(run_dir, tmp_path, monkeypatch):
    from dsb.report import build

    out = tmp_path / "report"
    first = build.build_report(run_dir, out, workers=2)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    calls = []

    def broken(case, staging, slug):
        calls.append(case.image_id)
        if len(calls) == 5:
            raise OSError("disk full (simulated)")
        return render_case(case, staging, slug)

    render_case = build.render_case
    monkeypatch.setattr(build, "render_case", broken)
    with pytest.raises(OSError, match="simulated"):
        build.build_report(run_dir, out, workers=1)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]          # no staging folder left
    monkeypatch.undo()
    again = build.build_report(run_dir, out, workers=1)                        # an earlier report is replaced
    assert again.map == first.map and again.n_images == first.n_images == 14
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]


def test_fates_of_a_crafted_image():
    truth = np.zeros((12, 40), np.int32)
    pred = np.zeros_like(truth)
    truth[1:5, 1:5] = 1; pred[1:5, 1:5] = 1                        # matched (IoU 1)
    truth[1:5, 7:11] = 2                                            # missed
    truth[1:9, 13:19] = 3; pred[1:9, 13:16] = 2; pred[1:9, 16:19] = 3   # split into 2 and 3
    truth[1:5, 21:24] = 4; truth[1:5, 24:27] = 5; pred[1:5, 21:27] = 4  # merged: 4 and 5 into one
    truth[1:4, 30:33] = 6; pred[0:7, 29:36] = 5                     # loose (prediction far too large)
    pred[9:11, 1:4] = 6                                             # spurious
    f = image_fates(truth, pred)
    assert f.truth[1:].tolist() == [MATCHED, MISSED, SPLIT, MERGED, MERGED, LOOSE]
    assert f.pred[1:].tolist() == [MATCHED, SPLIT, SPLIT, MERGED, LOOSE, SPURIOUS]
    assert f.truth_iou[1] == 1.0 and f.pred_iou[5] == pytest.approx(9 / 49)
    counts = f.counts()
    kinds = error_kinds([OofItem("x", "t", 0, None, truth)], {"x": pred})
    for key in ("n_true", "n_pred", "missed", "merged", "split", "spurious"):
        assert counts[key] == kinds[key], key
    assert counts["matched"] == image_score(truth, pred).tp[0] == 1


def test_fate_counts_agree_with_error_kinds_on_random_maps():
    rng = np.random.default_rng(0)

    def random_map(k):
        labels = np.zeros((30, 40), np.int32)
        for i in range(1, k + 1):
            y, x = rng.integers(0, 30), rng.integers(0, 40)
            labels[y:y + rng.integers(2, 10), x:x + rng.integers(2, 10)] = i
        present = np.unique(labels)
        lut = np.zeros(labels.max() + 1, np.int32)
        lut[present] = np.arange(len(present))
        return lut[labels]                                          # numbered without gaps

    for _ in range(300):
        truth = random_map(int(rng.integers(0, 10)))
        pred = random_map(int(rng.integers(0, 10)))
        if rng.random() < 0.5:
            pred = random_map(0) + np.where(rng.random(truth.shape) < 0.9, truth, pred)
            present = np.unique(pred)
            lut = np.zeros(pred.max() + 1, np.int32)
            lut[present] = np.arange(len(present))
            pred = lut[pred]
        f = image_fates(truth, pred)
        counts = f.counts()
        kinds = error_kinds([OofItem("x", "t", 0, None, truth)], {"x": pred})
        assert {k: counts[k] for k in ("n_true", "n_pred", "missed", "merged", "split", "spurious", "small_true")} == \
            {k: kinds[k] for k in ("n_true", "n_pred", "missed", "merged", "split", "spurious", "small_true")}
        assert counts["matched"] == image_score(truth, pred).tp[0]
        assert ((f.truth[1:] > 0) == (np.bincount(truth.ravel(), minlength=truth.max() + 1)[1:] > 0)).all()


def test_inner_edges_are_skimage_inner_boundaries():
    from skimage.segmentation import find_boundaries

    rng = np.random.default_rng(3)
    for _ in range(20):
        labels = ndimage.label(rng.random((40, 50)) < 0.6)[0]
        labels[rng.random(labels.shape) < 0.05] = 7
        assert (viz.inner_edges(labels) == find_boundaries(labels, mode="inner")).all()


@pytest.mark.slow
def test_evaluate_figures_use_the_shared_drawing(run_dir, tmp_path):
    res = runner.invoke(app, ["evaluate", str(run_dir), "--json", "--out", str(tmp_path / "s.csv"),
                              "--figures", str(tmp_path / "figs")])
    assert res.exit_code == 0, res.output
    for name in ("overlays.png", "training_curves.png"):
        with Image.open(tmp_path / "figs" / name) as im:
            assert im.width > 400 and im.height > 200
