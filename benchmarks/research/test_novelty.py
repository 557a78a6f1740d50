"""How many test images come from experiments the training set already has.

The grouped out-of-fold score estimates how a model does on *new* experiments; a random-fold
score, how it does on new images of experiments it trained on. Which of the two a test set
calls for depends on how many of its images belong to training experiments. This script
groups the training and test images together with the rule that makes the grouped folds
(:mod:`dsb.data.groups`: same image type and size, then clustering of colour, intensity and
spectrum features at the same threshold) and counts, per image type, the test images whose
group holds a training image ("known experiment") and those in groups of test images only
("new experiment").

It reads only images, never test labels. Usage::

    python benchmarks/research/test_novelty.py [--data ../shared/dsb2018] [--threshold 3.0]

``--data`` is a folder holding ``stage1_train.zip`` and ``stage1_test.zip`` (or their
unpacked folders). Writes benchmarks/results/test_novelty.json.
"""

from __future__ import annotations

import sys
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for _common

from _common import REPO, finish, parser  # noqa: E402  (also puts the repository on sys.path)

from dsb.data.dataset import prepare_image  # noqa: E402
from dsb.data.groups import DEFAULT_THRESHOLD, assign_groups  # noqa: E402
from dsb.data.imagetypes import classify_image  # noqa: E402
from dsb.data.kaggle import open_stage  # noqa: E402


def _stage_path(data: Path, name: str) -> Path:
    for candidate in (data / f"{name}.zip", data / name):
        if candidate.exists():
            return candidate
    sys.exit(f"{data}: neither {name}.zip nor {name}/ is there (--data names the folder holding both stages)")


def main() -> int:
    p = parser(__doc__, "test_novelty")
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "dsb2018",
                   help="folder holding stage1_train(.zip) and stage1_test(.zip) (default: %(default)s)")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD, help="grouping threshold (as folds.group_threshold)")
    args = p.parse_args()

    ids, images, kinds, split = [], [], [], {}
    for name in ("stage1_train", "stage1_test"):
        stage = open_stage(_stage_path(args.data, name), labels=None)
        for image_id in stage.image_ids:
            image = stage.read_image_uint8(image_id)
            kinds.append(classify_image(image))
            images.append(prepare_image(image, True))
            ids.append(image_id)
            split[image_id] = name
    groups = assign_groups(ids, images, kinds, args.threshold)
    kind_of = dict(zip(ids, kinds))

    members: dict[str, Counter] = defaultdict(Counter)
    for image_id, group in groups.items():
        members[group][split[image_id]] += 1
    test_ids = [i for i in ids if split[i] == "stage1_test"]
    known = {i: members[groups[i]]["stage1_train"] > 0 for i in test_ids}

    per_type = {}
    for kind in sorted({kind_of[i] for i in test_ids}):
        of_kind = [i for i in test_ids if kind_of[i] == kind]
        per_type[kind] = {"test_images": len(of_kind), "known_experiment": sum(known[i] for i in of_kind)}
    new_groups = sorted({groups[i] for i in test_ids if not known[i]})
    known_groups = sorted({groups[i] for i in test_ids if known[i]})

    print(f"{len(test_ids)} test images, {len(ids) - len(test_ids)} training images, threshold {args.threshold:g}")
    print(f"{'image type':>14} {'test':>5} {'known experiment':>17} {'new experiment':>15}")
    for kind, row in per_type.items():
        print(f"{kind:>14} {row['test_images']:5d} {row['known_experiment']:17d} "
              f"{row['test_images'] - row['known_experiment']:15d}")
    total_known = sum(known.values())
    print(f"{'all':>14} {len(test_ids):5d} {total_known:17d} {len(test_ids) - total_known:15d}")
    print(f"test images in {len(known_groups)} groups with training images, {len(new_groups)} groups of test images only:")
    for group in new_groups:
        print(f"  {group}: {members[group]['stage1_test']} test images")
    return finish({
        "benchmark": "test_novelty", "threshold": args.threshold, "n_test": len(test_ids),
        "n_train": len(ids) - len(test_ids), "known_experiment": total_known, "per_type": per_type,
        "new_groups": {g: members[g]["stage1_test"] for g in new_groups},
        "known_groups": {g: dict(members[g]) for g in known_groups},
        "test_images": {i: {"group": groups[i], "image_type": kind_of[i], "known_experiment": known[i]} for i in test_ids},
    }, args.out)


if __name__ == "__main__":
    sys.exit(main())
