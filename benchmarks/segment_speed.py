"""dsb segment: images per second and peak memory, against the plain loop.

Two workloads, each measured in a fresh process (peak RSS is the process's own maximum):

- the stage-1 test images (65, or ``--n``), given as a Kaggle stage: ``segment`` is the
  library behind ``dsb segment`` (read, predict with rescaling, watershed, label TIFF,
  nuclei.csv and summary.csv); ``plain`` is the loop a script would write: read one image,
  ``predict_rescaled``, ``labels_from_probs``, nothing written;
- one large synthetic image (``--big-px``, default 10,000 x 10,000; fluorescence-like
  nuclei tiled from synthetic samples, saved as a TIFF): ``segment`` in blocks against
  ``plain`` predicting the whole image's probabilities and running one watershed over it.
  Both at scale 1 (``--nucleus-diameter`` at the model's target size), so the two do the
  same model work and the difference is memory.

    python benchmarks/segment_speed.py                 # 65 images + 10,000^2 (minutes)
    python benchmarks/segment_speed.py --big-px 0      # 65 images only (what `make bench` runs)
    python benchmarks/segment_speed.py --quick         # 5 images + 3,000^2

Without the stage-1 test images the stage workload is left out (and with ``--big-px 0``
the script says so and exits 0). Prints a table and writes ``benchmarks/results/segment_speed.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from _common import finish, parser, peak_rss_mb, real_data_dir, run_worker, skip


def _peak_rss_gb() -> float:
    return peak_rss_mb() / 1024


def _worker(args) -> dict:
    import numpy as np

    from dsb.device import reuse_freed_memory
    from dsb.segmentation import Segmenter, SegmentOptions, segment_sources, write_tables

    if args.mode == "segment":
        reuse_freed_memory()  # as `dsb segment` does
    segmenter = Segmenter.load(args.checkpoint, device="cpu", tta=args.tta)
    cfg = segmenter.cfg
    diameter = segmenter.target_diameter_px if args.workload == "big" else None
    rss_loaded = _peak_rss_gb()
    if args.workload == "stage":
        from dsb.data.kaggle import open_stage

        stage = open_stage(args.input, labels=None)
        ids = stage.image_ids[: args.n]
    t0 = time.perf_counter()
    n_nuclei = 0
    if args.mode == "segment":
        from dsb.data.images import ImageSource, collect_inputs

        if args.workload == "stage":
            sources = [s for s in collect_inputs([args.input]) if s.name in set(ids)]
        else:
            sources = [ImageSource(name="big", describe=args.input, path=Path(args.input))]
        with tempfile.TemporaryDirectory() as out:
            opts = SegmentOptions(nucleus_diameter=diameter, block_px=args.block_px)
            results = segment_sources(sources, segmenter, out, opts)
            write_tables(out, results)
        failed = [r.error for r in results if r.status != "segmented"]
        if failed:
            raise SystemExit(f"failed: {failed}")
        n_images, n_nuclei = len(results), sum(r.n_nuclei for r in results)
    else:
        from dsb.data.dataset import prepare_image
        from dsb.infer.rescale import predict_rescaled
        from dsb.postprocess import labels_from_probs

        predictor = segmenter.predictor
        if args.workload == "stage":
            images = (stage.read_image_uint8(i) for i in ids)
        else:
            import tifffile

            images = (np.repeat(tifffile.imread(args.input)[..., None], 3, axis=2) for _ in range(1))
        n_images = 0
        for raw in images:
            image = prepare_image(raw, cfg.augment.invert_brightfield).astype(np.float32) / 255.0
            del raw
            if args.workload == "stage":
                probs, _ = predict_rescaled(predictor, image, cfg.targets.channels, cfg.postprocess, predictor.infer_cfg)
            else:
                probs = predictor.predict(image)
            del image
            labels = labels_from_probs(probs, cfg.targets.channels, cfg.postprocess)
            del probs
            n_nuclei += int(labels.max())
            n_images += 1
    seconds = time.perf_counter() - t0
    return {"workload": args.workload, "mode": args.mode, "images": n_images, "nuclei": n_nuclei,
            "seconds": round(seconds, 2), "images_per_s": round(n_images / seconds, 4),
            "peak_rss_gb": round(_peak_rss_gb(), 3), "rss_after_model_load_gb": round(rss_loaded, 3)}


def make_big_image(path: Path, side: int, seed: int = 0) -> None:
    """A ``side x side`` uint8 gray TIFF of synthetic fluorescence nuclei (1000 px tiles)."""
    import numpy as np
    import tifffile

    from dsb.data.synthetic import make_sample

    tiles = []
    for i in range(4):  # four distinct tiles, repeated
        image, _ = make_sample(np.random.default_rng(seed + i), kind="fluorescence", shape=(1000, 1000))
        tiles.append(image[..., 0])
    big = np.zeros((side, side), np.uint8)
    for y in range(0, side, 1000):
        for x in range(0, side, 1000):
            tile = tiles[(y // 1000 + x // 1000) % 4]
            big[y: y + 1000, x: x + 1000] = tile[: side - y, : side - x]
    tifffile.imwrite(path, big)


def main() -> int:
    p = parser(__doc__, "segment_speed")
    p.add_argument("--data", type=Path, default=None,
                   help="folder holding stage1_test.zip (default: $DSB_DATA or ../shared/dsb2018)")
    p.add_argument("--checkpoint", default="unetpp_r18_nostain_full")
    p.add_argument("--tta", default="none")
    p.add_argument("--n", type=int, default=65, help="stage-1 test images")
    p.add_argument("--big-px", type=int, default=10_000, help="side of the large image (0: skip)")
    p.add_argument("--quick", action="store_true",
                   help="5 images and a 3,000 px image (segmented in 2,048 px blocks, to time the block path)")
    p.add_argument("--block-px", type=int, default=4096, help="dsb segment --block-px")
    p.add_argument("--modes", default="plain,segment", help="which of plain,segment to run")
    # internal: one measurement in this process
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--workload", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    p.add_argument("--input", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(_worker(args)))
        return 0
    if args.quick:
        args.n, args.big_px = min(args.n, 5), min(args.big_px, 3000) if args.big_px else 0
        args.block_px = min(args.block_px, 2048)
    modes = [m for m in ("plain", "segment") if m in args.modes.split(",")]

    def run(workload: str, mode: str, input_path: Path) -> dict:
        cmd = [sys.executable, __file__, "--worker", "--workload", workload, "--mode", mode, "--input", str(input_path),
               "--checkpoint", args.checkpoint, "--tta", args.tta, "--n", str(args.n), "--block-px", str(args.block_px)]
        row = run_worker(cmd)
        return {"workload": workload, "mode": mode, **row} if "error" in row else row

    rows = []
    data = real_data_dir(args.data)
    stage = (data or args.data or Path("../shared/dsb2018")) / "stage1_test.zip"
    if not (stage.is_file() and args.n > 0) and not args.big_px:
        skip("segment_speed", f"no {stage} and no large image (--big-px 0)", args.out)
    if stage.is_file() and args.n > 0:
        for mode in modes:
            rows.append(run("stage", mode, stage))
            print(rows[-1], flush=True)
    elif args.n > 0:
        print(f"no {stage}: skipping the stage-1 workload", flush=True)
    if args.big_px:
        with tempfile.TemporaryDirectory() as tmp:
            big = Path(tmp) / "big.tif"
            make_big_image(big, args.big_px)
            for mode in modes:
                rows.append(run("big", mode, big))
                rows[-1]["side_px"] = args.big_px
                print(rows[-1], flush=True)

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"dsb segment vs the plain loop ({args.checkpoint}, TTA {args.tta}, "
                        f"{os.environ.get('OMP_NUM_THREADS', 'all')} threads)")
    for col in ("workload", "mode", "images", "nuclei", "seconds", "images/s", "peak RSS GB"):
        table.add_column(col)
    for r in rows:
        name = f"{r.get('side_px')}^2 image" if r["workload"] == "big" else f"stage-1 test ({args.n})"
        if "error" in r:
            table.add_row(name, r["mode"], "-", "-", "-", "-", f"failed: {r['error']}")
            continue
        table.add_row(name, r["mode"], str(r["images"]), str(r["nuclei"]), f"{r['seconds']:.1f}",
                      f"{r['images_per_s']:.3f}", f"{r['peak_rss_gb']:.2f}")
    Console().print(table)
    result = {"benchmark": "segment_speed", "checkpoint": args.checkpoint, "tta": args.tta, "n_stage_images": args.n,
              "big_px": args.big_px, "block_px": args.block_px,
              "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "rows": rows}
    status = finish(result, args.out)
    return status or (1 if any("error" in r for r in rows) else 0)


if __name__ == "__main__":
    sys.exit(main())
