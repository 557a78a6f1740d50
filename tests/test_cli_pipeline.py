"""The CLI path after training: evaluate, tune, predict (TTA, ensemble, overlays) and demo.

Every test that trains (the module's run, the demo) is marked ``slow``."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from cli.main import app
from dsb.config import save_config
from dsb.data.synthetic import write_synthetic_dataset

runner = CliRunner()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_train_cfg):
    root = tmp_path_factory.mktemp("pipeline")
    cfg = tiny_train_cfg(epochs=3, val_every=1, steps_per_epoch=4)
    save_config(cfg, root / "tiny.yaml")
    res = runner.invoke(app, ["train", "--config", str(root / "tiny.yaml"), "--fold", "0", "--run-dir", str(root / "run")])
    assert res.exit_code == 0, res.output
    test = write_synthetic_dataset(root / "test", n=5, seed=123, masks=False)
    return root, root / "run", test.path


@pytest.mark.slow
def test_evaluate_json_and_per_image_csv(trained_run):
    _, run, _ = trained_run
    res = runner.invoke(app, ["evaluate", str(run), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert 0.0 <= report["map"] <= 1.0 and report["n_images"] == 4
    assert set(report["per_threshold"]) == {f"{t:.2f}" for t in np.arange(0.5, 0.96, 0.05)}
    assert sum(v["n_images"] for v in report["per_type"].values()) == 4
    assert {"missed", "merged", "split", "spurious"} <= set(report["error_kinds"])
    lines = (run / "oof_scores.csv").read_text().splitlines()
    assert lines[0].startswith("image_id,image_type,fold,score") and len(lines) == 5


@pytest.mark.slow
def test_evaluate_figures_and_error_kinds_per_type(trained_run):
    from PIL import Image

    root, run, _ = trained_run
    res = runner.invoke(app, ["evaluate", str(run), "--json", "--figures", str(root / "figs")])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert sorted(report["figures"]) == sorted(str(root / "figs" / n) for n in ("overlays.png", "training_curves.png"))
    for name in ("overlays.png", "training_curves.png"):
        with Image.open(root / "figs" / name) as im:
            assert im.format == "PNG" and im.width > 400 and im.height > 200
    per_type = report["error_kinds_per_type"]
    assert set(per_type) == set(report["per_type"])
    for key in ("n_true", "n_pred", "missed", "merged", "split", "spurious"):
        assert sum(v[key] for v in per_type.values()) == report["error_kinds"][key]


@pytest.mark.slow
def test_evaluate_against_other_labels(trained_run, tmp_path, tiny_train_cfg):
    _, synthetic_run, _ = trained_run
    res = runner.invoke(app, ["evaluate", str(synthetic_run), "--labels", "masks"])
    assert res.exit_code == 2 and "synthetic" in res.output

    stage = write_synthetic_dataset(tmp_path / "train", n=8, seed=5)
    cfg = tiny_train_cfg(epochs=1, val_every=1, steps_per_epoch=2)
    save_config(cfg, tmp_path / "tiny.yaml")
    run = tmp_path / "run"
    res = runner.invoke(app, ["train", "--config", str(tmp_path / "tiny.yaml"), "--fold", "0", "--run-dir", str(run),
                              "--data", str(stage.path), "--labels", "masks"])
    assert res.exit_code == 0, res.output
    by_masks = json.loads(runner.invoke(app, ["evaluate", str(run), "--json"]).stdout)
    solution = tmp_path / "train_solution.csv"
    res = runner.invoke(app, ["evaluate", str(run), "--json", "--labels", str(solution)])
    assert res.exit_code == 0, res.output
    by_csv = json.loads(res.stdout)
    assert by_csv["labels"] == str(solution) and by_masks["labels"] == "masks"
    assert by_csv["map"] == by_masks["map"] and by_csv["n_images"] == by_masks["n_images"] > 0

    res = runner.invoke(app, ["evaluate", str(run), "--labels", str(tmp_path / "nope.csv")])
    assert res.exit_code != 0 and "nope.csv" in res.output


def test_pick_examples_takes_quartiles_per_type():
    import pandas as pd

    from dsb.report import pick_examples

    per_image = pd.DataFrame({
        "image_id": [f"f{i}" for i in range(9)] + ["b0"],
        "image_type": ["fluorescence"] * 9 + ["brightfield"],
        "score": [0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6] + [0.5],
    })
    chosen = pick_examples(per_image, per_type=3)
    # fluorescence sorted by score: f1 .1, f5 .2, f3 .3, f7 .4, f2 .5, f8 .6, f4 .7, f6 .8, f0 .9
    assert chosen == {"brightfield": ["b0"], "fluorescence": ["f3", "f2", "f4"]}


@pytest.mark.slow
def test_tune_writes_thresholds_that_do_not_lower_the_score(trained_run):
    _, run, _ = trained_run
    before = json.loads(runner.invoke(app, ["evaluate", str(run), "--json"]).stdout)["map"]
    res = runner.invoke(app, ["tune", str(run), "--rounds", "1"])
    assert res.exit_code == 0, res.output
    tuned = yaml.safe_load((run / "postprocess.yaml").read_text())
    assert tuned["oof_map"] >= tuned["oof_map_before"] - 1e-9
    assert tuned["oof_map_before"] == pytest.approx(before, abs=1e-6)
    after = json.loads(runner.invoke(app, ["evaluate", str(run), "--json"]).stdout)["map"]
    assert after == pytest.approx(tuned["oof_map"], abs=1e-6)  # evaluate applies the tuned values
    # the instance filter is fitted and judged out of fold; kept only when it helps
    assert "instance filter: out-of-fold mAP" in res.output
    assert (run / "instance_filter.pkl").is_file() == ("wrote " + str(run / "instance_filter.pkl") in res.output)


@pytest.mark.slow
def test_predict_writes_a_valid_submission_with_probs_and_overlays(trained_run):
    root, run, test = trained_run
    out = root / "subs" / "pred.csv"
    res = runner.invoke(app, [
        "predict", "--checkpoint", str(run), "--checkpoint", str(run / "fold0" / "best.pt"),
        "--input", str(test), "--out", str(out), "--tta", "flips", "--amp", "off",
        "--save-probs", str(root / "probs"), "--overlays", str(root / "overlays"),
    ])
    assert res.exit_code == 0, res.output
    assert "2 model(s)" in res.output and "(fp32)" in res.output  # --amp off: not YAML's false
    valid = runner.invoke(app, ["validate", str(out), "--images", str(test)])
    assert valid.exit_code == 0, valid.output
    ids = {line.split(",")[0] for line in out.read_text().splitlines()[1:]}
    assert len(ids) == 5
    assert len(list((root / "probs").glob("*.npy"))) == 5
    assert len(list((root / "overlays").glob("*.png"))) == 5


@pytest.mark.slow
def test_predict_errors_are_clear(trained_run):
    root, run, test = trained_run
    res = runner.invoke(app, ["predict", "--checkpoint", str(root / "nope.pt"), "--input", str(test)])
    assert res.exit_code == 2 and "nope.pt" in res.output
    bad = root / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    res = runner.invoke(app, ["predict", "--checkpoint", str(bad), "--input", str(test)])
    assert res.exit_code == 2 and "broken.pt" in res.output
    res = runner.invoke(app, ["predict", "--checkpoint", str(run), "--input", str(test), "--tta", "d8"])
    assert res.exit_code == 2 and "--tta" in res.output
    out = root / "keep.csv"
    out.write_text("precious\n")
    res = runner.invoke(app, ["predict", "--checkpoint", str(run), "--input", str(root / "missing"), "--out", str(out)])
    assert res.exit_code == 2
    assert out.read_text() == "precious\n"  # nothing already written is lost
    res = runner.invoke(app, ["predict", "--checkpoint", str(run), "--input", str(test), "--out", str(out),
                              "--rescale-area", "-5"])
    assert res.exit_code == 2 and "rescale_area_px" in res.output and out.read_text() == "precious\n"


@pytest.mark.slow
def test_predict_with_rescaling(trained_run):
    from dsb.data.kaggle import open_stage
    from dsb.rundir import load_run_config
    from dsb.infer.pipeline import predict_stage
    from dsb.models.checkpoint import load_model

    root, run, test = trained_run
    out = root / "subs" / "rescaled.csv"
    res = runner.invoke(app, ["predict", "--checkpoint", str(run), "--input", str(test), "--out", str(out),
                              "--tta", "none", "--rescale-area", "5000"])
    assert res.exit_code == 0, res.output
    assert "rescale to 5000 px nuclei" in res.output
    assert runner.invoke(app, ["validate", str(out), "--images", str(test)]).exit_code == 0
    # the pipeline reports the scale of each image: a huge target upscales every image with nuclei to the cap
    model, _, _ = load_model(run / "fold0" / "best.pt")
    cfg = load_run_config(run)
    cfg = dataclasses.replace(cfg, infer=dataclasses.replace(cfg.infer, rescale_area_px=5000.0, rescale_max=1.5))
    summary = predict_stage([model], cfg, open_stage(test, labels=None), root / "subs" / "r.csv", tta="none",
                            keep_label_maps=True)
    found = [i for i, m in summary.label_maps.items() if m.max() > 0]
    assert found and all(summary.scales[i] == 1.5 for i in found)


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
    res = runner.invoke(app, [
        "demo", "--work-dir", str(tmp_path / "work"), "--out", str(tmp_path / "demo.csv"),
        "--set", "train.epochs=2", "--set", "train.steps_per_epoch=2", "--set", "train.val_every=1",
        "--set", "data.synthetic_n=8", "--set", "infer.tta=flips",
    ])
    assert res.exit_code == 0, res.output
    assert "thresholding alone" in res.output and "test mAP" in res.output
    assert (tmp_path / "demo.csv").read_text().startswith("ImageId,EncodedPixels")
    assert list((tmp_path / "work" / "overlays").glob("*.png"))


@pytest.mark.slow
def test_export_ships_a_half_precision_set_found_by_name(trained_run, monkeypatch):
    import torch

    root, run, test = trained_run
    weights = root / "weights"
    res = runner.invoke(app, ["export", str(run), "tiny-set", "--weights-dir", str(weights)])
    assert res.exit_code == 0, res.output
    manifest = json.loads((weights / "tiny-set" / "manifest.json").read_text())
    assert manifest["folds"][0]["file"] == "fold0.pt" and manifest["config"]["name"] == "tiny"
    oof = json.loads(runner.invoke(app, ["evaluate", str(run), "--json"]).stdout)
    assert manifest["oof_map"] == pytest.approx(oof["map"], abs=1e-9)
    assert manifest["folds"][0]["held_out_map"] == pytest.approx(oof["per_fold"]["0"]["map"], abs=1e-9)
    assert manifest["folds"][0]["epoch"] in range(3)
    assert len(manifest["folds"][0]["held_out_ids"]) == oof["n_images"]
    assert "dsb train" in manifest["command"]
    payload = torch.load(weights / "tiny-set" / "fold0.pt", weights_only=False)
    assert payload["half"] and all(
        v.dtype == torch.float16 for v in payload["model"].values() if v.is_floating_point()
    )
    from dsb.rundir import resolve_checkpoints

    assert resolve_checkpoints(["tiny-set"], weights_dir=weights) == [weights / "tiny-set" / "fold0.pt"]
    with pytest.raises(Exception, match="shipped sets: tiny-set"):
        resolve_checkpoints(["nope"], weights_dir=weights)
    res = runner.invoke(app, ["export", str(root / "missing-run"), "x", "--weights-dir", str(weights)])
    assert res.exit_code == 2 and not (weights / "x").exists()
    res = runner.invoke(app, ["export", str(run), "y", "--folds", "1", "--weights-dir", str(weights)])
    assert res.exit_code == 2 and "fold(s) [1]" in res.output and not (weights / "y").exists()
    res = runner.invoke(app, ["export", str(run), "z", "--folds", "0", "--weights-dir", str(weights)])
    has_filter = (run / "instance_filter.pkl").is_file()  # when `dsb tune` found one that helps
    shipped = ["fold0.pt", "manifest.json"] + (["instance_filter.pkl"] if has_filter else [])
    assert res.exit_code == 0 and sorted(p.name for p in (weights / "z").iterdir()) == sorted(shipped)
    assert ("instance_filter" in json.loads((weights / "z" / "manifest.json").read_text())) == has_filter
    res = runner.invoke(app, ["export", str(run), "r", "--set", "infer.rescale_area_px=300", "--weights-dir", str(weights)])
    assert res.exit_code == 0, res.output
    manifest = json.loads((weights / "r" / "manifest.json").read_text())
    assert manifest["config"]["infer"]["rescale_area_px"] == 300 and manifest["export_overrides"] == ["infer.rescale_area_px=300"]
    assert torch.load(weights / "r" / "fold0.pt", weights_only=False)["config"]["infer"]["rescale_area_px"] == 300
    res = runner.invoke(app, ["export", str(run), "t", "--set", "train.lr=1", "--weights-dir", str(weights)])
    assert res.exit_code == 2 and "only infer.*, postprocess.*" in res.output and not (weights / "t").exists()


@pytest.mark.slow
def test_a_shipped_set_ships_again_with_other_settings(trained_run):
    """dsb export SET NAME --set ...: the weights copied bit for bit, the settings written into
    each checkpoint and the manifest (which keeps its estimates and records the change), in
    place under the set's own name; anything but inference settings refused, nothing changed."""
    import torch

    from dsb.models.checkpoint import load_model

    root, run, _ = trained_run
    weights = root / "weights_again"
    assert runner.invoke(app, ["export", str(run), "base", "--weights-dir", str(weights)]).exit_code == 0
    before = torch.load(weights / "base" / "fold0.pt", weights_only=False)
    old = json.loads((weights / "base" / "manifest.json").read_text())
    res = runner.invoke(app, ["export", "base", "base", "--set", "model.mode=fast", "--set", "infer.tta=flips",
                              "--weights-dir", str(weights)])
    assert res.exit_code == 0, res.output
    after = torch.load(weights / "base" / "fold0.pt", weights_only=False)
    assert after["model"].keys() == before["model"].keys()
    assert all(torch.equal(before["model"][k], after["model"][k]) for k in before["model"])
    assert after["extra"] == before["extra"] and after["half"]
    assert after["config"]["model"]["mode"] == "fast" and after["config"]["infer"]["tta"] == "flips"
    model, cfg, _ = load_model(weights / "base" / "fold0.pt")
    assert model.mode == "fast" and model.fast_depth == cfg.model.fast_depth
    manifest = json.loads((weights / "base" / "manifest.json").read_text())
    assert manifest["oof_map"] == old["oof_map"] and manifest["folds"][0]["held_out_ids"] == old["folds"][0]["held_out_ids"]
    assert manifest["config"]["model"]["mode"] == "fast" and manifest["config"]["infer"]["tta"] == "flips"
    assert manifest["export_overrides"] == old.get("export_overrides", []) + ["model.mode=fast", "infer.tta=flips"]
    assert manifest["reexports"][0]["overrides"] == ["model.mode=fast", "infer.tta=flips"]
    assert not [p for p in weights.iterdir() if p.name.startswith(".")]  # no staging or old folder left
    settled = (weights / "base" / "fold0.pt").read_bytes()
    for bad, message in ((["--set", "model.encoder=resnet34"], "only infer.*, postprocess.*, model.mode"),
                         (["--set", "model.mode=fast", "--full"], "--folds and --full are for run folders"),
                         ([], "needs --set")):
        res = runner.invoke(app, ["export", "base", "base", *bad, "--weights-dir", str(weights)])
        assert res.exit_code == 2 and message in res.output, res.output
    assert (weights / "base" / "fold0.pt").read_bytes() == settled
    assert not [p for p in weights.iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_full_data_model_joins_the_run_and_ships(trained_run, tmp_path):
    import shutil

    root, trained, _ = trained_run
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    before = json.loads((run / "run.json").read_text())
    cfg_path = root / "tiny.yaml"
    res = runner.invoke(app, ["train", "--config", str(cfg_path), "--full", "--fold", "0", "--run-dir", str(run)])
    assert res.exit_code == 2 and "--full" in res.output
    res = runner.invoke(app, ["train", "--config", str(cfg_path), "--full", "--run-dir", str(run)])
    assert res.exit_code == 0, res.output
    info = json.loads((run / "run.json").read_text())
    assert info["command"] == before["command"] and info["folds"] == before["folds"] == [0]
    assert "--full" in info["full"]["command"] and "--full" not in info["command"]
    history = [json.loads(line) for line in (run / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [0, 1, 2] and all(r["val_map"] is None for r in history)
    assert (run / "full" / "best.pt").is_file() and not (run / "full" / "oof").exists()

    # A fold still training (recorded, no model yet) is not behind the estimate the manifest records.
    from dsb.train import record_run

    record_run(run, [1], f"dsb train --config {cfg_path} --fold 1 --run-dir {run}", resumed=False)
    weights = tmp_path / "weights"
    res = runner.invoke(app, ["export", str(run), "whole", "--full", "--weights-dir", str(weights)])
    assert res.exit_code == 0, res.output
    manifest = json.loads((weights / "whole" / "manifest.json").read_text())
    assert [f["file"] for f in manifest["folds"]] == ["full.pt"]
    assert manifest["command"] == info["full"]["command"] and manifest["cross_validation_command"] == info["command"]
    assert manifest["cross_validation_commands"] == [info["command"]] and list(manifest["held_out_map_per_fold"]) == ["0"]
    oof = json.loads(runner.invoke(app, ["evaluate", str(run), "--json"]).stdout)
    assert manifest["oof_map"] == pytest.approx(oof["map"], abs=1e-9)
    # The CV run's own artefacts are untouched: evaluating and predicting use the folds only.
    from dsb.infer.pipeline import resolve_checkpoints

    assert resolve_checkpoints([str(run)]) == [run / "fold0" / "best.pt"]


@pytest.mark.slow
def test_training_into_a_run_with_another_config_is_refused(trained_run, tmp_path, tiny_train_cfg):
    import shutil

    root, trained, _ = trained_run
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    before = (run / "run.json").read_text()
    other = tiny_train_cfg(epochs=3, val_every=1, steps_per_epoch=5)
    save_config(other, tmp_path / "other.yaml")
    res = runner.invoke(app, ["train", "--config", str(tmp_path / "other.yaml"), "--fold", "1", "--run-dir", str(run)])
    assert res.exit_code == 2 and "train.steps_per_epoch: 4 -> 5" in res.output
    assert (run / "run.json").read_text() == before and not (run / "fold1").exists()

    # The same config may train more folds into the run: they add up, each command is kept.
    res = runner.invoke(app, ["train", "--config", str(root / "tiny.yaml"), "--fold", "1", "--run-dir", str(run),
                              "--max-epochs", "1"])
    assert res.exit_code == 0, res.output
    info = json.loads((run / "run.json").read_text())
    first = json.loads(before)["command"]
    assert info["folds"] == [0, 1] and info["commands"] == [first, info["command"]] and "--fold 1" in info["command"]


@pytest.mark.slow
def test_a_shipped_set_ships_with_the_weights_of_a_student(trained_run, tmp_path):
    """dsb export SET NAME --weights-from RUN: the set's full.pt takes RUN's full/best.pt (a run
    taught by the set, distill_maps: images), in fp16 with the set's postprocessing and the
    --set settings; the manifest keeps the set's estimates and records the student's run,
    commands and config; a run that did not learn from the set, or one of another model, is
    refused and nothing is written."""
    import shutil

    import torch

    from dsb.models.checkpoint import load_model

    root, trained, _ = trained_run
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    cfg_path = root / "tiny.yaml"
    assert runner.invoke(app, ["train", "--config", str(cfg_path), "--full", "--run-dir", str(run)]).exit_code == 0
    weights = tmp_path / "weights"
    assert runner.invoke(app, ["export", str(run), "base", "--full", "--weights-dir", str(weights)]).exit_code == 0
    base = json.loads((weights / "base" / "manifest.json").read_text())
    student = tmp_path / "student"
    res = runner.invoke(app, ["train", "--config", str(cfg_path), "--full", "--run-dir", str(student),
                              "--set", "train.epochs=1", "--set", f"train.init_from={weights / 'base'}",
                              "--set", f"train.distill_from={weights / 'base'}", "--set", "train.distill_maps=images"])
    assert res.exit_code == 0, res.output
    assert "teacher maps:" in res.output
    res = runner.invoke(app, ["export", str(weights / "base"), "fast", "--weights-from", str(student),
                              "--set", "infer.tta=none", "--weights-dir", str(weights)])
    assert res.exit_code == 0, res.output
    shipped = torch.load(weights / "fast" / "full.pt", weights_only=False)
    trained_student = torch.load(student / "full" / "best.pt", weights_only=False)
    assert shipped["half"] and all(torch.equal(shipped["model"][k], v.half() if v.is_floating_point() else v)
                                   for k, v in trained_student["model"].items())
    _, cfg, _ = load_model(weights / "fast" / "full.pt")
    _, base_cfg, _ = load_model(weights / "base" / "full.pt")
    assert cfg.infer.tta == "none" and cfg.postprocess == base_cfg.postprocess
    manifest = json.loads((weights / "fast" / "manifest.json").read_text())
    assert manifest["oof_map"] == base["oof_map"] and manifest["command"] == base["command"]
    assert manifest["student"]["run"] == str(student) and "--full" in manifest["student"]["record"]["full"]["command"]
    assert manifest["student"]["config"]["train"]["distill_maps"] == "images"
    assert manifest["student"]["learned_from"] == [f"train.distill_from={weights / 'base'}",
                                                   f"train.init_from={weights / 'base'}"]
    assert manifest["folds"][0]["epoch"] == 0 and manifest["reexports"][-1]["weights_from"] == str(student)
    assert sorted(p.name for p in (weights / "fast").iterdir()) == sorted(p.name for p in (weights / "base").iterdir())
    assert "earlier_students" not in manifest
    # A student of the student (the set continued, then distilled): the earlier record is kept.
    second = tmp_path / "second"
    res = runner.invoke(app, ["train", "--config", str(cfg_path), "--full", "--run-dir", str(second),
                              "--set", "train.epochs=1", "--set", f"train.init_from={weights / 'fast'}"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["export", str(weights / "fast"), "fast", "--weights-from", str(second),
                              "--weights-dir", str(weights)])
    assert res.exit_code == 0, res.output
    again = json.loads((weights / "fast" / "manifest.json").read_text())
    assert again["student"]["run"] == str(second) and again["earlier_students"] == [manifest["student"]]
    assert [r.get("weights_from") for r in again["reexports"]][-2:] == [str(student), str(second)]
    # Refused, nothing written: a run that did not learn from the set; a run folder as the source.
    res = runner.invoke(app, ["export", str(weights / "base"), "bad", "--weights-from", str(run),
                              "--weights-dir", str(weights)])
    assert res.exit_code == 2 and "neither learned from nor started from" in res.output and not (weights / "bad").exists()
    res = runner.invoke(app, ["export", str(run), "bad", "--full", "--weights-from", str(student),
                              "--weights-dir", str(weights)])
    assert res.exit_code == 2 and "not a shipped set" in res.output and not (weights / "bad").exists()
    assert not [p for p in weights.iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_training_takes_pseudo_labelled_images(trained_run, tmp_path):
    """dsb train --pseudo-images DIR --pseudo-labels CSV: the images (with the nuclei of the
    CSV, e.g. a `dsb predict --expand 0` submission) join the training crops, and the run's
    config records them; half of the pair, or a CSV naming none of the images, is refused
    before the run folder is made."""
    import pandas as pd

    root, _, test = trained_run
    solution = pd.read_csv(test.parent / "test_solution.csv")
    labels = tmp_path / "predicted.csv"
    solution[["ImageId", "EncodedPixels"]].to_csv(labels, index=False)
    base = ["train", "--config", str(root / "tiny.yaml"), "--fold", "0", "--max-epochs", "1"]
    res = runner.invoke(app, [*base, "--run-dir", str(tmp_path / "run"), "--pseudo-images", str(test),
                              "--pseudo-labels", str(labels)])
    assert res.exit_code == 0, res.output
    assert f"pseudo-labelled: 5 images of {test} (25% of the crops)" in res.output
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["data"]
    assert saved["pseudo_path"] == str(test) and saved["pseudo_labels"] == str(labels)

    res = runner.invoke(app, [*base, "--run-dir", str(tmp_path / "half"), "--pseudo-labels", str(labels)])
    assert res.exit_code == 2 and "data.pseudo_labels is given without data.pseudo_path" in res.output
    other = tmp_path / "other.csv"
    other.write_text("ImageId,EncodedPixels\nnot-an-image,1 5\n")
    res = runner.invoke(app, [*base, "--run-dir", str(tmp_path / "none"), "--pseudo-images", str(test),
                              "--pseudo-labels", str(other)])
    assert res.exit_code == 2 and f"{other} shares no ImageId with {test}" in res.output
    assert "Traceback" not in res.output
    assert not (tmp_path / "half").exists() and not (tmp_path / "none").exists()
