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
    ) -> None:
        """Search the postprocessing thresholds that maximise the out-of-fold mAP.

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
            result = tune_run(run_dir, rounds=rounds, fit_filter=instance_filter,
                              on_eval=lambda _p, _m: progress.advance(task))
        tuned = result.tuned
        table = Table(title=f"tuned postprocessing ({tuned.n_evaluations} evaluations)")
        for col in ("field", "before", "after"):
            table.add_column(col)
        for name, value in tuned.best.__dict__.items():
            table.add_row(name, str(getattr(result.before, name)), str(value))
        table.add_row("[bold]OOF mAP", f"{tuned.start_map:.4f}", f"[bold]{tuned.best_map:.4f}")
        console.print(table)
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
