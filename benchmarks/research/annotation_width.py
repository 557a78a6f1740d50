"""What growing the predicted nuclei does, if the annotations are drawn wider than the labels.

The leaderboard told the project that the nuclei its old set found on the stage-1 test
images were a median 0.81 of the annotated area, while on held-out training images the
same models draw them at 0.99-1.02 of the training labels: the test annotations look wider.
This script measures, on a run's or shipped set's held-out images, the mAP and the matched
area ratio (:func:`dsb.evaluate.error_kinds`) when the *true* nuclei are grown by
``--truth-grow`` pixels (a model of annotations drawn wider) and the predicted ones by
``--grow`` pixels (``postprocess.expand_px``), each grown into the background only
(:func:`dsb.postprocess.grow_labels`). The row whose ungrown ratio matches the leaderboard's
says how much wider the annotations are, and its best ``--grow`` what to ship.

``--by-group`` also says, per image type, in how many experiment groups (those a run's
grouped ``folds.csv`` records; otherwise the folds' rule, :func:`dsb.data.groups.stage_groups`,
over the whole training stage) each growth beats not growing the predictions: a gain that
one large group carries is not one to ship.

The fold models predict their held-out images once (no TTA, the source's rescaling and
postprocessing, no instance filter); the growths are applied to those label maps. Usage::

    python benchmarks/research/annotation_width.py SOURCE [--folds 0] [--truth-grow 0 1 2]
        [--grow 0 1 1.5 2 3] [--data DIR] [--by-group]

Writes benchmarks/results/annotation_width.json.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for _common

from _common import finish, parser  # noqa: E402  (also puts the repository on sys.path)

from dsb.data.groups import stage_groups  # noqa: E402
from dsb.evaluate import error_kinds  # noqa: E402
from dsb.infer.pipeline import predict_stage  # noqa: E402
from dsb.metrics import DatasetScore, image_score  # noqa: E402
from dsb.models.checkpoint import load_model  # noqa: E402
from dsb.postprocess import grow_labels  # noqa: E402
from heldout import held_out_folds  # noqa: E402  (benchmarks/research/heldout.py)


def main() -> int:
    p = parser(__doc__, "annotation_width")
    p.add_argument("source", help="a run folder, or a shipped set with held-out folds (name under weights/ or folder)")
    p.add_argument("--folds", default="0", help="comma-separated folds, or 'all'")
    p.add_argument("--truth-grow", nargs="+", type=float, default=[0.0, 1.0, 2.0], help="pixels the true nuclei grow")
    p.add_argument("--grow", nargs="+", type=float, default=[0.0, 1.0, 1.5, 2.0, 3.0], help="pixels the predictions grow")
    p.add_argument("--data", type=Path, default=None,
                   help="shipped set only: folder holding the training zip and labels CSV it was trained on")
    p.add_argument("--by-group", action="store_true",
                   help="per image type: how many experiment groups each growth improves (groups the training stage)")
    args = p.parse_args()

    cfg, stage, entries = held_out_folds(args.source, args.folds, args.data)
    preds, truth, types = {}, {}, {}
    for entry in entries:
        model, _, _ = load_model(entry.checkpoint)
        with tempfile.TemporaryDirectory() as tmp:
            summary = predict_stage([model], cfg, stage, Path(tmp) / "sub.csv", tta="none",
                                    image_ids=entry.image_ids, keep_label_maps=True)
        preds.update(summary.label_maps)
        truth.update({i: stage.read_label_map(i) for i in entry.image_ids})
        types.update(entry.types(stage, entry.image_ids))
    ids = sorted(preds)
    kinds = sorted(set(types.values()))

    group_of = {}
    if args.by_group:
        recorded = [e.groups for e in entries]
        if all(g is not None for g in recorded):  # a run on grouped folds: its folds.csv says
            group_of = {i: g for groups in recorded for i, g in groups.items()}
        else:  # random folds or a shipped set: the folds' rule over the whole stage (~30 s)
            group_of = {i: g["group"] for i, g in stage_groups(stage).items()}
    rows = []
    print(f"{len(ids)} held-out images of {args.source} (folds {[e.fold for e in entries]}); mAP (matched area ratio)")
    print(f"{'truth grown':>11}  " + "  ".join(f"{'pred +' + format(g, 'g') + ' px':>16}" for g in args.grow))
    group_lines = []
    for t_grow in args.truth_grow:
        grown_truth = {i: grow_labels(truth[i], t_grow) for i in ids}
        cells = []
        # the baseline of --by-group: predictions as drawn, whatever --grow lists
        ungrown = {i: image_score(grown_truth[i], preds[i], image_id=i).score for i in ids} if group_of else {}
        for grow in args.grow:
            grown = {i: grow_labels(preds[i], grow) for i in ids}
            scores = [image_score(grown_truth[i], grown[i], image_id=i) for i in ids]
            ratio = error_kinds([SimpleNamespace(image_id=i, truth=grown_truth[i]) for i in ids], grown)["area_ratio"]
            per_type = {k: DatasetScore.from_images(s for s in scores if types[s.image_id] == k).map for k in kinds}
            row = {"truth_grow": t_grow, "grow": grow, "map": DatasetScore.from_images(scores).map,
                   "area_ratio": ratio, "per_type": per_type}
            if group_of:
                row["groups_improved"] = groups_improved(scores, ungrown, group_of, types)
                group_lines.append((t_grow, grow, row["groups_improved"]))
            rows.append(row)
            cells.append(f"{row['map']:.4f} ({ratio:.2f})")
        print(f"{'+' + format(t_grow, 'g') + ' px':>11}  " + "  ".join(f"{c:>16}" for c in cells))
    if group_lines:
        print("experiment groups improved over not growing the predictions (of groups of that type; median group change)")
        for t_grow, grow, by_type in group_lines:
            cells = [f"{k} {v['improved']}/{v['groups']} ({v['median_change']:+.3f})" for k, v in by_type.items()]
            print(f"  truth +{t_grow:g} px, pred +{grow:g} px: " + ", ".join(cells))
    return finish({"benchmark": "annotation_width", "source": str(args.source), "n_images": len(ids), "rows": rows},
                  args.out)


def groups_improved(scores, ungrown: dict[str, float], group_of: dict[str, str], types: dict[str, str]) -> dict:
    """Per image type: groups whose mean image score rose over ``ungrown``, and the median change."""
    changes: dict[str, dict[str, list[float]]] = {}
    for sc in scores:
        key = sc.image_id
        changes.setdefault(types[key], {}).setdefault(group_of[key], []).append(sc.score - ungrown[key])
    out = {}
    for kind in sorted(changes):
        means = [sum(v) / len(v) for v in changes[kind].values()]
        out[kind] = {"groups": len(means), "improved": sum(m > 1e-9 for m in means),
                     "median_change": float(statistics.median(means))}
    return out


if __name__ == "__main__":
    sys.exit(main())
