"""Training runs unchanged under torchrun with DistributedDataParallel (gloo on CPU)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dsb.config import save_config


@pytest.mark.slow
def test_two_cpu_processes_train_and_agree(tmp_path, tiny_train_cfg):
    cfg = tiny_train_cfg(epochs=2, steps_per_epoch=3, val_every=2, batch_size=4)
    cfg_path = tmp_path / "tiny.yaml"
    save_config(cfg, cfg_path)
    out = tmp_path / "weights"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    res = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(Path(__file__).with_name("ddp_worker.py")), str(cfg_path), str(tmp_path / "run"), str(out)],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # The weights moved away from the (shared) initialisation: they really trained.
    torch.manual_seed(cfg.train.seed)
    from dsb.models import build_model

    init = build_model(cfg).state_dict()
    assert any(not torch.equal(init[k], a[k]) for k in a if a[k].dtype.is_floating_point)
    history = [json.loads(line) for line in (tmp_path / "run" / "fold0" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [0, 1]
