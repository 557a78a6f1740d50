"""Training: a short run learns (validation mAP far above an untrained model), the
data order is a pure function of (seed, epoch, index), and a killed run resumes.

The configs come from the ``tiny_train_cfg`` factory of ``conftest.py``; the tests that
train for epochs, in fresh processes or not, are marked ``slow``."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from dsb.config import save_config
from dsb.errors import ConfigError
from dsb.data.dataset import EpochDataset
from dsb.data.samples import load_samples
from dsb.device import amp_dtype, autocast
from dsb.train import SegLoss, check_run_config, evaluate_samples, seed_everything, train_fold, update_ema

@pytest.fixture(scope="module")
def samples(tiny_train_cfg):
    cfg = tiny_train_cfg()
    return load_samples(cfg.data, cfg.augment.invert_brightfield)


def test_epoch_dataset_is_a_pure_function_of_seed_epoch_index(samples, tiny_train_cfg):
    cfg = tiny_train_cfg()
    a = EpochDataset(samples, cfg.augment, cfg.targets, length=6, seed=1)
    b = EpochDataset(samples, cfg.augment, cfg.targets, length=6, seed=1)
    a.set_epoch(3)
    b.set_epoch(3)
    for i in (5, 0, 2):  # any access order
        xa, ya = a[i]
        xb, yb = b[i]
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    image, targets = a[0]
    assert image.shape == (3, 96, 96) and image.dtype == torch.float32
    assert targets.shape == (3, 96, 96) and set(torch.unique(targets).tolist()) <= {0.0, 1.0}
    a.set_epoch(4)
    assert not torch.equal(a[0][0], xb) or not torch.equal(a[1][0], b[1][0])


def test_loss_is_lower_for_right_answers():
    loss = SegLoss([1.0, 0.5, 0.5])
    targets = (torch.rand(2, 3, 16, 16) > 0.5).float()
    good = (targets * 2 - 1) * 8
    assert loss(good, targets) < loss(-good, targets)
    assert loss([good, good], targets) == pytest.approx(float(loss(good, targets)))


#: What `train.amp: auto` trains in on this CPU: bf16 with native bf16, else fp32. The
#: learning test runs in it (its id says which); the fit-a-batch test forces both.
AUTO_PRECISION = "bf16" if amp_dtype("auto", torch.device("cpu"), training=True) == torch.bfloat16 else "fp32"


#: A small but real recipe (the demo's model and crops, 24 synthetic images so 6 are held
#: out): it reaches a validation mAP of about 0.47 in fp32 and in bf16, on CPUs with AVX512
#: and AVX2 kernels alike. The tiny config with these sections and 24 epochs of 8 steps.
LEARNING = {
    "data": {"synthetic_n": 24},
    "model": {"decoder_channels": [64, 32, 16, 16, 16]},
    "augment": {"crop_px": 128},
    "loss": {"channel_weights": [1.0, 0.5, 0.5]},
}


@pytest.mark.slow
@pytest.mark.parametrize("precision", [AUTO_PRECISION])
def test_short_training_beats_an_untrained_model(precision, tmp_path, tiny_train_cfg):
    from dsb.models import build_model

    cfg = tiny_train_cfg(sections=LEARNING, epochs=24, steps_per_epoch=8, val_every=4)
    assert amp_dtype(cfg.train.amp, torch.device("cpu"), training=True) == (torch.bfloat16 if precision == "bf16" else None)
    samples = load_samples(cfg.data, cfg.augment.invert_brightfield)
    result = train_fold(cfg, tmp_path / "run", 0, samples)
    fold_dir = tmp_path / "run" / "fold0"
    val = [s for s in samples if s.image_id in {p.stem for p in (fold_dir / "oof").glob("*.npy")}]
    assert len(val) == 6, "out-of-fold maps are written for the held-out images"
    torch.manual_seed(0)
    untrained, _, _ = evaluate_samples(build_model(cfg), val, cfg, torch.device("cpu"))
    # measured: best 0.477 (fp32) and 0.475 (bf16), untrained 0.0
    assert result.best_map > untrained + 0.25, (precision, result.best_map, untrained)
    assert (fold_dir / "best.pt").is_file() and (fold_dir / "last.pt").is_file()
    history = [json.loads(line) for line in (fold_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == list(range(cfg.train.epochs))
    assert history[-1]["loss"] < history[0]["loss"]
    folds = (tmp_path / "run" / "folds.csv").read_text()
    assert folds.startswith("image_id,image_type,fold")


#: train.amp values of the two precisions every CPU is tested in (bf16 is emulated, and slow,
#: on CPUs without native bf16, so the test that forces it stays small).
PRECISIONS = {"fp32": "off", "bf16": "bf16"}


@pytest.mark.slow  # 30 optimiser steps in each precision
@pytest.mark.parametrize("precision", list(PRECISIONS))
def test_training_step_fits_a_batch_in_each_precision(precision, samples, tiny_train_cfg):
    """The training step of `train_fold` (autocast as train.amp says, the loss in fp32,
    AdamW, gradient clipping) fits a fixed batch in fp32 and in bf16 on any CPU."""
    from dsb.models import build_model

    cfg = tiny_train_cfg(amp=PRECISIONS[precision])
    dtype = amp_dtype(cfg.train.amp, torch.device("cpu"), training=True)
    assert dtype == (torch.bfloat16 if precision == "bf16" else None)
    data = EpochDataset(samples, dataclasses.replace(cfg.augment, crop_px=64), cfg.targets, length=4, seed=0)
    images = torch.stack([data[i][0] for i in range(4)])
    targets = torch.stack([data[i][1] for i in range(4)])
    seed_everything(0)
    model = build_model(cfg).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    loss_fn = SegLoss(cfg.loss.channel_weights)
    losses = []
    for _ in range(30):
        with autocast(torch.device("cpu"), dtype):
            outputs = model(images)
        loss = loss_fn(outputs, targets)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        optimizer.step()
        losses.append(float(loss.detach()))
    assert all(map(np.isfinite, losses))
    # measured: 1.62 -> 0.81 in both precisions, with AVX512 and AVX2 kernels
    assert losses[-1] < 0.6 * losses[0], (precision, losses[0], losses[-1])
    with torch.no_grad():
        body = torch.sigmoid(model.eval()(images))[:, 0] > 0.5
    truth = targets[:, 0] > 0.5
    iou = float((body & truth).sum() / (body | truth).sum())
    assert iou > 0.7, (precision, iou)  # measured 0.83-0.87


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


@pytest.mark.slow
def test_killed_training_resumes_with_the_same_data(tmp_path, tiny_train_cfg):
    """Kill `dsb train` mid-epoch; --resume loses at most that epoch and ends with the
    same weights as an uninterrupted run."""
    cfg = tiny_train_cfg(epochs=4, val_every=2, steps_per_epoch=4, amp="off")
    cfg_path = tmp_path / "tiny.yaml"
    save_config(cfg, cfg_path)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "cli.main", "train", "--config", str(cfg_path), "--fold", "0"]

    straight = tmp_path / "straight"
    subprocess.run(cmd + ["--run-dir", str(straight)], check=True, env=env, capture_output=True, timeout=600)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(cmd + ["--run-dir", str(killed)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = killed / "fold0" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(metrics.read_text().splitlines())
    assert 2 <= done < cfg.train.epochs
    resumed = subprocess.run(
        [sys.executable, "-m", "cli.main", "train", "--resume", str(killed)],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr
    history = [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()]
    assert history == list(range(cfg.train.epochs))
    run_info = json.loads((killed / "run.json").read_text())
    assert run_info["command"].startswith("dsb train --config") and "--run-dir" in run_info["command"]
    assert run_info["resumed"] == [f"dsb train --resume {killed}"]
    a, b = _state(straight / "fold0" / "last.pt"), _state(killed / "fold0" / "last.pt")
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_train_cli_errors(tmp_path):
    from typer.testing import CliRunner

    from cli.main import app

    runner = CliRunner()
    res = runner.invoke(app, ["train"])
    assert res.exit_code == 2 and "--config" in res.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: lots\n")
    res = runner.invoke(app, ["train", "--config", str(bad)])
    assert res.exit_code == 2 and "train.epochs" in res.output
    res = runner.invoke(app, ["train", "--resume", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "not a run folder" in res.output


def test_validation_leaves_a_training_model_in_training_mode(samples, tiny_train_cfg):
    from dsb.models import build_model

    cfg = tiny_train_cfg()
    model = build_model(cfg).train()
    evaluate_samples(model, samples[:1], cfg, torch.device("cpu"))
    assert model.training and all(m.training for m in model.modules())


def test_a_run_folder_holds_one_config(tmp_path, tiny_train_cfg):
    cfg = tiny_train_cfg()
    check_run_config(cfg, tmp_path)  # no run yet
    save_config(cfg, tmp_path / "config.yaml")
    check_run_config(cfg, tmp_path)
    check_run_config(tiny_train_cfg(num_workers=2, device="cpu"), tmp_path)  # how it runs, not what it computes
    with pytest.raises(ConfigError, match=r"train.lr: 0.003 -> 0.02"):
        check_run_config(tiny_train_cfg(lr=0.02), tmp_path)


def _params(path):
    state = _state(path)
    return {k: v for k, v in state.items() if "running_" not in k and "num_batches" not in k}


@pytest.mark.slow  # three short trainings
def test_warm_restart_starts_from_the_same_folds_models(tmp_path, samples, tiny_train_cfg):
    """train.init_from: fold k starts from fold k's last weights of the first run, whose
    folds it copies; other folds or another architecture are refused."""
    from dsb.errors import CheckpointError

    first = tmp_path / "first"
    train_fold(tiny_train_cfg(epochs=2, steps_per_epoch=2, val_every=2), first, 1, samples)
    # lr 0 and a constant schedule: the restarted weights must stay exactly the init's.
    # Another folds.seed: the folds must come from the first run, not from the config.
    frozen = tiny_train_cfg(epochs=1, steps_per_epoch=2, val_every=1, lr=0.0, schedule="constant",
                      warmup_epochs=0, seed=3, init_from=str(first))
    frozen = dataclasses.replace(frozen, folds=dataclasses.replace(frozen.folds, seed=7))
    second = tmp_path / "second"
    train_fold(frozen, second, 1, samples)
    assert (second / "folds.csv").read_bytes() == (first / "folds.csv").read_bytes()
    init, after = _params(first / "fold1" / "last.pt"), _params(second / "fold1" / "last.pt")
    assert all(torch.equal(init[k], after[k]) for k in init)
    scratch = tmp_path / "scratch"
    train_fold(tiny_train_cfg(epochs=1, steps_per_epoch=2, val_every=1, lr=0.0, schedule="constant",
                        warmup_epochs=0, seed=3), scratch, 1, samples)
    fresh = _params(scratch / "fold1" / "last.pt")
    assert not all(torch.equal(init[k], fresh[k]) for k in init)
    from dsb.export import export_run

    manifest = json.loads((export_run(second, "restarted", tmp_path / "weights", oof_map=0.5) / "manifest.json").read_text())
    assert manifest["config"]["train"]["init_from"] == str(first)
    assert manifest["starts_from"]["run"] == str(first)
    assert manifest["starts_from"]["config"]["train"]["epochs"] == 2

    other = tmp_path / "other"
    other.mkdir()
    folds = (first / "folds.csv").read_text().splitlines()
    swapped = [folds[0]] + [line[:-1] + str((int(line[-1]) + 1) % 4) for line in folds[1:]]
    (other / "folds.csv").write_text("\n".join(swapped) + "\n")
    with pytest.raises(ConfigError, match="other folds"):
        train_fold(frozen, other, 1, samples)
    with pytest.raises(CheckpointError, match="last.pt: checkpoint file not found"):
        train_fold(frozen, tmp_path / "fold2", 2, samples)  # fold 2 of the first run was never trained
    wider = tiny_train_cfg(sections={"model": {"decoder_channels": [64, 32, 16, 8, 8]}},
                           init_from=str(first), epochs=1, steps_per_epoch=1)
    with pytest.raises(CheckpointError, match="does not fit this config's model"):
        train_fold(wider, tmp_path / "wider", 1, samples)


@pytest.mark.slow  # two short trainings
def test_warm_restart_from_a_checkpoint_or_a_shipped_set(tmp_path, samples, tiny_train_cfg):
    """train.init_from: one checkpoint (a .pt file, or a set folder holding one) starts the
    full-data model; a fold of the same data may not start from it (it saw the fold's
    held-out images), a fold of other data may; a set of several models is refused."""
    from dsb.export import export_run
    from dsb.models import build_model
    from dsb.models.checkpoint import save_checkpoint
    from dsb.train import resolve_init

    cfg = tiny_train_cfg()
    seed_model = build_model(cfg)
    torch.nn.init.constant_(next(seed_model.parameters()), 0.25)  # unlike any fresh model
    weights = save_checkpoint(tmp_path / "mine.pt", seed_model, cfg, half=True)
    frozen = tiny_train_cfg(epochs=1, steps_per_epoch=2, val_every=1, lr=0.0, schedule="constant",
                            warmup_epochs=0, init_from=str(weights))
    run = tmp_path / "full_run"
    train_fold(frozen, run, None, samples)
    init, after = _params(weights), _params(run / "full" / "last.pt")
    assert all(torch.equal(init[k].float(), after[k]) for k in init)  # fp16 weights upcast, then unchanged

    with pytest.raises(ConfigError, match="saw its held-out images"):
        train_fold(frozen, tmp_path / "leak", 0, samples)
    assert resolve_init(str(tmp_path / "mine.pt")).weights == weights
    other_data = tiny_train_cfg(epochs=1, steps_per_epoch=1, val_every=1, init_from=str(weights),
                                sections={"data": {"synthetic_seed": 11}})
    other_samples = load_samples(other_data.data, other_data.augment.invert_brightfield)
    train_fold(other_data, tmp_path / "own_images", 0, other_samples)  # fine-tuning on other images
    assert (tmp_path / "own_images" / "fold0" / "last.pt").is_file()

    manifest = json.loads((export_run(run, "continued", tmp_path / "weights", full=True, oof_map=0.5)
                           / "manifest.json").read_text())
    assert manifest["starts_from"]["weights"] == str(weights)
    assert len(manifest["starts_from"]["sha256"]) == 64
    shipped = tmp_path / "weights" / "continued"
    assert resolve_init(str(shipped)).weights == shipped / "full.pt"
    with pytest.raises(ConfigError, match="saw its held-out images"):  # a shipped set, same data
        train_fold(tiny_train_cfg(init_from=str(shipped)), tmp_path / "leak2", 1, samples)
    (shipped / "fold9.pt").write_bytes((shipped / "full.pt").read_bytes())
    with pytest.raises(ConfigError, match="holds 2 models"):
        resolve_init(str(shipped))
    with pytest.raises(ConfigError, match="no_such.pt: not found"):
        resolve_init(str(tmp_path / "no_such.pt"))


def test_ema_model_keeps_the_live_batchnorm_statistics(tiny_train_cfg):
    """An EMA of a model trained from scratch must predict with the current BatchNorm
    statistics, not the initial ones (AveragedModel averages parameters only)."""
    from dsb.models import build_model

    cfg = tiny_train_cfg()
    model = build_model(cfg).train()
    ema = torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.9))
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(2, 3, 64, 64) * 5 + 2)  # moves the running statistics far from (0, 1)
    update_ema(ema, model)
    live = [b for b in model.buffers() if b.is_floating_point()]
    averaged = [b for b in ema.module.buffers() if b.is_floating_point()]
    assert live and all(torch.equal(a, b) for a, b in zip(averaged, live))
    assert any(float(b.abs().max()) > 1.5 for b in live)  # the statistics did move


@pytest.mark.slow  # three short trainings
def test_distillation_learns_the_teachers_tta_maps(tmp_path, samples, tiny_train_cfg):
    """train.distill_from: fold k learns from the teacher run's fold k (same folds, copied
    like a warm restart's), whose targets are its TTA-merged probabilities; with all of the
    loss on the teacher's maps the student moves toward them; a teacher checkpoint of the
    same data is refused for a fold before anything is written; other target channels too."""
    from dsb.infer.tta import tta_transforms
    from dsb.models.checkpoint import load_model
    from dsb.data.folds import load_folds
    from dsb.train import Teacher

    teacher_run = tmp_path / "teacher"
    train_fold(tiny_train_cfg(epochs=2, steps_per_epoch=2, val_every=2), teacher_run, 0, samples)
    folds = load_folds(teacher_run / "folds.csv")

    cfg = tiny_train_cfg(distill_from=str(teacher_run), distill_tta="d4")
    teacher = Teacher.load(cfg, 0, folds, torch.device("cpu"), None)
    assert teacher.path == teacher_run / "fold0" / "best.pt"
    x = torch.rand(2, 3, 64, 64)
    model, _, _ = load_model(teacher.path)
    with torch.no_grad():
        views = [t.inverse(torch.sigmoid(model(t.forward(x)))) for t in tta_transforms("d4")]
    want = torch.stack(views).mean(0)
    assert torch.allclose(teacher.targets(x), want, atol=1e-3)
    assert not torch.allclose(want, views[0], atol=1e-3)  # the views differ: the merge matters
    deepest = Teacher.load(tiny_train_cfg(distill_from=str(teacher_run), distill_tta="none", distill_head=4),
                           0, folds, torch.device("cpu"), None)
    with torch.no_grad():
        assert torch.allclose(deepest.targets(x), torch.sigmoid(model.set_mode("fast", 4)(x)), atol=1e-3)
        assert not torch.allclose(deepest.targets(x), torch.sigmoid(model.set_mode("accurate")(x)), atol=1e-3)
    with pytest.raises(ConfigError, match="train.distill_head: .*must be in 1..4"):
        Teacher.load(tiny_train_cfg(distill_from=str(teacher_run), distill_head=9), 0, folds, torch.device("cpu"), None)

    # The loss: all of it on the teacher's maps (distill_weight 1) fits a fixed batch to them.
    from dsb.models import build_model
    from dsb.train import Optimisation

    data = EpochDataset(samples, dataclasses.replace(cfg.augment, crop_px=64), cfg.targets, length=4, seed=0)
    images = torch.stack([data[i][0] for i in range(4)])
    labels = torch.stack([data[i][1] for i in range(4)])
    taught = teacher.targets(images)

    def fitted(weight):
        seed_everything(0)
        student = build_model(cfg).train()
        run_cfg = tiny_train_cfg(distill_from=str(teacher_run), distill_weight=weight, lr=3e-3,
                                 schedule="constant", warmup_epochs=0, ema_decay=0.0)
        opt = Optimisation.for_model(run_cfg, student, torch.device("cpu"), None, steps_per_epoch=30)
        for _ in range(30):
            opt.step(student, images, labels, taught)
        with torch.no_grad():
            return float((torch.sigmoid(student.eval()(images)) - taught).abs().mean())

    # measured (bf16, AMX): mean distance 0.09 from the teacher's maps with weight 1, 0.39 with
    # weight 0 (the labels alone)
    assert fitted(1.0) < 0.5 * fitted(0.0)

    # A run: fold 0 learns from the teacher run's fold 0, and takes its folds.
    taught_run = tmp_path / "taught"
    train_fold(tiny_train_cfg(epochs=1, steps_per_epoch=2, val_every=1, distill_from=str(teacher_run)),
               taught_run, 0, samples)
    assert (taught_run / "folds.csv").read_bytes() == (teacher_run / "folds.csv").read_bytes()
    assert (taught_run / "fold0" / "best.pt").is_file()
    # A teacher run and a warm-restart run with other folds: refused before anything is written.
    other_folds = tmp_path / "other_folds"
    other_folds.mkdir()
    table = (teacher_run / "folds.csv").read_text().splitlines()
    header, rows = table[0], table[1:]
    col = header.split(",").index("fold")
    swapped = [",".join(str((int(v) + 1) % 4) if i == col else v for i, v in enumerate(r.split(","))) for r in rows]
    (other_folds / "folds.csv").write_text("\n".join([header, *swapped]) + "\n")
    with pytest.raises(ConfigError, match="other folds than train.init_from"):
        train_fold(tiny_train_cfg(init_from=str(teacher_run), distill_from=str(other_folds)), tmp_path / "mixed", 0,
                   samples)
    assert not (tmp_path / "mixed").exists()

    from dsb.models.checkpoint import save_checkpoint
    from dsb.models import build_model
    same_data = save_checkpoint(tmp_path / "same.pt", build_model(cfg), cfg)
    with pytest.raises(ConfigError, match="train.distill_from: .*learn from a teacher that saw its held-out images"):
        train_fold(tiny_train_cfg(distill_from=str(same_data)), tmp_path / "leak", 0, samples)
    assert not (tmp_path / "leak").exists()
    other = tiny_train_cfg(sections={"targets": {"channels": ["body"]}, "loss": {"channel_weights": [1.0]}})
    with pytest.raises(ConfigError, match="predicts"):
        Teacher.load(dataclasses.replace(other, train=dataclasses.replace(other.train, distill_from=str(teacher_run))),
                     0, folds, torch.device("cpu"), None)


def test_distillation_from_whole_image_maps(tmp_path, samples, tiny_train_cfg):
    """train.distill_maps: images: the teacher predicts each training image once, whole, as
    inference does, and its maps are cut and moved with the crop (flips, rotations, the size
    jitter) so the third item of each sample is the teacher's map under the crop; a run trains
    with them, at the plain speed, and never calls the teacher per step."""
    from dsb.data.folds import load_folds
    from dsb.infer.predict import predict_probs
    from dsb.train import Teacher

    # The dataset: a map equal to the image comes back equal to the crop, under flips and
    # rotations exactly, under the size jitter up to interpolation (nearest against linear).
    cfg = tiny_train_cfg()
    photometric = {f.name: 0.0 for f in dataclasses.fields(cfg.augment) if f.name.startswith("p_")}
    geometry = dataclasses.replace(cfg.augment, crop_px=64, **photometric)  # flips and 90-degree turns
    maps = [np.ascontiguousarray(s.image) for s in samples]
    exact = EpochDataset(samples, dataclasses.replace(geometry, scale_min=1.0, scale_max=1.0),
                         cfg.targets, length=8, seed=2, teacher_maps=maps)
    plain = EpochDataset(samples, dataclasses.replace(geometry, scale_min=1.0, scale_max=1.0),
                         cfg.targets, length=8, seed=2)
    for i in range(8):
        image, targets, taught = exact[i]
        assert torch.equal(taught, image) and torch.equal(image, plain[i][0]) and torch.equal(targets, plain[i][1])
    jitter = EpochDataset(samples, dataclasses.replace(geometry, scale_min=0.7, scale_max=1.4),
                          cfg.targets, length=8, seed=2, teacher_maps=maps)
    moved = [float((jitter[i][2] - jitter[i][0]).abs().mean()) for i in range(8)]
    # measured: 0 where no resize was drawn, at most 0.013 where one was; a map flipped
    # against its image gives 0.02-0.22
    assert max(moved) < 0.03 and max(moved) > 0
    with pytest.raises(ValueError, match="teacher_maps"):
        EpochDataset(samples, cfg.augment, cfg.targets, length=2, teacher_maps=maps[:-1])

    # The maps: the teacher's d4 prediction of each whole image, quantised to 1/255.
    teacher_run = tmp_path / "teacher"
    train_fold(tiny_train_cfg(epochs=1, steps_per_epoch=2, val_every=1), teacher_run, 0, samples)
    folds = load_folds(teacher_run / "folds.csv")
    teach_cfg = tiny_train_cfg(distill_from=str(teacher_run), distill_tta="d4", distill_maps="images")
    teacher = Teacher.load(teach_cfg, 0, folds, torch.device("cpu"), None)
    got = teacher.image_maps(samples[:2])
    from dsb.models.checkpoint import load_model
    model, _, _ = load_model(teacher.path)
    for sample, m in zip(samples[:2], got):
        assert m.dtype == np.uint8 and m.shape == (*sample.label_map.shape, 3)
        want = predict_probs(model, sample.image, teach_cfg.infer, tta="d4", amp="off").transpose(1, 2, 0)
        assert np.abs(m / 255.0 - want).max() < 1.5 / 255 + 1e-3

    # A run: the loader gives the maps, the teacher is not asked per step.
    calls = []
    original = Teacher.targets
    Teacher.targets = lambda self, images: calls.append(1) or original(self, images)
    try:
        notes = []
        result = train_fold(tiny_train_cfg(epochs=1, steps_per_epoch=2, val_every=1, distill_from=str(teacher_run),
                                           distill_maps="images"), tmp_path / "taught", 0, samples, on_note=notes.append)
    finally:
        Teacher.targets = original
    assert not calls and (tmp_path / "taught" / "fold0" / "best.pt").is_file() and result.best_map >= 0
    n_train = sum(1 for f in load_folds(teacher_run / "folds.csv")["fold"] if f != 0)
    assert f"predicting the {n_train} training images once" in notes[0] and notes[1].startswith(f"teacher maps: {n_train} images")


def test_pseudo_labelled_images_join_every_epoch_at_their_share(tmp_path, samples, tiny_train_cfg, monkeypatch):
    """``pseudo`` samples (data.pseudo_*) are drawn for ``data.pseudo_share`` of the crops,
    after the fold's training images, and never validated on."""
    import dsb.train as train_module
    from dsb.data.dataset import Sample, with_pseudo_weights

    seen = {}
    real_dataset, real_evaluate = train_module.EpochDataset, train_module.evaluate_samples

    def spy_dataset(train_samples, *args, weights=None, **kwargs):
        seen["samples"], seen["weights"] = list(train_samples), weights
        return real_dataset(train_samples, *args, weights=weights, **kwargs)

    def spy_evaluate(model, val_samples, *args, **kwargs):
        seen["validated"] = [s.image_id for s in val_samples]
        return real_evaluate(model, val_samples, *args, **kwargs)

    monkeypatch.setattr(train_module, "EpochDataset", spy_dataset)
    monkeypatch.setattr(train_module, "evaluate_samples", spy_evaluate)
    pseudo = [Sample(f"pseudo{i}", s.image, s.label_map, s.image_type) for i, s in enumerate(samples[:3])]
    cfg = tiny_train_cfg(epochs=1, steps_per_epoch=2, val_every=1, sampling="balanced", sections={"data": {"pseudo_share": 0.4}})
    train_fold(cfg, tmp_path / "run", 0, samples, pseudo=pseudo)

    ids = [s.image_id for s in seen["samples"]]
    assert ids[-3:] == ["pseudo0", "pseudo1", "pseudo2"] and not any(i.startswith("pseudo") for i in ids[:-3])
    assert not any(i.startswith("pseudo") for i in seen["validated"]) and set(seen["validated"]).isdisjoint(ids)
    weights = np.asarray(seen["weights"])
    assert weights[-3:].sum() == pytest.approx(0.4) and weights[-3:] == pytest.approx([0.4 / 3] * 3)
    assert weights.sum() == pytest.approx(1.0)
    # The labelled images keep their balanced sampling within the rest; without pseudo-labels
    # the same run draws them exactly so.
    train_fold(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, pseudo_share=0.25)), tmp_path / "plain", 0, samples)
    assert [s.image_id for s in seen["samples"]] == ids[:-3]
    assert weights[:-3] == pytest.approx(0.6 * np.asarray(seen["weights"]))
    with pytest.raises(ValueError):
        with_pseudo_weights(None, 2, 0, 0.3)
