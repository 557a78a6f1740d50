"""`dsb report`: the evaluation of a run (or of a submission) as a static HTML page."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cli.common import console, dsb_command, progress_bar

# The library's torch-based modules are imported inside the command: `dsb --help` and the
# light commands start in a fraction of a second instead of the seconds torch takes.


def register(app: typer.Typer) -> None:
    @app.command("report")
    @dsb_command
    def report_cmd(
        source: Annotated[Path, typer.Argument(
            metavar="SOURCE", help="A training run folder (its out-of-fold predictions), or a submission CSV (with --solution).")],
        out: Annotated[Path, typer.Option(
            "--out", "-o", help="Folder for index.html and its pictures: new, empty, or an earlier report (replaced).")],
        solution: Annotated[Optional[Path], typer.Option(
            "--solution", "-s", help="For a submission: the labels, as an RLE CSV (then --images) or a Kaggle "
                                     "folder/zip with masks/.")] = None,
        images: Annotated[Optional[Path], typer.Option(
            "--images", "-i", help="For a submission: the folder or zip of the labelled images "
                                   "(default: the --solution folder/zip).")] = None,
        workers: Annotated[int, typer.Option(help="Threads drawing the pictures (0: one per CPU).", min=0)] = 0,
    ) -> None:
        """Write an HTML report of an evaluation into OUT: the mAP with its interval, per image
        type, IoU threshold and error kind, the training curves; a table of every image
        (sortable, filterable by type); and a page per image with its true and predicted
        outlines side by side, each nucleus coloured by its fate at IoU 0.5 (matched,
        missed, split, merged, loose, spurious). Open OUT/index.html in a browser; nothing
        is fetched from the network.

        A run folder is scored as `dsb evaluate` scores it, a submission as `dsb score` does
        (validated first: exit 1 with every problem listed)."""
        from dsb.report import build_report

        with progress_bar(transient=True) as bar:
            task = bar.add_task("report", total=None)
            result = build_report(source, out, solution=solution, images=images, workers=workers or None,
                                  progress=lambda done, total: bar.update(task, completed=done, total=total))
        lo, hi = result.interval
        console.print(f"[bold]mAP {result.map:.4f}[/] over {result.n_images} images (95% interval {lo:.4f}-{hi:.4f}); "
                      f"pictures drawn in {result.render_s:.1f} s")
        console.print(f"report: {result.index}", soft_wrap=True, highlight=False)
