"""How well size-adaptive rescaling picks each image's scale, and what the rules that were
tried instead of it give, on real held-out images.

Every held-out image of the chosen folds (``benchmarks/research/heldout.py``: a run folder or a
shipped set) is predicted once at each scale of a grid (no TTA; probabilities resized back
to the image's grid, as :mod:`dsb.infer.rescale` does; kept as uint8 like the out-of-fold
maps, so ``fixed 1`` can differ from ``tta_gain.py``'s scale-1 figure in the fourth decimal)
and postprocessed with the source's settings. From those label maps, without predicting again, it scores:

* ``fixed S``: every image at scale S (``fixed 1`` is the baseline, no rescaling);
* ``oracle``: each image at its best scale of the grid (needs the truth: an upper bound
  for any rule that picks one scale of the grid per image);
* ``rule T``: the rule ``dsb predict`` uses, ``clip(sqrt(T / median area at scale 1),
  min, max)``, snapped to the nearest grid scale (the real pipeline uses the exact scale,
  so its figure differs a little; ``tta_gain.py --rescale-area`` measures that);
* ``rule T, iterated``: the rule applied again to the median area measured at the scale it
  chose (small nuclei, missed at scale 1, are found there);
* ``rule T, mean of 3``: the mean of the probabilities at the chosen scale and its two
  grid neighbours (a multi-scale ensemble around the chosen scale);
* ``confidence``: the grid scale whose body map is most decided (mean ``|p - 0.5|`` over
  pixels with ``p > 0.1``), a rule that needs no size estimate.

Usage::

    python benchmarks/research/scale_choice.py SOURCE [--folds 0] [--data DIR]
        [--scales 0.5 0.75 1 1.5 2] [--targets 400 600 800] [--min-scale 1] [--max-scale 2]
        [--limit N] [--cache DIR]

``--cache DIR`` keeps the per-scale probabilities (uint8 ``.npy``) for a rerun; files are
named by fold, image and scale only, so give each model (source) a folder of its own. Prints a
table; writes benchmarks/results/scale_choice.json.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for _common

from _common import finish, parser  # noqa: E402  (also puts the repository on sys.path)

from dsb.data.dataset import prepare_image  # noqa: E402
from dsb.infer.predict import Predictor  # noqa: E402
from dsb.infer.rescale import choose_scale, predict_at_scale  # noqa: E402
from dsb.metrics import DatasetScore, image_score  # noqa: E402
from dsb.models.checkpoint import load_model  # noqa: E402
from dsb.postprocess import labels_from_probs  # noqa: E402
from dsb.probmaps import dequantise_probs, quantise_probs  # noqa: E402
from heldout import held_out_folds  # noqa: E402  (benchmarks/research/heldout.py)


def nearest(scale: float, grid: list[float]) -> float:
    return min(grid, key=lambda s: abs(math.log(s) - math.log(scale)))


def main() -> int:
    p = parser(__doc__, "scale_choice")
    p.add_argument("source", help="a run folder, or a shipped set (name under weights/ or folder)")
    p.add_argument("--folds", default="0", help="comma-separated folds, or 'all'")
    p.add_argument("--data", type=Path, default=None,
                   help="shipped set only: folder holding the training zip and labels CSV it was trained on")
    p.add_argument("--scales", nargs="+", type=float, default=[0.5, 0.75, 1.0, 1.5, 2.0])
    p.add_argument("--targets", nargs="+", type=float, default=[400.0, 600.0, 800.0],
                   help="median nucleus areas (px) for the rule")
    p.add_argument("--min-scale", type=float, default=1.0, help="the rule's lower clip (infer.rescale_min)")
    p.add_argument("--max-scale", type=float, default=2.0, help="the rule's upper clip (infer.rescale_max)")
    p.add_argument("--limit", type=int, default=None, help="first N held-out images (by id) of each fold")
    p.add_argument("--cache", type=Path, default=None, help="keep the per-scale probabilities here (one folder per source: files are keyed by fold, image, scale)")
    args = p.parse_args()
    grid = sorted(set(args.scales) | {1.0})

    cfg, stage, entries = held_out_folds(args.source, args.folds, args.data)
    channels, post = cfg.targets.channels, cfg.postprocess
    tmp = None if args.cache else tempfile.TemporaryDirectory()
    cache = args.cache or Path(tmp.name)
    cache.mkdir(parents=True, exist_ok=True)

    stored_at: dict[tuple[str, float], Path] = {}
    labels: dict[tuple[str, float], np.ndarray] = {}
    scores: dict[tuple[str, float], object] = {}
    decided: dict[tuple[str, float], float] = {}
    truth: dict[str, np.ndarray] = {}
    types: dict[str, str] = {}
    ids_all: list[str] = []
    seconds = 0.0
    for entry in entries:
        model, _, _ = load_model(entry.checkpoint)
        predictor = Predictor([model], channels, dataclasses.replace(cfg.infer, tta="none"))
        ids = entry.image_ids[: args.limit] if args.limit else entry.image_ids
        types.update(entry.types(stage, ids))
        for n, image_id in enumerate(ids):
            image = prepare_image(stage.read_image_uint8(image_id), cfg.augment.invert_brightfield)
            image = image.astype(np.float32) / 255.0
            truth[image_id] = stage.read_label_map(image_id)
            for scale in grid:
                path = stored_at[image_id, scale] = cache / f"fold{entry.fold}_{image_id}_{scale:g}.npy"
                if path.is_file():
                    stored = np.load(path)
                else:
                    t0 = time.perf_counter()
                    stored = quantise_probs(predict_at_scale(predictor, image, scale))
                    seconds += time.perf_counter() - t0
                    np.save(path, stored)
                probs = dequantise_probs(stored)
                labels[image_id, scale] = labels_from_probs(probs, channels, post)
                scores[image_id, scale] = image_score(truth[image_id], labels[image_id, scale], image_id=image_id)
                body = probs[channels.index("body")]
                fg = body > 0.1
                decided[image_id, scale] = float(np.abs(body[fg] - 0.5).mean()) if fg.any() else 0.0
            print(f"fold {entry.fold}: {n + 1}/{len(ids)} images", end="\r", flush=True)
        ids_all.extend(ids)
        print()

    def rule(image_id: str, target: float, at: float = 1.0) -> float:
        return nearest(choose_scale(labels[image_id, at], target, args.min_scale, args.max_scale), grid)

    def mean_of_three(image_id: str, target: float):
        k = grid.index(rule(image_id, target))
        probs = np.mean([dequantise_probs(np.load(stored_at[image_id, s])) for s in grid[max(0, k - 1): k + 2]], axis=0)
        return image_score(truth[image_id], labels_from_probs(probs, channels, post), image_id=image_id)

    choices: dict[str, list] = {}
    for scale in grid:
        choices[f"fixed {scale:g}"] = [scores[i, scale] for i in ids_all]
    choices["oracle"] = [max((scores[i, s] for s in grid), key=lambda r: r.score) for i in ids_all]
    for target in args.targets:
        choices[f"rule {target:g}"] = [scores[i, rule(i, target)] for i in ids_all]
        choices[f"rule {target:g}, iterated"] = [scores[i, rule(i, target, at=rule(i, target))] for i in ids_all]
        choices[f"rule {target:g}, mean of 3"] = [mean_of_three(i, target) for i in ids_all]
    choices["confidence"] = [scores[i, max(grid, key=lambda s: decided[i, s])] for i in ids_all]

    type_names = sorted(set(types.values()))
    base = DatasetScore.from_images(choices["fixed 1"]).map
    rows = []
    for name, per_image in choices.items():
        per_type = {t: DatasetScore.from_images(s for s in per_image if types[s.image_id] == t).map for t in type_names}
        rows.append({"rule": name, "map": DatasetScore.from_images(per_image).map, "per_type": per_type})
    print(f"\nfolds {[e.fold for e in entries]} of {args.source}, {len(ids_all)} held-out images, scales {grid}, "
          f"rule clipped to [{args.min_scale:g}, {args.max_scale:g}]; baseline: fixed 1; "
          f"{seconds:.0f} s of prediction")
    print(f"{'rule':>22} {'mAP':>7} {'gain':>7}  " + "  ".join(f"{t:>13}" for t in type_names))
    for r in rows:
        print(f"{r['rule']:>22} {r['map']:7.4f} {r['map'] - base:+7.4f}  "
              + "  ".join(f"{r['per_type'][t]:13.4f}" for t in type_names))
    status = finish({"benchmark": "scale_choice", "source": str(args.source), "folds": [e.fold for e in entries],
                     "n_images": len(ids_all), "scales": grid, "min_scale": args.min_scale,
                     "max_scale": args.max_scale, "rows": rows}, args.out)
    if tmp is not None:
        tmp.cleanup()
    return status


if __name__ == "__main__":
    raise SystemExit(main())
