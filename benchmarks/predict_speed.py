"""Seconds per image for the 65 stage-1 test images on CPU: model vs postprocessing.

For ``--tta none`` and ``--tta d4`` it runs two ways over the same images, side by side
in one process:

* **dsb** (:func:`dsb.infer.pipeline.predict_stage`): the model predicts in the main
  thread while a pool of workers postprocesses earlier images in parallel (the numba
  watershed releases the GIL); what postprocessing adds to the wall time is the wall
  time minus the model time.
* **baseline**: the plain loop a notebook would write: predict one image, postprocess
  it, encode it, next image.

Usage::

    python benchmarks/predict_speed.py --data ../shared/dsb2018 [--checkpoint RUN_OR_CKPT]
        [--limit N] [--tta none d4]

Without ``--checkpoint`` it uses the shipped ``weights/`` set if there is one, else an
untrained CPU-recipe model (its probabilities are noise, so the postprocessing share is
then not representative: say which was used). Without the stage-1 test images it says
so and exits 0. Writes benchmarks/results/predict_speed.json.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import REPO, finish, parser, real_data_dir, skip
from dsb.config import load_config
from dsb.data.dataset import prepare_image
from dsb.data.kaggle import open_stage
from dsb.infer.pipeline import predict_stage
from dsb.rundir import WEIGHTS_DIR, resolve_checkpoints
from dsb.infer.predict import Predictor, load_models
from dsb.postprocess import labels_from_probs
from dsb.rle import label_map_to_rows


def baseline_loop(models, cfg, stage, ids, tta):
    import dataclasses

    predictor = Predictor(models, cfg.targets.channels, dataclasses.replace(cfg.infer, tta=tta), device="cpu")
    model_s = post_s = 0.0
    t_start = time.perf_counter()
    for image_id in ids:
        raw = stage.read_image_uint8(image_id)
        image = prepare_image(raw, cfg.augment.invert_brightfield).astype(np.float32) / 255.0
        t0 = time.perf_counter()
        probs = predictor.predict(image)
        t1 = time.perf_counter()
        label_map_to_rows(image_id, labels_from_probs(probs, cfg.targets.channels, cfg.postprocess))
        t2 = time.perf_counter()
        model_s += t1 - t0
        post_s += t2 - t1
    return {"wall_s": time.perf_counter() - t_start, "model_s": model_s, "postprocess_s": post_s}


def main() -> int:
    p = parser(__doc__, "predict_speed")
    p.add_argument("--data", default=None,
                   help="stage1_test.zip, or a folder holding it (default: $DSB_DATA or ../shared/dsb2018)")
    p.add_argument("--checkpoint", action="append")
    p.add_argument("--limit", type=int, default=0, help="only the first N images (0: all)")
    p.add_argument("--tta", nargs="+", default=["none", "d4"])
    args = p.parse_args()

    test = real_data_dir(args.data)
    test = test / "stage1_test.zip" if test is not None and test.is_dir() else test
    if test is None or not test.exists():
        skip("predict_speed", f"no stage-1 test images ({test or args.data or '$DSB_DATA, ../shared/dsb2018'})", args.out)
    stage = open_stage(test, labels=None)
    ids = stage.image_ids[: args.limit or None]
    specs = args.checkpoint or ([str(WEIGHTS_DIR / d.name) for d in sorted(WEIGHTS_DIR.iterdir()) if d.is_dir()][:1]
                                if WEIGHTS_DIR.is_dir() else [])
    if specs:
        models, cfg = load_models(resolve_checkpoints(specs))
        model_desc = ", ".join(specs)
    else:
        import torch

        from dsb.models import build_model

        cfg = load_config(REPO / "configs" / "unetpp_cpu.yaml")
        torch.manual_seed(0)
        models, model_desc = [build_model(cfg).eval()], "untrained unetpp_cpu model (noise probabilities)"
    print(f"{len(ids)} images from {test}; model: {model_desc}; {len(models)} model(s); threads {os.cpu_count()}")

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for tta in args.tta:
            base = baseline_loop(models, cfg, stage, ids, tta)
            summary = predict_stage(models, cfg, stage, Path(tmp) / f"{tta}.csv", device="cpu", tta=tta, image_ids=ids)
            ours = {"wall_s": summary.wall_seconds, "model_s": summary.model_seconds,
                    "postprocess_s": summary.postprocess_seconds}
            added = max(0.0, ours["wall_s"] - ours["model_s"])
            rows.append({
                "tta": tta, "n_images": len(ids),
                "dsb_s_per_image": ours["wall_s"] / len(ids),
                "dsb_model_s_per_image": ours["model_s"] / len(ids),
                "dsb_postprocess_cpu_s_per_image": ours["postprocess_s"] / len(ids),
                "dsb_non_model_share_of_wall": added / ours["wall_s"],
                "baseline_s_per_image": base["wall_s"] / len(ids),
                "baseline_postprocess_share": base["postprocess_s"] / base["wall_s"],
                "speedup_vs_baseline": base["wall_s"] / ours["wall_s"],
            })
    print(f"\n{'tta':<6}{'dsb s/img':>11}{'model':>9}{'post cpu':>10}{'non-model %':>13}"
          f"{'baseline s/img':>16}{'base post %':>13}{'x baseline':>12}")
    for r in rows:
        print(f"{r['tta']:<6}{r['dsb_s_per_image']:>11.3f}{r['dsb_model_s_per_image']:>9.3f}"
              f"{r['dsb_postprocess_cpu_s_per_image']:>10.3f}{100 * r['dsb_non_model_share_of_wall']:>12.1f}%"
              f"{r['baseline_s_per_image']:>16.3f}{100 * r['baseline_postprocess_share']:>12.1f}%"
              f"{r['speedup_vs_baseline']:>12.2f}")
    return finish({"benchmark": "predict_speed", "model": model_desc, "data": str(test),
                   "load_avg": os.getloadavg(), "rows": rows}, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
