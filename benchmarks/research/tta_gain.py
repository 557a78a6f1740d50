"""What test-time augmentation and size-adaptive rescaling buy on real held-out images.

For each fold of a training run, the fold's model predicts that fold's held-out images
(which it never trained on) with each setting, side by side in one process, with the
run's tuned postprocessing; the baseline is the first setting (by default ``--tta none``
without rescaling: what training validation and the out-of-fold maps use). A setting is a
TTA mode and an ``infer.rescale_area_px`` (0: off; see :mod:`dsb.infer.rescale`). The mAP
is the competition metric against the run's labels, over all the chosen folds' images.

SOURCE is a run folder or a shipped checkpoint set (``benchmarks/research/heldout.py``): with a
shipped set, each fold model predicts the held-out ids its manifest lists, so the set's
figures can be re-measured without the run folder it came from.

Usage::

    python benchmarks/research/tta_gain.py SOURCE [--folds 0,1,2,3] [--tta none flips d4]
        [--rescale-area 0 700] [--rescale-max 2.0] [--rescale-passes 1 2] [--measure-tta same none]
        [--amp off auto] [--mode accurate fast:2] [--limit N] [--data DIR]
        [--match IMAGES [--match-predictions SUBMISSION.csv]]

``--amp`` compares the precision of the forward passes (``infer.amp``: ``off`` fp32,
``auto`` bf16 on CPUs with native bf16). ``--mode`` compares what the model computes:
``accurate`` (the mean of all heads) or ``fast:D`` (head ``D`` alone, only the encoder
stages and decoder nodes it needs).

``--match IMAGES`` adds, for every setting, the estimate for another image set (e.g. the
stage-1 test images): the held-out images' scores weighted to that set's mix of image
types, nucleus sizes and novelty, as ``dsb evaluate --match`` weights a run's out-of-fold
maps (:mod:`dsb.shift`). Each setting's held-out images are profiled by their own
predictions; the target images' nucleus sizes are read from ``--match-predictions`` (a
submission CSV for them) or predicted once by the first fold model without TTA.

Writes benchmarks/results/tta_gain.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for _common

from _common import finish, parser  # noqa: E402  (also puts the repository on sys.path)

import pandas as pd  # noqa: E402

from dsb.data.dataset import prepare_image  # noqa: E402
from dsb.data.imagetypes import classify_image  # noqa: E402
from dsb.errors import DsbError  # noqa: E402
from dsb.evaluate import NoveltyReference, bootstrap_interval, held_out_profile, open_match, target_profile  # noqa: E402
from dsb.infer.pipeline import predict_stage  # noqa: E402
from dsb.metrics import DatasetScore, image_score  # noqa: E402
from dsb.rundir import RunDir  # noqa: E402
from dsb.shift import matched_estimate, median_areas  # noqa: E402
from dsb.models.checkpoint import load_model  # noqa: E402
from heldout import held_out_folds  # noqa: E402  (benchmarks/research/heldout.py)


def main() -> int:
    p = parser(__doc__, "tta_gain")
    p.add_argument("source", help="a run folder, or a shipped set (name under weights/ or folder)")
    p.add_argument("--folds", default="0", help="comma-separated folds, or 'all'")
    p.add_argument("--tta", nargs="+", default=["none", "flips", "d4"])
    p.add_argument("--rescale-area", nargs="+", type=float, default=[0.0],
                   help="infer.rescale_area_px values to compare (0: off)")
    p.add_argument("--rescale-max", type=float, default=None, help="infer.rescale_max (default: the run's)")
    p.add_argument("--rescale-min", type=float, default=None, help="infer.rescale_min (default: the run's)")
    p.add_argument("--rescale-passes", nargs="+", type=int, default=[0],
                   help="infer.rescale_passes values to compare (0: the run's)")
    p.add_argument("--measure-tta", nargs="+", default=[""], choices=["", "none", "same"],
                   help="infer.rescale_measure_tta values to compare: TTA of the passes that only measure "
                        "the nuclei's size (default: the run's)")
    p.add_argument("--amp", nargs="+", default=[""], choices=["", "auto", "off", "bf16"],
                   help="infer.amp values to compare (default: the run's)")
    p.add_argument("--mode", nargs="+", default=[""], type=parse_mode,
                   help="model modes to compare: accurate, or fast:D for head D alone (default: the run's)")
    p.add_argument("--limit", type=int, default=None, help="first N held-out images (by id) of each fold")
    p.add_argument("--data", type=Path, default=None,
                   help="shipped set only: folder holding the training zip and labels CSV it was trained on")
    p.add_argument("--match", type=Path, default=None,
                   help="images (folder or zip) to estimate for: each setting's held-out scores weighted to their mix")
    p.add_argument("--match-predictions", type=Path, default=None,
                   help="a submission CSV for the --match images, to read their nucleus sizes from "
                        "(default: predicted by the first fold model without TTA)")
    args = p.parse_args()
    if args.match_predictions is not None and args.match is None:
        p.error("--match-predictions needs --match")
    try:
        match_stage, sizes = open_match(args.match, args.match_predictions) if args.match is not None else (None, None)
    except DsbError as err:
        p.exit(2, f"error: {err}\n")

    cfg, stage, entries = held_out_folds(args.source, args.folds, args.data)
    settings = list(itertools.product(args.tta, args.rescale_area, args.rescale_passes, args.measure_tta, args.amp,
                                      args.mode))
    names = [f"{tta}" + (f" rescale {area:g}" if area else "") + (f" x{passes}" if area and passes else "")
             + (f" measure {measure}" if area and measure else "") + (f" amp {amp}" if amp else "")
             + (f" {mode}" if mode else "")
             for tta, area, passes, measure, amp, mode in settings]
    scores: dict[str, list] = {n: [] for n in names}
    seconds = {n: 0.0 for n in names}
    upscaled = {n: 0 for n in names}
    areas: dict[str, dict[str, float]] = {n: {} for n in names}
    types: dict[str, str] = {}
    epochs = {}

    fold_list = [entry.fold for entry in entries]
    for entry in entries:
        fold = entry.fold
        model, _, meta = load_model(entry.checkpoint)
        epochs[fold] = meta.get("epoch") if entry.epoch is None else entry.epoch
        ids = entry.image_ids[: args.limit] if args.limit else entry.image_ids
        truth = {i: stage.read_label_map(i) for i in ids}
        types.update(entry.types(stage, ids))
        with tempfile.TemporaryDirectory() as tmp:
            for name, (tta, area, passes, measure, amp, mode) in zip(names, settings):
                if mode:
                    kind, _, depth = mode.partition(":")
                    model.set_mode(kind, int(depth) if depth else None)
                infer = dataclasses.replace(cfg.infer, rescale_area_px=area, amp=amp or cfg.infer.amp,
                                            rescale_measure_tta=measure or cfg.infer.rescale_measure_tta,
                                            rescale_max=args.rescale_max or cfg.infer.rescale_max,
                                            rescale_min=args.rescale_min or cfg.infer.rescale_min,
                                            rescale_passes=passes or cfg.infer.rescale_passes)
                run_cfg = dataclasses.replace(cfg, infer=infer)
                summary = predict_stage([model], run_cfg, stage, Path(tmp) / "sub.csv", tta=tta, image_ids=ids,
                                        keep_label_maps=True)
                fold_scores = [image_score(truth[i], summary.label_maps[i], image_id=i) for i in ids]
                if match_stage is not None:
                    areas[name].update({i: median_areas(summary.label_maps[i]) for i in ids})
                scores[name].extend(fold_scores)
                seconds[name] += summary.wall_seconds
                upscaled[name] += sum(1 for s in summary.scales.values() if s != 1.0)
                print(f"fold {fold} {name:>18}: mAP {DatasetScore.from_images(fold_scores).map:.4f}  "
                      f"{summary.wall_seconds / len(ids):.2f} s/img", flush=True)

    n_images = len(scores[names[0]])
    type_names = sorted(set(types.values()))
    group_of = experiment_groups(args.source)
    fold_of = {i: entry.fold for entry in entries for i in entry.image_ids}
    matched = {}
    if match_stage is not None:
        target, reference = match_target(stage, cfg, match_stage, sizes, entries[0].checkpoint)
        for name in names:
            per_image = pd.DataFrame([{"image_id": s.image_id, "image_type": types[s.image_id],
                                       "fold": fold_of[s.image_id], "score": s.score,
                                       "group": group_of.get(s.image_id, s.image_id)} for s in scores[name]])
            source = held_out_profile(per_image, areas[name], fold_of, reference)
            matched[name] = matched_estimate(source, target, novelty_threshold=cfg.folds.group_threshold)
    rows = []
    for name in names:
        overall = DatasetScore.from_images(scores[name])
        per_type = {t: DatasetScore.from_images(s for s in scores[name] if types[s.image_id] == t).map for t in type_names}
        interval = bootstrap_interval([s.score for s in scores[name]],
                                      [group_of.get(s.image_id, s.image_id) for s in scores[name]])
        rows.append({"setting": name, "map": overall.map, "interval_95": interval, "per_type": per_type,
                     "s_per_image": seconds[name] / n_images, "rescaled_images": upscaled[name]})
        if name in matched:
            m = matched[name]
            rows[-1]["matched"] = {"map": m.map, "interval_95": list(m.interval), "effective_n": m.effective_n,
                                   "images": str(args.match), "n_target": m.n_target}
    base = rows[0]
    print(f"\nfolds {fold_list} of {args.source} (best epochs {epochs}), {n_images} held-out images;"
          f" baseline: {base['setting']}")
    print(f"{'setting':>22} {'mAP':>7} {'95% interval':>15} {'gain':>7} {'s/img':>6} {'x time':>7} {'rescaled':>8}  "
          + "  ".join(f"{t:>13}" for t in type_names) + ("  matched  gain" if matched else ""))
    for r in rows:
        lo, hi = r["interval_95"]
        print(f"{r['setting']:>22} {r['map']:7.4f} {lo:7.4f}-{hi:.4f} {r['map'] - base['map']:+7.4f} {r['s_per_image']:6.2f} "
              f"{r['s_per_image'] / base['s_per_image']:7.2f} {r['rescaled_images']:8d}  "
              + "  ".join(f"{r['per_type'][t]:13.4f}" for t in type_names)
              + (f"  {r['matched']['map']:7.4f} {r['matched']['map'] - base['matched']['map']:+7.4f}" if matched else ""))
    if matched:
        m = matched[names[0]]
        print(f"matched: the held-out images weighted to the mix of {args.match} ({m.n_target} images; "
              f"effective n {m.effective_n:.0f} of {len(m.source)} for the baseline)")
    return finish({"benchmark": "tta_gain", "run": str(args.source), "folds": fold_list, "n_images": n_images,
                   "baseline": base["setting"], "rows": rows}, args.out)


def match_target(stage, cfg, match_stage, predictions, checkpoint):
    """``(target profile, novelty reference)`` for ``--match``: the training images of
    ``stage`` as the reference, the ``--match`` images profiled against them."""
    samples = []
    for image_id in stage.labelled_ids:
        raw = stage.read_image_uint8(image_id)
        samples.append(argparse.Namespace(image_id=image_id, image_type=classify_image(raw.astype("float32") / 255.0),
                                          image=prepare_image(raw, cfg.augment.invert_brightfield)))
    reference = NoveltyReference(samples)
    target = target_profile(match_stage, cfg, reference, predictions=predictions, checkpoint=checkpoint)
    return target, reference


def parse_mode(text: str) -> str:
    """``accurate`` or ``fast:D`` (D a head depth), checked by the model when it is set."""
    kind, _, depth = text.partition(":")
    if kind == "accurate" and not depth or kind == "fast" and depth.isdigit():
        return text
    raise argparse.ArgumentTypeError(f"{text!r}: expected 'accurate' or 'fast:D' (D a head depth, e.g. fast:3)")


def experiment_groups(source: str) -> dict[str, str]:
    """``{image_id: group}`` from a run folder's grouped ``folds.csv`` (empty otherwise: the
    interval then resamples images)."""
    folds = RunDir(source).folds
    if not folds.is_file():
        return {}
    frame = pd.read_csv(folds, dtype=str)
    return dict(zip(frame["image_id"], frame["group"])) if "group" in frame.columns else {}


if __name__ == "__main__":
    raise SystemExit(main())
