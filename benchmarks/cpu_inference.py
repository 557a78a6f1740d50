"""Where prediction time goes on the CPU, and what each inference setting costs.

Every setting runs over the same images, side by side in one process, through the real
pipelines; the first setting is the baseline (by default the path ``make submission`` took
before bf16 inference: fp32, d4 TTA, the kept rescaled pass predicting all eight views, batch
norms not folded):

* ``--mode predict``: :func:`dsb.infer.pipeline.predict_stage`, what ``dsb predict`` and
  ``make submission`` run (the shipped set's instance filter, nuclei grown by ``--expand``);
* ``--mode segment``: :func:`dsb.segmentation.segment_sources`, what ``dsb segment`` runs
  (label TIFFs, nuclei.csv and summary.csv written).

A setting is ``AMP,TTA,REUSE[,FOLD[,HEADS]]``: ``infer.amp`` (``off`` fp32, ``auto``: bf16 on CPUs with
native bf16), the TTA mode (``none``, ``pair``, ``flips``, ``d4``), whether the kept pass reuses the measuring pass's identity
view (``reuse``, what dsb does now; ``noreuse``, as before), and whether the batch norms are
folded into the convolutions (``fold``, the default and what dsb does now; ``nofold``, as
before; :mod:`dsb.models.fuse`), and which heads the model computes (``all``: the mean of every
head, ``model.mode: accurate``; ``head4``: head 4 alone, ``model.mode: fast``; default: the
checkpoint's own). The model time is split into the
passes that only measure the nuclei's size (one view each) and the kept pass (the TTA views);
the postprocessing runs in parallel workers, so what it adds is the wall time minus the
model time (``other``: reading, postprocessing and writing beyond the model's time). ``agree`` is the mAP of each setting's label maps scored against the baseline's
(1.0: the same nuclei); the mAP against real labels is ``research/tta_gain.py --amp``'s job.

    python benchmarks/cpu_inference.py                           # the 65 stage-1 test images
    python benchmarks/cpu_inference.py --mode segment --size 520x696 --images ../shared/dsb2018/stage1_train.zip --limit 20
    python benchmarks/cpu_inference.py --settings off,d4,noreuse,nofold auto,d4,reuse,nofold auto,d4,reuse
    # a CPU without native bf16, emulated: this CPU restricted to AVX2 code, in fp32
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python benchmarks/cpu_inference.py --settings off,d4,reuse off,pair,reuse
    python benchmarks/cpu_inference.py --settings auto,d4,reuse,fold,all auto,d4,reuse,fold,head4 auto,none,reuse,fold,head4

Without the images it says so and exits 0. Prints a table; writes
benchmarks/results/cpu_inference.json (``--out``).
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from _common import finish, parser, real_data_dir, skip
from dsb.data.kaggle import open_stage
from dsb.device import precision_name, reuse_freed_memory
from dsb.infer.pipeline import load_ensemble, predict_stage
from dsb.infer import predict as predict_module
from dsb.infer.predict import Predictor
from dsb.infer.tta import TTA_MODES
from dsb.metrics import DatasetScore, image_score

DEFAULT_SETTINGS = ["off,d4,noreuse,nofold", "auto,d4,reuse,nofold", "auto,d4,reuse", "auto,flips,reuse", "auto,none,reuse"]


@contextmanager
def instrumented(reuse: bool, fold: bool, heads: str, clock: dict):
    """Time every ``Predictor.predict`` by its views (the identity alone: the passes that
    measure the nuclei, and every pass under ``--tta none``; others: the kept pass's TTA
    views, e.g. ``pair``'s 180-degree turn beside the reused identity); with
    ``reuse`` off, ``Predictor.rest`` is None (the path before it); with ``fold`` off, the
    batch norms stay unfolded (the path before :mod:`dsb.models.fuse`); ``heads`` (``all``,
    ``headD`` or ``""``: as loaded) sets each model's mode as a Predictor takes it."""
    predict, rest, folder, init = Predictor.predict, Predictor.rest, predict_module.fold_batch_norms, Predictor.__init__

    def init_with_heads(self, models, *args, **kwargs):
        for model in ([models] if isinstance(models, torch.nn.Module) else models):
            if heads == "all":
                model.set_mode("accurate")
            elif heads:
                model.set_mode("fast", int(heads[len("head"):]))
        init(self, models, *args, **kwargs)

    def timed_predict(self, image):
        t0 = time.perf_counter()
        try:
            return predict(self, image)
        finally:
            kind = "measure_s" if [t.name for t in self.transforms] == ["identity"] else "kept_s"
            clock[kind] = clock.get(kind, 0.0) + time.perf_counter() - t0
            clock["views"] = clock.get("views", 0) + len(self.transforms)

    Predictor.predict = timed_predict
    Predictor.__init__ = init_with_heads
    if not reuse:
        Predictor.rest = lambda self: None
    if not fold:
        predict_module.fold_batch_norms = lambda model: model
    try:
        yield
    finally:
        Predictor.predict, Predictor.rest, predict_module.fold_batch_norms, Predictor.__init__ = predict, rest, folder, init


def parse_setting(text: str) -> tuple[str, str, bool, bool, str]:
    parts = text.split(",")
    amp, tta, reuse, fold, heads = (parts + ["fold", ""][len(parts) - 3:])[:5] if len(parts) in (3, 4, 5) else ("",) * 5
    if (amp not in ("auto", "off", "bf16") or tta not in TTA_MODES or reuse not in ("reuse", "noreuse")
            or fold not in ("fold", "nofold") or not (heads in ("", "all") or heads[:4] == "head" and heads[4:].isdigit())):
        raise SystemExit(f"bad setting {text!r}: AMP,TTA,REUSE[,FOLD[,HEADS]] with AMP in auto/off/bf16, TTA in "
                         f"{'/'.join(TTA_MODES)}, REUSE in reuse/noreuse, FOLD in fold/nofold (default fold), HEADS all or "
                         "headD (default: the checkpoint's)")
    return amp, tta, reuse == "reuse", fold == "fold", heads


def run_predict(ens, stage, ids, amp, tta, tmp: Path) -> tuple[dict, float]:
    cfg = dataclasses.replace(ens.cfg, infer=dataclasses.replace(ens.cfg.infer, amp=amp))
    t0 = time.perf_counter()
    summary = predict_stage(ens.models, cfg, stage, tmp / "sub.csv", device="cpu", tta=tta, image_ids=ids,
                            keep_label_maps=True, instance_filter=ens.instance_filter)
    return summary.label_maps, time.perf_counter() - t0


def run_segment(checkpoint, sources, amp, tta, tmp: Path) -> tuple[dict, float]:
    from dsb.segmentation import Segmenter, SegmentOptions, output_paths, read_label_image, segment_sources, write_tables

    segmenter = Segmenter.load(checkpoint, device="cpu", tta=tta, amp=amp)
    out = tmp / "seg"
    t0 = time.perf_counter()
    results = segment_sources(sources, segmenter, out, SegmentOptions())
    failed = [r.error for r in results if r.status == "failed"]
    if failed:
        raise SystemExit(f"dsb segment failed: {failed[0]}")
    write_tables(out, results)
    seconds = time.perf_counter() - t0
    opts = SegmentOptions()
    maps = {r.name: read_label_image(output_paths(out, r.name, opts)["labels"]) for r in results
            if r.status == "segmented"}
    return maps, seconds


def main() -> int:
    p = parser(__doc__, "cpu_inference")
    p.add_argument("--mode", choices=["predict", "segment"], default="predict")
    p.add_argument("--images", type=Path, default=None,
                   help="a Kaggle stage (folder or zip; default: the stage-1 test images of ../shared/dsb2018)")
    p.add_argument("--checkpoint", default="unetpp_r18_nostain_full")
    p.add_argument("--settings", nargs="+", default=DEFAULT_SETTINGS, help="AMP,TTA,REUSE; the first is the baseline")
    p.add_argument("--size", default=None, help="only images of this size, HxW (e.g. 520x696)")
    p.add_argument("--limit", type=int, default=None, help="the first N images (after --size)")
    p.add_argument("--expand", type=float, default=1.0, help="postprocess.expand_px, as make submission (predict mode)")
    args = p.parse_args()

    images = args.images
    if images is None:
        data = real_data_dir()
        images = data / "stage1_test.zip" if data is not None else None
    if images is None or not Path(images).exists():
        skip("cpu_inference", "no stage-1 images (give --images or place ../shared/dsb2018)", args.out)
    reuse_freed_memory()  # as dsb predict and dsb segment do
    stage = open_stage(images, labels=None)
    ids = list(stage.image_ids)
    if args.size:
        want = tuple(int(v) for v in args.size.lower().split("x"))
        ids = [i for i in ids if stage.read_image_uint8(i).shape[:2] == want]
    ids = ids[: args.limit] if args.limit else ids
    if not ids:
        skip("cpu_inference", f"no image of size {args.size} in {images}", args.out)
    settings = [parse_setting(s) for s in args.settings]
    ens = load_ensemble([args.checkpoint], device="cpu", overrides=[f"postprocess.expand_px={args.expand}"])
    sources = []
    if args.mode == "segment":
        from dsb.data.images import collect_inputs

        tmp_images = Path(tempfile.mkdtemp(prefix="dsb-bench-"))
        from PIL import Image

        for image_id in ids:  # dsb segment reads files: the chosen images as PNGs
            Image.fromarray(stage.read_image_uint8(image_id)).save(tmp_images / f"{image_id}.png")
        sources = collect_inputs([str(tmp_images)])
    n_pixels = sum(int(np.prod(stage.read_image_uint8(i).shape[:2])) for i in ids)
    print(f"{args.mode}: {len(ids)} images of {images} ({n_pixels / len(ids) / 1e6:.2f} Mpx each on average), "
          f"checkpoint {args.checkpoint}", flush=True)

    rows, baseline_maps = [], None
    for amp, tta, reuse, fold, heads in settings:
        clock: dict = {"tta": tta}
        with tempfile.TemporaryDirectory() as tmp, instrumented(reuse, fold, heads, clock):
            if args.mode == "predict":
                maps, wall = run_predict(ens, stage, ids, amp, tta, Path(tmp))
            else:
                maps, wall = run_segment(args.checkpoint, sources, amp, tta, Path(tmp))
        keys = sorted(maps)
        if baseline_maps is None:
            baseline_maps = maps
        agree = DatasetScore.from_images(image_score(baseline_maps[k], maps[k], image_id=k) for k in keys).map
        model_s = clock.get("measure_s", 0.0) + clock.get("kept_s", 0.0)
        row = {"setting": f"{amp},{tta},{'reuse' if reuse else 'noreuse'}" + ("" if fold else ",nofold")
               + (f",{heads}" if heads else ""), "precision": precision_name(amp, "cpu"),
               "wall_s": wall, "s_per_image": wall / len(ids), "model_s": model_s,
               "measure_s": clock.get("measure_s", 0.0), "kept_s": clock.get("kept_s", 0.0),
               "rest_s": max(0.0, wall - model_s), "views": clock.get("views", 0),
               "nuclei": int(sum(int(m.max()) for m in maps.values())), "agree_map": agree}
        rows.append(row)
        print(f"{row['setting']:>18} ({row['precision']}): {row['s_per_image']:.3f} s/image  model {model_s:.1f} s "
              f"(measure {row['measure_s']:.1f}, kept {row['kept_s']:.1f}), other {row['rest_s']:.1f} s, "
              f"{row['views']} views, {row['nuclei']} nuclei, agree {agree:.4f}", flush=True)

    base = rows[0]
    print(f"\n{args.mode}, {len(ids)} images; baseline {base['setting']} ({base['precision']})")
    print(f"{'setting':>24} {'prec':>5} {'s/image':>8} {'x base':>7} {'model s':>8} {'measure':>8} {'kept':>7} "
          f"{'other':>7} {'views':>6} {'nuclei':>7} {'agree':>7}")
    for r in rows:
        print(f"{r['setting']:>24} {r['precision']:>5} {r['s_per_image']:8.3f} {r['wall_s'] / base['wall_s']:7.2f} "
              f"{r['model_s']:8.1f} {r['measure_s']:8.1f} {r['kept_s']:7.1f} {r['rest_s']:7.1f} {r['views']:6d} "
              f"{r['nuclei']:7d} {r['agree_map']:7.4f}")
    return finish({"benchmark": "cpu_inference", "mode": args.mode, "images": str(images), "n_images": len(ids),
                   "size": args.size, "checkpoint": args.checkpoint, "baseline": base["setting"], "rows": rows}, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
