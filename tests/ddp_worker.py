"""Run by tests/test_ddp.py under torchrun: trains one fold with DDP on CPU (gloo) and
saves this rank's final weights so the test can check the ranks agree."""

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from dsb.config import load_config
from dsb.data.samples import load_samples
from dsb.device import DistInfo
from dsb.train import train_fold


def main(cfg_path: str, run_dir: str, out_dir: str) -> None:
    dist.init_process_group("gloo")
    info = DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=int(os.environ["LOCAL_RANK"]))
    cfg = load_config(cfg_path)
    samples = load_samples(cfg.data, cfg.augment.invert_brightfield)
    result = train_fold(cfg, Path(run_dir), 0, samples, dist=info)
    torch.save(result.model.state_dict(), Path(out_dir) / f"rank{info.rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:4])
