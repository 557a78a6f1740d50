"""Average the weights of runs that fine-tuned the same start (a "model soup") into a new run
folder, to be measured like any run (``tta_gain.py OUT``, ``dsb evaluate``).

Each model of OUT (``fold<k>/best.pt``, ``full/best.pt``) is the element-wise mean of the same
model's weights in every RUN; batch-norm statistics are averaged too. Only models that
started from the same weights average into a working model, so the runs must have the same
folds, and every model of the first run must be in each of the others with the same
architecture. OUT gets the first run's config, folds, tuned postprocessing and instance
filter. A soup costs nothing at prediction (one model's size and time), unlike an ensemble of
the same models.

Usage::

    python benchmarks/research/weight_average.py OUT RUN RUN [RUN ...]

Prints, per model, how far each run's weights are from their mean (relative L2 distance).
Writes benchmarks/results/weight_average.json.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for _common

from _common import finish, parser  # noqa: E402  (also puts the repository on sys.path)

import torch  # noqa: E402

from dsb.data.folds import load_folds  # noqa: E402
from dsb.errors import DsbError  # noqa: E402
from dsb.models.checkpoint import load_checkpoint, load_model, save_checkpoint  # noqa: E402
from dsb.rundir import RunDir  # noqa: E402


def trained_models(run: RunDir) -> list[Optional[int]]:
    """The run's models with a ``best.pt``: fold numbers, then None for ``full/``."""
    return sorted(run.trained_folds()) + ([None] if run.best(None).is_file() else [])


def check_runs(runs: list[RunDir]) -> list[Optional[int]]:
    """The models to average; raises DsbError naming the run that cannot join the others."""
    for run in runs:
        if not run.config.is_file() or not run.folds.is_file():
            raise DsbError(f"{run}: not a run folder (it needs {RunDir.CONFIG} and {RunDir.FOLDS})")
    models = trained_models(runs[0])
    if not models:
        raise DsbError(f"{runs[0]}: no trained model (fold*/{RunDir.BEST} or {RunDir.FULL}/{RunDir.BEST})")
    first = load_folds(runs[0].folds).sort_values("image_id")[["image_id", "fold"]].reset_index(drop=True)
    for run in runs[1:]:
        other = load_folds(run.folds).sort_values("image_id")[["image_id", "fold"]].reset_index(drop=True)
        if not first.equals(other):
            raise DsbError(f"{run}: its folds ({run.folds}) differ from {runs[0].folds}; "
                           "only models of the same folds average into held-out models")
        missing = [run.best(k) for k in models if not run.best(k).is_file()]
        if missing:
            raise DsbError(f"{run}: no {', '.join(map(str, missing))} (the first run has them)")
    return models


def average(paths: list[Path]) -> tuple[torch.nn.Module, object, dict, list[float]]:
    """``(model, config, extra, distances)``: the first checkpoint's model with every
    floating-point tensor replaced by the mean over ``paths``, and each checkpoint's relative
    L2 distance from that mean. Raises DsbError when the architectures differ."""
    model, cfg, _ = load_model(paths[0])
    extra = load_checkpoint(paths[0])["extra"]  # as saved (load_model's meta adds its own keys)
    states = [model.state_dict()] + [load_model(p)[0].state_dict() for p in paths[1:]]
    keys = states[0].keys()
    for path, state in zip(paths[1:], states[1:]):
        if state.keys() != keys or any(state[k].shape != states[0][k].shape for k in keys):
            raise DsbError(f"{path}: a different architecture from {paths[0]} (its weights' names or shapes differ)")
    mean = {k: (torch.stack([s[k].double() for s in states]).mean(0).to(states[0][k].dtype)
                if states[0][k].is_floating_point() else states[0][k]) for k in keys}
    floats = [k for k in keys if states[0][k].is_floating_point()]
    norm = torch.sqrt(sum((mean[k].double() ** 2).sum() for k in floats))
    distances = [float(torch.sqrt(sum(((s[k].double() - mean[k].double()) ** 2).sum() for k in floats)) / norm)
                 for s in states]
    model.load_state_dict(mean)
    return model, cfg, extra, distances


def main() -> int:
    p = parser(__doc__, "weight_average")
    p.add_argument("folder", metavar="OUT", type=Path, help="the new run folder (must not exist)")
    p.add_argument("runs", type=Path, nargs="+", help="two or more run folders that fine-tuned the same start")
    args = p.parse_args()
    if len(args.runs) < 2:
        p.exit(2, "error: give at least two runs to average\n")
    if args.folder.exists():
        p.exit(2, f"error: {args.folder} exists; name a new folder\n")
    runs = [RunDir(r) for r in args.runs]
    try:
        averaged = {k: average([r.best(k) for r in runs]) for k in check_runs(runs)}
    except DsbError as err:
        p.exit(2, f"error: {err}\n")
    out = RunDir(args.folder)
    partial = RunDir(args.folder.with_name(args.folder.name + ".partial"))  # renamed when whole
    shutil.rmtree(partial.path, ignore_errors=True)
    partial.path.mkdir(parents=True)
    for name in (RunDir.CONFIG, RunDir.FOLDS, RunDir.TUNED, runs[0].instance_filter.name):
        if (runs[0].path / name).is_file():
            shutil.copyfile(runs[0].path / name, partial.path / name)
    rows = []
    for k, (model, cfg, extra, distances) in averaged.items():
        name = partial.model_dir(k).name
        save_checkpoint(partial.best(k), model, cfg, **{**extra, "averaged_from": [str(r.best(k)) for r in runs]})
        print(f"{name}: the mean of {len(runs)} models; distance of each from it (relative L2): "
              + ", ".join(f"{d:.4f}" for d in distances))
        rows.append({"model": name, "distances": distances})
    partial.path.rename(out.path)
    print(f"wrote {out}")
    return finish({"benchmark": "weight_average", "out": str(out), "runs": [str(r) for r in runs], "rows": rows},
                  args.out)


if __name__ == "__main__":
    raise SystemExit(main())
