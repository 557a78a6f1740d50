"""What keeping freed memory (:func:`dsb.device.reuse_freed_memory`) saves ``dsb predict``.

Predicts the first ``--limit`` stage-1 test images with the shipped set (its settings:
d4 TTA, size-adaptive rescaling, postprocessing, the instance filter) through
:func:`dsb.infer.pipeline.predict_stage`, in one process, alternating two C allocator
settings, ``--rounds`` times each:

* **glibc default** (the baseline): allocations over the (dynamic, at most 32 MB) mmap
  threshold get fresh mappings, unmapped again when freed, so every forward pass faults
  in and zeroes its activations;
* **reuse**: what ``dsb predict`` and ``dsb segment`` set: no mmap for allocations, the
  heap never trimmed, so freed blocks serve the next pass.

For each: wall seconds, kernel (system) CPU seconds, minor page faults, and the resident
memory after the round (the process's peak is also given). The first round of each
setting includes warm-up; the ratio uses the last round of each.

``--train STEPS`` times ``dsb train``'s step instead (:class:`dsb.train.Optimisation` of
``--config``'s model, in its training precision, on random batches of its crop size; data
loading aside, which runs in worker processes): ``STEPS`` optimiser
steps per setting and round. Usage::

    python benchmarks/malloc_reuse.py [--data DIR] [--limit 8] [--rounds 2] [--checkpoint SET]
    python benchmarks/malloc_reuse.py --train 16 [--config configs/unetpp_cpu_grouped.yaml]

Writes benchmarks/results/malloc_reuse.json (``malloc_reuse_train.json`` with ``--train``);
without the stage-1 test images the prediction mode says so and exits 0. Linux with glibc only.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import resource
import tempfile
import time
from pathlib import Path

from _common import finish, parser, peak_rss_mb, real_data_dir, skip
from dsb.data.kaggle import open_stage
from dsb.device import reuse_freed_memory
from dsb.infer.pipeline import load_ensemble, predict_stage
from dsb.segmentation import DEFAULT_CHECKPOINT

DEFAULT_CONFIG = "configs/unetpp_cpu_grouped.yaml"

# glibc's defaults (malloc.h): trim and mmap thresholds 128 KiB, up to 65,536 mappings.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4
DEFAULTS = {M_TRIM_THRESHOLD: 128 * 1024, M_MMAP_THRESHOLD: 128 * 1024, M_MMAP_MAX: 65536}


def glibc_default(libc) -> None:
    """Back to glibc's default thresholds (fixed, not dynamic) and give the kept heap back."""
    for param, value in DEFAULTS.items():
        libc.mallopt(param, value)
    libc.malloc_trim(0)


def rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**20


def train_step_runner(config: str):
    """``run(steps)``: that many of ``dsb train``'s optimiser steps; returns the images trained."""
    import torch

    from dsb.config import load_config
    from dsb.device import amp_dtype
    from dsb.models.unetpp import build_model
    from dsb.train import Optimisation

    cfg = load_config(config)
    device = torch.device("cpu")
    precision = amp_dtype(cfg.train.amp, device, training=True)
    torch.manual_seed(0)
    memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    model = build_model(cfg).to(memory_format=memory_format).train()
    opt = Optimisation.for_model(cfg, model, device, precision, steps_per_epoch=cfg.train.steps_per_epoch or 32)
    batch, size, channels = cfg.train.batch_size, cfg.augment.crop_px, len(cfg.targets.channels)
    print(f"train steps of {config}: batch {batch} x 3 x {size}^2, precision {precision or 'fp32'}, "
          f"{torch.get_num_threads()} threads")

    def run(steps: int) -> int:
        for _ in range(steps):
            images = torch.rand(batch, 3, size, size).to(memory_format=memory_format)  # a fresh batch, as loaded
            targets = (torch.rand(batch, channels, size, size) > 0.7).float()
            opt.step(model, images, targets)
        return steps * batch

    run(1)  # warm-up: oneDNN primitives, optimiser state
    return run


