"""How one submission's nuclei differ from another's, on images without labels.

Where labels are held out (the stage-1 test set is the project's leaderboard), two models
can still be compared with each other: submission A is scored against submission B taken as
the reference, with the metric and the error kinds of ``dsb evaluate``
(:func:`dsb.evaluate.error_kinds`). The figure that matters most is ``area_ratio``: the
median of A's area over B's, over the nuclei both found (IoU > 0.5). When B's own ratio to
the hidden annotations is known (the leaderboard told the project its old set's nuclei were
0.81 of the annotated area), A's is about that times this ratio.

Usage::

    python benchmarks/research/compare_submissions.py A.csv B.csv --images ../shared/dsb2018/stage1_test.zip [--grow-a PX]

``--grow-a`` grows A's nuclei first; with A = B it tells what a growth does to the area of
these images' nuclei (more, the smaller they are).

Writes benchmarks/results/compare_submissions.json.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for _common

from _common import finish, parser  # noqa: E402  (also puts the repository on sys.path)

from dsb.data.imagetypes import classify_image  # noqa: E402
from dsb.data.kaggle import open_stage  # noqa: E402
from dsb.errors import DsbError  # noqa: E402
from dsb.evaluate import error_kinds  # noqa: E402
from dsb.metrics import DatasetScore, image_score  # noqa: E402
from dsb.postprocess import grow_labels  # noqa: E402
from dsb.rle import rle_to_pairs, runs_to_label_map  # noqa: E402
from dsb.submission import read_submission  # noqa: E402


def label_maps(path: Path, shapes: dict[str, tuple[int, int]]) -> dict:
    """``{image_id: label map}`` of a submission, for every image of ``shapes``."""
    frame = read_submission(path)
    unknown = sorted(set(frame["ImageId"]) - set(shapes))
    if unknown:
        sys.exit(f"{path}: {len(unknown)} image ids not among the images, e.g. {unknown[0]}")
    runs = defaultdict(list)
    for line, image_id, rle in zip(frame.index, frame["ImageId"], frame["EncodedPixels"]):
        if rle:
            try:
                runs[image_id].append(rle_to_pairs(rle))
            except ValueError as err:
                sys.exit(f"{path}: line {line} (image {image_id}): {err}")
    maps = {}
    for image_id, shape in shapes.items():
        try:
            maps[image_id] = runs_to_label_map(runs[image_id], shape)[0]
        except DsbError as err:
            sys.exit(f"{path}: image {image_id} ({shape[0]} x {shape[1]}): {err}")
    return maps


def main() -> int:
    p = parser(__doc__, "compare_submissions")
    p.add_argument("a", type=Path, help="the submission to describe")
    p.add_argument("b", type=Path, help="the submission taken as the reference")
    p.add_argument("--images", type=Path, required=True, help="the images both predict (stage folder or zip)")
    p.add_argument("--grow-a", type=float, default=0.0,
                   help="grow A's nuclei by this many pixels first (postprocess.expand_px; A = B shows what a growth does)")
    args = p.parse_args()

    try:
        stage = open_stage(args.images, labels=None)
        shapes, types = {}, {}
        for image_id in stage.image_ids:
            image = stage.read_image_uint8(image_id)
            shapes[image_id], types[image_id] = image.shape[:2], classify_image(image)
        maps_a, maps_b = label_maps(args.a, shapes), label_maps(args.b, shapes)
        maps_a = {i: grow_labels(m, args.grow_a) for i, m in maps_a.items()}
    except DsbError as err:
        sys.exit(str(err))

    result = {"benchmark": "compare_submissions", "a": str(args.a), "b": str(args.b), "grow_a": args.grow_a,
              "n_images": len(shapes)}
    grown = f" grown {args.grow_a:g} px" if args.grow_a else ""
    print(f"{args.a}{grown} against {args.b} as the reference, {len(shapes)} images")
    print(f"{'image type':>14} {'images':>6} {'mAP':>6} {'area A/B':>8} {'A':>6} {'B':>6} {'B missed':>8} "
          f"{'merged':>6} {'split':>5} {'A only':>6}")
    for kind in [*sorted(set(types.values())), "all"]:
        ids = [i for i in shapes if kind in ("all", types[i])]
        items = [SimpleNamespace(image_id=i, truth=maps_b[i]) for i in ids]
        kinds = error_kinds(items, maps_a)
        score = DatasetScore.from_images(image_score(maps_b[i], maps_a[i], image_id=i) for i in ids).map
        result[kind] = {"images": len(ids), "map_a_vs_b": score, **kinds}
        print(f"{kind:>14} {len(ids):6d} {score:6.3f} {kinds['area_ratio']:8.3f} {kinds['n_pred']:6d} "
              f"{kinds['n_true']:6d} {kinds['missed']:8d} {kinds['merged']:6d} {kinds['split']:5d} "
              f"{kinds['spurious']:6d}")
    return finish(result, args.out)


if __name__ == "__main__":
    sys.exit(main())
