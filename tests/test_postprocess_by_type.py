"""Per-image-type postprocessing (``postprocess.by_type``): the config, the held-out search
of ``dsb tune`` (:func:`dsb.evaluate.tune_by_type`) and its use where images are labelled."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from dsb.config import Config, PostprocessConfig, config_from_dict, override_config
from dsb.errors import ConfigError
from dsb.evaluate import OofItem, score_items, tune_by_type
from dsb.probmaps import quantise_probs

CHANNELS = ["body", "border", "touching"]


def _item(index: int, image_type: str, inside: float, outside: float) -> OofItem:
    """Four separate square nuclei; the body channel is ``inside`` on them and ``outside``
    (with a little noise) elsewhere: a type whose nuclei come out faint needs a lower
    threshold, one with a bright background a higher one."""
    rng = np.random.default_rng(index)
    truth = np.zeros((64, 64), np.int32)
    for k, (y, x) in enumerate([(6, 6), (6, 38), (38, 6), (38, 38)], start=1):
        truth[y:y + 18, x:x + 18] = k
    body = np.where(truth > 0, inside, outside) + rng.uniform(-0.02, 0.02, truth.shape)
    probs = np.stack([np.clip(body, 0, 1), np.zeros_like(body), np.zeros_like(body)]).astype(np.float32)
    return OofItem(f"{image_type}{index}", image_type, 0, quantise_probs(probs), truth, group=f"g{image_type}{index}")


def test_for_type_applies_a_types_changes_only():
    cfg = override_config(Config(), ["postprocess.by_type.stained.seed_threshold=0.6",
                                     "postprocess.by_type.stained.min_area_px=16"])
    post = cfg.postprocess
    assert post.by_type.changes() == {"stained": {"seed_threshold": 0.6, "min_area_px": 16}}
    stained, fluo = post.for_type("stained"), post.for_type("fluorescence")
    assert (stained.seed_threshold, stained.min_area_px, stained.mask_threshold) == (0.6, 16, post.mask_threshold)
    assert fluo == post.for_type(None) == dataclasses.replace(post, by_type=type(post.by_type)())
    assert not stained.by_type.changes()
    # saved compactly and read back the same
    data = cfg.to_dict()
    assert data["postprocess"]["by_type"] == {"stained": {"seed_threshold": 0.6, "min_area_px": 16}}
    assert config_from_dict(data).postprocess == post


def test_bad_type_settings_name_the_key():
    data = Config().to_dict()
    data["postprocess"]["by_type"] = {"stained": {"mask_threshold": 1.5}}
    with pytest.raises(ConfigError, match=r"postprocess\.by_type\.stained\.mask_threshold: 1\.5 is out of range"):
        config_from_dict(data)
    data["postprocess"]["by_type"] = {"histology": {"mask_threshold": 0.5}}
    with pytest.raises(ConfigError, match=r"postprocess\.by_type\.histology: unknown key"):
        config_from_dict(data)
    data["postprocess"]["by_type"] = {"stained": {"expand_px": 1.0}}  # growth is common to every type
    with pytest.raises(ConfigError, match=r"postprocess\.by_type\.stained\.expand_px: unknown key"):
        config_from_dict(data)


def test_tune_by_type_keeps_a_types_own_thresholds_only_where_they_win_held_out():
    # Fluorescence: bright nuclei on a background at 0.45 (a threshold under 0.45 floods it);
    # stained: nuclei at only 0.4, which the common thresholds (above 0.45) miss entirely.
    items = [_item(i, "fluorescence", 0.9, 0.45) for i in range(8)] + [_item(i, "stained", 0.4, 0.05) for i in range(6)]
    common = PostprocessConfig(seed_threshold=0.6, mask_threshold=0.55, min_seed_area_px=4, min_area_px=8)
    typed, report = tune_by_type(items, CHANNELS, common, rounds=1)
    rows = {r.image_type: r for r in report}
    assert rows["stained"].held_out_common < 0.05 and rows["stained"].held_out_own > 0.8
    assert rows["stained"].changes and typed.for_type("stained").mask_threshold < 0.4
    assert not rows["fluorescence"].changes  # already right: nothing to gain
    assert "fluorescence" not in typed.by_type.changes()
    before = score_items(items, CHANNELS, common)[0].map
    after = score_items(items, CHANNELS, typed)[0].map
    assert after > before + 0.3  # six of fourteen images go from nothing found to all found


def test_tune_by_type_leaves_a_type_of_too_few_groups_and_a_single_type_alone():
    items = [_item(i, "fluorescence", 0.9, 0.45) for i in range(6)] + [_item(i, "stained", 0.4, 0.05) for i in range(2)]
    common = PostprocessConfig(seed_threshold=0.6, mask_threshold=0.55)
    typed, report = tune_by_type(items, CHANNELS, common, rounds=1)
    stained = {r.image_type: r for r in report}["stained"]
    assert stained.held_out_own is None and not stained.changes and not typed.by_type.changes()
    typed, report = tune_by_type([i for i in items if i.image_type == "stained"], CHANNELS, common, rounds=1)
    assert report == [] and not typed.by_type.changes()


def test_prediction_classifies_each_image_for_its_settings():
    from dsb.infer.pipeline import postprocess_for

    post = override_config(Config(), ["postprocess.by_type.stained.seed_threshold=0.7"]).postprocess
    stained = np.tile(np.uint8([200, 120, 200]), (32, 32, 1))      # light, purple: H&E-like
    fluorescence = np.full((32, 32, 3), 12, np.uint8)                  # dark background
    assert postprocess_for(post, stained).seed_threshold == 0.7
    assert postprocess_for(post, fluorescence).seed_threshold == post.seed_threshold
    assert not postprocess_for(post, stained).by_type.changes()


def test_a_runs_type_settings_travel_to_prediction_and_into_an_exported_set(tmp_path, tiny_train_cfg):
    """The by_type of postprocess.yaml (dsb tune) is what `dsb predict --checkpoint RUN` uses
    and what `dsb export` writes into the set's checkpoints and manifest."""
    import json

    import yaml

    from dsb.config import save_config
    from dsb.export import export_run
    from dsb.infer.pipeline import load_ensemble
    from dsb.models import build_model
    from dsb.models.checkpoint import load_model, save_checkpoint

    cfg = tiny_train_cfg()
    run = tmp_path / "run"
    (run / "fold0").mkdir(parents=True)
    save_config(cfg, run / "config.yaml")
    save_checkpoint(run / "fold0" / "best.pt", build_model(cfg, load_weights=False), cfg)
    tuned = {**cfg.postprocess.to_dict(), "mask_threshold": 0.45,
             "by_type": {"stained": {"mask_threshold": 0.3, "min_seed_area_px": 24}}}
    (run / "postprocess.yaml").write_text(yaml.safe_dump({"postprocess": tuned, "oof_map": 0.5}))

    ensemble = load_ensemble([str(run)])
    assert ensemble.cfg.postprocess.for_type("stained").mask_threshold == 0.3
    assert ensemble.cfg.postprocess.for_type("fluorescence").mask_threshold == 0.45

    out = export_run(run, "typed", tmp_path / "weights", oof_map=0.5)
    _, shipped_cfg, _ = load_model(out / "fold0.pt")
    assert shipped_cfg.postprocess.for_type("stained").min_seed_area_px == 24
    assert shipped_cfg.postprocess.for_type("brightfield").min_seed_area_px == cfg.postprocess.min_seed_area_px
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["postprocess"]["by_type"] == {"stained": {"mask_threshold": 0.3, "min_seed_area_px": 24}}


def test_the_types_with_settings_are_the_classifiers_types():
    from dsb.config import TYPE_NAMES, TypeOverrides
    from dsb.data.imagetypes import IMAGE_TYPES

    assert set(TYPE_NAMES) == set(IMAGE_TYPES) == {f.name for f in dataclasses.fields(TypeOverrides)}
