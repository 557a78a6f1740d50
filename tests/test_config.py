import pytest

from dsb.config import Config, config_from_dict, load_config, save_config
from dsb.errors import ConfigError

REPO_CONFIGS = ["configs/demo.yaml", "configs/unetpp_cpu.yaml", "configs/unetpp_gpu.yaml"]


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
    from tests.conftest import REPO

    load_config(REPO / name)
