"""`dsb data`: write synthetic Kaggle-layout data, and describe a stage."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cli.common import console, dsb_command, progress_bar, stdout
from dsb.data.kaggle import open_stage, stage_summary
from dsb.data.synthetic import write_synthetic_dataset
from dsb.utils import atomic_write


def _print_info(info: dict) -> None:
    labels = info["labels"] or "none"
    console.print(f"[bold]{info['path']}[/]: {info['n_images']} images, {info['n_labelled']} labelled "
                  f"(labels: {labels})", soft_wrap=True, highlight=False)
    table = Table(title="image sizes")
    for column in ("H x W", "images"):
        table.add_column(column, justify="right")
    for row in info["sizes"]:
        table.add_row(f"{row['height']} x {row['width']}", str(row["count"]))
    console.print(table)
    for title, column, key in (("stored as", "mode", "modes"), ("image types", "type", "image_types"),
                               ("scoring split", "usage", "usage")):
        if info.get(key):
            table = Table(title=title)
            table.add_column(column, justify="left")
            table.add_column("images", justify="right")
            for name, count in info[key].items():
                table.add_row(str(name), str(count))
            console.print(table)
    if info.get("groups"):
        sizes = list(info["groups"].values())
        table = Table(title=f"experiment groups: {len(sizes)} (largest {max(sizes)} images, {sizes.count(1)} single images)")
        table.add_column("group", justify="left")
        table.add_column("images", justify="right")
        for name, count in info["groups"].items():
            table.add_row(name, str(count))
        console.print(table)
    stats = info["nuclei_per_image"]
    if stats:
        table = Table(title="nuclei per image")
        for column in ("min", "median", "mean", "max", "total"):
            table.add_column(column, justify="right")
        table.add_row(*(f"{stats[k]:g}" for k in ("min", "median", "mean", "max", "total")))
        console.print(table)


def _experiment_groups(stage, threshold: float, csv_path: Path | None) -> dict:
    from dsb.data.groups import stage_groups  # torch and albumentations (via dsb.data.dataset): load on demand

    with progress_bar(transient=True) as progress:
        task = progress.add_task("experiment groups", total=len(stage))
        found = stage_groups(stage, threshold, progress=lambda done: progress.update(task, completed=done))
    if csv_path is not None:
        with atomic_write(csv_path) as fh:
            fh.write("image_id,image_type,height,width,group\n")
            for image_id, g in sorted(found.items()):
                fh.write(f"{image_id},{g['image_type']},{g['height']},{g['width']},{g['group']}\n")
    return dict(Counter(g["group"] for g in found.values()).most_common())


def register(app: typer.Typer) -> None:
    data_app = typer.Typer(help="Synthetic data and a look at Kaggle stages.", no_args_is_help=True)
    app.add_typer(data_app, name="data")

    @data_app.command("synth")
    @dsb_command
    def synth(
        out: Annotated[Path, typer.Argument(help="Folder to create, or a .zip (the solution CSV goes beside it as <name>_solution.csv).")],
        n: Annotated[int, typer.Option("--n", min=1, help="Number of images.")] = 40,
        seed: Annotated[int, typer.Option(help="Random seed; the same seed writes the same bytes.")] = 0,
        as_zip: Annotated[bool, typer.Option("--zip", help="Write a zip instead of a folder (implied by a .zip name).")] = False,
        masks: Annotated[bool, typer.Option("--masks/--no-masks", help="Write masks/*.png (--no-masks: a test-like stage).")] = True,
        overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing dataset.")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
    ) -> None:
        """Write N synthetic nuclei images in the Kaggle layout plus a stage-1 solution CSV."""
        with progress_bar(transient=True) as progress:
            task = progress.add_task("synthetic images", total=n)
            dataset = write_synthetic_dataset(
                out, n=n, seed=seed, as_zip=True if as_zip else None, masks=masks, overwrite=overwrite,
                progress=lambda done: progress.update(task, completed=done),
            )
        kinds = Counter(dataset.kinds.values())
        n_nuclei = sum(dataset.n_nuclei.values())
        console.print(f"wrote [bold]{dataset.path}[/] ({len(dataset.image_ids)} images, {n_nuclei} nuclei: "
                      + ", ".join(f"{c} {k}" for k, c in kinds.most_common())
                      + f") and [bold]{dataset.solution_csv}[/]", soft_wrap=True, highlight=False)
        if as_json:
            stdout.out(json.dumps({
                "path": str(dataset.path), "solution_csv": str(dataset.solution_csv),
                "n_images": len(dataset.image_ids), "n_nuclei": n_nuclei, "kinds": dict(kinds),
                "masks": masks, "seed": seed,
            }), highlight=False)

    @data_app.command("info")
    @dsb_command
    def info(
        path: Annotated[Path, typer.Argument(help="Kaggle stage folder or zip.")],
        labels: Annotated[str, typer.Option("--labels", help="'masks' (masks/*.png), an RLE CSV, or 'none'.")] = "masks",
        types: Annotated[bool, typer.Option("--types/--no-types", help="Classify image types (decodes every image).")] = True,
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout (tables still go to stderr).")] = False,
        groups: Annotated[bool, typer.Option("--groups", help="Cluster the images into experiment groups, as grouped folds do (decodes every image).")] = False,
        group_threshold: Annotated[float, typer.Option("--group-threshold", min=0.01, help="Clustering distance (folds.group_threshold).")] = 3.0,
        groups_csv: Annotated[Path | None, typer.Option("--groups-csv", help="Write image_id,image_type,height,width,group here.")] = None,
    ) -> None:
        """Counts, image sizes, storage modes, nuclei per image and image types of a stage.

        Nuclei are counted from mask file names or CSV rows, without decoding masks.
        With --groups, also the experiment groups that grouped folds keep together."""
        stage = open_stage(path, labels=None if labels == "none" else labels)
        with progress_bar(transient=True) as progress:
            task = progress.add_task("image types", total=len(stage), visible=types)
            summary = stage_summary(stage, image_types=types,
                                    progress=lambda done: progress.update(task, completed=done))
        if groups or groups_csv is not None:
            summary["groups"] = _experiment_groups(stage, group_threshold, groups_csv)
        _print_info(summary)
        if as_json:
            stdout.out(json.dumps(summary), highlight=False)
