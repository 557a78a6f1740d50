"""Shared fixtures and markers. Test data is synthetic and made here; real data only when present.

Fixtures used by more than one test module live here (never import one test module from
another):

- ``real_data``: the real DSB2018 stage-1 folder, or the test is skipped (and marked ``realdata``);
- ``synthetic_stage``: one small synthetic Kaggle stage (3 images with masks and a solution
  CSV), written once per session; tests read it and copy it before changing anything;
- ``tiny_train_cfg``: a factory of the tiny *training* config (``tiny_train_cfg(epochs=2)``).

Markers (``pyproject.toml`` registers them; ``--strict-markers`` refuses others):
``slow`` (multi-epoch training, subprocesses that train, the CLI pipeline, the shipped
weights on real images, the browser: ``make test-fast`` = ``pytest -m "not slow"`` leaves
them out) and ``realdata`` (needs the real data; given automatically to every test that
uses the ``real_data`` fixture).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def real_data_dir() -> Path | None:
    """``$DSB_DATA`` or ``../shared/dsb2018`` beside the repo, if it holds the stage-1 files."""
    candidates = [os.environ.get("DSB_DATA"), str(REPO.parent / "shared" / "dsb2018")]
    for cand in candidates:
        if cand and (Path(cand) / "stage1_train.zip").is_file():
            return Path(cand)
    return None


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The real DSB2018 stage-1 folder; tests using it are skipped on machines without it."""
    path = real_data_dir()
    if path is None:
        pytest.skip("real DSB2018 data not present (set DSB_DATA or place ../shared/dsb2018)")
    return path


@pytest.fixture(scope="session")
def synthetic_stage(tmp_path_factory):
    """A 3-image synthetic stage (folder with masks, seed 5) and its solution CSV
    (:class:`dsb.data.synthetic.SyntheticDataset`). Shared by the session: read it, or copy
    it before damaging it."""
    from dsb.data.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("synthetic") / "stage", n=3, seed=5)


#: The tiny training recipe: 16 synthetic images in 4 folds, resnet10t with a narrow decoder,
#: 96 px crops, 30 epochs of 8 batches of 8 (tests shorten it through ``tiny_train_cfg``).
TINY_TRAINING = {
    "name": "tiny",
    "data": {"path": "synthetic", "synthetic_n": 16, "synthetic_seed": 0},
    "folds": {"n_folds": 4, "seed": 0},
    "model": {"encoder": "resnet10t", "decoder_channels": [32, 16, 16, 8, 8]},
    "augment": {"crop_px": 96},
    "train": {"epochs": 30, "batch_size": 8, "steps_per_epoch": 8, "lr": 0.003, "val_every": 5,
              "amp": "auto", "warmup_epochs": 1},
    "infer": {"tta": "none"},
}


def _tiny_train_cfg(sections: dict | None = None, **train):
    from dsb.config import config_from_dict

    data = copy.deepcopy(TINY_TRAINING)
    for section, values in (sections or {}).items():
        data.setdefault(section, {}).update(values)
    data["train"].update(train)
    return config_from_dict(data)


@pytest.fixture(scope="session")
def tiny_train_cfg():
    """Factory of the tiny training config: ``tiny_train_cfg(epochs=2, val_every=1)`` sets
    ``train.*`` keys, ``sections={"model": {...}}`` updates other sections; a new
    :class:`dsb.config.Config` on every call."""
    return _tiny_train_cfg


def pytest_collection_modifyitems(items):
    """A test that needs the real data says so by its fixture: mark it ``realdata`` too, so
    ``-m "not realdata"`` leaves out exactly the tests that read it."""
    for item in items:
        if "real_data" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.realdata)


def _precision_line() -> str:
    from dsb.device import amp_dtype, cpu_has_native_bf16

    import torch

    auto = amp_dtype("auto", torch.device("cpu"), training=True)
    name = "bf16 autocast" if auto == torch.bfloat16 else "fp32"
    native = "native bf16 (AVX512-BF16/AMX)" if cpu_has_native_bf16() else "no native bf16"
    return f"dsb: train.amp=auto trains in {name} on this CPU ({native}); inference runs in fp32"


def pytest_report_header(config):
    """Say which precision `train.amp: auto` trains in on this CPU (tests that train with it
    run in that precision; the precision tests force fp32 and bf16 and say so in their names)."""
    return _precision_line()


def pytest_terminal_summary(terminalreporter):
    """The same line at the end, where `pytest -q` (which hides the header) shows it too."""
    terminalreporter.write_line(_precision_line())
