"""`dsb score` (the competition mAP of a submission) and `dsb validate` (every problem of one)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from cli.common import console, dsb_command
from dsb.data.kaggle import open_stage
from dsb.errors import DsbError, InvalidSubmissionError
from dsb.metrics import THRESHOLDS
from dsb.submission import check_submission, read_submission, score_submission


def register(app: typer.Typer) -> None:
    @app.command("score")
    @dsb_command
    def score(
        submission: Annotated[Path, typer.Argument(help="Submission CSV (ImageId,EncodedPixels).")],
        solution: Annotated[Path, typer.Option("--solution", "-s", help="Solution CSV with Height,Width (and Usage), or a Kaggle-layout folder/zip with masks/.")],
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout (tables still go to stderr).")] = False,
        worst: Annotated[int, typer.Option(help="How many of the worst images to list.")] = 10,
    ) -> None:
        """Score SUBMISSION with the competition's metric: mean over images of the average,
        over IoU thresholds 0.50..0.95, of TP / (TP + FP + FN) (a hit needs IoU > t)."""
        try:
            result = score_submission(submission, solution)
        except InvalidSubmissionError as exc:
            # Validated as `dsb validate` does: every problem listed, exit 1, nothing scored.
            console.print("\n".join(str(p) for p in exc.problems), markup=False, highlight=False, soft_wrap=True)
            n_rows = len({p.line for p in exc.problems if p.line is not None})
            console.print(f"[bold red]INVALID[/] {submission}: {len(exc.problems)} problem(s) on {n_rows} row(s), "
                          f"checked against {solution}; not scored (Kaggle refuses such a file)", soft_wrap=True)
            raise typer.Exit(1) from None
        ignored = f", {len(result.ignored_ids)} ignored" if result.ignored_ids else ""
        console.print(f"[bold]mAP {result.map:.4f}[/] over {result.n_images} images{ignored}")

        summary = result.to_dict()
        table = Table(title="per threshold (sums over images)")
        for column in ("IoU >", "mean precision", "TP", "FP", "FN"):
            table.add_column(column, justify="right")
        for t, p, tp, fp, fn in zip(THRESHOLDS, result.per_threshold, summary["tp"], summary["fp"], summary["fn"]):
            table.add_row(f"{t:.2f}", f"{p:.4f}", str(tp), str(fp), str(fn))
        console.print(table)

        if worst > 0 and result.images:
            table = Table(title=f"worst {min(worst, result.n_images)} images")
            table.add_column("ImageId", overflow="fold")  # ids are long; show them whole
            for column in ("score", "true", "pred", "AP@0.50", "AP@0.75"):
                table.add_column(column, justify="right")
            for s in result.worst(worst):
                precision = s.precision
                table.add_row(str(s.image_id), f"{s.score:.4f}", str(s.n_true), str(s.n_pred),
                              f"{precision[0]:.3f}", f"{precision[5]:.3f}")
            console.print(table)
        if as_json:
            typer.echo(json.dumps(summary))

    @app.command("validate")
    @dsb_command
    def validate(
        submission: Annotated[Path, typer.Argument(help="Submission CSV to check.")],
        images: Annotated[Optional[Path], typer.Option("--images", "-i", help="Folder or zip of the stage's images (ids and shapes).")] = None,
        sample: Annotated[Optional[Path], typer.Option("--sample", help="Kaggle's sample submission (ids only; no in-image check).")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object with every problem on stdout.")] = False,
    ) -> None:
        """Check SUBMISSION as Kaggle would: every problem is listed with its CSV line
        number (header = line 1) and ImageId.

        Exit 0 when valid, 1 when it has problems, 2 when the file is not a readable
        ImageId,EncodedPixels CSV (or an option is wrong)."""
        if (images is None) == (sample is None):
            raise DsbError("give exactly one of --images (ids and shapes) or --sample (ids only)")
        if images is not None:
            stage = open_stage(images, labels=None)
            image_ids = list(stage.image_ids)
            shapes = {i: stage.image_shape(i) for i in image_ids}
            against = f"{len(image_ids)} images in {images} (ids and shapes)"
        else:
            image_ids = list(dict.fromkeys(read_submission(sample)["ImageId"]))
            shapes = None
            against = f"{len(image_ids)} ids in {sample} (no shapes: in-image check skipped)"

        frame = read_submission(submission)
        problems = check_submission(frame, image_shapes=shapes, image_ids=image_ids)
        n_images = frame["ImageId"].nunique()
        n_empty = int((frame["EncodedPixels"].str.strip() == "").sum())
        if as_json:
            typer.echo(json.dumps({
                "valid": not problems, "n_rows": len(frame), "n_images": int(n_images),
                "n_empty_rows": n_empty, "problems": [p.to_dict() for p in problems],
            }))
        if problems:
            console.print("\n".join(str(p) for p in problems), markup=False, highlight=False, soft_wrap=True)
            n_rows = len({p.line for p in problems if p.line is not None})
            console.print(f"[bold red]INVALID[/] {submission}: {len(problems)} problem(s) "
                          f"on {n_rows} row(s), checked against {against}", soft_wrap=True)
            raise typer.Exit(1)
        console.print(f"[bold green]OK[/] {submission}: {len(frame)} rows, {n_images} images "
                      f"({n_empty} without nuclei), checked against {against}", soft_wrap=True)
