"""Shared fixtures and markers. Test data is synthetic and made here; real data only when present.

Fixtures used by more than one test module live here (never import one test module from
another):

- ``real_data``: the real DSB2018 stage-1 folder, or the test is skipped (and marked ``realdata``);
- ``synthetic_stage``: one small synthetic Kaggle stage (3 images with masks and a solution
  CSV), written once per session; tests read it and copy it before changing anything;
- ``tiny_train_cfg``: a factory of the tiny *training* config (``tiny_train_cfg(epochs=2)``);
- ``synthetic_run``: a factory of run folders as training leaves them, made in seconds without
  training (``synthetic_run(root)``: config, grouped folds, per-fold metrics, out-of-fold maps
  of perturbed truths), for the report tests (``test_report.py``, ``test_report_browser.py``);
- ``perturb_labels``: the perturbation those maps come from (``perturb_labels(truth, rng)``:
  a prediction with every kind of error).

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


#: The synthetic run of the report tests: 14 synthetic images in 2 folds (the model and
#: training sections are only what ``config.yaml`` records; nothing is trained).
SYNTHETIC_RUN = {
    "name": "report-synthetic",
    "data": {"path": "synthetic", "synthetic_n": 14, "synthetic_seed": 3},
    "folds": {"n_folds": 2, "seed": 0},
    "model": {"encoder": "resnet10t", "decoder_channels": [32, 16, 16, 8, 8]},
    "augment": {"crop_px": 96},
    "train": {"epochs": 3, "batch_size": 8, "steps_per_epoch": 2},
    "infer": {"tta": "none"},
}


def _perturb_labels(truth, rng):
    """A prediction with every kind of error: some nuclei dropped, touching pairs merged,
    large ones cut in two, some grown, a few blobs added, the rest kept."""
    import numpy as np
    from scipy import ndimage

    pred = truth.copy()
    ids = [i for i in np.unique(truth) if i]
    boxes = ndimage.find_objects(truth)
    next_id = int(truth.max()) + 1
    for i in ids:
        r = rng.random()
        box = boxes[i - 1]
        if r < 0.1:                                   # missed
            pred[pred == i] = 0
        elif r < 0.25:                                # merged with a touching neighbour
            grown = ndimage.binary_dilation(truth == i, iterations=2)
            neighbours = [j for j in np.unique(truth[grown]) if j and j != i]
            if neighbours:
                bridge = grown & (truth == 0) & ndimage.binary_dilation(truth == neighbours[0], iterations=2)
                pred[(pred == neighbours[0]) | bridge] = i
        elif r < 0.35 and (pred == i).sum() > 80:     # split in two halves
            ys, xs = np.nonzero(pred == i)
            cut = int(np.median(xs))
            pred[(pred == i) & (np.arange(truth.shape[1])[None, :] > cut)] = next_id
            pred[(pred == i) & (np.arange(truth.shape[1])[None, :] == cut)] = 0
            next_id += 1
        elif r < 0.45:                                # grown (loose boundary)
            grown = ndimage.binary_dilation(truth == i, iterations=int(rng.integers(2, 6)))
            pred[grown & (pred == 0)] = i
        elif box is not None and r < 0.55:            # shifted by a pixel or two
            mask = np.roll(truth == i, tuple(rng.integers(-2, 3, size=2)), axis=(0, 1))
            pred[pred == i] = 0
            pred[mask & (pred == 0)] = i
    for _ in range(int(rng.integers(0, 3))):          # spurious blobs
        y, x = rng.integers(4, truth.shape[0] - 4), rng.integers(4, truth.shape[1] - 4)
        blob = (np.arange(truth.shape[0])[:, None] - y) ** 2 + (np.arange(truth.shape[1])[None, :] - x) ** 2 <= 9
        pred[blob & (pred == 0) & ~ndimage.binary_dilation(truth > 0, iterations=2)] = next_id
        next_id += 1
    return pred


def _make_synthetic_run(root: Path, config: dict | None = None) -> Path:
    """A run folder as training leaves it (config, grouped folds, per-fold metrics and
    out-of-fold maps) for the synthetic data of ``config`` (default :data:`SYNTHETIC_RUN`),
    made in seconds: each out-of-fold map is the smoothed, noisy targets of a perturbed truth."""
    import json

    import numpy as np
    from scipy import ndimage

    from dsb.config import config_from_dict, save_config
    from dsb.data.folds import make_folds, save_folds
    from dsb.data.synthetic import iter_samples, sample_kind
    from dsb.data.targets import make_targets
    from dsb.probmaps import quantise_probs
    from dsb.rundir import RunDir

    cfg = config_from_dict(SYNTHETIC_RUN if config is None else config)
    run = RunDir(root)
    root.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run.config)
    samples = list(iter_samples(cfg.data.synthetic_n, cfg.data.synthetic_seed))
    ids = [s.image_id for s in samples]
    types = [sample_kind(i) for i in range(len(samples))]
    folds = make_folds(ids, types, cfg.folds.n_folds, seed=0, groups=[f"g{i % 5}" for i in range(len(ids))])
    save_folds(folds, run.folds)
    fold_of = dict(zip(folds["image_id"], folds["fold"]))
    rng = np.random.default_rng(7)
    for sample in samples:
        pred = _perturb_labels(sample.label_map, rng)
        targets = make_targets(pred, cfg.targets.channels, cfg.targets.border_px, cfg.targets.touching_px)
        probs = np.clip(ndimage.uniform_filter(targets, size=(1, 3, 3)) * 0.9 + 0.05
                        + rng.normal(0, 0.03, targets.shape), 0, 1)
        path = run.oof_map(int(fold_of[sample.image_id]), sample.image_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, quantise_probs(probs))
    for k in range(cfg.folds.n_folds):
        records = [{"epoch": e, "loss": 1.0 / e + 0.1 * k, "val_map": 0.1 * e + 0.02 * k} for e in range(1, 6)]
        run.metrics(k).write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


@pytest.fixture(scope="session")
def synthetic_run():
    """Factory of synthetic run folders: ``synthetic_run(root)`` writes one under ``root``
    (a new folder; ``config=`` another run config dict) and returns ``root``. The same seeds
    every call, so two calls give the same run."""
    return _make_synthetic_run


@pytest.fixture(scope="session")
def perturb_labels():
    """``perturb_labels(truth, rng)``: the prediction with every kind of error that the
    ``synthetic_run`` maps are made from (missed, merged, split, grown, shifted, spurious)."""
    return _perturb_labels


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
    infer = "bf16 autocast" if amp_dtype("auto", torch.device("cpu"), training=False) == torch.bfloat16 else "fp32"
    native = "native bf16 (AVX512-BF16/AMX)" if cpu_has_native_bf16() else "no native bf16"
    return f"dsb: train.amp=auto trains in {name} on this CPU ({native}); infer.amp=auto predicts in {infer}"


def pytest_report_header(config):
    """Say which precision `train.amp: auto` trains (and `infer.amp: auto` predicts) in on this CPU (tests that train with it
    run in that precision; the precision tests force fp32 and bf16 and say so in their names)."""
    return _precision_line()


def pytest_terminal_summary(terminalreporter):
    """The same line at the end, where `pytest -q` (which hides the header) shows it too."""
    terminalreporter.write_line(_precision_line())
