"""The checkpoint set shipped in weights/: complete, within the size limit, recording the
grouped cross-validation that estimates it, and working on real images (training images
and the stage-1 test set).

The shipped model was trained on every training image (`dsb train --full`); its estimate is
the out-of-fold mAP of the same recipe's fold models, which the manifest records with the
command that made them. The tests on real images need ``../shared/dsb2018`` (or ``DSB_DATA``;
``realdata``) and the two that predict with the shipped model are ``slow``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dsb.utils import file_sha256
from dsb.rundir import MANIFEST, WEIGHTS_DIR, resolve_checkpoints
from dsb.segmentation import DEFAULT_CHECKPOINT

SHIPPED = DEFAULT_CHECKPOINT  # the set `dsb segment`, `dsb predict` and `make submission` use
SET_DIR = WEIGHTS_DIR / SHIPPED
# The first eight (by id) of grouped fold 0's held-out images.
FOLD0_FIRST_IDS = [
    "01d44a26f6680c42ba94c9bc6339228579a95d0e2695b149b7cc0c9592b21baf",
    "0280fa8f60f6bcae0f97d93c28f60be194f9309ff610dc5845e60455b0f87c21",
    "02903040e19ddf92f452907644ad3822918f54af41dd85e5a3fe3e1b6d6f9339",
    "03b9306f44e9b8951461623dcbd615550cdcf36ea93b203f2c8fa58ed1dffcbe",
    "03f583ec5018739f4abb9b3b4a580ac43bd933c4337ad8877aa18b1dfb59fc9a",
    "0532c64c2fd0c4d3188cc751cdfd566b1cfba3d269358717295bab1504c7c275",
    "06c779330d6d3447be21df2b9f05d1088f5b3b50dc48724fc130b1fd2896a68c",
    "08151b19806eebd58e5acec7e138dbfbb1761f41a1ab9620466584ecc7d5fada",
]


PHOTOMETRIC = ["clahe", "gamma", "brightness_contrast", "hue_saturation", "noise", "channel_shuffle", "gray", "blur",
               "color_jitter"]


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads((SET_DIR / MANIFEST).read_text())


def test_the_set_is_complete_and_within_40_mb(manifest):
    files = sorted(p.name for p in SET_DIR.iterdir())
    extra = [manifest["instance_filter"]["file"]] if "instance_filter" in manifest else []
    assert files == sorted([MANIFEST, *(f["file"] for f in manifest["folds"]), *extra])
    assert sum(p.stat().st_size for p in SET_DIR.iterdir()) <= 40 * 2**20
    # the generalising recipe on every image, estimated on folds that hold out whole experiments
    assert manifest["command"].startswith("dsb train --config configs/unetpp_cpu_nostain.yaml")
    assert "--full" in manifest["command"]
    assert manifest["cross_validation_command"].startswith("dsb train --config configs/unetpp_cpu_nostain.yaml")
    assert "--full" not in manifest["cross_validation_command"]
    commands = manifest["cross_validation_commands"]  # every fold's, the estimate's among them
    assert manifest["cross_validation_command"] in commands and not any("--full" in c for c in commands)
    assert [f["fold"] for f in manifest["folds"]] == ["full"]
    assert manifest["config"]["name"] == "unetpp_cpu_nostain"
    assert manifest["folds_method"] == "grouped" == manifest["config"]["folds"]["method"]
    assert manifest["config"]["augment"]["normalize_area_px"] == manifest["config"]["infer"]["rescale_area_px"]
    # trained without the photometric/stain augmentation (docs/results.md, Ablation); geometry kept
    assert all(manifest["config"]["augment"][f"p_{k}"] == 0 for k in PHOTOMETRIC)
    assert manifest["config"]["augment"]["flips"] and manifest["config"]["augment"]["rotate90"]
    lo, hi = manifest["oof"]["interval_95"]
    assert lo < manifest["oof_map"] < hi and manifest["oof"]["interval_over"] == "groups"
    assert manifest["config"]["infer"]["rescale_area_px"] > 0  # predicts with size-adaptive rescaling
    assert 0.0 < manifest["oof_map"] < 1.0
    assert {Path(p).name for p in manifest["data_sha256"]} == {"stage1_train.zip", "stage1_train_labels_fixed.csv"}
    held_out = manifest["held_out_map_per_fold"]  # the fold models behind the estimate
    assert held_out and all(0.0 < v < 1.0 for v in held_out.values())
    assert manifest["oof"]["n_images"] > 600 and manifest["oof"]["n_groups"] > 120  # all four folds
    assert sorted(held_out) == ["0", "1", "2", "3"]
    assert resolve_checkpoints([SHIPPED]) == [SET_DIR / f["file"] for f in manifest["folds"]]


def test_the_long_config_is_the_shipped_recipe(manifest):
    """configs/unetpp_nostain_long.yaml is the config and --set overrides the manifest records
    for the shipped set (the full-data model and every fold of its estimate), so training from
    it reproduces the set; only how a run executes (its device, its loader workers) may differ."""
    import shlex

    from dsb.config import load_config
    from dsb.train import _HOW_TO_RUN

    repo = Path(__file__).resolve().parents[1]
    recipe = load_config(repo / "configs/unetpp_nostain_long.yaml")
    assert recipe.name == "unetpp_nostain_long"
    for command in [manifest["command"], *manifest["cross_validation_commands"]]:
        words = shlex.split(command)
        sets = [words[i + 1] for i, w in enumerate(words) if w == "--set"]
        recorded = load_config(repo / words[words.index("--config") + 1], sets)
        recorded.name = recipe.name
        for key in _HOW_TO_RUN:
            section, field = key.split(".")
            setattr(getattr(recorded, section), field, getattr(getattr(recipe, section), field))
        assert recorded == recipe, command
    # the nostain config it extends is itself the grouped config without the photometric augmentation
    nostain, grouped = load_config(repo / "configs/unetpp_cpu_nostain.yaml"), load_config(repo / "configs/unetpp_cpu_grouped.yaml")
    assert all(getattr(nostain.augment, f"p_{k}") == 0 < getattr(grouped.augment, f"p_{k}") for k in PHOTOMETRIC)
    unstained = load_config(repo / "configs/unetpp_cpu_grouped.yaml", [f"augment.p_{k}=0" for k in PHOTOMETRIC]
                            + ["train.epochs=40", "train.val_every=40"])
    unstained.name = nostain.name
    assert unstained == nostain
    # and the shipped set was trained with it (export overrides only how it predicts: infer,
    # postprocess, and which heads the model computes)
    from dsb.export import INFERENCE_KEYS

    overrides = manifest.get("export_overrides", [])
    assert all(o.split("=")[0] in INFERENCE_KEYS or o.split(".")[0] in INFERENCE_KEYS for o in overrides)
    shipped = load_config(repo / "configs/unetpp_nostain_long.yaml", [o for o in overrides if o.startswith("model.")])
    for section in ("folds", "model", "targets", "augment", "loss"):
        assert manifest["config"][section] == getattr(shipped, section).__dict__, section
    # keys added to train since (e.g. distill_*) are absent from the manifest: their defaults held then
    from dsb.config import TrainConfig
    as_trained = {**TrainConfig().__dict__, **manifest["config"]["train"]}
    trained = {k: v for k, v in as_trained.items() if f"train.{k}" not in _HOW_TO_RUN}
    assert trained == {k: v for k, v in recipe.train.__dict__.items() if f"train.{k}" not in _HOW_TO_RUN}


def test_weights_are_half_precision_and_load(manifest):
    from dsb.models.checkpoint import load_model

    for entry in manifest["folds"]:
        payload = torch.load(SET_DIR / entry["file"], map_location="cpu", weights_only=False)
        assert payload["half"]
        assert all(v.dtype == torch.float16 for v in payload["model"].values() if v.is_floating_point())
        model, cfg, _ = load_model(SET_DIR / entry["file"])
        assert cfg.postprocess.to_dict() == {**cfg.postprocess.to_dict(), **manifest["config"]["postprocess"]}
        assert cfg.infer.__dict__ == {**cfg.infer.__dict__, **manifest["config"]["infer"]}
        assert all(p.dtype == torch.float32 for p in model.parameters())


def test_data_checksums_match_the_real_data(manifest, real_data):
    for path, digest in manifest["data_sha256"].items():
        assert file_sha256(real_data / Path(path).name) == digest, path


@pytest.mark.slow
def test_shipped_model_segments_training_images(manifest, real_data, tmp_path):
    """Eight training images (the first by id of grouped fold 0's held-out images). The model
    trained on them, so this is no estimate (the manifest's out-of-fold figures are): it
    catches broken or untrained weights, which score ~0 here."""
    from dsb.data.kaggle import open_stage
    from dsb.infer.pipeline import predict_stage
    from dsb.metrics import DatasetScore, image_score
    from dsb.models.checkpoint import load_model

    entry = manifest["folds"][0]
    model, cfg, _ = load_model(SET_DIR / entry["file"])
    stage = open_stage(real_data / "stage1_train.zip", labels=real_data / "stage1_train_labels_fixed.csv")
    ids = FOLD0_FIRST_IDS
    summary = predict_stage([model], cfg, stage, tmp_path / "held_out.csv", tta="none", image_ids=ids,
                            keep_label_maps=True, workers=1)
    assert summary.n_images == len(ids)
    score = DatasetScore.from_images(image_score(stage.read_label_map(i), summary.label_maps[i], image_id=i) for i in ids)
    assert score.map > 0.45, score.map  # the set before (80 epochs, stain augmentation): 0.617, seen in training


@pytest.mark.slow
def test_shipped_model_predicts_stage1_test_images(real_data, tmp_path):
    from dsb.data.kaggle import open_stage
    from dsb.infer.pipeline import predict_stage
    from dsb.models.checkpoint import load_model
    from dsb.submission import read_submission

    models, cfg = [], None
    for path in resolve_checkpoints([SHIPPED]):
        model, cfg, _ = load_model(path)
        models.append(model)
    stage = open_stage(real_data / "stage1_test.zip", labels=None)
    ids = sorted(stage.image_ids)[:3]
    out = tmp_path / "sub.csv"
    summary = predict_stage(models, cfg, stage, out, tta="flips", image_ids=ids, keep_label_maps=True, workers=1)
    assert summary.n_images == 3
    for i in ids:
        assert np.unique(summary.label_maps[i]).size > 2, i  # background and at least two nuclei
    assert read_submission(out)["ImageId"].nunique() == 3


def test_the_shipped_weights_are_a_student_of_the_recipes_model(manifest):
    """The shipped weights are a student (docs/results.md, distillation): a full-data run of
    the shipped recipe that started from the set and learned from its TTA maps (`dsb export
    SET SET --weights-from RUN`). The weights it learned from may themselves be an earlier
    stage (`earlier_students`: the recipe's model trained on from where it stopped). Every
    stage's recorded command is the recipe's config with only a training stage's keys changed,
    and the recipe's model, targets, augmentation and loss; the manifest's estimates are the
    first model's (each stage's note says so), and the re-exports that changed the weights are
    these stages, in order."""
    import shlex

    from dsb.config import load_config
    from dsb.train import _HOW_TO_RUN

    repo = Path(__file__).resolve().parents[1]
    recipe = load_config(repo / "configs/unetpp_nostain_long.yaml")
    stage = {"epochs", "val_every", "lr", "init_from", "distill_from", "distill_tta", "distill_head", "distill_weight",
             "distill_maps", "seed"}

    def stage_config(record: dict):
        words = shlex.split(record["record"]["full"]["command"])
        assert "--full" in words and words[words.index("--config") + 1] == "configs/unetpp_nostain_long.yaml"
        sets = [words[i + 1] for i, w in enumerate(words) if w == "--set"]
        changed = {s.split("=")[0] for s in sets} - {f"train.{k}" for k in stage} - _HOW_TO_RUN
        assert not changed, changed
        for section in ("folds", "model", "targets", "augment", "loss"):
            assert record["config"][section] == getattr(recipe, section).__dict__, section
        assert record["learned_from"] and "estimates" in record["note"]
        return load_config(repo / "configs/unetpp_nostain_long.yaml", sets)

    student, earlier = manifest["student"], manifest.get("earlier_students", [])
    taught = stage_config(student)
    # it started from the set; its teacher is the set or an earlier stage's run
    assert taught.train.init_from == SHIPPED
    assert taught.train.distill_from in {SHIPPED, *(r["run"] for r in earlier)}
    for record in earlier:  # trained on from a set of the recipe
        assert stage_config(record).train.init_from
    # the re-exports that changed the weights were these stages (later ones change settings only)
    assert [r["weights_from"] for r in manifest["reexports"] if "weights_from" in r] == [
        r["run"] for r in [*earlier, student]]
