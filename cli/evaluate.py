"""`dsb evaluate`: a run's out-of-fold score, per image type, threshold and error kind."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from cli.common import console, dsb_command, progress_bar, stdout
from dsb.metrics import THRESHOLDS
from dsb.rundir import load_run_config

_SHORT = {"n_true": "true", "n_pred": "pred", "small_true": "small", "small_missed_rate": "small missed",
          "area_ratio": "area pred/true"}

# The library's torch-based modules are imported inside the command: `dsb --help` and the
# light commands start in a fraction of a second instead of the seconds torch takes.


def register(app: typer.Typer) -> None:
    @app.command("evaluate")
    @dsb_command
    def evaluate_cmd(
        run_dir: Annotated[Path, typer.Argument(help="A training run folder.")],
        out_csv: Annotated[Optional[Path], typer.Option("--out", help="Per-image CSV (default RUN_DIR/oof_scores.csv).")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
        labels: Annotated[Optional[str], typer.Option(
            "--labels", help="Score against other labels: 'masks' or an RLE CSV (default: the run's data.labels).")] = None,
        figures: Annotated[Optional[Path], typer.Option(
            "--figures", help="Folder for training_curves.png and overlays.png (typical images per type).")] = None,
        match: Annotated[Optional[Path], typer.Option(
            "--match", help="Images to estimate for (a folder or zip, e.g. the stage-1 test images): the "
                            "out-of-fold images weighted to their mix of image types, nucleus sizes and novelty.")] = None,
        match_predictions: Annotated[Optional[Path], typer.Option(
            "--match-predictions", help="A submission CSV for the --match images: their nucleus sizes are read "
                                        "from it instead of predicted with the run's first fold model.")] = None,
    ) -> None:
        """Score a run's out-of-fold predictions: overall, per image type, per threshold, the
        fates of the true nuclei by size; with --match, the estimate for another image set."""
        from dsb.evaluate import FATES, run_evaluation
        from dsb.report import write_figures

        if match_predictions is not None and match is None:
            raise typer.BadParameter("--match-predictions needs --match IMAGES", param_hint="--match-predictions")
        with progress_bar(transient=True, disable=match is None) as progress:
            task = progress.add_task("measure --match images", total=None)
            report = run_evaluation(run_dir, out_csv, labels, match=match, match_predictions=match_predictions,
                                    progress=lambda done, total: progress.update(task, completed=done, total=total))
        written = []
        if figures is not None:
            written = write_figures(run_dir, figures, report.per_image, report.truths, report.preds,
                                    load_run_config(run_dir).data)
        if as_json:
            stdout.print_json(json.dumps({**report.to_dict(), "figures": [str(p) for p in written]}))
            return
        lo, hi = report.interval
        console.print(f"[bold]out-of-fold mAP {report.score.map:.4f}[/] over {report.score.n_images} images, "
                      f"95% interval {lo:.4f}-{hi:.4f} (bootstrap over {report.n_groups} {report.interval_unit})")
        table = Table(title="per image type")
        for col in ("image type", "images", "mAP"):
            table.add_column(col)
        for r in report.per_type.itertuples():
            table.add_row(r.image_type, str(r.n_images), f"{r.map:.4f}")
        console.print(table)
        thr = Table(title="per IoU threshold")
        thr.add_column("t")
        thr.add_column("TP/(TP+FP+FN)")
        for t, v in zip(THRESHOLDS, report.score.per_threshold):
            thr.add_row(f"{t:.2f}", f"{v:.4f}")
        console.print(thr)
        kinds = Table(title="error kinds at IoU 0.5 (nuclei; small = under 100 px)")
        names = list(report.error_kinds)
        kinds.add_column("image type", no_wrap=True)
        for name in names:
            kinds.add_column(_SHORT.get(name, name.replace("_", " ")), justify="right")
        for image_type, values in [*report.error_kinds_per_type.items(), ("[bold]all", report.error_kinds)]:
            kinds.add_row(image_type, *(f"{values[n]:.3f}" if isinstance(values[n], float) else str(values[n]) for n in names))
        console.print(kinds)
        if report.by_size is not None:
            sizes = Table(title="true nuclei by area (px) and what became of them at IoU 0.5 (found = recall)")
            for col in ("image type", "area", "nuclei", *FATES):
                sizes.add_column(col, justify="right" if col not in ("image type", "area") else "left")
            for r in report.by_size.to_dict(orient="records"):
                sizes.add_row(r["image_type"], r["size"], str(r["n_true"]),
                              *("-" if r["n_true"] == 0 else f"{r[f]:.3f}" for f in FATES))
            console.print(sizes)
        if report.matched is not None:
            _print_matched(report.matched, match)
        console.print(f"per-image scores: {report.per_image_csv}")
        for p in written:
            console.print(f"figure: {p}", soft_wrap=True)



def _print_matched(matched, images) -> None:
    lo, hi = matched.interval
    console.print(
        f"[bold]estimate for {images} ({matched.n_target} images): mAP {matched.map:.4f}[/], 95% interval "
        f"{lo:.4f}-{hi:.4f}; the held-out images weighted to their mix (plain mean {matched.plain_map:.4f}, "
        f"effective n {matched.effective_n:.0f} of {len(matched.source)})")
    table = Table(title=f"mix: target vs held-out images (new = nearest training image at a feature distance "
                        f">= {matched.novelty_threshold:g})")
    for col in ("by", "value", "target", "held-out", "held-out mAP"):
        table.add_column(col, justify="left" if col in ("by", "value") else "right")
    for r in matched.mix().to_dict(orient="records"):
        table.add_row(r["by"], r["value"], f"{r['target_share']:.2f}", f"{r['held_out_share']:.2f}",
                      "-" if not r["held_out"] else f"{r['held_out_map']:.4f}")
    console.print(table)
