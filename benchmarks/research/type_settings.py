"""Each image type's own postprocessing for a shipped set, searched on the out-of-fold maps of
a run of the same recipe, and kept only where it scores better on held-out experiment groups.

A shipped set trained on every image has no out-of-fold maps of its own, so ``dsb tune`` cannot
search its per-type settings. This script starts from the set's common postprocessing and runs
the search of ``dsb tune`` (:func:`dsb.evaluate.tune_by_type`) on RUN's out-of-fold maps: a
type's experiment groups are split in three, each third scored with settings tuned on the other
two, against the set's common settings on the same images. It prints, per type, the held-out
mAP with the common and with its own settings, the settings kept, and the ``dsb export`` line
that writes them into the set.

Usage::

    python benchmarks/research/type_settings.py SET RUN [--rounds 2]

Writes benchmarks/results/type_settings.json.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for _common

from _common import finish, parser  # noqa: E402  (also puts the repository on sys.path)

from dsb.errors import DsbError  # noqa: E402
from dsb.evaluate import load_oof, tune_by_type  # noqa: E402
from dsb.infer.pipeline import load_ensemble  # noqa: E402
from dsb.rundir import load_run_config  # noqa: E402


def main() -> int:
    p = parser(__doc__, "type_settings")
    p.add_argument("set", help="a shipped set (name under weights/ or folder): its common postprocessing")
    p.add_argument("run", type=Path, help="a run folder of the same recipe with out-of-fold maps (fold*/oof)")
    p.add_argument("--rounds", type=int, default=2, help="coordinate-search rounds (as dsb tune)")
    args = p.parse_args()
    try:
        set_cfg = load_ensemble([args.set], device="cpu").cfg
        cfg = load_run_config(args.run)
        items = load_oof(args.run, cfg)
    except DsbError as err:
        p.exit(2, f"error: {err}\n")
    if list(cfg.targets.channels) != list(set_cfg.targets.channels):
        p.exit(2, f"error: {args.run} predicts {cfg.targets.channels}, {args.set} {set_cfg.targets.channels}\n")
    common = set_cfg.postprocess.for_type(None)
    typed, report = tune_by_type(items, cfg.targets.channels, common, rounds=args.rounds)
    rows = []
    print(f"{len(items)} out-of-fold images of {args.run}; common postprocessing of {args.set}")
    print(f"{'type':>13} {'images':>6} {'groups':>6} {'held out, common':>17} {'held out, own':>14}  kept")
    for t in report:
        common_map = "" if t.held_out_common is None else f"{t.held_out_common:.4f}"
        own_map = "" if t.held_out_own is None else f"{t.held_out_own:.4f}"
        print(f"{t.image_type:>13} {t.n_images:6d} {t.n_groups:6d} {common_map:>17} {own_map:>14}  "
              f"{t.changes or 'common'}")
        rows.append({"image_type": t.image_type, "n_images": t.n_images, "n_groups": t.n_groups,
                     "held_out_common": t.held_out_common, "held_out_own": t.held_out_own, "kept": t.changes})
    sets = [f"--set postprocess.by_type.{t.image_type}.{k}={v}" for t in report for k, v in t.changes.items()]
    if sets:
        print(f"\nto write them into the set: dsb export {args.set} NAME " + " ".join(sets))
    return finish({"benchmark": "type_settings", "set": str(args.set), "run": str(args.run), "n_images": len(items),
                   "common": common.to_dict(), "rows": rows, "by_type": typed.by_type.changes()}, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
