"""Peak memory (and time) of prediction: tiled vs full-image, TTA none vs d4, on CPU.

Each case runs in its own Python process so that its peak RSS (``VmHWM`` from
``/proc/self/status``, cross-checked with ``ru_maxrss``) is its own. The model is the
project's U-Net++ (``dsb.models.build_model`` on the default config: resnet18 encoder,
decoder [256, 128, 64, 32, 16], deep supervision, "accurate" mode = mean of 4 heads),
with random weights (memory and speed do not depend on the weights). Images are
synthetic float32 noise of the given size.

Cases (default config: tiles of 512 px, 64 px overlap, budget 1 Mpx per forward pass):

- ``1040x1388`` (the largest stage-1 size) predicted in full (baseline: tiling off, one
  view per pass) with TTA none, and tiled with TTA none and d4 (the full-image d4 case,
  ``1040x1388-full-d4``, about 2 more minutes, runs only when asked for with ``--cases``);
- ``4000x4000`` tiled with TTA none, and d4 only if the none run predicts it would take
  under ``--max-d4-s`` seconds (8x the none time); the full-image 4000x4000 need is
  estimated from the 1040x1388 full-image run (too big to run).

Run from the repository root::

    python benchmarks/predict_memory.py            # default cases, ~4-6 minutes on 2 cores
    python benchmarks/predict_memory.py --cases 1040x1388-full-none 1040x1388-full-d4
    python benchmarks/predict_memory.py --list     # all case names
    python benchmarks/predict_memory.py --cases 1040x1388-tiled-none

Prints a table and writes ``benchmarks/results/predict_memory.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from _common import finish, parser, peak_rss_mb, run_worker

LIMIT_MB = 4096

CASES: dict[str, dict] = {
    "1040x1388-full-none": dict(height=1040, width=1388, tta="none", tiled=False),
    "1040x1388-full-d4": dict(height=1040, width=1388, tta="d4", tiled=False),
    "1040x1388-tiled-none": dict(height=1040, width=1388, tta="none", tiled=True),
    "1040x1388-tiled-d4": dict(height=1040, width=1388, tta="d4", tiled=True),
    "4000x4000-tiled-none": dict(height=4000, width=4000, tta="none", tiled=True),
    "4000x4000-tiled-d4": dict(height=4000, width=4000, tta="d4", tiled=True),
}

DEFAULT_CASES = [c for c in CASES if c != "1040x1388-full-d4"]


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def run_case(name: str) -> dict:
    """Child process: predict one image and report memory and time."""
    import numpy as np
    import torch

    from dsb.config import Config, InferConfig
    from dsb.infer.predict import Predictor
    from dsb.infer.tiling import tile_grid
    from dsb.models import build_model

    case = CASES[name]
    h, w = case["height"], case["width"]
    cfg = Config()
    model = build_model(cfg, load_weights=False)
    n_params = sum(p.numel() for p in model.parameters())
    passes: list[tuple[int, ...]] = []
    model.register_forward_pre_hook(lambda _m, args: passes.append(tuple(args[0].shape)))
    rss_model_mb = _status_mb("VmRSS")

    image = np.random.default_rng(0).random((h, w, 3), dtype=np.float32)
    default = InferConfig()
    infer = InferConfig(
        tta=case["tta"],
        # Full-image baseline: raise the tiling threshold above this image (the batch
        # budget follows it, so each pass holds one view of the whole image).
        max_full_px=default.max_full_px if case["tiled"] else h * w,
    )
    predictor = Predictor([model], cfg.targets.channels, infer, device="cpu", amp="off")
    tiled = predictor.is_tiled(h, w)
    n_tiles = len(tile_grid(h, w, infer.tile_px, infer.tile_overlap_px)) if tiled else 1
    rss_before_mb = _status_mb("VmRSS")

    t0 = time.perf_counter()
    probs = predictor.predict(image)
    seconds = time.perf_counter() - t0
    assert probs.shape == (len(cfg.targets.channels), h, w) and probs.dtype == np.float32
    assert np.isfinite(probs).all()

    return dict(
        case=name,
        height=h,
        width=w,
        megapixels=round(h * w / 1e6, 3),
        tta=case["tta"],
        n_tta=len(predictor.transforms),
        tiled=tiled,
        n_tiles=n_tiles,
        tile_px=infer.tile_px if tiled else None,
        tile_overlap_px=infer.tile_overlap_px if tiled else None,
        max_batch_px=predictor.max_batch_px,
        forward_passes=len(passes),
        max_batch=max(p[0] for p in passes),
        pass_shapes=sorted({str(list(p)) for p in passes}),
        seconds=round(seconds, 1),
        rss_after_model_mb=round(rss_model_mb, 1),
        rss_before_predict_mb=round(rss_before_mb, 1),
        peak_rss_mb=round(_status_mb("VmHWM"), 1),
        ru_maxrss_mb=round(peak_rss_mb(), 1),
        image_mb=round(image.nbytes / 2**20, 1),
        output_mb=round(probs.nbytes / 2**20, 1),
        model=f"dsb.models.build_model(default Config): {cfg.model.encoder} U-Net++, {n_params / 1e6:.1f} M params",
        torch_threads=torch.get_num_threads(),
        channels_last=predictor.channels_last,
    )


def spawn(name: str, timeout_s: float) -> dict:
    row = run_worker([sys.executable, str(Path(__file__).resolve()), "--child", name], timeout_s)
    return {"case": name, **row} if "error" in row else row


def print_table(rows: list[dict]) -> None:
    head = f"{'case':<22} {'tiles':>5} {'passes':>6} {'maxB':>4} {'time s':>7} {'before MB':>9} {'peak MB':>8} {'+predict MB':>11}"
    print(head)
    print("-" * len(head))
    for r in rows:
        if "error" in r or "skipped" in r:
            print(f"{r['case']:<22} {r.get('error') or r.get('skipped')}")
            continue
        print(
            f"{r['case']:<22} {r['n_tiles']:>5} {r['forward_passes']:>6} {r['max_batch']:>4} {r['seconds']:>7.1f} "
            f"{r['rss_before_predict_mb']:>9.0f} {r['peak_rss_mb']:>8.0f} {r['peak_rss_mb'] - r['rss_before_predict_mb']:>11.0f}"
        )


def main() -> int:
    p = parser(__doc__, "predict_memory")
    p.add_argument("--cases", nargs="*", default=DEFAULT_CASES, choices=list(CASES))
    p.add_argument("--list", action="store_true", help="print all case names and exit")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--max-d4-s", type=float, default=180.0, help="skip 4000x4000 d4 if its estimate exceeds this")
    p.add_argument("--timeout-s", type=float, default=900.0, help="per-case time limit")
    args = p.parse_args()

    if args.list:
        print(" ".join(CASES))
        return 0
    if args.child:
        print(json.dumps(run_case(args.child)))
        return 0

    rows: list[dict] = []
    by_case: dict[str, dict] = {}
    for name in args.cases:
        if name == "4000x4000-tiled-d4":
            none = by_case.get("4000x4000-tiled-none")
            if none is None or "seconds" not in none:
                rows.append(dict(case=name, skipped="skipped: needs the 4000x4000-tiled-none timing first"))
                continue
            estimate = none["seconds"] * 8
            if estimate > args.max_d4_s:
                rows.append(dict(
                    case=name,
                    skipped=f"skipped: estimated {estimate:.0f}s (8 x tta none) > --max-d4-s {args.max_d4_s:.0f}; "
                    "its peak is that of tta none plus per-tile TTA buffers (see 1040x1388 tiled d4 vs none)",
                    estimated_seconds=round(estimate),
                ))
                continue
        print(f"running {name} ...", file=sys.stderr, flush=True)
        row = spawn(name, args.timeout_s)
        rows.append(row)
        by_case[name] = row

    # Full-image 4000x4000 need, from the full-image 1040x1388 run (memory per pixel).
    estimate = None
    base = by_case.get("1040x1388-full-none")
    if base and "peak_rss_mb" in base:
        px = base["height"] * base["width"]
        per_px_bytes = (base["peak_rss_mb"] - base["rss_before_predict_mb"]) * 2**20 / px
        big_px = 4000 * 4000
        image_mb = big_px * 3 * 4 / 2**20
        estimate = dict(
            case="4000x4000-full-none (estimated)",
            bytes_per_pixel=round(per_px_bytes),
            estimated_peak_rss_mb=round(base["rss_before_predict_mb"] + image_mb + per_px_bytes * big_px / 2**20),
            how="rss before predict (model) + 4000x4000x3 float32 image + (peak - before) of "
            "1040x1388-full-none per pixel x 16e6 pixels",
        )

    print_table(rows)
    if estimate:
        print(
            f"\n4000x4000 without tiling (estimated): {estimate['estimated_peak_rss_mb'] / 1024:.1f} GB peak "
            f"({estimate['bytes_per_pixel']} B/px of activations for the full-image forward pass)"
        )
    over = [r["case"] for r in rows if r.get("peak_rss_mb", 0) > LIMIT_MB]
    print(f"limit {LIMIT_MB} MB: " + ("all within" if not over else f"OVER in {over}"))

    result = dict(
        benchmark="predict_memory",
        created=time.strftime("%Y-%m-%dT%H:%M:%S"),
        limit_mb=LIMIT_MB,
        cases=rows,
        full_4000_estimate=estimate,
    )
    status = finish(result, args.out)
    return status or (0 if not over else 1)


if __name__ == "__main__":
    sys.exit(main())
