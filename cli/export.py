"""`dsb export`: ship a run as a named fp16 checkpoint set with its manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cli.common import console, dsb_command
from dsb.data.folds import parse_folds
from dsb.rundir import WEIGHTS_DIR

# The library's torch-based modules are imported inside the command: `dsb --help` and the
# light commands start in a fraction of a second instead of the seconds torch takes.


def register(app: typer.Typer) -> None:
    @app.command("export")
    @dsb_command
    def export_cmd(
        run_dir: Annotated[Path, typer.Argument(
            help="A training run folder (fold*/best.pt), or a shipped set (a folder or a name under weights/) to "
                 "ship again with other --set settings.")],
        name: Annotated[str, typer.Argument(help="Name of the checkpoint set (dsb predict --checkpoint NAME).")],
        weights_dir: Annotated[Path, typer.Option("--weights-dir", help="Where shipped sets live.")] = WEIGHTS_DIR,
        folds: Annotated[Optional[str], typer.Option(help="Ship only these folds' models, like 2 or 0,1 (default: all).")] = None,
        full: Annotated[bool, typer.Option("--full", help="Ship the model trained on every image (dsb train --full).")] = False,
        set_: Annotated[Optional[list[str]], typer.Option(
            "--set", help="How the set predicts: infer.key=value, postprocess.key=value, model.mode=fast (the deepest "
                          "head alone; model.fast_depth picks another) (e.g. infer.rescale_area_px=700).")] = None,
        weights_from: Annotated[Optional[Path], typer.Option(
            "--weights-from", help="With a shipped set: ship the models of this run instead, one that learned from "
                                   "the set (train.distill_from) or started from it (train.init_from), keeping the "
                                   "set's postprocessing; full/best.pt for the set's full.pt.")] = None,
    ) -> None:
        """Ship a run as a named fp16 checkpoint set with a manifest (config, command, data checksum, OOF score).

        The out-of-fold mAP over all the run's folds and each shipped fold's own held-out
        mAP (with the tuned postprocessing) are scored here and recorded in manifest.json.
        From a shipped set, its weights are copied as they are with the --set settings
        written in (the manifest keeps its estimates and records the change), or with
        --weights-from RUN a student's weights (a run that learned from the set); NAME may be
        the set's own name.
        """
        from dsb.errors import DsbError
        from dsb.export import export_set, is_shipped_set, ship_run

        source = run_dir if run_dir.exists() else weights_dir / str(run_dir)
        if is_shipped_set(source):
            if folds is not None or full:
                raise DsbError(f"{source}: a shipped set is shipped again whole; --folds and --full are for run folders")
            out = export_set(source, name, weights_dir, set_ or (), student_run=weights_from)
            changed = ", ".join([*(set_ or ()), *([f"the weights of {weights_from}"] if weights_from else [])])
            console.print(f"exported {source} with {changed} -> [bold]{out}[/] "
                          "(the manifest's estimates were measured before these changes)", soft_wrap=True)
            return
        if weights_from is not None:
            raise DsbError(f"--weights-from: {source} is not a shipped set (it gives a set another run's weights)")

        out, report = ship_run(run_dir, name, weights_dir, folds=parse_folds(folds), full=full, overrides=set_ or (),
                               on_scoring=lambda: console.print("scoring the out-of-fold predictions ..."))
        console.print(f"exported {run_dir} -> [bold]{out}[/]", soft_wrap=True)
        if report is not None:
            held_out = {int(r.fold): float(r.map) for r in report.per_fold.itertuples()}
            console.print(f"out-of-fold mAP {report.score.map:.4f}{' (the estimate for the full-data model)' if full else ''}; "
                          "held out per fold: " + ", ".join(f"{k}: {v:.4f}" for k, v in sorted(held_out.items())))
