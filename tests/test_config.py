from pathlib import Path

import pytest

from dsb.config import Config, config_from_dict, load_config, save_config
from dsb.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
REPO_CONFIGS = sorted(str(p.relative_to(REPO)) for p in (REPO / "configs").glob("*.yaml"))


def test_defaults_are_valid():
    cfg = config_from_dict({})
    assert isinstance(cfg, Config)
    assert cfg.targets.channels == ["body", "border", "touching"]


@pytest.mark.parametrize(
    "data, key",
    [
        ({"train": {"epochz": 3}}, "train.epochz"),
        ({"train": {"epochs": "ten"}}, "train.epochs"),
        ({"train": {"epochs": 2.5}}, "train.epochs"),
        ({"train": {"lr": True}}, "train.lr"),
        ({"model": {"mode": "turbo"}}, "model.mode"),
        ({"model": {"decoder_channels": [1, "x", 3, 4, 5]}}, "model.decoder_channels[1]"),
        ({"modle": {}}, "modle"),
        ({"postprocess": {"fill_holes": "yes"}}, "postprocess.fill_holes"),
        ({"loss": {"channel_weights": [1.0]}}, "loss.channel_weights"),
        ({"targets": {"channels": ["body", "nucleolus"]}}, "targets.channels"),
    ],
)
def test_bad_values_name_the_key(data, key):
    with pytest.raises(ConfigError) as err:
        config_from_dict(data)
    assert key in str(err.value)


def test_int_widens_to_float_and_round_trip(tmp_path):
    cfg = config_from_dict({"train": {"lr": 1}})
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


def test_load_names_the_file_and_overrides(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("train:\n  epochs: 3\n  bogus: 1\n")
    with pytest.raises(ConfigError, match="x.yaml.*train.bogus"):
        load_config(path)
    path.write_text("train:\n  epochs: 3\n")
    assert load_config(path, ["train.epochs=5", "model.encoder=resnet34"]).train.epochs == 5
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    path.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


@pytest.mark.parametrize("name", REPO_CONFIGS)
def test_shipped_configs_load(name):
    load_config(REPO / name)


# ----------------------------------------------------------------- ranges (issue 11, defects 1, 2, 7, 8)


def _set(data: dict, key: str, value) -> dict:
    section, name = key.split(".")
    data.setdefault(section, {})[name] = value
    return data


def _outside(low, high, low_open, high_open, is_int):
    """Values just outside the range (and NaN/inf for float keys)."""
    step = 1 if is_int else 1e-6
    found = [low if low_open else low - step]
    if high != float("inf"):
        found.append(high if high_open else high + step)
    if not is_int:
        found += [float("nan"), float("inf")]
    return found


def test_every_range_is_checked_and_named():
    import dataclasses
    import typing

    from dsb.config import RANGES

    assert {"train.lr", "train.epochs", "augment.p_gray", "augment.p_channel_shuffle", "postprocess.expand_px",
            "folds.group_threshold", "augment.normalize_area_px"} <= set(RANGES)
    defaults = Config()
    for key, (low, high, low_open, high_open) in RANGES.items():
        section, name = key.split(".")
        default = getattr(getattr(defaults, section), name)
        hints = typing.get_type_hints(type(getattr(defaults, section)))
        is_int = hints[name] is int or hints[name] == list[int]
        for bad in _outside(low, high, low_open, high_open, is_int):
            value = [bad] * len(default) if isinstance(default, list) else bad
            with pytest.raises(ConfigError, match=r"out of range; must be") as err:
                config_from_dict(_set({}, key, value))
            assert str(err.value).startswith(key), (key, str(err.value))
    # Every float and int field of every section is covered (or checked elsewhere in validate()).
    elsewhere = {"model.fast_depth", "model.head_kernel", "postprocess.connectivity"}
    for section in dataclasses.fields(Config):
        if section.name == "name":
            continue
        hints = typing.get_type_hints(type(getattr(defaults, section.name)))
        for name, tp in hints.items():
            if tp in (int, float, list[int], list[float]):
                assert f"{section.name}.{name}" in RANGES or f"{section.name}.{name}" in elsewhere, name


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("train.lr", -0.001, r"train\.lr: -0\.001 is out of range; must be >= 0"),
        ("train.epochs", 0, r"train\.epochs: 0 is out of range; must be >= 1"),
        ("train.batch_size", 0, r"train\.batch_size: 0 is out of range; must be >= 1"),
        ("train.steps_per_epoch", -1, r"train\.steps_per_epoch: -1 is out of range; must be >= 0"),
        ("augment.crop_px", 0, r"augment\.crop_px: 0 is out of range; must be in \[32, 4096\]"),
        ("augment.p_rotate", 1.01, r"augment\.p_rotate: 1\.01 is out of range; must be in \[0, 1\]"),
        ("train.val_every", 0, r"train\.val_every: 0 is out of range; must be >= 1"),
        ("postprocess.mask_threshold", -0.5, r"postprocess\.mask_threshold: -0\.5 is out of range; must be in \[0, 1\]"),
        ("model.decoder_channels", [256, 0, 64, 32, 16], r"model\.decoder_channels\[1\]: 0 is out of range"),
        ("postprocess.expand_px", 0.5, r"postprocess\.expand_px: 0\.5 would grow nothing.*at least 1"),
        ("infer.rescale_measure_tta", "d4", r"infer\.rescale_measure_tta: 'd4' is not one of \['none', 'same'\]"),
    ],
)
def test_range_messages_name_key_value_and_range(key, value, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(_set({}, key, value))


def test_numbers_written_as_yaml_1_1_strings(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 1e-3\n  weight_decay: 1E-4\n")
    cfg = load_config(path, ["train.grad_clip=5e-1"])
    assert (cfg.train.lr, cfg.train.weight_decay, cfg.train.grad_clip) == (1e-3, 1e-4, 0.5)
    assert isinstance(cfg.train.lr, float)
    with pytest.raises(ConfigError, match=r"train\.lr: expected a number, got 'fast'"):
        load_config(path, ["train.lr=fast"])


def test_off_is_a_choice_not_a_yaml_boolean(tmp_path):
    """YAML 1.1 reads a bare ``off`` as false; where ``off`` is one of a key's choices (amp),
    the file and the override mean the choice (`dsb predict --amp off` sets infer.amp=off)."""
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  amp: off\n")
    cfg = load_config(path, ["infer.amp=off"])
    assert (cfg.train.amp, cfg.infer.amp) == ("off", "off")
    # elsewhere a boolean is still no choice: it is named as the error it is
    with pytest.raises(ConfigError, match=r"infer\.tta: False is not one of"):
        load_config(path, ["infer.tta=off"])


def test_override_into_a_value_and_broken_yaml_value(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 0.001\n")
    with pytest.raises(ConfigError, match=r"train\.lr is a value"):
        load_config(path, ["train.lr.x=1"])
    with pytest.raises(ConfigError, match=r"not valid YAML"):
        load_config(path, ["train.lr=[1"])
    from dsb.config import override_config

    with pytest.raises(ConfigError, match=r"infer\.tta is a value"):
        override_config(Config(), ["infer.tta.x=1"], sections=("infer",))
