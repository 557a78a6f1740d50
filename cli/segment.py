"""`dsb segment`: anyone's images in, label images, ROIs and measurements out."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cli.common import AMP_HELP, TTA_HELP, Amp, Tta, console, dsb_command, progress_bar
from dsb.data.images import collect_inputs
from dsb.utils import check_output_dir

# The library's torch-based modules are imported inside the command: `dsb --help` and the
# light commands start in a fraction of a second instead of the seconds torch takes.


def register(app: typer.Typer) -> None:
    @app.command("segment")
    @dsb_command
    def segment_cmd(
        inputs: Annotated[list[str], typer.Argument(
            help="Image files (PNG, JPEG, BMP, TIFF), folders (searched recursively), glob patterns, or Kaggle stages.",
            show_default=False)],
        out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
        checkpoint: Annotated[Optional[list[str]], typer.Option(
            "--checkpoint", "-k", help="A .pt file, a run folder, or a shipped set name; repeat for an ensemble "
                                       "(default: the shipped unetpp_r18_nostain_full).")] = None,
        channel: Annotated[Optional[int], typer.Option(
            "--channel", "-c", help="The nuclear channel of a multi-channel image, counting from 1 as Fiji does.")] = None,
        nucleus_diameter: Annotated[Optional[float], typer.Option(
            "--nucleus-diameter", "-d", help="Typical nucleus diameter in pixels (as Cellpose's --diameter); "
                                             "default: measured on each image.")] = None,
        rescale_area: Annotated[Optional[float], typer.Option(
            "--rescale-area", help="Nucleus area in pixels the automatic scale aims at (0: no rescaling; "
                                   "default: the checkpoint's).")] = None,
        tta: Annotated[Optional[Tta], typer.Option(help=TTA_HELP + " Default: the checkpoint's (pair for the "
                                                        "shipped set).")] = None,
        fmt: Annotated[str, typer.Option("--format", help="Label images: tif (uint16/uint32) or png (16-bit).")] = "tif",
        rois: Annotated[Optional[list[str]], typer.Option(
            "--rois", help="Also write ROIs: imagej (Fiji ROI zip) and/or geojson (QuPath); repeatable.")] = None,
        overlays: Annotated[bool, typer.Option("--overlays", help="Also write an outline overlay PNG per image.")] = False,
        overwrite: Annotated[bool, typer.Option(
            "--overwrite", help="Segment again images whose label image already exists (default: skip them).")] = False,
        normalize: Annotated[str, typer.Option(
            help="auto (8-bit as is, other data by its 1-99.8 percentiles) | percentile | none.")] = "auto",
        device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
        amp: Annotated[Amp, typer.Option("--amp", help=AMP_HELP)] = Amp.auto,
        block_px: Annotated[int, typer.Option(
            "--block-px", help="Images over this squared are segmented in blocks of it (bounds memory).")] = 4096,
    ) -> None:
        """Segment nuclei in your own images: label images, ROIs, nuclei.csv and summary.csv.

        For each image, OUT/<name>_labels.tif (one integer per nucleus, 0 background),
        with --rois imagej <name>_rois.zip, --rois geojson <name>.geojson, --overlays
        <name>_overlay.png; for the run, nuclei.csv (one row per nucleus) and summary.csv
        (one row per image). Under torchrun each process segments its share of the
        images. An image that cannot be read is reported and skipped (exit code 1 at the end).
        """
        from dsb.device import process_group, reuse_freed_memory, uses_cuda
        from dsb.segmentation import (DEFAULT_CHECKPOINT, Segmenter, SegmentOptions, gather_results, needs_model,
                                      segment_sources, write_tables)

        opts = SegmentOptions(label_format=fmt, rois=tuple(dict.fromkeys(rois or ())), overlays=overlays,  # type: ignore[arg-type]
                              overwrite=overwrite, channel=channel, normalize=normalize,
                              nucleus_diameter=nucleus_diameter, block_px=block_px)
        check_output_dir(out, "--out")
        sources = collect_inputs(inputs)
        with process_group(device, set_cuda_device=True, barrier_at_end=True) as dist:
            rank, world = dist.rank, dist.world_size
            if dist.enabled and uses_cuda(device):
                device = f"cuda:{dist.local_rank}"
            mine = sources[rank::world]
            segmenter = None
            if needs_model(mine, out, opts):
                reuse_freed_memory()
                segmenter = Segmenter.load(checkpoint or [DEFAULT_CHECKPOINT], device=device, tta=tta.value if tta else None,
                                           rescale_area_px=rescale_area, amp=amp.value)
            if rank == 0:
                infer = segmenter.predictor.infer_cfg if segmenter is not None else None
                how = (f", TTA {infer.tta}, device {segmenter.predictor.device} ({segmenter.precision})"
                       if infer is not None else
                       " (every label image exists: measuring only)")
                scale = (f", nucleus diameter {nucleus_diameter:g} px" if nucleus_diameter else
                         ", scale measured per image" if infer is not None and infer.rescale_area_px else "")
                share = f" ({world} processes)" if world > 1 else ""
                console.print(f"{len(sources)} images{share}{how}{scale}")
            failures: list[str] = []
            with progress_bar(disable=rank != 0) as progress:
                task = progress.add_task("segment", total=len(mine))

                def on_image(result, done, total):
                    progress.update(task, completed=done)
                    if result.status == "failed":
                        progress.console.print(f"[bold red]skipped:[/] {result.error}", highlight=False)

                results = segment_sources(sources, segmenter, out, opts, rank=rank, world_size=world,
                                          on_image=on_image)
            everything = gather_results(results, world)
            if everything is not None:
                nuclei_csv, summary_csv = write_tables(out, everything)
                failures = [r.error for r in everything if r.status == "failed"]
                done = [r for r in everything if r.status != "failed"]
                skipped = sum(r.status == "skipped" for r in everything)
                n_nuclei = sum(r.n_nuclei or 0 for r in done)
                console.print(
                    f"[bold]{len(done)}[/] of {len(everything)} images, {n_nuclei} nuclei"
                    + (f" ({skipped} already segmented: measured again; --overwrite redoes them)" if skipped else "")
                    + f"; tables {nuclei_csv} and {summary_csv}")
                if failures:
                    console.print(f"[bold red]{len(failures)} image(s) failed[/]:", highlight=False)
                    for message in failures:
                        console.print(f"  {message}", highlight=False)
        if failures:
            raise typer.Exit(1)
