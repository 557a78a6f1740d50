"""`dsb tune`: postprocessing thresholds and the instance filter, chosen out of fold."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cli.common import console, dsb_command, progress_bar

# The library's torch-based modules are imported inside the command: `dsb --help` and the
# light commands start in a fraction of a second instead of the seconds torch takes.


def register(app: typer.Typer) -> None:
    @app.command("tune")
    @dsb_command
    def tune_cmd(
        run_dir: Annotated[Path, typer.Argument(help="A training run folder.")],
        rounds: Annotated[int, typer.Option(help="Coordinate-search rounds.")] = 2,
        instance_filter: Annotated[bool, typer.Option(
            "--instance-filter/--no-instance-filter",
            help="Then fit an instance filter (predicted IoU per instance, cross-validated over experiment "
                 "groups); kept as RUN_DIR/instance_filter.pkl only if it raises the out-of-fold mAP.")] = True,
        per_type: Annotated[bool, typer.Option(
            "--per-type/--no-per-type",
            help="Then tune seeds and thresholds per image type (fluorescence, stained, brightfield), kept for a "
                 "type only where they beat the common ones on held-out experiment groups.")] = True,
    ) -> None:
        """Search the postprocessing thresholds that maximise the out-of-fold mAP, then each
        image type's own seeds and thresholds where they score better held out.

        The best values are written to RUN_DIR/postprocess.yaml and used from then on
        by `dsb evaluate` and `dsb predict --checkpoint RUN_DIR`. The instance filter is used
        by `dsb predict` and shipped by `dsb export`; `dsb evaluate` scores without it (a
        filter fitted on every out-of-fold image would score itself in-sample): its honest
        gain is the one printed here.
        """
        from dsb.evaluate import tune_run

        console.print(f"searching the postprocessing of {run_dir} on its out-of-fold maps")
        with progress_bar(transient=True) as progress:
            task = progress.add_task("tune", total=None)
            result = tune_run(run_dir, rounds=rounds, fit_filter=instance_filter, per_type=per_type,
                              on_eval=lambda _p, _m: progress.advance(task))
        tuned = result.tuned
        table = Table(title=f"tuned postprocessing ({tuned.n_evaluations} evaluations)")
        for col in ("field", "before", "after"):
            table.add_column(col)
        for name, value in tuned.best.__dict__.items():
            if name != "by_type":
                table.add_row(name, str(getattr(result.before, name)), str(value))
        table.add_row("[bold]OOF mAP", f"{tuned.start_map:.4f}", f"[bold]{tuned.best_map:.4f}")
        console.print(table)
        if result.by_type:
            kinds = Table(title="per image type: mAP held out (each third of a type's experiment groups scored "
                                "with settings tuned on the others)")
            for col in ("type", "images", "groups", "common", "own", "settings"):
                kinds.add_column(col)
            for row in result.by_type:
                held = [("-" if v is None else f"{v:.4f}") for v in (row.held_out_common, row.held_out_own)]
                kept = "own" if row.changes else ("common (too few groups)" if row.held_out_own is None else "common")
                kinds.add_row(row.image_type, str(row.n_images), str(row.n_groups), *held, kept)
            console.print(kinds)
            for row in result.by_type:
                if row.changes:
                    console.print(f"{row.image_type}: " + ", ".join(f"{k} {v:g}" for k, v in row.changes.items()))
            if any(row.changes for row in result.by_type):
                console.print(f"out-of-fold mAP {tuned.best_map:.4f} with each type's own settings (the common ones "
                              f"alone: {result.common_map:.4f}; a type's own are tuned on its images, so its held-out "
                              "figure above is the honest one)")
        console.print(f"wrote {result.tuned_path}")
        fitted = result.instance_filter
        if fitted is not None:
            console.print(f"instance filter: out-of-fold mAP {fitted.map_before:.4f} -> {fitted.map_after:.4f} "
                          f"(drop instances predicted below IoU {fitted.filter.threshold:g}; {fitted.n_instances} "
                          "instances, cross-validated over experiment groups)")
            if result.filter_action == "written":
                console.print(f"wrote {result.filter_path}")
            elif result.filter_action == "removed":
                console.print(f"removed {result.filter_path}: no threshold helps")