def alternate(libc, rounds: int, out: Path, work) -> list[dict]:
    """``work()`` (returns a dict of its own figures) under both settings, alternating,
    ``rounds`` times each; a row per call with its wall, kernel and user seconds, minor page
    faults and the resident memory after it. Prints each row."""
    rows = []
    for round_ in range(rounds):
        for setting in ("glibc default", "reuse"):
            if setting == "reuse":
                if not reuse_freed_memory():
                    skip("malloc_reuse", "reuse_freed_memory() did not apply (not glibc?)", out)
            else:
                glibc_default(libc)
            before, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            figures = work()
            after = resource.getrusage(resource.RUSAGE_SELF)
            r = {"setting": setting, "round": round_, "wall_s": time.perf_counter() - t0,
                 "system_s": after.ru_stime - before.ru_stime, "user_s": after.ru_utime - before.ru_utime,
                 "minor_faults": after.ru_minflt - before.ru_minflt, "rss_mb_after": rss_mb(), **figures}
            rows.append(r)
            shown = "  ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items())
            print(f"round {round_} {setting:>14}: wall {r['wall_s']:7.1f} s  system {r['system_s']:6.1f} s  "
                  f"user {r['user_s']:7.1f} s  minor faults {r['minor_faults']:>10,}  RSS {r['rss_mb_after']:6.0f} MB  "
                  f"{shown}", flush=True)
    return rows


def last_round_ratio(rows: list[dict]) -> float:
    """Wall time of reuse over glibc's default in the last round (the first includes warm-up); printed."""
    last_round = max(r["round"] for r in rows)
    last = {r["setting"]: r for r in rows if r["round"] == last_round}
    ratio = last["reuse"]["wall_s"] / last["glibc default"]["wall_s"]
    print(f"\nreuse / glibc default (round {last_round}): wall x{ratio:.2f}, "
          f"system {last['reuse']['system_s']:.1f} vs {last['glibc default']['system_s']:.1f} s; "
          f"peak RSS of the process {peak_rss_mb():.0f} MB")
    return ratio


def main() -> int:
    p = parser(__doc__, "malloc_reuse")
    p.add_argument("--data", default=None,
                   help="stage1_test.zip, or a folder holding it (default: $DSB_DATA or ../shared/dsb2018)")
    p.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT)
    p.add_argument("--limit", type=int, default=8)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--train", type=int, default=0, metavar="STEPS",
                   help="time STEPS training steps of --config per setting and round instead of prediction")
    p.add_argument("--config", default=DEFAULT_CONFIG, help="the training config for --train")
    args = p.parse_args()
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    if args.train:
        if args.out == p.get_default("out"):
            args.out = args.out.with_name("malloc_reuse_train.json")
        run = train_step_runner(args.config)
        rows = alternate(libc, args.rounds, args.out, lambda: {"images": run(args.train)})
        for r in rows:
            r["images_per_s"] = r["images"] / r["wall_s"]
        print("images/s: " + ", ".join(f"{r['setting']} {r['images_per_s']:.2f}" for r in rows))
        ratio = last_round_ratio(rows)
        return finish({"benchmark": "malloc_reuse_train", "config": args.config, "steps": args.train, "rows": rows,
                       "wall_ratio_reuse_vs_default": ratio, "peak_rss_mb": peak_rss_mb()}, args.out)

    test = real_data_dir(args.data)
    test = test / "stage1_test.zip" if test is not None and test.is_dir() else test
    if test is None or not test.exists():
        skip("malloc_reuse", f"no stage-1 test images ({test or args.data or '$DSB_DATA, ../shared/dsb2018'})", args.out)
    stage = open_stage(test, labels=None)
    ids = stage.image_ids[: args.limit]
    ens = load_ensemble([args.checkpoint], device="cpu")
    print(f"{len(ids)} images from {test}; {args.checkpoint}, TTA {ens.cfg.infer.tta}")

    with tempfile.TemporaryDirectory() as tmp:
        def predict() -> dict:
            summary = predict_stage(ens.models, ens.cfg, stage, Path(tmp) / "sub.csv", device="cpu", image_ids=ids,
                                    instance_filter=ens.instance_filter)
            return {"nuclei": summary.n_nuclei}

        rows = alternate(libc, args.rounds, args.out, predict)
    ratio = last_round_ratio(rows)
    return finish({"benchmark": "malloc_reuse", "checkpoint": args.checkpoint, "data": str(test),
                   "n_images": len(ids), "rows": rows, "wall_ratio_reuse_vs_default": ratio,
                   "peak_rss_mb": peak_rss_mb()}, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
