"""What test-time augmentation buys on real held-out images: mAP and seconds per image.

For one fold of a training run, the fold's model predicts that fold's held-out images
(which it never trained on) with each TTA setting, side by side in one process, with the
run's tuned postprocessing; the baseline is ``--tta none`` (what training validation and
the out-of-fold maps use). The mAP is the competition metric against the run's labels.

Usage::

    python benchmarks/tta_gain.py RUN_DIR [--fold 0] [--tta none flips d4] [--limit N]

Writes benchmarks/results/tta_gain.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dsb.data.folds import load_folds  # noqa: E402
from dsb.data.kaggle import open_stage  # noqa: E402
from dsb.evaluate import load_run_config  # noqa: E402
from dsb.infer.pipeline import predict_stage  # noqa: E402
from dsb.metrics import DatasetScore, image_score  # noqa: E402
from dsb.models.checkpoint import load_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--tta", nargs="+", default=["none", "flips", "d4"])
    parser.add_argument("--limit", type=int, default=None, help="first N held-out images (by id)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "tta_gain.json")
    args = parser.parse_args()

    cfg = load_run_config(args.run_dir)
    model, _, meta = load_model(args.run_dir / f"fold{args.fold}" / "best.pt")
    folds = load_folds(args.run_dir / "folds.csv")
    held = folds[folds["fold"] == args.fold].sort_values("image_id")
    if args.limit:
        held = held.head(args.limit)
    ids, types = held["image_id"].tolist(), dict(zip(held["image_id"], held["image_type"]))
    stage = open_stage(cfg.data.path, labels=cfg.data.labels)
    truth = {i: stage.read_label_map(i) for i in ids}

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for tta in args.tta:
            summary = predict_stage([model], cfg, stage, Path(tmp) / f"{tta}.csv", tta=tta, image_ids=ids,
                                    keep_label_maps=True)
            scores = [image_score(truth[i], summary.label_maps[i], image_id=i) for i in ids]
            overall = DatasetScore.from_images(scores)
            per_type = {}
            for t in sorted(set(types.values())):
                per_type[t] = DatasetScore.from_images(s for s in scores if types[s.image_id] == t).map
            rows.append({"tta": tta, "map": overall.map, "per_type": per_type,
                         "s_per_image": summary.wall_seconds / len(ids)})
            print(f"{tta:>6}: mAP {overall.map:.4f}  {summary.wall_seconds / len(ids):.2f} s/img", flush=True)

    base = rows[0]
    print(f"\nfold {args.fold} of {args.run_dir} (best epoch {meta.get('epoch')}), {len(ids)} held-out images;"
          f" baseline: --tta {base['tta']}")
    type_names = sorted(base["per_type"])
    print(f"{'tta':>6} {'mAP':>7} {'gain':>7} {'s/img':>6} {'x time':>7}  " + "  ".join(f"{t:>13}" for t in type_names))
    for r in rows:
        print(f"{r['tta']:>6} {r['map']:7.4f} {r['map'] - base['map']:+7.4f} {r['s_per_image']:6.2f} "
              f"{r['s_per_image'] / base['s_per_image']:7.2f}  " + "  ".join(f"{r['per_type'][t]:13.4f}" for t in type_names))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"run": str(args.run_dir), "fold": args.fold, "n_images": len(ids),
                                    "baseline": base["tta"], "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
